"""chestxray_tf/io.py: PNG (8/16-bit), JPEG and DICOM -> 8-bit grey; square padding."""

import sys

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage,
                         generate_uid)

from chestxray_tf import io as io_lib


def min_max_reference(values):
    """Min-max to 0..255, rounded to nearest, one pixel at a time."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    out = np.zeros(values.shape, dtype=np.uint8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            out[i, j] = int(np.floor((values[i, j] - low) * 255.0 / (high - low) + 0.5))
    return out


def write_dicom(path, stored, photometric="MONOCHROME2", rescale=None, window=None,
                syntax=ExplicitVRLittleEndian, pixel_data=None, preamble=True, **attributes):
    """A 12-bit single-frame secondary-capture DICOM of `stored` (uint16 [H, W])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in attributes.items():
        setattr(ds, key, value)
    if pixel_data is not False:
        ds.PixelData = stored.astype(np.uint16).tobytes() if pixel_data is None else pixel_data
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def dicom_reference(stored, photometric, rescale, window):
    """DICOM PS3.3 C.11.1 (rescale) and C.11.2.1.2.1 (linear window, output in [0, 1]), then
    min-max to 0..255 and MONOCHROME1 inverted; pixel by pixel."""
    values = np.zeros(stored.shape)
    for i in range(stored.shape[0]):
        for j in range(stored.shape[1]):
            x = float(stored[i, j])
            if rescale is not None:
                x = rescale[0] * x + rescale[1]
            if window is not None:
                c, w = window
                if x <= c - 0.5 - (w - 1) / 2:
                    x = 0.0
                elif x > c - 0.5 + (w - 1) / 2:
                    x = 1.0
                else:
                    x = (x - (c - 0.5)) / (w - 1) + 0.5
            values[i, j] = x
    out = min_max_reference(values)
    return 255 - out if photometric == "MONOCHROME1" else out


def test_png_8bit_is_kept_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 50), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    scan = io_lib.read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(scan.pixels, pixels)
    assert scan.source == {"format": "png", "mode": "L", "scaling": "none", "width": 50,
                           "height": 30, "exif_orientation": 1}


def test_png_16bit_is_min_max_scaled(tmp_path):
    values = np.random.default_rng(1).integers(300, 60000, (20, 36)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "x16.png")
    scan = io_lib.read_image(tmp_path / "x16.png")
    assert scan.pixels.dtype == np.uint8 and scan.source["scaling"] == "min-max"
    np.testing.assert_array_equal(scan.pixels, min_max_reference(values))
    assert scan.pixels.min() == 0 and scan.pixels.max() == 255


def test_constant_16bit_png_is_black(tmp_path):
    Image.fromarray(np.full((8, 8), 1234, np.uint16)).save(tmp_path / "flat.png")
    assert not io_lib.read_image(tmp_path / "flat.png").pixels.any()


def test_colour_png_becomes_grey(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(io_lib.read_image(tmp_path / "rgb.png").pixels, expected, atol=1)


def test_jpeg_round_trip(tmp_path):
    # A smooth image survives JPEG at quality 95 to within a few grey levels.
    pixels = np.add.outer(np.arange(48) * 2, np.arange(64) * 2).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=95)
    scan = io_lib.read_image(tmp_path / "x.jpg")
    assert scan.source["format"] == "jpeg" and scan.pixels.shape == (48, 64)
    assert np.abs(scan.pixels.astype(int) - pixels).max() <= 4


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("rescale", [None, (2.0, -100.0)])
@pytest.mark.parametrize("window", [None, "window"])
def test_dicom_rescale_window_and_photometric(tmp_path, photometric, rescale, window):
    stored = np.random.default_rng(3).integers(0, 4096, (24, 40)).astype(np.uint16)
    # A window inside the data's range (in rescaled units when there is a rescale).
    window = None if window is None else ((3000.0, 2001.0) if rescale else (1500.0, 1001.0))
    path = write_dicom(tmp_path / "x.dcm", stored, photometric, rescale, window)
    scan = io_lib.read_image(path)
    expected = dicom_reference(stored, photometric, rescale, window)
    assert scan.pixels.dtype == np.uint8 and scan.pixels.shape == (24, 40)
    # Rounding of values that fall exactly between two grey levels may differ by one.
    assert np.abs(scan.pixels.astype(int) - expected).max() <= 1
    assert np.mean(scan.pixels == expected) > 0.99
    assert scan.source["photometric"] == photometric
    assert scan.source["rescale"] == (list(rescale) if rescale else None)
    assert (scan.source["voi"] is None) == (window is None)


