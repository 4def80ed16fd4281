"""Run a trained model over a split and measure it the way the papers do (SPEC §1, §6).

`evaluate(workdir, checkpoint, split)` restores the run, predicts the split's images, and
writes WORKDIR/eval/: report.json, report.md, roc_curves.png and one heat-map gallery per
boxed class. The task's inference rule gives the scores, the maps and their regions
(`Task.scores`, `Task.maps`, `Task.region_rule` through `chestxray_tf.inference`, the same
code the SavedModel runs), so any paper's maps serve: a patch grid, a CAM, a saliency map.

Localization (Li et al. 2018, Sec. 4.2): the region of class k is the task's region on the
map of class k (Li: every cell with value > T_s, `config.eval.region_threshold`, all
connected components together); its IoU and IoR with the union of the image's true boxes of
class k are measured in pixels of the model's input frame, for every test image with a box of
class k; the accuracy at T is the fraction of those with IoU (IoR) > T.
"""

import dataclasses
import os

from absl import logging
import numpy as np
from tqdm import tqdm

from chestxray_tf import geometry, inference, run_identity, tasks as tasks_lib
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.data import selection
from chestxray_tf.evaluation import figures, report, results as results_lib
from chestxray_tf.labels import BOXED_CLASSES
from chestxray_tf.metrics import auc as auc_lib, localization

SPLITS = ("test_fold", "official_test", "val")
# Random placements of each region for the chance level of localization.
CHANCE_DRAWS = 20


@dataclasses.dataclass
class Predictions:
    """A model's predictions over a split (maps kept for the images with boxes only).

    image_ids [N]; labels, probs [N, K]; boxes: per image [M, 4] xywh in pixels of the model's
    input frame and box_labels [M]; maps: image index -> [h, w, K]; regions: image index ->
    bool [h, w, K], the task's region of each class; images: image index -> [S, S] grey model
    input, for the images whose map is kept.
    """
    image_ids: list
    labels: np.ndarray
    probs: np.ndarray
    boxes: list
    box_labels: list
    maps: dict
    regions: dict
    images: dict
    image_size: int


