"""Deterministic synthetic chest radiographs written in the NIH ChestX-ray14 layout (SPEC §0).

A stand-in for the 45 GB NIH release: `generate` writes `images/PPPPPPPP_FFF.png` (8-bit grey,
`image_size` square, playing the role of NIH's 1024 px PNGs), `Data_Entry_2017_v2020.csv`,
`BBox_List_2017.csv` (with NIH's header and its `Infiltrate` spelling), `train_val_list.txt` and
`test_list.txt` (patient-disjoint), so that everything downstream runs the real NIH code path.

Each image is drawn in a canonical chest frame (u to the image's right, v down, both in
[-1, 1]) and mapped to pixels through a random pose (shift, scale, aspect, small rotation):
body outline, two dark lung fields with vessel markings, the heart right of centre in the
image (the patient's left, as radiographs are displayed), spine, ribs, clavicles, a gastric
bubble, noise and a random contrast curve. Each of the 14 classes plants its own lesion with
its own location prior (see `_LESION_DRAWERS`); the box of a boxed class is the tight
bounding box of the pixels its lesion changes. docs/synthetic.md shows and measures it.

Determinism: every random draw comes from a generator keyed by (seed, stream, patient,
follow-up[, class]) through `np.random.SeedSequence`, so the files are byte-identical for the
same arguments whatever `num_workers` is, and leaving one lesion out of an image (`render`'s
`omit`) changes no pixel outside that lesion's box. No TensorFlow here.
"""

import contextlib
import dataclasses
import multiprocessing
import os

import numpy as np
import tqdm
from PIL import Image

from chestxray_tf import labels

IMAGES_DIR = "images"
DATA_ENTRY_CSV = "Data_Entry_2017_v2020.csv"
BBOX_CSV = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"

# Header lines exactly as NIH ships them (2020 re-release of the entry file).
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                     "Patient Gender,View Position,OriginalImage[Width,Height],"
                     "OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

# Relative frequency of each class among findings; roughly NIH's prevalence (Infiltration,
# Effusion, Atelectasis most common), with the rare classes raised so that a few hundred
# patients hold all of them (NIH: Hernia 0.2%, Pneumonia 1.3%).
CLASS_WEIGHTS = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.030,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.025,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.025,
    "Emphysema": 0.025,
    "Fibrosis": 0.025,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.012,
}
# Images per patient (1..6) and findings per abnormal image (1..4): probabilities.
IMAGES_PER_PATIENT = (0.25, 0.2, 0.17, 0.15, 0.12, 0.11)
FINDINGS_PER_ABNORMAL_IMAGE = (0.55, 0.27, 0.12, 0.06)
# Half the patients are mostly healthy; the others are often sick and have one recurring
# finding (weight x CHRONIC_BOOST). About 58% of the images are `No Finding`.
ABNORMAL_PROBABILITY = {"healthy": 0.2, "sick": 0.64}
AP_PROBABILITY = {"healthy": 0.25, "sick": 0.55}
CHRONIC_BOOST = 6.0
# Every class has at least this many positive images in each split (when the split has
# images), so that rare classes exist in small sets; added to abnormal images first.
MIN_POSITIVES_PER_SPLIT = 2
# Original detector size and pixel spacing, as strings written by NIH (from the real excerpt),
# with their frequencies there. Not the PNG size.
ORIGINAL_FORMATS = (
    (("2500", "2048", "0.168"), 139),
    (("3056", "2544", "0.139"), 84),
    (("2992", "2991", "0.14300000000000002"), 83),
    (("2048", "2500", "0.168"), 29),
    (("2500", "2048", "0.171"), 9),
    (("2021", "2021", "0.19431099999999998"), 9),
    (("2544", "3056", "0.139"), 5),
)

# Random streams; a generator is keyed by (seed, stream, ...ids).
_PLAN, _SPLIT, _COVER, _BOX, _ANATOMY, _POSE, _NOISE, _LESION = range(8)

