"""Disease masks of Kim et al. (paper 002, Sec. 3.1.1, Eq. 3; brief §2.9, §3.6) and the
pseudo-disease masks of their ablation (Sec. 4.4, Table 2; brief §3.7). NumPy, run once (S3).

Eq. 3: psi_c = T( (1/N_c) sum_d N(L̄_c^d) ), L̄ = L for the asymmetric class m (Cardiomegaly),
H(L) + L otherwise, over the CAMs L = S_c(x) (Eq. 1, no bias) of the images with
P_c(x) >= 0.8. In order: flip-sum, min-max normalise each map (N), average, threshold (T).

[decisions, brief §2.9 and erratum 8]:
* all images with P_c >= 0.8 count, whatever their label ("dropping images x where
  P_c(x) < 0.8");
* fallback: when fewer than `min_images` (10) pass, the `min_images` images of highest P_c are
  used instead, and the class is reported in `fallback`;
* T: with `renormalise` (default) M̃ = M / max M, else M̃ = M; psi = M̃ 1[M̃ >= 0.5] (soft,
  default) or 1[M̃ >= 0.5] (binary);
* the classes without boxes get psi = 0 (no attention); a constant map normalises to zeros.
"""

import json

import matplotlib.path
import numpy as np

from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES

ASYMMETRIC_CLASSES = ("Cardiomegaly",)  # m of Eq. 3
CONFIDENCE = 0.8
MASK_THRESHOLD = 0.5
MIN_IMAGES = 10


