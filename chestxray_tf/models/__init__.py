"""The papers' models: backbones, shared layers and one builder per paper.

Importing the package registers its Keras-serialisable layers, so `keras.saving.load_model`
can read a saved `.keras` model after `import chestxray_tf.models`.
"""

from chestxray_tf.models import kim, layers, li2018  # noqa: F401  (registers the custom layers)