# How the box file spells each class (`Infiltrate` for Infiltration).
_BOX_FILE_NAME = {canonical: alias for alias, canonical in labels.ALIASES.items()}


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One planned image: its metadata row, findings and whether its boxes are written."""

    patient: int
    follow_up: int
    age: int
    sex: str
    view: str
    original: tuple  # (width, height, pixel spacing): strings as written to the entry file
    findings: tuple  # canonical class names, canonical order; () is `No Finding`
    annotated: bool  # its boxed findings get rows in BBox_List_2017.csv
    split: str  # "train_val" or "test"

    @property
    def image_id(self):
        return f"{self.patient:08d}_{self.follow_up:03d}.png"


def _rng(seed, *key):
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _check_plan_arguments(num_patients, seed, box_fraction, test_fraction):
    if not 1 <= num_patients <= 99_999_999:
        raise ValueError(f"num_patients must be in [1, 99999999], got {num_patients}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 0.0 <= box_fraction <= 1.0:
        raise ValueError(f"box_fraction must be in [0, 1], got {box_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


# ------------------------------------------------------------------------------ the plan


def _plan_patient(seed, patient):
    """Metadata and findings of all images of one patient (before split and boxes)."""
    rng = _rng(seed, _PLAN, patient)
    names = list(labels.CLASS_NAMES)
    weights = np.array([CLASS_WEIGHTS[n] for n in names])
    profile = "sick" if rng.random() < 0.5 else "healthy"
    if profile == "sick":
        weights = weights.copy()
        weights[rng.choice(len(names), p=weights / weights.sum())] *= CHRONIC_BOOST
    num_images = 1 + rng.choice(len(IMAGES_PER_PATIENT), p=IMAGES_PER_PATIENT)
    sex = "M" if rng.random() < 0.56 else "F"
    age = int(np.clip(round(rng.normal(47, 16)), 1, 92))
    years_per_follow_up = rng.uniform(0.0, 1.0)
    formats = [f for f, _ in ORIGINAL_FORMATS]
    format_p = np.array([c for _, c in ORIGINAL_FORMATS], dtype=np.float64)
    records = []
    for follow_up in range(num_images):
        findings = ()
        if rng.random() < ABNORMAL_PROBABILITY[profile]:
            k = 1 + rng.choice(len(FINDINGS_PER_ABNORMAL_IMAGE), p=FINDINGS_PER_ABNORMAL_IMAGE)
            chosen = rng.choice(len(names), size=k, replace=False, p=weights / weights.sum())
            findings = tuple(names[i] for i in sorted(chosen))
        records.append(dict(
            patient=patient, follow_up=follow_up,
            age=age + int(follow_up * years_per_follow_up), sex=sex,
            view="AP" if rng.random() < AP_PROBABILITY[profile] else "PA",
            original=formats[rng.choice(len(formats), p=format_p / format_p.sum())],
            findings=findings))
    return records


def _cover_classes(rows, rng):
    """Adds each class to random images of `rows` until it has MIN_POSITIVES_PER_SPLIT."""
    for name in labels.CLASS_NAMES:
        missing = MIN_POSITIVES_PER_SPLIT - sum(name in r["findings"] for r in rows)
        if missing <= 0 or not rows:
            continue
        candidates = [i for i, r in enumerate(rows) if name not in r["findings"]]
        abnormal = [i for i in candidates if rows[i]["findings"]]
        normal = [i for i in candidates if not rows[i]["findings"]]
        chosen = list(rng.permutation(abnormal))[:missing]
        chosen += list(rng.permutation(normal))[:missing - len(chosen)]
        for i in chosen:
            found = set(rows[i]["findings"]) | {name}
            rows[i]["findings"] = tuple(n for n in labels.CLASS_NAMES if n in found)


def _annotate(rows, seed, box_fraction):
    """Marks images with a boxed finding as annotated with probability `box_fraction`; when
    box_fraction > 0, each boxed class with a positive image gets at least one box."""
    for r in rows:
        draw = _rng(seed, _BOX, r["patient"], r["follow_up"]).random()
        boxed = any(n in labels.BOXED_CLASSES for n in r["findings"])
        r["annotated"] = bool(boxed and draw < box_fraction)
    if box_fraction <= 0:
        return
    for name in labels.BOXED_CLASSES:
        positives = [r for r in rows if name in r["findings"]]
        if positives and not any(r["annotated"] for r in positives):
            positives[0]["annotated"] = True


def plan(num_patients, *, seed=0, box_fraction=0.5, test_fraction=0.2):
    """The records of every image of the data set, in image-id order (cheap: no pixels).

    Patients `1..num_patients` have 1-6 images each (follow-ups from 000). A seeded
    `test_fraction` of the patients forms the test split; in each split every class is
    made to occur at least MIN_POSITIVES_PER_SPLIT times.
    """
    _check_plan_arguments(num_patients, seed, box_fraction, test_fraction)
    patients = np.arange(1, num_patients + 1)
    num_test = min(int(round(test_fraction * num_patients)), num_patients - 1)
    test_patients = set(_rng(seed, _SPLIT).permutation(patients)[:num_test].tolist())
    cover_rng = _rng(seed, _COVER)
    records = []
    for split in ("train_val", "test"):
        rows = [dict(r, split=split)
                for p in patients if (int(p) in test_patients) == (split == "test")
                for r in _plan_patient(seed, int(p))]
        _cover_classes(rows, cover_rng)
        _annotate(rows, seed, box_fraction)
        records += [ImageRecord(**r) for r in rows]
    return sorted(records, key=lambda r: r.image_id)


# ----------------------------------------------------------------------- drawing helpers


def _fade(x, inner, outer):
    """1 where x <= inner, 0 where x >= outer, smoothstep between (exactly 0 outside)."""
    t = np.clip((outer - x) * (1.0 / (outer - inner)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rotate(u, v, cx, cy, angle):
    c, s = float(np.cos(angle)), float(np.sin(angle))
    du, dv = u - cx, v - cy
    return c * du + s * dv, -s * du + c * dv


def _ellipse_radius(u, v, cx, cy, ax, ay, angle=0.0):
    """Normalised elliptic radius (1 on the ellipse) of points (u, v)."""
    du, dv = _rotate(u, v, cx, cy, angle)
    return np.sqrt((du / ax) ** 2 + (dv / ay) ** 2)


def _smooth_noise(rng, size, cells):
    """Zero-mean, unit-ish smooth noise: a cells x cells Gaussian grid resized bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def _mottle(rng, size):
    """A positive multiplicative texture around 1 (0.8 + 0.2 smooth noise, clipped)."""
    return np.clip(0.8 + 0.2 * _smooth_noise(rng, size, 16), 0.4, 1.2)


