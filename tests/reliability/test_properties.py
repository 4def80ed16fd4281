"""Property tests (hypothesis) of the metadata code: `nih.assign_folds` on any image table and
`geometry.box_to_patch_mask` on any boxes (SPEC §1: a patch is positive when it overlaps a box
by a positive area; several boxes give the union).

Boxes have integer pixel coordinates, so the patch edges they hit are exact in floating point.
"""

from hypothesis import given, settings, strategies as st
import numpy as np
import pandas as pd

from chestxray_tf import geometry
from chestxray_tf.data import nih

PROPERTIES = settings(max_examples=200, deadline=2000, database=None)


@st.composite
def image_tables(draw):
    """NihMetadata of 1-30 patients (any ids) with 1-6 images each, any has_box, rows in any
    order."""
    patient_ids = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=30, unique=True))
    rows = [(f"{patient:08d}_{k:03d}.png", patient, draw(st.booleans()))
            for patient in patient_ids for k in range(draw(st.integers(1, 6)))]
    rows = draw(st.permutations(rows))
    images = pd.DataFrame(rows, columns=["image_id", "patient_id", "has_box"])
    return nih.NihMetadata(images=images, boxes=pd.DataFrame())


@PROPERTIES
@given(meta=image_tables(), num_folds=st.integers(2, 7), seed=st.integers(0, 2**32 - 1),
       group_by=st.sampled_from(["patient", "image"]))
def test_assign_folds_puts_every_image_in_exactly_one_fold(meta, num_folds, seed, group_by):
    folds = nih.assign_folds(meta, num_folds=num_folds, seed=seed, group_by=group_by)
    assert list(folds.index) == list(meta.images["image_id"])
    assert folds.notna().all() and folds.between(0, num_folds - 1).all()
    again = nih.assign_folds(meta, num_folds=num_folds, seed=seed, group_by=group_by)
    pd.testing.assert_series_equal(folds, again)


@PROPERTIES
@given(meta=image_tables(), num_folds=st.integers(2, 7), seed=st.integers(0, 2**32 - 1),
       order=st.randoms(use_true_random=False))
def test_patient_folds_are_patient_disjoint_and_independent_of_row_order(meta, num_folds, seed,
                                                                         order):
    folds = nih.assign_folds(meta, num_folds=num_folds, seed=seed)
    patient_of = dict(zip(meta.images["image_id"], meta.images["patient_id"]))
    fold_of_patient = {}
    for image_id, fold in folds.items():
        assert fold_of_patient.setdefault(patient_of[image_id], fold) == fold, image_id
    rows = list(range(len(meta.images)))
    order.shuffle(rows)
    shuffled = nih.NihMetadata(images=meta.images.iloc[rows].reset_index(drop=True),
                               boxes=meta.boxes)
    refolded = nih.assign_folds(shuffled, num_folds=num_folds, seed=seed)
    assert refolded.to_dict() == folds.to_dict()


@st.composite
def frames(draw):
    """(image_size argument, width, height, grid): a square S or a (width, height) frame."""
    width = draw(st.integers(4, 300))
    height = width if draw(st.booleans()) else draw(st.integers(4, 300))
    size = width if width == height else (width, height)
    return size, width, height, draw(st.integers(1, 24))


def _span(draw, low, high):
    """Integers a < b with low <= a and b <= high."""
    a = draw(st.integers(low, high - 1))
    return a, draw(st.integers(a + 1, high))


@st.composite
def boxes_inside(draw, x0, y0, x1, y1):
    """An xywh box with positive area inside [x0, x1] x [y0, y1]."""
    left, right = _span(draw, x0, x1)
    top, bottom = _span(draw, y0, y1)
    return [left, top, right - left, bottom - top]


@PROPERTIES
@given(frame=frames(), data=st.data())
def test_box_to_patch_mask_is_monotone_in_the_box(frame, data):
    size, width, height, grid = frame
    outer = data.draw(boxes_inside(0, 0, width, height))
    x, y, w, h = outer
    inner = data.draw(boxes_inside(x, y, x + w, y + h))
    small = geometry.box_to_patch_mask(inner, size, grid)
    large = geometry.box_to_patch_mask(outer, size, grid)
    assert small.any()
    assert not (small & ~large).any()


@PROPERTIES
@given(frame=frames(), data=st.data())
def test_box_to_patch_mask_of_two_boxes_is_the_union(frame, data):
    size, width, height, grid = frame
    a = data.draw(boxes_inside(0, 0, width, height))
    b = data.draw(boxes_inside(0, 0, width, height))
    np.testing.assert_array_equal(
        geometry.box_to_patch_mask([a, b], size, grid),
        geometry.box_to_patch_mask(a, size, grid) | geometry.box_to_patch_mask(b, size, grid))


@PROPERTIES
@given(frame=frames(), data=st.data())
def test_box_beyond_the_border_gives_the_mask_of_the_clipped_box(frame, data):
    size, width, height, grid = frame
    # Any box that keeps some area inside the frame, each side possibly beyond it.
    left = data.draw(st.integers(-width, width - 1))
    right = data.draw(st.integers(max(left + 1, 1), 2 * width))
    top = data.draw(st.integers(-height, height - 1))
    bottom = data.draw(st.integers(max(top + 1, 1), 2 * height))
    clipped_left, clipped_top = max(left, 0), max(top, 0)
    clipped = [clipped_left, clipped_top, min(right, width) - clipped_left,
               min(bottom, height) - clipped_top]
    np.testing.assert_array_equal(
        geometry.box_to_patch_mask([left, top, right - left, bottom - top], size, grid),
        geometry.box_to_patch_mask(clipped, size, grid))
