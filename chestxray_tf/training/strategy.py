"""The `tf.distribute` strategy named by `config.train.strategy`.

One training loop serves every strategy (a custom loop around `strategy.run`): Keras 3's
`model.fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).
"""

import tensorflow as tf

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name="auto", tpu_address=""):
    """Returns the strategy called `name`.

    * `auto`: `MirroredStrategy` over all GPUs when more than one is visible, `OneDeviceStrategy`
      on the GPU when there is one (its input is prefetched to the GPU), else the default
      strategy (the CPU).
    * `default`: the default (no-op) strategy.
    * `one_device`: `OneDeviceStrategy` on the first GPU (the CPU when there is none).
    * `mirrored`: `MirroredStrategy` over every local GPU (over the logical CPUs when there are
      none, which is how the tests run it).
    * `multi_worker`: `MultiWorkerMirroredStrategy`; the cluster comes from `TF_CONFIG`.
    * `tpu`: `TPUStrategy` on the TPU at `tpu_address` (empty: the local or default TPU).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "multi_worker":  # before anything lists devices: it configures the runtime
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "auto":
        name = {0: "default", 1: "one_device"}.get(len(gpus), "mirrored")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(devices)


def describe(strategy):
    """"MirroredStrategy, 2 replica(s) on GPU:0, GPU:1": the strategy and its devices."""
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default device
        devices = [(tf.config.list_logical_devices("GPU")
                    or tf.config.list_logical_devices("CPU"))[0].name]
    names = ", ".join(d.rsplit("/", 1)[-1].removeprefix("device:") for d in devices)
    kind = type(strategy).__name__
    kind = "default strategy (no tf.distribute)" if kind.startswith("_Default") else kind
    return f"{kind}, {strategy.num_replicas_in_sync} replica(s) on {names}"
