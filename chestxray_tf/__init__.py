"""chestxray_tf: thoracic disease identification and localization on NIH ChestX-ray14.

Reproductions, in TensorFlow/Keras, of Li et al. (CVPR 2018) and four follow-up papers
(Rozenberg et al. 2019, Kim et al., Sedai et al. 2018, Hermoza et al. 2020).
"""

__version__ = "0.1.0"
