"""chestxray_tf/evaluation/localize.py and protocol.py: the papers' localization protocols
against hand cases and loop references (SciPy's labelling, box IoU by loops)."""

import numpy as np
import pytest
from scipy import ndimage

from chestxray_tf.evaluation import localize, results as results_lib
from chestxray_tf.evaluation.protocol import Protocol
from chestxray_tf.labels import BOXED_CLASSES
from chestxray_tf.tasks.base import RegionRule

SIZE = 64


def pairs_of(maps, boxes, class_ids, patients=None):
    maps = np.asarray(maps, np.float32)
    return localize.Pairs(image_ids=[f"{i}.png" for i in range(len(maps))],
                          class_ids=np.asarray(class_ids, np.int64), maps=maps,
                          true_boxes=[np.asarray(b, np.float64).reshape(-1, 4) for b in boxes],
                          patients=patients or [f"p{i}" for i in range(len(maps))],
                          image_size=SIZE)


def rule_at(keep="all", inclusive=False, max_regions=1):
    return lambda t: RegionRule(threshold=t, inclusive=inclusive, keep=keep,
                                max_regions=max_regions)


def run(pairs, protocol, keep="all", max_regions=1):
    table = localize.outcomes(pairs, rule_at(keep, max_regions=max_regions), protocol)
    selection = localize.select_thresholds(pairs, table, protocol)
    return localize.localization_results(pairs, table, selection, protocol), selection


# --- loop references ----------------------------------------------------------------------

def ref_box_iou(a, b):
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def ref_boxes(class_map, threshold):
    """A box (pixels, xywh) around every 8-connected component of map > threshold."""
    h = class_map.shape[0]
    cell = SIZE / h
    labels, n = ndimage.label(class_map > threshold, structure=np.ones((3, 3)))
    out = []
    for label in range(1, n + 1):
        rows, cols = np.nonzero(labels == label)
        out.append((cols.min() * cell, rows.min() * cell, (cols.max() + 1 - cols.min()) * cell,
                    (rows.max() + 1 - rows.min()) * cell))
    return out


def ref_best(class_map, threshold, true_boxes):
    best = 0.0
    for p in ref_boxes(class_map, threshold):
        for t in true_boxes:
            best = max(best, ref_box_iou(p, t))
    return best


# --- regions (Li et al.) ------------------------------------------------------------------

def test_regions_iou_and_ior_by_hand():
    """A 4x4 map over 64 px: the region (p > 0.5) is the top-left 2x2 patches = [0, 32)^2; the
    true box [16, 48)^2: IoU = 256 / (1024 + 1024 - 256), IoR = 256 / 1024."""
    class_map = np.zeros((4, 4))
    class_map[:2, :2] = 0.9
    pairs = pairs_of([class_map], [[16.0, 16.0, 32.0, 32.0]], [4])
    results, _ = run(pairs, Protocol(iou_thresholds=(0.1, 0.2)))
    iou = results["localization"]["iou"]
    assert iou["0.1"]["per_class"][BOXED_CLASSES[4]] == 1.0  # 0.143 > 0.1
    assert iou["0.2"]["per_class"][BOXED_CLASSES[4]] == 0.0
    assert results["localization"]["ior"]["0.2"]["per_class"][BOXED_CLASSES[4]] == 1.0
    table = localize.outcomes(pairs, rule_at(), Protocol())[0.5]
    np.testing.assert_allclose(table.iou, [256 / (1024 + 1024 - 256)])
    np.testing.assert_allclose(table.ior, [256 / 1024])


def test_chance_level_moves_the_region():
    """A region that is exactly the box: moved at random on the 4x4 grid it only hits (IoU 1)
    when not moved, so its chance accuracy at T(IoU) = 0.9 is far below 1."""
    class_map = np.zeros((4, 4))
    class_map[1, 2] = 0.9
    pairs = pairs_of([class_map], [[32.0, 16.0, 16.0, 16.0]], [0])
    results, _ = run(pairs, Protocol(iou_thresholds=(0.9,)))
    assert results["localization"]["iou"]["0.9"]["mean"] == 1.0
    chance = results["localization_chance"]["iou"]["0.9"]
    assert 0 < chance["mean"] < 0.3
    assert chance["counts"][BOXED_CLASSES[0]] == 1  # draws count as one image


# --- boxes (Sedai, Hermoza, Kim) ------------------------------------------------------------

def two_blobs():
    """An 8x8 map over 64 px (8 px cells): blob A at cells [1, 3) x [1, 3) = pixels
    [8, 24)^2, blob B (weaker) at cells [5, 8) x [5, 8)."""
    class_map = np.zeros((8, 8))
    class_map[1:3, 1:3] = 0.9
    class_map[5:8, 5:8] = 0.6
    return class_map