def _angle_profile(rng, theta, bins):
    """A random periodic function of the angle `theta`, linearly interpolated from `bins`."""
    values = rng.standard_normal(bins)
    grid = np.linspace(-np.pi, np.pi, bins + 1)
    return np.interp(theta, grid, np.append(values, values[0])).astype(np.float32)


def _wrap(angle):
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _segment_distance(u, v, p0, p1):
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - x0 - t * dx, v - y0 - t * dy)


# ---------------------------------------------------------------------------- anatomy


_LUNG_TAPER = 0.25  # a lung is 1 -+ this times its mean width at the apex / base


@dataclasses.dataclass(frozen=True)
class _Lung:
    side: int  # -1: the image's left (the patient's right lung), +1: the image's right
    cx: float
    cy: float
    ax: float
    ay: float
    base: float  # v of the costophrenic angle
    dome: float  # height of the diaphragm dome above `base`

    def normalised(self, u, v):
        """(du, dv): position across (+-1 at the sides, widening from apex to base) and down
        (-1 at the apex) the lung."""
        dv = (v - self.cy) / self.ay
        return (u - self.cx) / (self.ax * (1.0 + _LUNG_TAPER * np.clip(dv, -1.0, 1.0))), dv

    def radius(self, u, v):
        """Normalised radius: 1 on the lung's outline (a superellipse in (du, dv))."""
        du, dv = self.normalised(u, v)
        return (np.abs(du) ** 2.5 + np.abs(dv) ** 2.5) ** 0.4

    def diaphragm(self, u):
        du = np.clip((u - self.cx) / (self.ax * (1.0 + _LUNG_TAPER)), -1.0, 1.0)
        return self.base - self.dome * (1.0 - du * du)

    def inside(self, u, v, margin=0.0):
        return ((self.radius(u, v) < 1.0 - margin)
                & (v < self.diaphragm(u) - margin * self.ay))


@dataclasses.dataclass(frozen=True)
class _Heart:
    cx: float
    cy: float
    ax: float
    ay: float
    angle: float


@dataclasses.dataclass(frozen=True)
class _Anatomy:
    body_width: float
    lungs: tuple  # (_Lung image-left, _Lung image-right)
    heart: _Heart
    rib_spacing: float
    rib_phase: float
    lung_darkness: float  # multiplies the per-image lung darkness
    vessel_gain: float


def _patient_anatomy(seed, patient):
    """A patient's build, the same in all their follow-ups."""
    rng = _rng(seed, _ANATOMY, patient)
    width = rng.uniform(0.93, 1.05)
    height = rng.uniform(0.94, 1.06)
    lungs = tuple(
        _Lung(side=side, cx=side * 0.4 * width, cy=-0.08 * height,
              ax=(0.3 if side < 0 else 0.28) * width * rng.uniform(0.95, 1.05),
              ay=0.66 * height * rng.uniform(0.96, 1.04),
              base=(0.5 if side < 0 else 0.54) * height + rng.uniform(-0.03, 0.03),
              dome=rng.uniform(0.1, 0.16))
        for side in (-1, 1))
    heart = _Heart(cx=rng.uniform(0.08, 0.14), cy=rng.uniform(0.27, 0.32),
                   ax=rng.uniform(0.28, 0.32) * width, ay=rng.uniform(0.19, 0.22),
                   angle=rng.uniform(0.25, 0.45))
    return _Anatomy(body_width=0.95 * width, lungs=lungs, heart=heart,
                    rib_spacing=rng.uniform(0.15, 0.18), rib_phase=rng.uniform(0.0, 1.0),
                    lung_darkness=1.0, vessel_gain=1.0)


def _emphysema(rng, anatomy):
    """Hyper-inflated, hyper-lucent lungs with flat low diaphragms, fewer vessels, narrow heart."""
    grow = rng.uniform(1.1, 1.17)
    lungs = tuple(dataclasses.replace(
        lung, ax=lung.ax * rng.uniform(1.04, 1.09), ay=lung.ay * grow,
        cy=lung.cy + 0.03, base=lung.base + rng.uniform(0.07, 0.11),
        dome=lung.dome * rng.uniform(0.25, 0.45)) for lung in anatomy.lungs)
    heart = dataclasses.replace(anatomy.heart, ax=anatomy.heart.ax * 0.85)
    return dataclasses.replace(anatomy, lungs=lungs, heart=heart,
                               lung_darkness=rng.uniform(1.25, 1.4),
                               vessel_gain=rng.uniform(0.35, 0.55))


def _cardiomegaly(rng, heart):
    """An enlarged heart about the same centre (it contains the normal one)."""
    return dataclasses.replace(heart, ax=heart.ax * rng.uniform(1.3, 1.5),
                               ay=heart.ay * rng.uniform(1.15, 1.3))


@dataclasses.dataclass(frozen=True)
class _Grid:
    """Canonical coordinates of the pixel centres of one posed image."""

    u: np.ndarray
    v: np.ndarray
    pixel: float  # canonical length of one pixel
    size: int


