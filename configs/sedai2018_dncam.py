"""Sedai et al. 2018, Table 1's DN-CAM baseline: the same model and protocol with one tap, the
last dense block (`relu`, B = 1: DenseNet-121 GAP + FC and its CAM). Arguments as
configs/sedai2018.py (`tiny`, `selection=...`, `weights=...`, `all_thresholds=1`).
"""

from chestxray_tf.tasks import sedai2018


def get_config(arg=None):
    return sedai2018.paper_config(arg, "sedai2018_dncam", taps=sedai2018.DNCAM_TAPS)