def test_boxes_best_iou_and_afp_by_hand():
    """True box = blob A exactly: best IoU 1 -> a hit at 0.3 and 0.5; blob B's box matches no
    true box -> 1 false positive at both T."""
    pairs = pairs_of([two_blobs()], [[8.0, 8.0, 16.0, 16.0]], [2])
    protocol = Protocol(localization="boxes", iou_thresholds=(0.3, 0.5), afp=True,
                        average_iou=True)
    results, _ = run(pairs, protocol, keep="each", max_regions=4)
    name = BOXED_CLASSES[2]
    assert results["localization"]["iou"]["0.5"]["per_class"][name] == 1.0
    assert "ior" not in results["localization"]
    assert results["afp"]["0.3"]["per_class"][name] == 1.0
    assert results["average_iou"]["per_class"][name] == 1.0
    # With only the largest region kept (Hermoza), that is blob B (9 cells > 4): a miss.
    largest, _ = run(pairs, protocol, keep="largest")
    assert largest["localization"]["iou"]["0.3"]["per_class"][name] == 0.0
    assert largest["average_iou"]["per_class"][name] == 0.0
    assert largest["afp"]["0.3"]["per_class"][name] == 1.0


def test_boxes_match_a_loop_reference_on_random_maps():
    rng = np.random.default_rng(3)
    maps, boxes, ids = [], [], []
    for i in range(24):
        m = ndimage.gaussian_filter(rng.random((16, 16)), 1.5)
        maps.append((m - m.min()) / (m.max() - m.min()))
        x, y = rng.uniform(0, 40, 2)
        boxes.append([[x, y, rng.uniform(8, 24), rng.uniform(8, 24)]])
        ids.append(i % len(BOXED_CLASSES))
    pairs = pairs_of(maps, boxes, ids)
    protocol = Protocol(localization="boxes", iou_thresholds=(0.1, 0.3), average_iou=True,
                        region_threshold=0.6)
    results, _ = run(pairs, protocol, keep="each", max_regions=64)
    best = np.array([ref_best(m, 0.6, b) for m, b in zip(maps, boxes)])
    for T in (0.1, 0.3):
        for k, name in enumerate(BOXED_CLASSES):
            expected = np.mean(best[np.array(ids) == k] > T)
            assert results["localization"]["iou"][f"{T:g}"]["per_class"][name] == \
                pytest.approx(expected)
    for k, name in enumerate(BOXED_CLASSES):
        assert results["average_iou"]["per_class"][name] == pytest.approx(
            best[np.array(ids) == k].mean(), abs=1e-6)


# --- threshold selection --------------------------------------------------------------------

def tuning_case():
    """Class 0, four images: the true box is where the map is above ~0.5 in patients a, b and
    above ~0.8 in patients c, d (two blobs of levels 0.6 and 0.9)."""
    maps, boxes = [], []
    for level in (0.6, 0.6, 0.9, 0.9):
        m = np.zeros((8, 8))
        m[0:4, 0:4] = 0.6
        m[1:3, 1:3] = 0.9
        maps.append(m)
        boxes.append([[0.0, 0.0, 32.0, 32.0]] if level == 0.6 else [[8.0, 8.0, 16.0, 16.0]])
    return maps, boxes


def ref_tuned_threshold(maps, boxes, grid, T, members):
    """Loop reference: the first grid value with the most hits (best IoU > T) over members."""
    best_t, best_hits = None, -1
    for t in grid:
        hits = sum(ref_best(maps[i], t, boxes[i]) > T for i in members)
        if hits > best_hits:
            best_t, best_hits = t, hits
    return best_t


def test_test_tuned_picks_the_best_threshold_of_the_grid():
    maps, boxes = tuning_case()
    # Two classes: class 0 = images 0, 1 (best at a low threshold), class 1 = 2, 3 (high).
    pairs = pairs_of(maps, boxes, [0, 0, 1, 1])
    grid = (0.3, 0.7)
    protocol = Protocol(localization="boxes", iou_thresholds=(0.5,), tune_grid=grid,
                        threshold_selection="test-tuned")
    results, selection = run(pairs, protocol, keep="each", max_regions=4)
    for k, members in ((0, [0, 1]), (1, [2, 3])):
        assert selection.record["values"][BOXED_CLASSES[k]] == ref_tuned_threshold(
            maps, boxes, grid, 0.5, members)
    assert selection.record["values"][BOXED_CLASSES[0]] == 0.3
    assert selection.record["values"][BOXED_CLASSES[1]] == 0.7
    assert results["localization"]["iou"]["0.5"]["mean"] == 1.0
    assert results["thresholds"]["selection"] == "test-tuned"
    assert results_lib.normalize_results({"auc_exact": {"per_class": {}}, **results})


