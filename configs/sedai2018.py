"""Sedai et al. 2018, Table 1 (A-CNN): 256 px, DenseNet-121 from Xavier initialisation, taps at
the ends of dense blocks 2, 3, 4, the patient-wise 70/10/20 protocol with every boxed image in
test, Adam 1e-3, batch 32, lr x0.1 on a validation-loss plateau, best by validation loss;
localization: a box per blob of the attention map thresholded at 0.5, accuracy and AFP at
T(IoU) 0.3 and 0.5 (`chestxray_tf.tasks.sedai2018.paper_settings`).

Arguments (`--config=configs/sedai2018.py:ARG`, comma-separated): `tiny` (smoke mode),
`selection=test-tuned` (a threshold per (class, T) tuned on the test images, labelled so in
the report) or `selection=cross-tuned`, `weights=imagenet` (or a local weights file; the
paper's is none), `all_thresholds=1` (T(IoU) 0.1 ... 0.7 for the record),
e.g. `:tiny,selection=test-tuned`.
"""

from chestxray_tf.tasks import sedai2018


def get_config(arg=None):
    return sedai2018.paper_config(arg, "sedai2018")
