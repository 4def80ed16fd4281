"""chestxray_tf: thoracic disease identification and localization on NIH ChestX-ray14.

Reproductions, in TensorFlow/Keras, of Li et al. (CVPR 2018) and four follow-up papers
(Rozenberg et al. 2019, Kim et al., Sedai et al. 2018, Hermoza et al. 2020).
"""

__version__ = "0.1.0"

_API = ("load_model", "read_report", "NOTICE")


def __getattr__(name):
    """`chestxray_tf.load_model`, `read_report`, `NOTICE` (`chestxray_tf.api`), imported on first
    use so that `import chestxray_tf` stays light (no TensorFlow, no pandas)."""
    if name in _API:
        from chestxray_tf import api  # pylint: disable=import-outside-toplevel
        return getattr(api, name)
    raise AttributeError(f"module 'chestxray_tf' has no attribute {name!r}")