def test_dicom_monochrome1_is_inverted(tmp_path):
    # MONOCHROME1: the smallest stored value is the brightest pixel.
    stored = np.full((8, 12), 4000, np.uint16)
    stored[2:4, 3:6] = 0
    one = io_lib.read_image(write_dicom(tmp_path / "one.dcm", stored, "MONOCHROME1")).pixels
    two = io_lib.read_image(write_dicom(tmp_path / "two.dcm", stored, "MONOCHROME2")).pixels
    assert (one[2:4, 3:6] == 255).all() and (two[2:4, 3:6] == 0).all()
    np.testing.assert_array_equal(one, 255 - two)


def test_dicom_without_preamble_or_suffix_is_read(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    path = write_dicom(tmp_path / "IM0001", stored, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(io_lib.read_image(path).pixels, min_max_reference(stored))


def _problem(path):
    with pytest.raises(io_lib.ImageReadError) as info:
        io_lib.read_image(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    return info.value.problem


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "notes.txt").write_text("not an image at all")
    (tmp_path / "notes.dcm").write_text("not an image at all" * 20)
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    stored = np.zeros((4, 4), np.uint16)
    no_pixels = write_dicom(tmp_path / "nopixels.dcm", stored, pixel_data=False)
    jpeg_ls = write_dicom(tmp_path / "jpegls.dcm", stored, syntax=JPEGLSLossless,
                          pixel_data=encapsulate([b"\x00" * 16]))
    rgb = write_dicom(tmp_path / "rgb.dcm", stored, photometric="RGB")
    assert _problem(tmp_path / "empty.png") == "empty file"
    assert _problem(tmp_path / "notes.png") == "not a PNG, JPEG or DICOM image"
    assert _problem(tmp_path / "notes.txt") == "not a PNG, JPEG or DICOM image"
    assert _problem(tmp_path / "notes.dcm") == "not a PNG, JPEG or DICOM image"
    assert _problem(tmp_path / "cut.png").startswith("unreadable png")
    assert _problem(no_pixels) == "the DICOM has no pixel data"
    problem = _problem(jpeg_ls)
    assert "cannot decode the pixel data" in problem and "JPEG-LS Lossless" in problem
    assert "only grey DICOM" in _problem(rgb)
    assert "cannot open" in _problem(tmp_path / "missing.png")


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    assert "[dicom]" in _problem(path)
    monkeypatch.undo()
    assert pydicom.dcmread(path).Rows == 4


def test_pad_to_square_centres_on_black():
    pixels = np.arange(1, 3 * 6 + 1, dtype=np.uint8).reshape(3, 6)
    square, padding = io_lib.pad_to_square(pixels)
    # S = 6, top = (6 - 3) // 2 = 1 row above, 2 below.
    assert (padding.top, padding.left, padding.side) == (1, 0, 6)
    for r in range(6):
        for c in range(6):
            assert square[r, c] == (pixels[r - 1, c] if 1 <= r < 4 else 0)
    tall, padding = io_lib.pad_to_square(np.ones((5, 2), np.uint8))
    assert (padding.top, padding.left, padding.side) == (0, 1, 5)
    assert tall[:, 1:3].all() and not tall[:, [0, 3, 4]].any()
    square_in, padding = io_lib.pad_to_square(np.ones((4, 4), np.uint8))
    assert (padding.top, padding.left) == (0, 0) and square_in.shape == (4, 4)


def test_padding_maps_boxes_back_to_the_original():
    padding = io_lib.Padding(top=12, left=0, height=40, width=64)
    boxes, inside = padding.boxes_to_original([[40, 16, 16, 16],   # inside
                                               [0, 0, 64, 20],     # over the top padding
                                               [8, 54, 8, 8]])     # wholly in the padding
    np.testing.assert_allclose(boxes[:2], [[40, 4, 16, 16], [0, 0, 64, 8]])
    assert inside.tolist() == [True, True, False]


def test_grid_on_original_samples_the_cell_under_each_pixel():
    # A 64 x 40 image (W x H) in a 64 square (top 12), a 4 x 4 grid of 16 px cells.
    padding = io_lib.Padding(top=12, left=0, height=40, width=64)
    grid = np.arange(16).reshape(4, 4)
    full = padding.grid_on_original(grid, 40, 64)
    for i in range(40):
        for j in range(64):
            assert full[i, j] == grid[(i + 12) // 16, j // 16]
    # Half the resolution: pixel (i, j) has its centre at original (2i + 1, 2j + 1).
    half = padding.grid_on_original(grid, 20, 32)
    for i in range(20):
        for j in range(32):
            assert half[i, j] == grid[(2 * i + 1 + 12) // 16, (2 * j + 1) // 16]


# ---------------------------------------------------------------- bounds and orientation


def png_header_only(path, width, height, bit_depth=8, colour_type=0):
    """A PNG whose IHDR declares width x height, with a tiny (wrong) IDAT: a decompression
    bomb's header without its payload."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(io_lib.PNG_SIGNATURE + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 1000
    assert io_lib.read_header(path) == io_lib.ImageHeader("png", 30000, 30000)
    problem = _problem(path)
    assert "30000 x 30000 pixels" in problem and "MAX_IMAGE_PIXELS" in problem
    assert "not decoded" in problem


def test_a_thin_strip_is_refused_before_padding(tmp_path):
    # 15000 x 1: a 97-byte PNG whose padded square would be 15000 x 15000.
    Image.new("L", (15000, 1)).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 200
    problem = _problem(tmp_path / "strip.png")
    assert "15000 x 1 pixels" in problem and "MAX_IMAGE_SIDE" in problem
    Image.new("L", (4000, 500)).save(tmp_path / "wide.png")
    problem = _problem(tmp_path / "wide.png")
    assert "aspect ratio 8.0:1" in problem and "MAX_ASPECT_RATIO" in problem
    # Within the bounds: read.
    Image.new("L", (400, 100)).save(tmp_path / "ok.png")
    assert io_lib.read_image(tmp_path / "ok.png").pixels.shape == (100, 400)


def test_dicom_bounds_are_checked_before_the_pixels_are_decoded(tmp_path):
    path = write_dicom(tmp_path / "strip.dcm", np.zeros((1, 9000), np.uint16))
    problem = _problem(path)
    assert "9000 x 1 pixels" in problem and "not decoded" in problem


def test_check_bounds_limits():
    io_lib.check_bounds("x", io_lib.MAX_IMAGE_SIDE, io_lib.MAX_IMAGE_SIDE // 4,
                        max_pixels=io_lib.MAX_IMAGE_SIDE ** 2)
    for width, height in ((0, 10), (io_lib.MAX_IMAGE_SIDE + 1, io_lib.MAX_IMAGE_SIDE // 2),
                          (5793, 5793), (401, 100)):
        with pytest.raises(io_lib.ImageReadError, match="^x: the header declares"):
            io_lib.check_bounds("x", width, height)


def test_jpeg_header_is_read_past_exif_and_in_progressive_files(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 70), np.uint8))
    exif = Image.Exif()
    exif[io_lib.EXIF_ORIENTATION] = 3
    image.save(tmp_path / "exif.jpg", exif=exif)
    image.save(tmp_path / "progressive.jpg", progressive=True)
    assert io_lib.read_header(tmp_path / "exif.jpg") == io_lib.ImageHeader("jpeg", 70, 30)
    assert io_lib.read_header(tmp_path / "progressive.jpg") == io_lib.ImageHeader("jpeg", 70, 30)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "exif.jpg").read_bytes()[:30])
    assert _problem(tmp_path / "cut.jpg").startswith("unreadable jpeg")


@pytest.mark.parametrize("orientation, upright", [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
    (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_jpeg_exif_orientation_is_applied(tmp_path, orientation, upright):
    stored = np.zeros((40, 64), np.uint8)
    stored[2:14, 44:60] = 255  # a bright block near the top-right corner as stored
    exif = Image.Exif()
    exif[io_lib.EXIF_ORIENTATION] = orientation
    Image.fromarray(stored).save(tmp_path / "scan.jpg", quality=100, exif=exif)
    scan = io_lib.read_image(tmp_path / "scan.jpg")
    expected = upright(stored)
    assert scan.pixels.shape == expected.shape
    assert (scan.source["width"], scan.source["height"]) == expected.shape[::-1]
    assert scan.source["exif_orientation"] == orientation
    assert np.abs(scan.pixels.astype(int) - expected).mean() < 4