def _posed_grid(rng, size):
    centres = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    x, y = np.meshgrid(centres, centres)
    scale = rng.uniform(0.88, 1.04)
    aspect = rng.uniform(0.96, 1.04)
    shift_x, shift_y = rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)
    angle = np.deg2rad(rng.uniform(-5.0, 5.0))
    u, v = _rotate(x, y, shift_x, shift_y, angle)
    return _Grid(u=u / (scale * aspect), v=v / (scale / aspect), pixel=2.0 / (size * scale),
                 size=size)


def _lung_mask(g, lung):
    soft = 2.0 * g.pixel
    return (_fade(lung.radius(g.u, g.v), 1.0 - soft / lung.ax, 1.0)
            * _fade(g.v - lung.diaphragm(g.u), -soft, 0.0))


def _heart_mask(g, heart):
    rho = _ellipse_radius(g.u, g.v, heart.cx, heart.cy, heart.ax, heart.ay, heart.angle)
    return _fade(rho, 1.0 - 3.0 * g.pixel / heart.ax, 1.0)


def _vessels(g, rng, lung, mottle):
    """Vessel markings radiating from the hilum, fading to the periphery."""
    hx, hy = lung.cx - lung.side * 0.6 * lung.ax, lung.cy + 0.2 * lung.ay
    theta = np.arctan2(g.v - hy, g.u - hx)
    rays = np.clip(_angle_profile(rng, theta, 48), 0.0, 1.5) ** 2
    return rays * np.exp(-np.hypot(g.u - hx, g.v - hy) / 0.3) * np.clip(0.6 + 0.5 * mottle, 0, 2)


def _draw_anatomy(g, anatomy, heart, rng):
    """The chest without lesions: returns (image without the lung texture, lung texture,
    lung masks, heart mask). The heart hides the lung it overlaps."""
    u, v = g.u, g.v
    body = _fade(np.abs(u / anatomy.body_width) ** 4 + np.abs((v - 0.2) / 1.15) ** 2.5,
                 0.97, 1.0)
    neck = _fade(np.abs(u), 0.2, 0.23) * _fade(v, -0.85, -0.8)
    body = np.maximum(body, neck)
    background = rng.uniform(0.02, 0.08)
    tissue = rng.uniform(0.48, 0.58) * (0.85 + 0.15 * _fade(np.abs(u) / anatomy.body_width,
                                                              0.0, 1.0))
    image = background + (tissue - background) * body

    thorax = _fade(np.abs(u) / (anatomy.body_width - 0.05), 0.8, 1.0) * _fade(v, 0.5, 0.65)
    thorax = thorax * _fade(-v, 0.8, 0.9)
    posterior = (v - 0.9 * (np.abs(u) - 0.45) ** 2) / anatomy.rib_spacing + anatomy.rib_phase
    anterior = (v + 0.4 * np.abs(u)) / (1.3 * anatomy.rib_spacing) + anatomy.rib_phase
    ribs = (_fade(np.abs(posterior % 1.0 - 0.5), 0.12, 0.2)
            + 0.5 * _fade(np.abs(anterior % 1.0 - 0.5), 0.1, 0.18))
    image = image + rng.uniform(0.04, 0.07) * ribs * thorax * body

    lung_masks = [_lung_mask(g, lung) for lung in anatomy.lungs]
    lungs = np.maximum(*lung_masks)
    darkness = rng.uniform(0.26, 0.32) * anatomy.lung_darkness
    fine = _smooth_noise(rng, g.size, 24)
    texture = sum(m * _vessels(g, rng, lung, fine) for m, lung in zip(lung_masks, anatomy.lungs))
    texture = anatomy.vessel_gain * (rng.uniform(0.05, 0.08) * texture + 0.02 * fine * lungs)
    heart_mask = _heart_mask(g, heart)
    lateral = 0.85 + 0.15 * _fade(np.abs(u), 0.1, 0.7)
    image = image - darkness * lungs * (1.0 - heart_mask) * lateral
    image = image + rng.uniform(0.03, 0.07) * heart_mask
    texture = texture * (1.0 - 0.8 * heart_mask)

    spine = _fade(np.abs(u), 0.05, 0.075)
    vertebrae = 0.7 + 0.3 * _fade(np.abs((v / 0.085) % 1.0 - 0.5), 0.3, 0.42)
    image = image + rng.uniform(0.05, 0.08) * spine * vertebrae * body

    for side in (-1, 1):
        clavicle = _segment_distance(u, v, (side * 0.08, -0.66), (side * 0.6, -0.8))
        image = image + rng.uniform(0.07, 0.11) * _fade(clavicle, 0.018, 0.032)

    bubble_lung = anatomy.lungs[1]
    bubble = _ellipse_radius(u, v, bubble_lung.cx - 0.02, bubble_lung.base + 0.1, 0.09, 0.06)
    image = image - rng.uniform(0.08, 0.15) * _fade(bubble, 0.8, 1.0) * body
    return image, texture, lung_masks, heart_mask


# ---------------------------------------------------------------------------- lesions


