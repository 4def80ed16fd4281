"""Fixtures of the training tests."""

import pytest
import tensorflow as tf

from chestxray_tf.tasks.li2018 import Li2018


@pytest.fixture
def li_loss_poison(monkeypatch):
    """A variable that multiplies Li et al.'s training loss (1.0: unchanged) for the test's
    duration: assign NaN, inf or a huge factor to inject a bad step."""
    poison = tf.Variable(1.0)
    loss_fn = Li2018.loss

    def poisoned_loss(self, batch, outputs):
        loss, terms = loss_fn(self, batch, outputs)
        return loss * poison, terms

    monkeypatch.setattr(Li2018, "loss", poisoned_loss)
    return poison
