"""Reading radiographs for `predict`: PNG (8- or 16-bit), JPEG and DICOM -> 8-bit grey pixels
in the original pixel frame, and the square padding that keeps their aspect (SPEC §0).

The NIH PNGs are 8-bit grey, so every reader ends in uint8 [H, W]:

* 8-bit PNG and JPEG: kept as they are (colour is turned to grey by Pillow's
  L = 0.299 R + 0.587 G + 0.114 B; an alpha channel is dropped).
* 16-bit (or 32-bit integer) PNG: min-max scaled to 0..255.
* DICOM (through pydicom, the `[dicom]` extra, imported only when a DICOM is read): the modality
  LUT (rescale slope / intercept, or the Modality LUT Sequence), then the first VOI LUT or
  window centre / width when the file has one (`pydicom.pixels.apply_modality_lut`,
  `apply_voi_lut`), then min-max of the windowed values to 0..255 (so the window's bounds become
  0 and 255 when the image has values beyond both); MONOCHROME1 is inverted (v -> 255 - v) so
  that bright means dense, as in the NIH PNGs. Only single-frame MONOCHROME1/2 images are read.

The file's content decides its format (PNG and JPEG signatures, the DICOM preamble `DICM`);
a file with neither, named `.dcm`, `.dicom` or without a suffix, is tried as a DICOM without
preamble. Every problem (empty file, not an image, DICOM without pixel data, pixel data
compressed with a codec that has no decoder installed, missing pydicom) raises `ImageReadError`
naming the file.

Bounded work per image (`check_bounds`): the size is read from the header (PNG IHDR, JPEG
frame header, DICOM Rows / Columns) before any pixel is decoded, and an image of more than
`MAX_IMAGE_PIXELS` pixels, a longer side over `MAX_IMAGE_SIDE` or an aspect ratio (longer side
/ shorter side) over `MAX_ASPECT_RATIO` is an `ImageReadError` naming the file and the bound:
a small file that declares a huge frame (a decompression bomb, or a 15000 x 1 strip whose
padded square would be 15000 x 15000) is refused without allocating it. The square the model
sees is then at most MAX_IMAGE_SIDE^2 pixels. The same constants bound the SavedModel's
in-graph padding (`chestxray_tf.export`) when it reuses them.

Orientation: a JPEG (or PNG) with an EXIF Orientation tag other than 1 is turned upright as a
viewer displays it (`PIL.ImageOps.exif_transpose`), and its width, height and every box are in
that upright frame; `source["exif_orientation"]` records the tag (1 when absent).

`pad_to_square` pads an H x W image to S x S, S = max(H, W), centred and black: `top =
(S - H) // 2` rows above, `left = (S - W) // 2` columns on the left (the rest below / on the
right). Its `Padding` maps boxes and maps found on the square back to the original frame. The
SavedModel's signatures pad the same way in-graph (`chestxray_tf.export`).
"""

import dataclasses
import os

import numpy as np
from PIL import Image, ImageOps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_PREAMBLE = 128  # bytes before the "DICM" magic of a DICOM Part 10 file
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES
GREY_DICOM = ("MONOCHROME1", "MONOCHROME2")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # Pillow modes of more than 8 bits a pixel

# Bounds of the work per image, checked from the header before decoding (`check_bounds`).
# A chest radiograph is at most ~4300 x 4300 (43 cm at 0.1 mm) and about square.
MAX_IMAGE_PIXELS = 32 * 1024 * 1024  # H x W of a decoded image (33.5 M; a 5792^2 frame)
MAX_IMAGE_SIDE = 8192  # the longer side: the padded square is at most 8192^2 (268 MB float32)
MAX_ASPECT_RATIO = 4.0  # longer side / shorter side
EXIF_ORIENTATION = 0x0112  # the EXIF tag of the orientation (1: upright)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT/JPG/DAC)
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI


