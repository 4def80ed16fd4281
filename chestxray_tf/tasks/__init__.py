"""One Task per paper (`chestxray_tf.tasks.base.Task`): `TASKS` maps a config's `task` name to
its class, `get_task(name)` looks one up."""

from chestxray_tf.tasks.baseline import Baseline
from chestxray_tf.tasks.hermoza2020 import Hermoza2020
from chestxray_tf.tasks.kim import Kim
from chestxray_tf.tasks.li2018 import Li2018
from chestxray_tf.tasks.rozenberg2019 import Rozenberg2019
from chestxray_tf.tasks.sedai2018 import Sedai2018

TASKS = {task.name: task for task in (Li2018, Baseline, Sedai2018, Rozenberg2019, Hermoza2020,
                                       Kim)}


def get_task(name):
    """The Task class registered as `name` (e.g. "li2018")."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name]