@dataclasses.dataclass(frozen=True)
class _Lesion:
    """What a lesion does to the image: `delta` is added, `texture_gain` multiplies the lung
    texture; both are neutral (0, 1) outside the lesion."""

    delta: np.ndarray
    texture_gain: np.ndarray = None

    def support(self):
        changed = self.delta != 0.0
        if self.texture_gain is not None:
            changed |= self.texture_gain != 1.0
        return changed


def _point_in_lung(rng, lung, dv_range, lateral=(-1.0, 1.0), margin=0.2):
    """A random point of `lung` with normalised height dv in `dv_range` and normalised
    lateral position (+1 lateral, -1 medial) in `lateral`."""
    for _ in range(200):
        dv = rng.uniform(*dv_range)
        du = lung.side * rng.uniform(*lateral)
        u, v = lung.cx + du * lung.ax, lung.cy + dv * lung.ay
        if lung.inside(u, v, margin):
            return u, v
    return lung.cx, lung.cy


def _pick_lung(rng, anatomy, lung_masks):
    """One of the two lungs at random, with its mask."""
    k = int(rng.integers(2))
    return anatomy.lungs[k], lung_masks[k]


def _edge_sector(rng, lung, du, dv, max_turn, inner, outer):
    """A soft angular sector of `lung` (in its normalised coordinates) around a direction
    turned from the apex towards the lateral wall by a random fraction <= `max_turn`."""
    lateral = 0.0 if lung.side > 0 else np.pi
    centre = float(_wrap(-np.pi / 2 + rng.uniform(0.0, max_turn) * _wrap(lateral + np.pi / 2)))
    return _fade(np.abs(_wrap(np.arctan2(dv, du) - centre)), inner, outer)


def _disc(g, cx, cy, radius):
    """A sphere's projected thickness: sqrt(1 - r^2) on the disc (0 outside)."""
    r2 = ((g.u - cx) ** 2 + (g.v - cy) ** 2) / radius ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


def _atelectasis(g, rng, anatomy, lung_masks):
    """A dense plate-like band in a lower lung zone."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    cx, cy = _point_in_lung(rng, lung, (0.2, 0.65), (-0.4, 0.6), margin=0.25)
    half_length = rng.uniform(0.12, 0.22)
    half_width = max(rng.uniform(0.025, 0.045), 1.2 * g.pixel)
    rho = _ellipse_radius(g.u, g.v, cx, cy, half_length, half_width, rng.uniform(-0.45, 0.45))
    return _Lesion(rng.uniform(0.16, 0.26) * _fade(rho, 0.5, 1.0) * mask)


def _effusion(g, rng, anatomy, lung_masks):
    """Fluid at a lung base: a bright dependent region with a meniscus rising laterally,
    blunting the costophrenic angle."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    top = g.v[mask > 0.5].max() - rng.uniform(0.12, 0.25)
    lateral = np.clip(lung.side * (g.u - lung.cx) / lung.ax, 0.0, 1.0)
    meniscus = top - rng.uniform(0.05, 0.12) * lateral ** 2
    fluid = _fade(meniscus - g.v, -0.03, 0.02) * mask
    return _Lesion(rng.uniform(0.18, 0.28) * fluid, 1.0 - 0.7 * fluid)


def _infiltration(g, rng, anatomy, lung_masks):
    """Patchy hazy opacities scattered over a region of a lung."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    cx, cy = _point_in_lung(rng, lung, (-0.4, 0.6))
    radius = rng.uniform(0.13, 0.22)
    patches = 0.25 + np.clip(_smooth_noise(rng, g.size, 12) - rng.uniform(-0.2, 0.3), 0.0, 1.0)
    region = _fade(np.hypot(g.u - cx, g.v - cy) / radius, 0.6, 1.0)
    return _Lesion(rng.uniform(0.12, 0.2) * patches * region * mask)


def _mass(g, rng, anatomy, lung_masks):
    """A large, lobulated bright blob."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    cx, cy = _point_in_lung(rng, lung, (-0.6, 0.5), margin=0.3)
    theta = np.arctan2(g.v - cy, g.u - cx)
    radius = rng.uniform(0.08, 0.13) * (1.0 + 0.12 * np.sin(3 * theta + rng.uniform(0, 6.3))
                                        + 0.06 * np.sin(5 * theta + rng.uniform(0, 6.3)))
    r2 = ((g.u - cx) ** 2 + (g.v - cy) ** 2) / radius ** 2
    blob = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    return _Lesion(rng.uniform(0.18, 0.28) * blob * mask)


def _nodule(g, rng, anatomy, lung_masks):
    """A small bright disc, more often in an upper zone."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    cx, cy = _point_in_lung(rng, lung, (-0.75, 0.5), margin=0.15)
    radius = max(rng.uniform(0.035, 0.055), 2.0 * g.pixel)
    return _Lesion(rng.uniform(0.2, 0.32) * _disc(g, cx, cy, radius) * mask)


def _pneumonia(g, rng, anatomy, lung_masks):
    """One focal consolidation-like hazy region with soft edges, mid or lower zone."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    cx, cy = _point_in_lung(rng, lung, (-0.2, 0.6), margin=0.25)
    rho = _ellipse_radius(g.u, g.v, cx, cy, rng.uniform(0.12, 0.19), rng.uniform(0.1, 0.16),
                          rng.uniform(-0.5, 0.5))
    haze = np.clip(1.0 - rho * rho, 0.0, 1.0) ** 2 * _mottle(rng, g.size)
    return _Lesion(rng.uniform(0.14, 0.22) * haze * mask)