class ImageReadError(ValueError):
    """A file that cannot be read as a radiograph: `path` and `problem` say which and why."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What a PNG or JPEG header says, read without decoding: `format` ('png' or 'jpeg') and
    the stored `width` x `height` (before any EXIF orientation)."""
    format: str
    width: int
    height: int


def check_bounds(path, width, height, max_pixels=MAX_IMAGE_PIXELS, max_side=MAX_IMAGE_SIDE,
                 max_aspect=MAX_ASPECT_RATIO):
    """Raises `ImageReadError` naming `path` when a `width` x `height` image is empty or
    exceeds a bound (pixels, longer side, aspect ratio); see the module docstring."""
    width, height = int(width), int(height)
    size = f"{width} x {height} pixels"
    if width < 1 or height < 1:
        raise ImageReadError(path, f"the header declares {size}: an empty image")
    if width * height > max_pixels:
        raise ImageReadError(path, f"the header declares {size} ({width * height:,}), more than "
                                   f"the bound of {max_pixels:,} (io.MAX_IMAGE_PIXELS); not "
                                   "decoded")
    if max(width, height) > max_side:
        raise ImageReadError(path, f"the header declares {size}: the longer side exceeds the "
                                   f"bound of {max_side} (io.MAX_IMAGE_SIDE); not decoded")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageReadError(path, f"the header declares {size}: aspect ratio {aspect:.1f}:1 "
                                   f"exceeds the bound of {max_aspect:g}:1 "
                                   "(io.MAX_ASPECT_RATIO); not a radiograph, not decoded")


def _png_size(path, f):
    f.seek(len(PNG_SIGNATURE))
    chunk = f.read(16)
    if len(chunk) < 16 or chunk[4:8] != b"IHDR":
        raise ImageReadError(path, "unreadable png: no IHDR header (truncated or damaged)")
    return int.from_bytes(chunk[8:12], "big"), int.from_bytes(chunk[12:16], "big")


def _jpeg_size(path, f):
    """The size in the first frame header (SOFn) of a JPEG, walking the marker segments."""
    f.seek(2)
    while True:
        byte = f.read(1)
        if byte != b"\xff":
            raise ImageReadError(path, "unreadable jpeg: the header ends or is damaged before "
                                       "its frame header (SOF)")
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            raise ImageReadError(path, "unreadable jpeg: truncated before its frame header (SOF)")
        code = marker[0]
        if code in _JPEG_NO_LENGTH:
            continue
        if code in (0xD9, 0xDA):  # EOI, SOS: image data without a frame header
            raise ImageReadError(path, "unreadable jpeg: no frame header (SOF) before its data")
        length = f.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            raise ImageReadError(path, "unreadable jpeg: a damaged marker segment")
        if code in _JPEG_SOF:
            frame = f.read(5)
            if len(frame) < 5:
                raise ImageReadError(path, "unreadable jpeg: truncated in its frame header (SOF)")
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        f.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