def test_cross_tuned_never_uses_a_pairs_own_half():
    """Patients a, b want 0.3 and c, d want 0.7 (one class). Halves hold one patient of each
    kind or two of one kind; whatever the halves, each pair's threshold is the one tuned on
    the other half (loop reference), never on its own."""
    maps, boxes = tuning_case()
    patients = ["a", "b", "c", "d"]
    pairs = pairs_of(maps, boxes, [0, 0, 0, 0], patients)
    grid = (0.3, 0.7)
    protocol = Protocol(localization="boxes", iou_thresholds=(0.5,), tune_grid=grid,
                        threshold_selection="cross-tuned")
    _, selection = run(pairs, protocol, keep="each", max_regions=4)
    first = localize.patient_halves(patients)
    assert first.sum() == 2
    for i in range(4):
        other = [j for j in range(4) if first[j] != first[i]]
        assert selection.per_pair[0, i] == ref_tuned_threshold(maps, boxes, grid, 0.5, other)
    assert len(selection.record["halves"]) == 2
    # Every image of a patient is on the same side.
    assert localize.patient_halves(["x", "y", "x", "y"]).tolist() in ([True, False] * 2,
                                                                       [False, True] * 2)


def test_cross_tuned_class_missing_from_a_half_falls_back_to_the_region_threshold():
    """A class whose pairs are all in one patient half has nothing to tune on in the other:
    its pairs get protocol.region_threshold, also when the grid does not hold it (Hermoza's
    grid 0.60 ... 1.00 with the default 0.5), and are scored there (IoU by the loop
    reference)."""
    maps, boxes = tuning_case()
    patients = ["a", "b", "c", "d"]
    first = localize.patient_halves(patients)
    class_ids = [0 if f else 1 for f in first]  # class 0 only in the first half
    pairs = pairs_of(maps, boxes, class_ids, patients)
    protocol = Protocol(localization="boxes", iou_thresholds=(0.5,), tune_grid=(0.7, 0.8),
                        threshold_selection="cross-tuned", average_iou=True)
    results, selection = run(pairs, protocol, keep="each", max_regions=4)
    assert np.all(selection.per_pair[0] == 0.5)
    table = results["average_iou"]["per_class"]
    for k in (0, 1):
        members = [i for i in range(4) if class_ids[i] == k]
        expected = np.mean([ref_best(maps[i], 0.5, boxes[i]) for i in members])
        assert table[BOXED_CLASSES[k]] == pytest.approx(expected)


def test_tuning_per_threshold_gives_one_threshold_per_class_and_T():
    maps, boxes = tuning_case()
    pairs = pairs_of(maps, boxes, [0, 0, 0, 0])
    protocol = Protocol(localization="boxes", iou_thresholds=(0.3, 0.5), tune_grid=(0.3, 0.7),
                        threshold_selection="test-tuned", tune_per_threshold=True, afp=True)
    results, selection = run(pairs, protocol, keep="each", max_regions=4)
    assert set(selection.record["per_threshold"]) == {"0.3", "0.5"}
    assert selection.per_pair.shape == (2, 4)
    for ti, T in enumerate((0.3, 0.5)):
        assert selection.record["per_threshold"][f"{T:g}"][BOXED_CLASSES[0]] == \
            ref_tuned_threshold(maps, boxes, (0.3, 0.7), T, range(4))
    assert set(results["afp"]) == {"0.3", "0.5"}


def test_a_fixed_threshold_is_recorded_for_every_class():
    maps, boxes = tuning_case()
    _, selection = run(pairs_of(maps, boxes, [0] * 4), Protocol(region_threshold=0.4))
    assert selection.record == {"selection": "fixed",
                                "values": {name: 0.4 for name in BOXED_CLASSES}}


@pytest.mark.parametrize("fields, message", [
    ({"localization": "blobs"}, "localization"),
    ({"threshold_selection": "val-tuned"}, "threshold_selection"),
    ({"afp": True}, "need localization='boxes'"),
    ({"tune_metric": "average_iou"}, "needs localization='boxes'"),
    ({"threshold_selection": "test-tuned", "tune_grid": (1.5,)}, "tune_grid"),
])
def test_a_bad_protocol_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        Protocol(**fields)


def test_protocol_from_an_old_config_is_li2018s():
    import ml_collections
    old = ml_collections.ConfigDict({"region_threshold": 0.5, "iou_thresholds": [0.1, 0.3],
                                     "batch_size": 8})
    assert Protocol.from_config(old) == Protocol(iou_thresholds=(0.1, 0.3))
