"""The papers' models: backbones, shared layers and one builder per paper.

Importing the package registers its Keras-serialisable layers, so `keras.saving.load_model`
can read a saved `.keras` model after `import chestxray_tf.models`.
"""

# noqa: F401 below: the imports register the custom layers.
from chestxray_tf.models import cam, kim, layers, li2018, rozenberg2019, sedai2018  # noqa: F401