def read_header(path):
    """The format and size of a PNG or JPEG from its header, without decoding any pixel.

    Raises:
        ImageReadError: the file cannot be opened, is neither a PNG nor a JPEG, or its header
            is truncated or damaged.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(PNG_SIGNATURE))
            if head.startswith(PNG_SIGNATURE):
                return ImageHeader("png", *_png_size(path, f))
            if head.startswith(JPEG_SIGNATURE):
                return ImageHeader("jpeg", *_jpeg_size(path, f))
    except OSError as e:
        raise ImageReadError(path, f"cannot open: {e.strerror or e}") from e
    raise ImageReadError(path, "empty file" if not head else "not a PNG or JPEG image")


@dataclasses.dataclass(frozen=True)
class Scan:
    """A radiograph read by `read_image`.

    pixels: uint8 [H, W] grey, in the file's own pixel frame.
    source: what was read and how it was scaled (format, size, bit depth; for DICOM the
        photometric interpretation, transfer syntax, rescale and VOI applied): JSON-ready.
    """
    pixels: np.ndarray
    source: dict


def to_uint8(values):
    """Min-max scaling of any numbers to uint8 0..255 (round to nearest); a constant image
    becomes all zeros."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _read_pil(path, header):
    """Decodes a PNG or JPEG whose `header` passed `check_bounds`; EXIF orientation applied."""
    image_format = header.format
    try:
        with Image.open(path) as image:
            if image.size != (header.width, header.height):
                raise ImageReadError(path, f"the decoder sees {image.size[0]} x "
                                           f"{image.size[1]} pixels, the header "
                                           f"{header.width} x {header.height}")
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image.load()
            upright = ImageOps.exif_transpose(image)
            mode = upright.mode
            if mode in WIDE_MODES:
                pixels = to_uint8(np.asarray(upright))
            else:
                pixels = np.asarray(upright if mode == "L" else upright.convert("L"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageReadError):
            raise
        raise ImageReadError(path, f"unreadable {image_format}: {e}") from e
    return pixels, {"format": image_format, "mode": mode,
                    "scaling": "min-max" if mode in WIDE_MODES else "none",
                    "exif_orientation": int(orientation) if isinstance(orientation, int) else 1}


def _import_pydicom(path):
    try:
        import pydicom  # pylint: disable=import-outside-toplevel
        from pydicom import pixels  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImageReadError(path, "reading DICOM needs pydicom, the [dicom] extra: "
                                   "pip install 'chestxray_tf[dicom]'") from e
    return pydicom, pixels


def _dicom_dataset(pydicom, path, force):
    try:
        dataset = pydicom.dcmread(path, force=force)
    except Exception as e:  # pydicom's parser raises many types on damaged files
        raise ImageReadError(path, f"unreadable DICOM: {type(e).__name__}: {e}") from e
    if "PixelData" not in dataset:
        if "Rows" not in dataset:
            raise ImageReadError(path, "not a PNG, JPEG or DICOM image")
        encrypted = (" (its attributes are encrypted)"
                     if "EncryptedAttributesSequence" in dataset else "")
        raise ImageReadError(path, f"the DICOM has no pixel data{encrypted}")
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric not in GREY_DICOM or int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise ImageReadError(path, f"only grey DICOM ({' or '.join(GREY_DICOM)}) is read, this "
                                   f"one is {photometric or 'without PhotometricInterpretation'}")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageReadError(path, f"a multi-frame DICOM ({dataset.NumberOfFrames} frames) is "
                                   "not a radiograph")
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ImageReadError(path, "the DICOM has no Rows / Columns")
    check_bounds(path, dataset.Columns, dataset.Rows)  # before the pixel data is decoded
    return dataset


def _read_dicom(path, force):
    pydicom, dicom_pixels = _import_pydicom(path)
    dataset = _dicom_dataset(pydicom, path, force)
    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    syntax_name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
    try:
        stored = dataset.pixel_array
    except Exception as e:  # missing decoder plugins, damaged or truncated pixel data
        raise ImageReadError(path, f"cannot decode the pixel data (transfer syntax "
                                   f"{syntax_name}): {e}") from e
    try:
        values = dicom_pixels.apply_voi_lut(dicom_pixels.apply_modality_lut(stored, dataset),
                                            dataset)
    except Exception as e:  # malformed LUT or window attributes
        raise ImageReadError(path, f"cannot apply the DICOM's rescale / VOI LUT: {e}") from e
    if not np.all(np.isfinite(values)):
        raise ImageReadError(path, "the DICOM has non-finite pixel values")
    pixels = to_uint8(values)
    photometric = str(dataset.PhotometricInterpretation)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    rescale = ([float(dataset.RescaleSlope), float(dataset.RescaleIntercept)]
               if "RescaleSlope" in dataset and "RescaleIntercept" in dataset else None)
    if "VOILUTSequence" in dataset:
        voi = "VOI LUT Sequence"
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        voi = f"window centre {dataset.WindowCenter} width {dataset.WindowWidth}"
    else:
        voi = None
    return pixels, {"format": "dicom", "scaling": "min-max", "photometric": photometric,
                    "bits": int(dataset.get("BitsStored", 8 * stored.dtype.itemsize)),
                    "transfer_syntax": syntax_name, "rescale": rescale, "voi": voi}


def read_image(path):
    """Reads a PNG, JPEG or DICOM radiograph as 8-bit grey pixels (see the module docstring).

    Returns:
        `Scan` with pixels uint8 [H, W] in the file's pixel frame (upright: EXIF orientation
        applied).

    Raises:
        ImageReadError: the file is missing, empty, not a PNG, JPEG or DICOM image, exceeds a
            bound of `check_bounds` (checked from the header, before decoding), or cannot be
            decoded; the message names the file and the problem.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_PREAMBLE + 4)
    except OSError as e:
        raise ImageReadError(path, f"cannot open: {e.strerror or e}") from e
    if not head:
        raise ImageReadError(path, "empty file")
    if head.startswith(PNG_SIGNATURE) or head.startswith(JPEG_SIGNATURE):
        header = read_header(path)
        check_bounds(path, header.width, header.height)
        pixels, source = _read_pil(path, header)
    elif head[DICOM_PREAMBLE:] == b"DICM":
        pixels, source = _read_dicom(path, force=False)
    elif os.path.splitext(path)[1].lower() in DICOM_SUFFIXES + ("",):
        pixels, source = _read_dicom(path, force=True)
    else:
        raise ImageReadError(path, "not a PNG, JPEG or DICOM image")
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ImageReadError(path, f"expected a 2-D image, got pixel shape {pixels.shape}")
    height, width = pixels.shape
    return Scan(pixels=pixels, source={**source, "width": int(width), "height": int(height)})


@dataclasses.dataclass(frozen=True)
class Padding:
    """Where an H x W image lies in its S x S square (S = max(H, W)): rows [top, top + H),
    columns [left, left + W)."""
    top: int
    left: int
    height: int
    width: int

    @property
    def side(self):
        return max(self.height, self.width)

    def as_dict(self):
        return {"top": self.top, "left": self.left, "side": self.side,
                "fill": "black, centred"}

    def boxes_to_original(self, boxes_xywh):
        """Pixel boxes (x, y, w, h) on the square -> boxes in the original frame, clipped to it.

        Returns:
            (float64 [N, 4] boxes, bool [N]: the box keeps a positive area inside the original
            image; a box wholly in the padding has none).
        """
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        x0 = np.clip(boxes[:, 0] - self.left, 0, self.width)
        y0 = np.clip(boxes[:, 1] - self.top, 0, self.height)
        x1 = np.clip(boxes[:, 0] + boxes[:, 2] - self.left, 0, self.width)
        y1 = np.clip(boxes[:, 1] + boxes[:, 3] - self.top, 0, self.height)
        return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1), (x1 > x0) & (y1 > y0)

    def grid_on_original(self, grid, height, width):
        """A map [h, w] over the square -> its values on a height x width raster of the original
        frame (any scale of it): raster pixel (i, j) takes the value of the map cell under its
        centre."""
        grid = np.asarray(grid)
        rows = ((np.arange(height) + 0.5) * self.height / height + self.top) * grid.shape[0]
        cols = ((np.arange(width) + 0.5) * self.width / width + self.left) * grid.shape[1]
        rows = np.minimum((rows // self.side).astype(int), grid.shape[0] - 1)
        cols = np.minimum((cols // self.side).astype(int), grid.shape[1] - 1)
        return grid[rows[:, None], cols[None, :]]


def pad_to_square(pixels):
    """[H, W] (or [H, W, C]) -> ([S, S] (or [S, S, C]) centred on black, `Padding`)."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pad = [(top, side - height - top), (left, side - width - left)] + [(0, 0)] * (pixels.ndim - 2)
    return np.pad(pixels, pad), Padding(top=top, left=left, height=height, width=width)
