"""The papers' models: backbones, shared layers and one builder per paper.

Importing the package registers its Keras-serialisable layers, so `keras.saving.load_model`
can read a saved `.keras` model after `import chestxray_tf.models`.
"""

# Importing the modules registers their custom layers.
from chestxray_tf.models import layers, li2018, rozenberg2019  # noqa: F401