def _pneumothorax(g, rng, anatomy, lung_masks):
    """Air between the lung and the chest wall at an apex: darker, without vessel markings,
    bounded by a thin visceral pleural line."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    du, dv = lung.normalised(g.u, g.v)
    rho = lung.radius(g.u, g.v)
    sector = _edge_sector(rng, lung, du, dv, 0.45, 0.4, rng.uniform(0.7, 1.0))
    depth = 1.0 - rng.uniform(0.2, 0.35)
    air = _fade(depth - rho, -0.02, 0.0) * sector * mask
    line = _fade(np.abs(rho - depth) * lung.ax, 0.0, 1.5 * g.pixel) * sector * mask
    return _Lesion(0.12 * line - rng.uniform(0.09, 0.14) * air, 1.0 - air)


def _consolidation(g, rng, anatomy, lung_masks):
    """A dense homogeneous region with a sharp, irregular edge that hides the vessels."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    cx, cy = _point_in_lung(rng, lung, (-0.3, 0.6), margin=0.25)
    rho = _ellipse_radius(g.u, g.v, cx, cy, rng.uniform(0.16, 0.26), rng.uniform(0.13, 0.2),
                          rng.uniform(-0.5, 0.5))
    rho = rho * (1.0 + 0.25 * _smooth_noise(rng, g.size, 12))
    dense = _fade(rho, 0.85, 1.0) * mask
    return _Lesion(rng.uniform(0.18, 0.26) * dense, 1.0 - 0.8 * dense)


def _edema(g, rng, anatomy, lung_masks):
    """Bilateral perihilar ('bat-wing') haze."""
    delta = 0.0
    amplitude = rng.uniform(0.1, 0.16)
    for lung, mask in zip(anatomy.lungs, lung_masks):
        hx, hy = lung.cx - lung.side * 0.4 * lung.ax, lung.cy + 0.1 * lung.ay
        r = np.hypot((g.u - hx) / 0.9, g.v - hy) / rng.uniform(0.3, 0.4)
        delta = delta + amplitude * np.clip(1.0 - r * r, 0.0, 1.0) * mask
    return _Lesion(delta * _mottle(rng, g.size))


def _fibrosis(g, rng, anatomy, lung_masks):
    """Reticular (net-like) lines in both upper zones."""
    wavelength = rng.uniform(0.08, 0.11)
    warp = 0.3 * _smooth_noise(rng, g.size, 10)
    net = 0.0
    for angle in rng.uniform(0.0, np.pi, size=3).tolist():
        phase = (float(np.cos(angle)) * g.u + float(np.sin(angle)) * g.v) / wavelength + warp
        net = np.maximum(net, _fade(np.abs(phase - np.round(phase)), 0.05, 0.15))
    upper = sum(_fade(g.v - lung.cy, -0.2 * lung.ay, 0.2 * lung.ay) * mask
                for lung, mask in zip(anatomy.lungs, lung_masks))
    return _Lesion(rng.uniform(0.06, 0.11) * net * upper)


def _pleural_thickening(g, rng, anatomy, lung_masks):
    """A bright rim along the outer edge of a lung (apical cap or lateral wall)."""
    lung, mask = _pick_lung(rng, anatomy, lung_masks)
    du, dv = lung.normalised(g.u, g.v)
    sector = _edge_sector(rng, lung, du, dv, 1.0, 0.3, rng.uniform(0.6, 0.9))
    thickness = max(rng.uniform(0.05, 0.08), 2.0 * g.pixel) / lung.ax
    rim = _fade(1.0 - lung.radius(g.u, g.v), 0.6 * thickness, thickness)
    return _Lesion(rng.uniform(0.2, 0.28) * rim * sector * mask)


def _hernia(g, rng, anatomy, lung_masks):
    """A hiatal hernia: a round opacity behind the lower heart, near the diaphragm, with an
    air-fluid level."""
    heart = anatomy.heart
    cx = heart.cx - rng.uniform(0.0, 0.08)
    cy = heart.cy + heart.ay + rng.uniform(-0.04, 0.03)
    radius = rng.uniform(0.08, 0.12)
    disc = _disc(g, cx, cy, radius)
    air = (disc > 0) * _fade(g.v, cy - 0.3 * radius, cy - 0.3 * radius + g.pixel)
    return _Lesion(rng.uniform(0.14, 0.2) * disc - rng.uniform(0.18, 0.26) * air)


# Class -> drawer(grid, rng, anatomy, lung masks) -> _Lesion. Cardiomegaly and Emphysema
# change the anatomy instead (`_cardiomegaly`, `_emphysema`).
_LESION_DRAWERS = {
    "Atelectasis": _atelectasis,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}


def _tight_box(support, what):
    """(x, y, w, h) in pixels (pixel c covers [c, c + 1)) of the True pixels of `support`."""
    rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
    if not len(rows):
        raise RuntimeError(f"the lesion of {what} covers no pixel")
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]),
            float(rows[-1] + 1 - rows[0]))


