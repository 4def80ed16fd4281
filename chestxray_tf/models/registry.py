"""Paper name -> model builder, loss and localization map, so a config's model name picks all.

A paper registers one `Paper` under its name: how to build its model from a config, how to
compute its per-example loss from a batch of the input pipeline and the model's output dict,
and which output holds its localization maps. The trainer, evaluation and export never name a
paper.
"""

import dataclasses
from typing import Callable

from chestxray_tf.losses.bce import bce_loss
from chestxray_tf.losses.li2018 import li2018_loss
from chestxray_tf.models.baseline import build_baseline
from chestxray_tf.models.layers import synchronize_batch_norm
from chestxray_tf.models.li2018 import build_li2018


@dataclasses.dataclass(frozen=True)
class Paper:
    """What the shared stack needs to know of a paper's model.

    build_model: (config, pretrained) -> keras.Model with a dict of outputs.
    make_loss: config -> loss_fn(batch, outputs) -> (per-example loss [B], {term: [B]}).
    map_key: the output holding the localization maps [B, h, w, K] in [0, 1].
    score_key: the output holding the image-level probabilities [B, K].
    published: the file of `chestxray_tf/evaluation/published/` whose tables the evaluation
        report compares with ("" = the paper's own name).
    """
    build_model: Callable
    make_loss: Callable
    map_key: str
    score_key: str = "image_probs"
    published: str = ""


def _li2018_model(config, pretrained):
    kwargs = {k: v for k, v in config.model.items() if k not in ("name", "sync_batch_norm")}
    if not pretrained:
        kwargs["weights"] = None
    return build_li2018(image_size=config.data.image_size, **kwargs)


def _li2018_loss(config):
    def loss_fn(batch, outputs):
        return li2018_loss(batch["labels"], batch["box_mask"], batch["has_box"],
                           outputs["patch_probs"], lambda_bbox=config.loss.lambda_bbox,
                           smoothing=config.model.smoothing, return_terms=True)
    return loss_fn


def _baseline_model(config, pretrained):
    return build_baseline(image_size=config.data.image_size,
                          num_classes=config.model.num_classes, backbone=config.model.backbone,
                          weights=config.model.weights if pretrained else None,
                          weight_decay=config.model.weight_decay)


def _baseline_loss(config):
    def loss_fn(batch, outputs):
        loss = bce_loss(batch["labels"], outputs["image_probs"])
        return loss, {"image_term": loss}
    return loss_fn


PAPERS = {
    "li2018": Paper(build_model=_li2018_model, make_loss=_li2018_loss, map_key="patch_probs"),
    # The "reference" of Li et al. Table 1: global pooling + dense sigmoid, plain BCE.
    "baseline": Paper(build_model=_baseline_model, make_loss=_baseline_loss, map_key="cam",
                      published="li2018"),
}


def get_paper(name):
    """The registered `Paper` called `name` (e.g. "li2018")."""
    if name not in PAPERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(sorted(PAPERS))}")
    return PAPERS[name]


def build_model(config, pretrained=True):
    """The model of `config.model.name`; `pretrained=False` skips loading backbone weights
    (the caller restores a checkpoint). With `config.model.sync_batch_norm`, batch norm uses
    the statistics of the global batch across replicas."""
    model = get_paper(config.model.name).build_model(config, pretrained)
    if config.model.get("sync_batch_norm", False):
        synchronize_batch_norm(model)
    return model


def make_loss(config):
    """loss_fn(batch, outputs) -> (per-example loss [B], {term name: [B]}) of the config's paper."""
    return get_paper(config.model.name).make_loss(config)


def map_key(config):
    """The output key of the config's localization maps."""
    return get_paper(config.model.name).map_key