def predict(model, config, image_ids, *, progress=True):
    """Runs `model` over `image_ids` (eval order) and collects `Predictions`."""
    task = tasks_lib.get_task(config.task)(config)
    rule = task.region_rule()
    size = config.data.image_size
    dataset = selection.dataset(config.data, image_ids, training=False,
                                batch_size=config.eval.batch_size)
    ids, labels, probs, boxes, box_labels, maps, regions, images = [], [], [], [], [], {}, {}, {}
    steps = -(-len(image_ids) // config.eval.batch_size)
    for batch in tqdm(dataset, total=steps, unit="batch", desc="evaluate", disable=not progress):
        outputs = model(batch["image"], training=False)
        batch_maps = task.maps(outputs)
        batch_regions = inference.region_mask(batch_maps, rule).numpy()
        batch_maps = batch_maps.numpy()
        for i in range(len(batch["image_id"])):
            index = len(ids)
            ids.append(batch["image_id"][i].numpy().decode())
            valid = batch["box_labels"][i].numpy() >= 0
            boxes.append(geometry.yxyx_to_xywh(batch["boxes"][i].numpy()[valid], size)
                         if valid.any() else np.zeros((0, 4)))
            box_labels.append(batch["box_labels"][i].numpy()[valid])
            if valid.any():
                maps[index] = batch_maps[i]
                regions[index] = batch_regions[i]
                images[index] = batch["image"][i].numpy().mean(axis=-1)
        labels.append(batch["labels"].numpy())
        probs.append(task.scores(outputs).numpy())
    if len(ids) < len(image_ids):  # only with data.skip_corrupt; the pipeline named them
        logging.warning("evaluated %d of the %d selected images: %d corrupt records skipped "
                        "(data.skip_corrupt=True)", len(ids), len(image_ids),
                        len(image_ids) - len(ids))
    return Predictions(ids, np.concatenate(labels), np.concatenate(probs), boxes, box_labels,
                       maps, regions, images, size)


def localization_overlaps(pred, shift_rng=None):
    """(class_ids, iou, ior) over every (image, boxed class) pair of the predictions.

    With `shift_rng` (a numpy Generator), each region is first rolled by a random offset on
    its grid (same shape and size, random place): the chance level of the model's regions.
    """
    class_ids, ious, iors = [], [], []
    for index, class_regions in pred.regions.items():
        for k in np.unique(pred.box_labels[index]):
            region = class_regions[..., k]
            if shift_rng is not None:
                region = np.roll(region, shift_rng.integers(0, region.shape), axis=(0, 1))
            iou, ior = localization.iou_and_ior(region, pred.boxes[index][pred.box_labels[index]
                                                                          == k],
                                                pred.image_size, pred.image_ids[index])
            class_ids.append(int(k))
            ious.append(iou)
            iors.append(ior)
    return np.array(class_ids, dtype=np.int64), np.array(ious), np.array(iors)


def compute_results(pred, config, split):
    """The `results` dict (see `evaluation.results`) of Li et al.'s metrics."""
    thresholded = auc_lib.roc_auc_thresholded(pred.labels, pred.probs)
    exact = auc_lib.roc_auc_exact(pred.labels, pred.probs)
    counts = pred.labels.sum(axis=0).astype(int)
    out = {
        "auc": results_lib.class_table(thresholded.per_class, thresholded.mean, counts),
        "auc_exact": results_lib.class_table(exact.per_class, exact.mean, counts),
        "thresholds": {"selection": "fixed", "values": {
            name: config.eval.region_threshold for name in BOXED_CLASSES}},
        "split": split,
        "num_images": len(pred.image_ids),
    }
    if config.eval.experiment:
        out["experiment"] = config.eval.experiment
    thresholds = tuple(config.eval.iou_thresholds)
    class_ids, ious, iors = localization_overlaps(pred)
    if len(class_ids):
        out["localization"] = _accuracy(class_ids, ious, iors, thresholds)
        rng = np.random.default_rng(0)
        draws = [localization_overlaps(pred, rng)
                 for _ in range(CHANCE_DRAWS)]
        out["localization_chance"] = _accuracy(
            np.concatenate([d[0] for d in draws]), np.concatenate([d[1] for d in draws]),
            np.concatenate([d[2] for d in draws]), thresholds, draws=CHANCE_DRAWS)
    return out


def _accuracy(class_ids, ious, iors, thresholds, draws=1):
    """Localization accuracy tables; `draws` repeats of each pair count as one image."""
    out = {"inclusive": False}
    for name, values in (("iou", ious), ("ior", iors)):
        table = localization.localization_accuracy(class_ids, values, thresholds)
        out[name] = results_lib.accuracy_tables(table.per_class, thresholds, table.mean,
                                                np.asarray(table.counts) // draws)
    return out


def write_figures(pred, config, out_dir):
    """ROC curves and one heat-map gallery per boxed class; returns {caption: path}."""
    paths = {"ROC curves": figures.plot_roc_curves(pred.labels, pred.probs,
                                                   os.path.join(out_dir, "roc_curves.png"))}
    for k, name in enumerate(BOXED_CLASSES):
        chosen = [i for i in sorted(pred.maps) if k in pred.box_labels[i]]
        chosen = chosen[:config.eval.gallery_images]
        if not chosen:
            continue
        maps = [pred.maps[i][..., k] for i in chosen]
        paths[f"{name}: heat maps, true boxes (yellow), region p > "
              f"{config.eval.region_threshold} (cyan)"] = figures.plot_heatmap_gallery(
            [pred.images[i] for i in chosen], maps,
            [pred.boxes[i][pred.box_labels[i] == k] for i in chosen],
            [pred.regions[i][..., k] for i in chosen],
            [f"{pred.image_ids[i]}  p={pred.probs[i, k]:.2f}" for i in chosen],
            os.path.join(out_dir, f"heatmaps_{name}.png"))
    return paths


def split_ids(config, split):
    """The image ids of `split` under the config's protocol."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "official_test":
        return selection.select(config.data, protocol="official").test
    chosen = selection.select(config.data)
    return chosen.val if split == "val" else chosen.test


def eval_dir(workdir, split, checkpoint="latest"):
    """WORKDIR/eval/<split> for the latest checkpoint, WORKDIR/eval/<split>-<checkpoint> for
    another ("best" or a checkpoint's name): one folder per split and checkpoint, so one
    evaluation never overwrites or mixes with another's figures."""
    name = split if checkpoint == "latest" else f"{split}-{os.path.basename(checkpoint)}"
    return os.path.join(workdir, "eval", name)


def evaluate(workdir, checkpoint="latest", split="test_fold", progress=True):
    """Evaluates a training run; returns the paths of the files written under
    `eval_dir(workdir, split, checkpoint)`.

    Raises:
        ValueError: the set was rebuilt since the run trained on it (`run_identity`).
    """
    config, model, path = workdir_lib.restore_model(workdir, checkpoint)
    ids = split_ids(config, split)
    if not ids:
        raise ValueError(f"split {split} of {config.data.manifest} holds no image")
    run_identity.check_manifest(workdir, config.data.manifest)
    pred = predict(model, config, ids, progress=progress)
    out_dir = eval_dir(workdir, split, checkpoint)
    os.makedirs(out_dir, exist_ok=True)
    results = compute_results(pred, config, split)
    task = tasks_lib.get_task(config.task)
    paths = report.write_report(out_dir, results, task.published or task.name,
                                config=config.to_dict(), checkpoint=path,
                                figures=write_figures(pred, config, out_dir),
                                against=task.published_row)
    return {**paths, "out_dir": out_dir}