def render(record, image_size, seed, omit=()):
    """Draws one image of the plan.

    Args:
        record: an `ImageRecord` (only patient, follow_up and findings are used).
        image_size: S, the PNG is S x S.
        seed: the data set's seed.
        omit: findings to leave out (for tests: the rest of the image is unchanged, pixel
            for pixel, outside the omitted lesions).

    Returns:
        (uint8 [S, S] image, {class name: (x, y, w, h)}): the box of every boxed finding
        drawn, in pixels of the image, whether or not the record is annotated.
    """
    patient, follow_up = record.patient, record.follow_up
    findings = [n for n in record.findings if n not in omit]

    def lesion_rng(name):
        return _rng(seed, _LESION, patient, follow_up, labels.CLASS_INDEX[name])

    anatomy = _patient_anatomy(seed, patient)
    if "Emphysema" in findings:
        anatomy = _emphysema(lesion_rng("Emphysema"), anatomy)
    pose = _rng(seed, _POSE, patient, follow_up)
    g = _posed_grid(pose, image_size)
    heart = anatomy.heart
    if "Cardiomegaly" in findings:
        heart = _cardiomegaly(lesion_rng("Cardiomegaly"), heart)

    image, texture, lung_masks, heart_mask = _draw_anatomy(
        g, anatomy, heart, _rng(seed, _NOISE, patient, follow_up))
    lesions = {name: _LESION_DRAWERS[name](g, lesion_rng(name), anatomy, lung_masks)
               for name in findings if name in _LESION_DRAWERS}
    for lesion in lesions.values():
        if lesion.texture_gain is not None:
            texture = texture * lesion.texture_gain
    image = image + texture
    for lesion in lesions.values():
        image = image + lesion.delta
    supports = {name: lesion.support() for name, lesion in lesions.items()}
    if "Cardiomegaly" in findings:
        supports["Cardiomegaly"] = heart_mask > 0.0

    image = image + pose.uniform(0.012, 0.03) * pose.standard_normal(image.shape, np.float32)
    image = np.clip(pose.uniform(0.85, 1.15) * image + pose.uniform(-0.05, 0.05), 0.0, 1.0)
    image = image ** pose.uniform(0.8, 1.25)
    pixels = np.round(image * 255.0).astype(np.uint8)
    what = f"image {record.image_id}"
    boxes = {name: _tight_box(supports[name], f"{name} of {what}")
             for name in findings if name in labels.BOXED_CLASSES}
    return pixels, boxes


# ---------------------------------------------------------------------------- writing


def _render_patient(task):
    """Worker: draws and saves the images of one patient; returns [(record, boxes)]."""
    records, image_size, seed, images_dir = task
    out = []
    for record in records:
        pixels, boxes = render(record, image_size, seed)
        Image.fromarray(pixels, mode="L").save(os.path.join(images_dir, record.image_id))
        out.append((record, boxes if record.annotated else {}))
    return out


