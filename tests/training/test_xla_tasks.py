"""Every task whose `jit_compile_on_gpu` is True compiles each of its gradient stages with XLA
(`train.jit_compile=True`; on this CPU, XLA:CPU) and takes a finite step; Hermoza et al.'s
default sampler does not compile, which is why its choice is off."""

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import tasks as tasks_lib
from chestxray_tf.training import trainer

from tiny import tiny_config

XLA_TASKS = sorted(name for name, task in tasks_lib.TASKS.items()
                   if isinstance(task.jit_compile_on_gpu, bool) and task.jit_compile_on_gpu)


@pytest.mark.slow
@pytest.mark.parametrize("task", XLA_TASKS)
def test_every_gradient_stage_compiles_with_xla(built_set, tmp_path, task):
    config = tiny_config(built_set, task=task, jit_compile=True, num_val_images=0)
    run = trainer.Run(config, str(tmp_path))
    gradient = [i for i, stage in enumerate(run.stages) if stage.kind == "gradient"]
    assert gradient
    for index in gradient:
        stage = trainer.StageTrainer(run, run.stages[index], run.stage_dir(index))
        logs, _, steps, finite = stage._train_loop(stage._iterator(0, 0),
                                                   tf.constant(1, tf.int64))
        assert bool(finite) and int(steps) == 1, (task, run.stages[index].name, logs)
        assert np.isfinite(float(logs["loss"]))


def test_the_xla_choices():
    """The tasks' choices as docs/benchmarks.md records them; Hermoza's follows its sampler."""
    assert XLA_TASKS == ["baseline", "kim", "li2018", "rozenberg2019", "sedai2018"]
    hermoza = tasks_lib.get_task("hermoza2020")
    for sampler, expected in (("crop_and_resize", False), ("gather", True)):
        config = tiny_config("unused", task="hermoza2020")
        config.model.sampler = sampler
        assert hermoza(config).jit_compile_on_gpu is expected
    assert trainer.resolve_jit_compile(None, hermoza(config)) is False  # no GPU here
    assert trainer.resolve_jit_compile(True, hermoza(config)) is True