def normalise(maps):
    """N(.): min-max normalisation of each [h, w] map of [..., h, w] to [0, 1]; a constant map
    gives zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def flip_sum(maps, symmetric):
    """L̄ of Eq. 3: H(L) + L (horizontal flip: the column axis reversed) for a symmetric class,
    L itself otherwise. maps [..., h, w]."""
    maps = np.asarray(maps, dtype=np.float64)
    return maps + maps[..., ::-1] if symmetric else maps


def threshold_mask(mean_map, threshold=MASK_THRESHOLD, renormalise=True, binary=False):
    """T(.) of Eq. 3 on the mean map M [h, w] (see the module docstring)."""
    mean_map = np.asarray(mean_map, dtype=np.float64)
    peak = mean_map.max()
    if renormalise and peak > 0:
        mean_map = mean_map / peak
    keep = mean_map >= threshold
    return keep.astype(np.float64) if binary else np.where(keep, mean_map, 0.0)


class DiseaseMaskAccumulator:
    """Builds the masks of Eq. 3 over batches of (CAMs, probabilities), keeping only running
    sums (the training split does not fit in memory as CAMs).

    Args:
        class_names: the K class names, in the order of the CAMs' last axis.
        mask_classes: the classes that get a mask (the 8 boxed ones); the others stay zero.
        confidence: the P_c(x) >= confidence filter (0.8).
        min_images: the fallback size (see the module docstring).
    """

    def __init__(self, class_names=CLASS_NAMES, mask_classes=BOXED_CLASSES,
                 confidence=CONFIDENCE, min_images=MIN_IMAGES):
        unknown = [c for c in mask_classes if c not in class_names]
        if unknown:
            raise ValueError(f"mask_classes {unknown} are not in class_names {class_names}")
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        if int(min_images) != min_images or min_images < 1:
            raise ValueError(f"min_images must be a positive integer, got {min_images!r}")
        self.class_names = tuple(class_names)
        self.mask_classes = tuple(mask_classes)
        self.confidence = float(confidence)
        self.min_images = int(min_images)
        self._sums = {}
        self.counts = {c: 0 for c in self.mask_classes}
        self._top = {c: (np.zeros(0), None) for c in self.mask_classes}
        self._shape = None

    def update(self, cams, probs):
        """Adds a batch: cams [B, h, w, K] (S_c without bias), probs [B, K] (P_c)."""
        cams = np.asarray(cams, dtype=np.float64)
        probs = np.asarray(probs, dtype=np.float64)
        if cams.ndim != 4 or cams.shape[-1] != len(self.class_names) or \
                probs.shape != (cams.shape[0], len(self.class_names)):
            raise ValueError(f"update needs cams [B, h, w, {len(self.class_names)}] and probs "
                             f"[B, {len(self.class_names)}], got {cams.shape} and {probs.shape}")
        if self._shape is None:
            self._shape = cams.shape[1:3]
        elif cams.shape[1:3] != self._shape:
            raise ValueError(f"CAMs of size {cams.shape[1:3]} after CAMs of size {self._shape}")
        for name in self.mask_classes:
            k = self.class_names.index(name)
            maps = normalise(flip_sum(cams[..., k], name not in ASYMMETRIC_CLASSES))
            passed = probs[:, k] >= self.confidence
            self._sums[name] = self._sums.get(name, 0.0) + maps[passed].sum(axis=0)
            self.counts[name] += int(passed.sum())
            top_probs, top_maps = self._top[name]
            all_probs = np.concatenate([top_probs, probs[:, k]])
            all_maps = maps if top_maps is None else np.concatenate([top_maps, maps])
            order = np.argsort(-all_probs, kind="stable")[:self.min_images]
            self._top[name] = (all_probs[order], all_maps[order])

    @property
    def fallback(self):
        """{class: True when fewer than min_images images passed the filter}."""
        return {c: self.counts[c] < self.min_images for c in self.mask_classes}

    def mean_maps(self):
        """M_c = (1/N_c) sum_d N(L̄_c^d) [h, w, K] before T (zeros for classes without mask)."""
        if self._shape is None:
            raise ValueError("no CAMs were given: call update first")
        out = np.zeros(self._shape + (len(self.class_names),))
        for name in self.mask_classes:
            k = self.class_names.index(name)
            if self.fallback[name]:
                out[..., k] = self._top[name][1].mean(axis=0)
            else:
                out[..., k] = self._sums[name] / self.counts[name]
        return out

    def masks(self, threshold=MASK_THRESHOLD, renormalise=True, binary=False):
        """psi [h, w, K] (Eq. 3), zeros for the classes without mask."""
        means = self.mean_maps()
        out = np.zeros_like(means)
        for name in self.mask_classes:
            k = self.class_names.index(name)
            out[..., k] = threshold_mask(means[..., k], threshold, renormalise, binary)
        return out


def disease_masks(cams, probs, *, threshold=MASK_THRESHOLD, renormalise=True, binary=False,
                  **accumulator_kwargs):
    """Eq. 3 on one array of CAMs [N, h, w, K] and probabilities [N, K].

    Returns:
        (psi [h, w, K], {"counts": {class: N_c}, "fallback": {class: bool}}).
    """
    accumulator = DiseaseMaskAccumulator(**accumulator_kwargs)
    accumulator.update(cams, probs)
    return (accumulator.masks(threshold, renormalise, binary),
            {"counts": dict(accumulator.counts), "fallback": accumulator.fallback})


def rasterise_polygons(polygons, size):
    """bool [size, size]: the pixels whose centres lie inside any of the polygons, each a list
    of (x, y) vertices in normalised [0, 1] image coordinates (x to the right, y down)."""
    centres = (np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2)
               + 0.5) / size
    inside = np.zeros(size * size, dtype=bool)
    for polygon in polygons:
        inside |= matplotlib.path.Path(np.asarray(polygon, dtype=np.float64)).contains_points(
            centres)
    return inside.reshape(size, size)


def _lung_regions(lungs):
    """Sub-regions of the lung fields L [S, S] (brief §3.7): lower third, lower two thirds and
    upper half of L's rows; lateral third of each lung (split at the image's midline)."""
    size = lungs.shape[1]
    rows = np.nonzero(lungs.any(axis=1))[0]
    top, bottom = rows.min(), rows.max() + 1
    height = bottom - top
    row = np.arange(lungs.shape[0])[:, None]
    col = np.arange(size)[None, :]
    lateral = np.zeros_like(lungs)
    for side in (col < size / 2, col >= size / 2):
        cols = np.nonzero((lungs & side).any(axis=0))[0]
        if cols.size:
            left, right = cols.min(), cols.max() + 1
            third = (right - left) / 3
            outer = col < left + third if left < size / 2 else col >= right - third
            lateral |= side & outer
    return {"lower_third": lungs & (row >= bottom - height / 3),
            "lower_two_thirds": lungs & (row >= top + height / 3),
            "upper_half_or_lateral": lungs & ((row < top + height / 2) | lateral)}


def pseudo_disease_masks(lungs, heart, grid, class_names=CLASS_NAMES,
                         threshold=MASK_THRESHOLD):
    """Pseudo-disease masks (Sec. 4.4, Fig. 7; brief §3.7 [decision]) [grid, grid, K], binary.

    Infiltration, Mass, Nodule, Pneumonia -> the lung fields L; Cardiomegaly -> the heart H;
    Effusion -> the lower third of L; Atelectasis -> the lower two thirds of L; Pneumothorax ->
    the upper half plus the lateral third of L; other classes -> 0. Each region is drawn at the
    masks' full resolution S, area-averaged to grid x grid and kept where >= `threshold`.

    Args:
        lungs, heart: bool [S, S] regions drawn on the anchor image (S a multiple of grid).
        grid: p, the feature grid of the CAMs.
    """
    lungs, heart = np.asarray(lungs, dtype=bool), np.asarray(heart, dtype=bool)
    size = lungs.shape[0]
    if lungs.shape != (size, size) or heart.shape != lungs.shape or size % grid:
        raise ValueError(f"lungs and heart must be square masks of one size divisible by grid "
                         f"{grid}, got {lungs.shape} and {heart.shape}")
    if not lungs.any() or not heart.any():
        raise ValueError("lungs and heart must not be empty")
    parts = _lung_regions(lungs)
    regions = {"Infiltration": lungs, "Mass": lungs, "Nodule": lungs, "Pneumonia": lungs,
               "Cardiomegaly": heart, "Effusion": parts["lower_third"],
               "Atelectasis": parts["lower_two_thirds"],
               "Pneumothorax": parts["upper_half_or_lateral"]}
    block = size // grid
    out = np.zeros((grid, grid, len(class_names)))
    for k, name in enumerate(class_names):
        if name in regions:
            area = regions[name].reshape(grid, block, grid, block).mean(axis=(1, 3))
            out[..., k] = area >= threshold
    return out


def pseudo_masks_from_file(path, grid, class_names=CLASS_NAMES, block=32):
    """`pseudo_disease_masks` of the regions of a JSON file {"lungs": [polygon, ...], "heart":
    [polygon, ...]} (normalised (x, y) vertices on the anchor, `rasterise_polygons`), drawn at
    grid x block pixels (16 x 32 = 512 at full size)."""
    with open(path) as f:
        regions = json.load(f)
    missing = [k for k in ("lungs", "heart") if not regions.get(k)]
    if missing:
        raise ValueError(f"{path}: pseudo-disease mask regions need polygons for {missing}")
    size = grid * block
    return pseudo_disease_masks(rasterise_polygons(regions["lungs"], size),
                                rasterise_polygons(regions["heart"], size), grid, class_names)