def _write_text(path, lines):
    """Writes lines (LF endings) to a temporary name, then renames: never a half file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)
    os.replace(tmp, path)


def _entry_line(record):
    width, height, spacing = record.original
    findings = "|".join(record.findings) or labels.NO_FINDING
    return (f"{record.image_id},{findings},{record.follow_up},{record.patient},{record.age},"
            f"{record.sex},{record.view},{width},{height},{spacing},{spacing}")


def _box_lines(rendered):
    rows = sorted(((labels.CLASS_INDEX[name], record.image_id, box)
                   for record, boxes in rendered for name, box in boxes.items()))
    for k, image_id, box in rows:
        name = labels.CLASS_NAMES[k]
        yield ",".join([image_id, _BOX_FILE_NAME.get(name, name)] + [repr(v) for v in box])


def _patient_tasks(records, image_size, seed, images_dir):
    by_patient = {}
    for record in records:
        by_patient.setdefault(record.patient, []).append(record)
    return [(rs, image_size, seed, images_dir) for _, rs in sorted(by_patient.items())]


def _run(tasks, num_workers, progress, num_images):
    """Renders all patients (a process pool when num_workers > 1) with a progress bar."""
    rendered = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm.tqdm(total=num_images, unit="img", disable=not progress, desc="synthetic"))
        if num_workers <= 1:
            results = map(_render_patient, tasks)
        else:
            # `spawn`: safe even when the caller has already started TensorFlow's threads.
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(num_workers))
            chunk = max(1, len(tasks) // (num_workers * 16))
            results = pool.imap_unordered(_render_patient, tasks, chunksize=chunk)
        for out in results:
            rendered += out
            bar.update(len(out))
    return sorted(rendered, key=lambda item: item[0].image_id)


def generate(output_dir, *, num_patients, image_size=256, seed=0, box_fraction=0.5,
             test_fraction=0.2, num_workers=None, progress=True):
    """Writes a synthetic data set in the NIH ChestX-ray14 layout to `output_dir`.

    Args:
        output_dir: a new or empty folder.
        num_patients: patients 1..num_patients, 1-6 images each (about 3 per patient).
        image_size: side S of the square PNGs (the stand-in for NIH's 1024); boxes are in
            pixels of this frame.
        seed: the same seed and arguments give byte-identical files.
        box_fraction: fraction of the images with a boxed finding whose boxed findings get
            rows in BBox_List_2017.csv.
        test_fraction: fraction of the patients in test_list.txt.
        num_workers: processes (default os.cpu_count()); the files do not depend on it.
            Workers are started with `spawn`: a script calling `generate` with more than one
            worker needs the usual `if __name__ == "__main__":` guard.
        progress: show a progress bar.

    Returns:
        dict summary: output_dir, num_patients, num_images, image_size, seed, num_boxes,
        no_finding (count), class_counts, box_counts, train_val_images, test_images.

    Raises:
        ValueError: a bad argument, or `output_dir` is not empty.
    """
    _check_plan_arguments(num_patients, seed, box_fraction, test_fraction)
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels, got {image_size}")
    output_dir = os.fspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ValueError(f"output_dir {output_dir} is not empty; give a new or empty folder")
    images_dir = os.path.join(output_dir, IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)

    records = plan(num_patients, seed=seed, box_fraction=box_fraction,
                   test_fraction=test_fraction)
    tasks = _patient_tasks(records, image_size, seed, images_dir)
    workers = min(num_workers or os.cpu_count() or 1, len(tasks))
    rendered = _run(tasks, workers, progress, len(records))

    _write_text(os.path.join(output_dir, DATA_ENTRY_CSV),
                [DATA_ENTRY_HEADER] + [_entry_line(r) for r in records])
    _write_text(os.path.join(output_dir, BBOX_CSV), [BBOX_HEADER, *_box_lines(rendered)])
    for name, split in ((TRAIN_VAL_LIST, "train_val"), (TEST_LIST, "test")):
        _write_text(os.path.join(output_dir, name),
                    [r.image_id for r in records if r.split == split])

    box_counts = {n: sum(n in boxes for _, boxes in rendered) for n in labels.BOXED_CLASSES}
    return {
        "output_dir": output_dir,
        "num_patients": num_patients,
        "num_images": len(records),
        "image_size": image_size,
        "seed": seed,
        "num_boxes": sum(box_counts.values()),
        "no_finding": sum(not r.findings for r in records),
        "class_counts": {n: sum(n in r.findings for r in records) for n in labels.CLASS_NAMES},
        "box_counts": box_counts,
        "train_val_images": sum(r.split == "train_val" for r in records),
        "test_images": sum(r.split == "test" for r in records),
    }


# ------------------------------------------------------------------------------ picture


def _grid_examples(meta, per_class):
    """Row name -> up to `per_class` image ids: images of the class (those with a box of it
    first, then those with fewer findings), and `No Finding` images."""
    images = meta.images
    boxed = set(zip(meta.boxes["image_id"], meta.boxes["label"]))
    num_findings = images[list(labels.CLASS_NAMES)].sum(axis=1)
    rows = {}
    for name in labels.CLASS_NAMES + (labels.NO_FINDING,):
        positive = num_findings == 0 if name == labels.NO_FINDING else images[name] == 1
        keys = sorted(((image_id, name) not in boxed, n, image_id)
                      for image_id, n in zip(images["image_id"][positive], num_findings[positive]))
        rows[name] = [image_id for _, _, image_id in keys[:per_class]]
    return rows


def render_example_grid(nih_dir, out_png, per_class=4):
    """Draws a PNG grid: one row per class (+ `No Finding`), `per_class` examples each, with
    the boxes of the row's class in red and other boxes in yellow.

    Reads the folder through `chestxray_tf.data.nih`, so it works on any NIH-layout folder.
    """
    # pylint: disable=import-outside-toplevel
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from chestxray_tf.data import nih

    meta = nih.load_metadata(os.path.join(nih_dir, DATA_ENTRY_CSV),
                             os.path.join(nih_dir, BBOX_CSV))
    paths = nih.find_images(nih_dir)
    rows = _grid_examples(meta, per_class)
    findings = meta.images.set_index("image_id")[list(labels.CLASS_NAMES)]
    figure = Figure(figsize=(1.6 * per_class + 0.5, 1.75 * len(rows)), dpi=90)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), per_class, squeeze=False)
    for r, (name, image_ids) in enumerate(rows.items()):
        axes[r, 0].set_ylabel(name, fontsize=9)
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(image_ids):
                ax.set_frame_on(False)
                continue
            image_id = image_ids[c]
            ax.imshow(np.asarray(Image.open(paths[image_id])), cmap="gray", vmin=0, vmax=255)
            present = [n for n in labels.CLASS_NAMES if findings.loc[image_id, n]]
            ax.set_title(f"{image_id}\n{', '.join(present) or labels.NO_FINDING}", fontsize=5)
            for box in meta.boxes[meta.boxes["image_id"] == image_id].itertuples():
                own = box.label == name
                ax.add_patch(Rectangle((box.x - 0.5, box.y - 0.5), box.w, box.h, fill=False,
                                       edgecolor="red" if own else "yellow",
                                       linewidth=1.2 if own else 0.7))
    figure.tight_layout()
    canvas.draw()
    # A palette of 62 greys, red and yellow keeps the picture small enough for docs/.
    palette = Image.new("P", (1, 1))
    greys = np.linspace(0, 255, 62).round().astype(int).tolist()
    palette.putpalette([c for g in greys for c in (g, g, g)] + [255, 0, 0, 255, 255, 0])
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(out_png, optimize=True)
