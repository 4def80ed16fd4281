"""Thin absl binaries: train, evaluate, cv, export, predict, demo."""

import logging


def quiet_tensorflow():
    """Keeps TensorFlow's own INFO lines (e.g. one per checkpoint write) out of the binaries'
    logs; our INFO lines and every warning stay."""
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
