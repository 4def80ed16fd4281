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

from chestxray_tf import geometry, run_identity, tasks as tasks_lib
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.data import manifest as manifest_lib, selection
from chestxray_tf.evaluation import figures, localize, protocol as protocol_lib, report
from chestxray_tf.evaluation import results as results_lib
from chestxray_tf.labels import BOXED_CLASSES
from chestxray_tf.metrics import auc as auc_lib

SPLITS = ("test_fold", "official_test", "val")


@dataclasses.dataclass
class Predictions:
    """A model's predictions over a split.

    image_ids [N]; labels, probs [N, K]; boxes: per image [M, 4] xywh in pixels of the model's
    input frame and box_labels [M]; pairs: {map variant: `localize.Pairs`}, the map of every
    (image, class with a true box) pair; images: image index -> [S, S] grey model input, for
    the images with a box.
    """
    image_ids: list
    labels: np.ndarray
    probs: np.ndarray
    boxes: list
    box_labels: list
    pairs: dict
    images: dict
    image_size: int


def predict(model, config, image_ids, *, progress=True):
    """Runs `model` over `image_ids` (eval order) and collects `Predictions` (every map
    variant of the task, `Task.map_variants`)."""
    task = tasks_lib.get_task(config.task)(config)
    variants = task.map_variants()
    size = config.data.image_size
    dataset = selection.dataset(config.data, image_ids, training=False,
                                batch_size=config.eval.batch_size)
    ids, labels, probs, boxes, box_labels, images = [], [], [], [], [], {}
    pair_index, pair_class, pair_maps = [], [], {v: [] for v in variants}
    steps = -(-len(image_ids) // config.eval.batch_size)
    for batch in tqdm(dataset, total=steps, unit="batch", desc="evaluate", disable=not progress):
        outputs = model(batch["image"], training=False)
        batch_maps = {v: task.maps(outputs, v).numpy() for v in variants}
        for i in range(len(batch["image_id"])):
            index = len(ids)
            ids.append(batch["image_id"][i].numpy().decode())
            valid = batch["box_labels"][i].numpy() >= 0
            boxes.append(geometry.yxyx_to_xywh(batch["boxes"][i].numpy()[valid], size)
                         if valid.any() else np.zeros((0, 4)))
            box_labels.append(batch["box_labels"][i].numpy()[valid])
            if valid.any():
                images[index] = batch["image"][i].numpy().mean(axis=-1)
            for k in np.unique(box_labels[-1]):
                pair_index.append(index)
                pair_class.append(int(k))
                for v in variants:
                    pair_maps[v].append(batch_maps[v][i, ..., k])
        labels.append(batch["labels"].numpy())
        probs.append(task.scores(outputs).numpy())
    if len(ids) < len(image_ids):  # only with data.skip_corrupt; the pipeline named them
        logging.warning("evaluated %d of the %d selected images: %d corrupt records skipped "
                        "(data.skip_corrupt=True)", len(ids), len(image_ids),
                        len(image_ids) - len(ids))
    patients = _patients(config, [ids[i] for i in pair_index])
    pairs = {}
    for v in variants:
        maps = np.stack(pair_maps[v]).astype(np.float32) if pair_index else np.zeros((0, 1, 1))
        pairs[v] = localize.Pairs(
            image_ids=[ids[i] for i in pair_index],
            class_ids=np.array(pair_class, dtype=np.int64), maps=maps,
            true_boxes=[boxes[i][box_labels[i] == k] for i, k in zip(pair_index, pair_class)],
            patients=patients, image_size=size)
    return Predictions(ids, np.concatenate(labels), np.concatenate(probs), boxes, box_labels,
                       pairs, images, size)


def _patients(config, image_ids):
    """The patient of each image (the halves of "cross-tuned" keep a patient together)."""
    if not image_ids:
        return []
    table = manifest_lib.read_metadata(config.data.manifest).set_index("image_id")
    return [str(p) for p in table.loc[image_ids, "patient_id"]]


@dataclasses.dataclass
class Localized:
    """The localization of one map variant: the protocol, the outcome at every candidate
    threshold, the selected thresholds, and the `results` entries."""
    protocol: protocol_lib.Protocol
    table: dict
    selection: localize.Selection
    results: dict


def localize_variant(pred, config, variant="", outcomes=None):
    """`Localized` of the map variant's pairs under the config's protocol. `outcomes`: a cache
    of outcome tables shared by several protocols of the same predictions (see
    `evaluate_protocols`); the outcome at a threshold is computed once per region rule."""
    task = tasks_lib.get_task(config.task)(config)
    protocol = protocol_lib.Protocol.from_config(config.eval)
    pairs = pred.pairs[variant]
    if outcomes is None:
        table = localize.outcomes(pairs, task.region_rule, protocol)
    else:
        # The rule but its threshold (a frozen dataclass): the outcomes it shares a table with.
        rule = dataclasses.replace(task.region_rule(), threshold=0.0)
        table = outcomes.setdefault((variant, protocol.localization, rule), {})
        for t in protocol.evaluated:
            if t not in table:
                table[t] = localize.outcome(pairs, task.region_rule(t), protocol.localization)
    chosen = localize.select_thresholds(pairs, table, protocol)
    return Localized(protocol, table, chosen,
                     localize.localization_results(pairs, table, chosen, protocol))


def compute_results(pred, config, split, variant="", localized=None):
    """The `results` dict (see `evaluation.results`) of the papers' metrics for one map
    variant: AUC of the task's scores, localization under the config's protocol."""
    thresholded = auc_lib.roc_auc_thresholded(pred.labels, pred.probs)
    exact = auc_lib.roc_auc_exact(pred.labels, pred.probs)
    counts = pred.labels.sum(axis=0).astype(int)
    localized = localized or localize_variant(pred, config, variant)
    out = {
        "auc": results_lib.class_table(thresholded.per_class, thresholded.mean, counts),
        "auc_exact": results_lib.class_table(exact.per_class, exact.mean, counts),
        "split": split,
        "num_images": len(pred.image_ids),
        **localized.results,
    }
    if config.eval.experiment:
        out["experiment"] = config.eval.experiment
    return out


def write_figures(pred, config, out_dir, variant="", localized=None):
    """ROC curves and one heat-map gallery per boxed class; returns {caption: path}."""
    localized = localized or localize_variant(pred, config, variant)
    pairs = pred.pairs[variant]
    paths = {"ROC curves": figures.plot_roc_curves(pred.labels, pred.probs,
                                                   os.path.join(out_dir, "roc_curves.png"))}
    task = tasks_lib.get_task(config.task)(config)
    for k, name in enumerate(BOXED_CLASSES):
        chosen = np.flatnonzero(pairs.class_ids == k)[:config.eval.gallery_images]
        if not len(chosen):
            continue
        thresholds = localized.selection.at(0)[chosen]
        regions = [localize.region_masks(pairs.maps[j:j + 1], task.region_rule(float(t)))[0]
                   for j, t in zip(chosen, thresholds)]
        index = {image_id: i for i, image_id in enumerate(pred.image_ids)}
        rule = ("thresholds " + localized.selection.record["selection"]
                if localized.protocol.tuned else f"map > {config.eval.region_threshold}")
        paths[f"{name}: heat maps, true boxes (yellow), regions at {rule} (cyan)"] = (
            figures.plot_heatmap_gallery(
                [pred.images[index[pairs.image_ids[j]]] for j in chosen],
                [pairs.maps[j] for j in chosen], [pairs.true_boxes[j] for j in chosen], regions,
                [f"{pairs.image_ids[j]}  p={pred.probs[index[pairs.image_ids[j]], k]:.2f}"
                 for j in chosen],
                os.path.join(out_dir, f"heatmaps_{name}.png")))
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


def checkpoint_stage(workdir, path):
    """The name of the stage a checkpoint path belongs to (W/stages/<i>_<name>/...)."""
    relative = os.path.relpath(os.path.realpath(path),
                               os.path.realpath(os.path.join(workdir, workdir_lib.STAGES_DIR)))
    return relative.split(os.sep)[0].partition("_")[2]


def _restore_and_predict(workdir, checkpoint, split, progress):
    """(config, model, checkpoint path, `Predictions`) of a run over `split`."""
    config, model, path = workdir_lib.restore_model(workdir, checkpoint)
    ids = split_ids(config, split)
    if not ids:
        raise ValueError(f"split {split} of {config.data.manifest} holds no image")
    run_identity.check_manifest(workdir, config.data.manifest)
    return config, model, path, predict(model, config, ids, progress=progress)


def _write_variants(pred, config, model, workdir, path, split, out_dir, *, with_figures=True,
                    outcomes=None):
    """report.json / report.md of every map variant of the task (the first in `out_dir`, each
    other in `out_dir/<variant>/`); returns {variant: paths}."""
    task_class = tasks_lib.get_task(config.task)
    task = task_class(config)
    stage = checkpoint_stage(workdir, path)
    details = task.report_details(model)
    written = {}
    for i, variant in enumerate(task.map_variants()):
        variant_dir = out_dir if i == 0 else os.path.join(out_dir, variant)
        os.makedirs(variant_dir, exist_ok=True)
        localized = localize_variant(pred, config, variant, outcomes)
        results = compute_results(pred, config, split, variant, localized)
        written[variant] = report.write_report(
            variant_dir, results, task_class.published or task_class.name,
            config=config.to_dict(), checkpoint=path,
            figures=(write_figures(pred, config, variant_dir, variant, localized)
                     if with_figures else None),
            against=task.comparison_row(stage, variant), variant=variant, stage=stage,
            details=details)
    return written


def evaluate(workdir, checkpoint="latest", split="test_fold", progress=True):
    """Evaluates a training run; returns the paths of the files written under
    `eval_dir(workdir, split, checkpoint)` (the first map variant of the task; each other
    variant of `Task.map_variants` in its own subfolder, `{variant: paths}` under
    "variants").

    Raises:
        ValueError: the set was rebuilt since the run trained on it (`run_identity`).
    """
    config, model, path, pred = _restore_and_predict(workdir, checkpoint, split, progress)
    out_dir = eval_dir(workdir, split, checkpoint)
    written = _write_variants(pred, config, model, workdir, path, split, out_dir)
    first = written[tasks_lib.get_task(config.task)(config).map_variants()[0]]
    return {**first, "out_dir": out_dir, "variants": written}


def evaluate_protocols(workdir, protocols, out_dir, checkpoint="latest", split="test_fold",
                       progress=True):
    """Evaluates a run under several protocols from ONE pass of the model over the split.

    protocols: {name: overrides of `config.eval`} (e.g. {"localization": "boxes",
        "inclusive": True}), each applied to the run's own config.eval; the reports (no
        figures) of protocol `name` go to `out_dir/<name>/[<variant>/]`. The outcome of a map
        threshold is computed once per region rule and shared by the protocols that differ
        only in how a hit is counted or how thresholds are selected.

    Returns:
        (checkpoint path, {name: {variant: paths}}).

    Raises:
        ValueError: an override names no field of config.eval; as `evaluate` otherwise.
    """
    config, model, path, pred = _restore_and_predict(workdir, checkpoint, split, progress)
    outcomes, written = {}, {}
    for name, overrides in protocols.items():
        unknown = sorted(set(overrides) - set(config.eval))
        if unknown:
            raise ValueError(f"protocol {name!r}: config.eval of {workdir} has no field "
                             f"{', '.join(unknown)}")
        config_p = config.copy_and_resolve_references()
        with config_p.unlocked():
            config_p.eval.update(overrides)
        written[name] = _write_variants(pred, config_p, model, workdir, path, split,
                                        os.path.join(out_dir, name), with_figures=False,
                                        outcomes=outcomes)
    return path, written
