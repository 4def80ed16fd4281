"""chestxray_tf/predict.py and cli/predict.py: findings, regions in original pixels, overlays,
summary.csv, per-file errors."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from chestxray_tf import export, predict
from chestxray_tf import io as io_lib
from chestxray_tf.data import pipeline
from chestxray_tf.labels import CLASS_NAMES
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.training import defaults
from test_io import write_dicom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, GRID = 64, 8  # the stub's input size and map grid: 8 x 8 cells of 8 px
# Class k's map is the stub's cell brightness times WEIGHTS[k]: class 0 is the brightest.
WEIGHTS = np.linspace(1.0, 0.35, len(CLASS_NAMES)).astype(np.float32)


def build_stub():
    """A model whose map is known: patch_probs[r, c, k] = WEIGHTS[k] x the mean brightness in
    [0, 1] of cell (r, c) of the input; image_probs[k] = the largest cell of map k."""
    image = keras.Input((SIZE, SIZE, 3), name="image")
    brightness = keras.layers.Lambda(lambda x: (x[..., :1] + 1.0) / 2.0)(image)
    cells = keras.layers.AveragePooling2D(SIZE // GRID)(brightness)
    maps = keras.layers.Lambda(lambda c: c * keras.ops.convert_to_tensor(WEIGHTS),
                               name="patch_probs")(cells)
    probs = keras.layers.Lambda(lambda m: keras.ops.max(m, axis=(1, 2)), name="image_probs")(maps)
    return keras.Model(image, {"patch_probs": maps, "image_probs": probs})


@pytest.fixture(scope="module")
def stub_saved_model(tmp_path_factory):
    config = defaults.base_config()
    config.data.image_size = SIZE
    out = tmp_path_factory.mktemp("stub") / "saved_model"
    export.export_saved_model(build_stub(), config, str(out))
    return out


@pytest.fixture(scope="module")
def stub_predictor(stub_saved_model):
    return predict.load_predictor(str(stub_saved_model))


def bright_square(height, width, rows, cols):
    pixels = np.zeros((height, width), np.uint8)
    pixels[rows[0]:rows[1], cols[0]:cols[1]] = 255
    return pixels


def run(predictor, tmp_path, **kwargs):
    summary = predict.predict_files(predictor, str(tmp_path / "in"), str(tmp_path / "out"),
                                    progress=False, **kwargs)
    return summary, tmp_path / "out"


def read_json(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("height, width, rows, cols, box", [
    # Wide: padded 12 rows above; the square covers cells rows 2-3, cols 5-6 of the 64 square.
    (40, 64, (4, 20), (40, 56), [40, 4, 16, 16]),
    # Tall: padded 20 columns on the left; cells rows 1-2, cols 3-4.
    (64, 24, (8, 24), (4, 20), [4, 8, 16, 16]),
    # Wide and resized 160 -> 64 (cells of 20 px of the square, top = 32): the square lies on
    # 90% of cell row 2, all of row 3, 10% of row 4, so the region is rows 2-3 = y 8..48.
    (96, 160, (10, 50), (100, 140), [100, 8, 40, 40]),
])
def test_region_lands_on_the_bright_square_of_a_non_square_image(
        stub_predictor, tmp_path, height, width, rows, cols, box):
    (tmp_path / "in").mkdir()
    Image.fromarray(bright_square(height, width, rows, cols)).save(tmp_path / "in" / "scan.png")
    summary, out = run(stub_predictor, tmp_path)
    assert summary.num_failed == 0
    found = read_json(out / "scan.json")
    assert found["image"]["width"] == width and found["image"]["height"] == height
    atelectasis = found["classes"]["Atelectasis"]
    assert len(atelectasis["regions"]) == 1
    np.testing.assert_allclose(atelectasis["regions"][0]["box"], box, atol=1e-4)
    assert atelectasis["regions"][0]["score"] == pytest.approx(atelectasis["probability"])


def test_json_contents(stub_predictor, stub_saved_model, tmp_path):
    (tmp_path / "in").mkdir()
    # Two bright squares of different brightness on a 40 x 64 image (top padding 12).
    pixels = bright_square(40, 64, (4, 20), (40, 56))
    pixels[20:36, 0:16] = 204  # cells of brightness 0.8
    Image.fromarray(pixels).save(tmp_path / "in" / "scan.png")
    run(stub_predictor, tmp_path, threshold=0.62, top_k=2)
    found = read_json(tmp_path / "out" / "scan.json")
    assert found["file"] == "scan.png" and found["map_threshold"] == 0.62
    assert found["notice"] == predict.NOTICE
    assert found["model"] == {
        "type": "saved_model", "path": str(stub_saved_model),
        "fingerprint": tf.saved_model.experimental.read_fingerprint(
            str(stub_saved_model)).singleprint()}
    assert found["image"]["padding"]["top"] == 12 and found["image"]["format"] == "png"
    assert found["findings"] == ["Atelectasis", "Cardiomegaly"]
    assert list(found["classes"]) == list(CLASS_NAMES)
    for k, name in enumerate(CLASS_NAMES):
        entry = found["classes"][name]
        assert entry["probability"] == pytest.approx(WEIGHTS[k], rel=1e-5)
        # The regions of class k are the squares whose cells exceed 0.62 after the weight.
        expected = []
        if WEIGHTS[k] > 0.62:
            expected.append(([40, 4, 16, 16], WEIGHTS[k]))
        if 0.8 * WEIGHTS[k] > 0.62:
            expected.append(([0, 20, 16, 16], 0.8 * WEIGHTS[k]))
        # Li et al.'s rule: every passing cell together as one region, its bounding box.
        assert len(entry["regions"]) == min(len(expected), 1), name
        if expected:
            x0 = min(b[0] for b, _ in expected)
            y0 = min(b[1] for b, _ in expected)
            x1 = max(b[0] + b[2] for b, _ in expected)
            y1 = max(b[1] + b[3] for b, _ in expected)
            np.testing.assert_allclose(entry["regions"][0]["box"], [x0, y0, x1 - x0, y1 - y0],
                                       atol=1e-4)
            assert entry["regions"][0]["score"] == pytest.approx(max(s for _, s in expected),
                                                                 rel=1e-5)


def test_classes_aliases_and_top_k(stub_predictor, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(bright_square(32, 32, (8, 16), (8, 16))).save(tmp_path / "in" / "a.png")
    summary, out = run(stub_predictor, tmp_path, classes=["Nodule", "Infiltrate", "Hernia"],
                       top_k=1)
    found = read_json(out / "a.json")
    assert list(found["classes"]) == ["Nodule", "Infiltration", "Hernia"]
    assert found["findings"] == ["Infiltration"]  # the highest of the three
    with open(summary.csv_path, newline="") as f:
        header = next(csv.reader(f))
    assert header[-3:] == ["Nodule", "Infiltration", "Hernia"]
    with pytest.raises(ValueError, match="unknown class 'Flu'"):
        run(stub_predictor, tmp_path, classes=["Flu"])
    with pytest.raises(ValueError, match="top_k"):
        run(stub_predictor, tmp_path, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        run(stub_predictor, tmp_path, threshold=1.5)


def test_overlay_has_a_panel_per_finding(stub_predictor, tmp_path):
    (tmp_path / "in").mkdir()
    # Larger than OVERLAY_MAX_SIDE: drawn scaled down.
    pixels = bright_square(600, 900, (100, 300), (500, 700))
    Image.fromarray(pixels).save(tmp_path / "in" / "big.png")
    run(stub_predictor, tmp_path, top_k=3)
    with Image.open(tmp_path / "out" / "big.png") as overlay:
        # figures.plot_heatmap_gallery: 3 inches a column at 100 dpi.
        assert overlay.size[0] == 3 * 300
        rgb = np.asarray(overlay.convert("RGB")).astype(int)
    # The heat map is drawn: red-ish pixels (jet colour map over the bright square).
    assert ((rgb[..., 0] > 150) & (rgb[..., 2] < 150)).any()


def test_monochrome1_dicom_region_in_original_pixels(stub_predictor, tmp_path):
    (tmp_path / "in").mkdir()
    # MONOCHROME1: low stored values are bright; a 40 x 64 image, the lesion at x 40, y 4.
    stored = np.full((40, 64), 4000, np.uint16)
    stored[4:20, 40:56] = 0
    write_dicom(tmp_path / "in" / "scan.dcm", stored, "MONOCHROME1", rescale=(1.0, -1024.0))
    run(stub_predictor, tmp_path)
    found = read_json(tmp_path / "out" / "scan.json")
    assert found["image"]["format"] == "dicom" and found["image"]["photometric"] == "MONOCHROME1"
    np.testing.assert_allclose(found["classes"]["Atelectasis"]["regions"][0]["box"],
                               [40, 4, 16, 16], atol=1e-4)


def test_regions_in_original_sorts_and_leaves_out_the_padding():
    padding = io_lib.Padding(top=2, left=0, height=4, width=8)  # an 8 x 8 square, rows 2-5
    boxes = np.array([[2, 0, 3, 2],      # region A, row 2 of the square -> y 0 of the original
                      [4, 5, 6, 6],      # region B
                      [7, 7, 8, 8],      # wholly in the bottom padding (rows 6-7)
                      [0, 0, 0, 0]]) / 8.0  # an empty slot
    found = predict.regions_in_original(boxes, [0.7, 0.9, 0.99, 0.0], padding)
    assert [r["score"] for r in found] == [0.9, 0.7]
    np.testing.assert_allclose([r["box"] for r in found], [[5, 2, 1, 2], [0, 0, 2, 1]])


def test_find_inputs_and_output_names(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "out").mkdir()
    for name in ("a.png", "a.dcm", "b.JPG", "IM0001", "notes.txt", ".DS_Store", "DICOMDIR",
                 "sub/c.jpeg", ".hidden/d.png", "out/a.png"):
        (root / name).write_bytes(b"x")
    files, skipped = predict.find_inputs(str(root), exclude=str(root / "out"))
    relative = [os.path.relpath(f, root) for f in files]
    assert relative == ["IM0001", "a.dcm", "a.png", "b.JPG", "sub/c.jpeg"]
    reasons = {os.path.relpath(s.path, root): s.reason for s in skipped}
    assert sorted(reasons) == [".DS_Store", ".hidden", "DICOMDIR", "notes.txt", "out"]
    assert reasons["out"] == "the output folder" and reasons[".hidden"] == "hidden"
    assert reasons["notes.txt"].startswith("suffix .txt is not one of")
    assert predict.output_names(files, str(root)) == ["IM0001", "a.dcm", "a.png", "b", "sub/c"]
    assert predict.find_inputs(str(root / "a.png")) == ([str(root / "a.png")], [])
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        predict.find_inputs(str(root / "missing"))


def test_output_names_are_unique_per_input(tmp_path):
    # d.png and d.png.jpg: old code named both "d.png" when a third file shared the stem "d".
    root = str(tmp_path)
    files = [os.path.join(root, n) for n in ("d.jpg", "d.png", "d.png.jpg", "x.json/y.png", "x",
                                             "A.png", "a.dcm", "summary.csv.png")]
    names = predict.output_names(files, root)
    assert names == ["d.jpg", "d.png", "d.png~2", "x.json/y", "x~2", "A.png", "a.dcm",
                     "summary.csv"]
    outputs = [f"{n}.{ext}".casefold() for n in names for ext in ("json", "png")]
    assert len(set(outputs)) == len(outputs)
    assert not {"summary.csv", predict.OUTPUT_MARKER, "x.json"} & set(outputs)


def test_workdir_predictor_matches_the_keras_model(trained_run, tmp_path):
    predictor = predict.load_predictor(str(trained_run))
    config, model, path = workdir_lib.restore_model(str(trained_run))
    assert predictor.model_id == {"type": "checkpoint", "path": path,
                                  "workdir": str(trained_run)}
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80), dtype=np.uint8)
    scan = io_lib.Scan(pixels=pixels, source={})
    prediction = predict.predict_scan(predictor, scan, 0.5, [0, 1])
    square, _ = io_lib.pad_to_square(pixels)
    expected = model(pipeline.preprocess_image(square[None, :, :, None], config.data.image_size,
                                               config.data.normalization), training=False)
    np.testing.assert_allclose(prediction.probs, expected["image_probs"][0], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(prediction.maps, expected["patch_probs"][0], rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="neither an exported SavedModel"):
        predict.load_predictor(str(tmp_path))


def write_batch(root):
    """Three good files (PNG, JPEG, DICOM) and each kind of bad one, plus a skipped text file."""
    (root / "sub").mkdir(parents=True)
    pixels = bright_square(40, 64, (4, 20), (40, 56))
    Image.fromarray(pixels).save(root / "good.png")
    Image.fromarray(pixels).save(root / "sub" / "good.jpg", quality=95)
    write_dicom(root / "sub" / "good.dcm", pixels.astype(np.uint16) * 16)
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    write_dicom(root / "nopixels.dcm", np.zeros((4, 4), np.uint16), pixel_data=False)
    write_dicom(root / "jpegls.dcm", np.zeros((4, 4), np.uint16), syntax=JPEGLSLossless,
                pixel_data=encapsulate([b"\x00" * 16]))
    (root / "notes.txt").write_text("skipped")


def test_cli_batch_goes_on_and_exit_code_counts_failures(stub_saved_model, tmp_path):
    write_batch(tmp_path / "in")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.predict", f"--model={stub_saved_model}",
         f"--input={tmp_path / 'in'}", f"--output={out}", "--top_k=2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "3 of 7 images predicted, 4 failed" in result.stdout
    assert "notes.txt" in result.stdout  # listed as skipped
    with open(out / "summary.csv", newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(["empty.png", "jpegls.dcm", "nopixels.dcm", "good.png",
                                   "sub/good.dcm", "sub/good.jpg", "text.jpg"])
    assert [r["status"] for r in rows.values()].count("error") == 4
    assert rows["empty.png"]["error"].endswith("empty.png: empty file")
    assert "not a PNG, JPEG or DICOM image" in rows["text.jpg"]["error"]
    assert "no pixel data" in rows["nopixels.dcm"]["error"]
    assert "JPEG-LS" in rows["jpegls.dcm"]["error"]
    for name in ("good", "sub/good.jpg", "sub/good.dcm"):  # sub/good.* differ by suffix only
        found = read_json(out / f"{name}.json")
        assert found["findings"] == ["Atelectasis", "Cardiomegaly"]
        np.testing.assert_allclose(found["classes"]["Atelectasis"]["regions"][0]["box"],
                                   [40, 4, 16, 16], atol=1e-4)
        assert (out / f"{name}.png").exists()
        row = rows[found["file"]]
        assert row["status"] == "ok" and row["findings"].startswith("Atelectasis")
        assert float(row["Atelectasis"]) == pytest.approx(
            found["classes"]["Atelectasis"]["probability"], abs=1e-6)
    assert not (out / "empty.json").exists()


def test_cli_exit_code_zero_when_all_succeed(stub_saved_model, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(bright_square(32, 32, (0, 8), (0, 8))).save(tmp_path / "in" / "ok.png")
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.predict", f"--model={stub_saved_model}",
         f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 1 images predicted, 0 failed" in result.stdout


# ---------------------------------------------------------------- where outputs may go (#13)


def _scan_folder(root, names=("scan.png",)):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(bright_square(32, 48, (4, 12), (30, 40))).save(root / name)
    return root


def _tree(folder):
    return {os.path.relpath(os.path.join(p, n), folder): open(os.path.join(p, n), "rb").read()
            for p, _, names in os.walk(folder) for n in names}


def test_output_at_the_input_never_writes_the_inputs(stub_predictor, tmp_path):
    inputs = _scan_folder(tmp_path / "in", ("scan.png", "other.png"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(inputs)
    before = _tree(tmp_path)
    for input_path, output in [
            (inputs, inputs),                             # the input folder itself
            (inputs / "scan.png", inputs),                # the folder of an input file
            (inputs, tmp_path / "link"),                  # the input through a symbolic link
            (inputs, tmp_path / "sub" / ".." / "in"),     # ... through ..
            (inputs, tmp_path)]:                          # a folder holding the input
        with pytest.raises(ValueError, match="never writes where its inputs are"):
            predict.predict_files(stub_predictor, str(input_path), str(output), progress=False)
    assert _tree(tmp_path) == before
    # An input that is a link into the output folder would be replaced by the outputs.
    (tmp_path / "out").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "out" / "elsewhere.png")
    (inputs / "linked.png").symlink_to(tmp_path / "out" / "elsewhere.png")
    with pytest.raises(ValueError, match="inside --output"):
        predict.predict_files(stub_predictor, str(inputs), str(tmp_path / "out"), progress=False)


def test_an_earlier_output_folder_inside_the_input_is_skipped(stub_predictor, tmp_path):
    inputs = _scan_folder(tmp_path / "in")
    first = predict.predict_files(stub_predictor, str(inputs), str(inputs / "results"),
                                  progress=False)
    assert [r["file"] for r in first.rows] == ["scan.png"]
    assert os.path.isfile(inputs / "results" / predict.OUTPUT_MARKER)
    # Next run into another folder: results/scan.png (an overlay) is not a radiograph.
    second = predict.predict_files(stub_predictor, str(inputs), str(tmp_path / "out2"),
                                   progress=False)
    assert [r["file"] for r in second.rows] == ["scan.png"]
    [skipped] = second.skipped
    assert skipped.path == str(inputs / "results") and "output folder of predict" in skipped.reason
    with pytest.raises(ValueError, match="is an output folder of predict"):
        predict.predict_files(stub_predictor, str(inputs / "results"), str(tmp_path / "o3"),
                              progress=False)


def test_colliding_names_get_one_result_each(stub_predictor, tmp_path):
    inputs = _scan_folder(tmp_path / "in", ("d.png", "d.jpg"))
    Image.fromarray(bright_square(32, 48, (4, 12), (30, 40))).save(inputs / "d.png.jpg")
    summary, out = run(stub_predictor, tmp_path)
    names = {r["file"]: r["name"] for r in summary.rows}
    assert names == {"d.jpg": "d.jpg", "d.png": "d.png", "d.png.jpg": "d.png~2"}
    for file, name in names.items():
        assert read_json(out / f"{name}.json")["file"] == file
        assert (out / f"{name}.png").is_file()
    with open(summary.csv_path, newline="") as f:
        assert {row["name"] for row in csv.DictReader(f)} == set(names.values())


def test_rerun_with_fewer_inputs_leaves_no_stale_result(stub_predictor, tmp_path):
    inputs = _scan_folder(tmp_path / "in", ("a.png", "b.png"))
    run(stub_predictor, tmp_path)
    os.remove(inputs / "b.png")
    summary, out = run(stub_predictor, tmp_path)
    assert [r["file"] for r in summary.rows] == ["a.png"]
    assert sorted(os.listdir(out)) == sorted([predict.OUTPUT_MARKER, "a.json", "a.png",
                                              predict.SUMMARY_FILE])
    marker = read_json(out / predict.OUTPUT_MARKER)
    assert marker["complete"] and marker["files"] == ["a.json", "a.png", predict.SUMMARY_FILE]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no partial left


def test_a_folder_not_made_by_predict_is_refused(stub_predictor, tmp_path):
    _scan_folder(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.docx").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="not written by predict"):
        run(stub_predictor, tmp_path)
    assert os.listdir(tmp_path / "out") == ["report.docx"]
    os.remove(tmp_path / "out" / "report.docx")
    run(stub_predictor, tmp_path)  # an empty folder is fine
    (tmp_path / "out" / "notes.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="notes.txt"):
        run(stub_predictor, tmp_path)
    assert (tmp_path / "out" / "notes.txt").read_text() == "added by the user"
    assert (tmp_path / "out" / "scan.json").is_file()


def test_an_interrupted_run_keeps_the_previous_results(stub_predictor, tmp_path, monkeypatch):
    _scan_folder(tmp_path / "in", ("a.png", "b.png"))
    run(stub_predictor, tmp_path)
    before = _tree(tmp_path / "out")
    # The rerun would give a.png other results; it is interrupted at b.png.
    Image.fromarray(bright_square(32, 48, (20, 30), (0, 10))).save(tmp_path / "in" / "a.png")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = predict._predict_file
    monkeypatch.setattr(predict, "_predict_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(stub_predictor, tmp_path)
    assert _tree(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]


def test_oversized_and_thin_images_get_an_error_row(stub_predictor, tmp_path):
    inputs = _scan_folder(tmp_path / "in", ("good.png",))
    Image.new("L", (5000, 10)).save(inputs / "strip.png")
    summary, out = run(stub_predictor, tmp_path)
    rows = {r["file"]: r for r in summary.rows}
    assert rows["good.png"]["status"] == "ok"
    assert rows["strip.png"]["status"] == "error"
    assert "5000 x 10 pixels" in rows["strip.png"]["error"]
    assert "MAX_ASPECT_RATIO" in rows["strip.png"]["error"]
    assert not (out / "strip.json").exists() and not (out / "strip.png").exists()


def test_jpeg_exif_orientation_boxes_are_in_the_upright_frame(stub_predictor, tmp_path):
    (tmp_path / "in").mkdir()
    # Stored 64 wide x 40 high, bright at rows 4-20, cols 40-56; orientation 6 shows it
    # rotated 90 degrees clockwise: 40 wide x 64 high, stored (row r, col c) shown at
    # (x = 39 - r, y = c): the square at x 20..36, y 40..56.
    exif = Image.Exif()
    exif[io_lib.EXIF_ORIENTATION] = 6
    Image.fromarray(bright_square(40, 64, (4, 20), (40, 56))).save(
        tmp_path / "in" / "scan.jpg", quality=100, exif=exif)
    summary, out = run(stub_predictor, tmp_path)
    found = read_json(out / "scan.json")
    assert (found["image"]["width"], found["image"]["height"]) == (40, 64)
    assert found["image"]["exif_orientation"] == 6
    np.testing.assert_allclose(found["classes"]["Atelectasis"]["regions"][0]["box"],
                               [20, 40, 16, 16], atol=1e-4)


def test_cli_checks_its_numbers_before_loading_the_model(tmp_path):
    for flag in ("--top_k=0", "--map_threshold=nan", "--decision_threshold=-0.1"):
        result = subprocess.run(
            [sys.executable, "-m", "chestxray_tf.cli.predict", f"--model={tmp_path / 'none'}",
             f"--input={tmp_path}", f"--output={tmp_path / 'out'}", flag],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert result.returncode != 0
        assert ("top_k must be" in result.stderr or "threshold must be" in result.stderr), \
            result.stderr[-2000:]
        assert "neither an exported SavedModel" not in result.stderr
        assert "Traceback" not in result.stderr  # a user error is one line (cli.run)


# ------------------------------------------- decision threshold vs map threshold (#18 item 6)


def test_a_finding_needs_its_probability_not_a_map_cell(stub_predictor, tmp_path):
    # A dim square (brightness 0.3): probability of class k = 0.3 x WEIGHTS[k] < 0.5 for all,
    # yet its cells pass a map threshold of 0.1: regions, but no finding.
    (tmp_path / "in").mkdir()
    pixels = np.zeros((64, 64), np.uint8)
    pixels[8:24, 8:24] = round(0.3 * 255)
    Image.fromarray(pixels).save(tmp_path / "in" / "dim.png")
    summary, out = run(stub_predictor, tmp_path, threshold=0.1)
    found = read_json(out / "dim.json")
    assert found["findings"] == [] and summary.rows[0]["findings"] == ""
    assert found["map_threshold"] == 0.1
    assert found["decision_threshold"] == {name: 0.5 for name in CLASS_NAMES}
    assert found["classes"]["Atelectasis"]["regions"]  # the map still has its region
    assert found["classes"]["Atelectasis"]["probability"] < 0.5
    with Image.open(out / "dim.png") as overlay:  # one panel: the most probable class
        assert overlay.size[0] == 300
    # Per class: Atelectasis (p = 0.3) becomes a finding at 0.25; Hernia (0.105) does not.
    summary, out = run(stub_predictor, tmp_path, threshold=0.1,
                       decision_threshold={"Atelectasis": 0.25, "Hernia": 0.25})
    found = read_json(out / "dim.json")
    assert found["findings"] == ["Atelectasis"]
    assert found["decision_threshold"]["Atelectasis"] == 0.25
    assert found["decision_threshold"]["Cardiomegaly"] == predict.DECISION_THRESHOLD
    assert summary.rows[0]["findings"] == f"Atelectasis {76 / 255:.3f}"  # 76 = round(0.3 x 255)


@pytest.mark.parametrize("decision, top_k", [(0.0, 20), (0.6, 20), (0.9, 20), (0.6, 2)])
def test_findings_are_the_classes_at_or_above_the_decision_threshold(decision, top_k):
    probs = np.array([0.2, 0.9, 0.6, 0.6, 0.95])
    prediction = predict.Prediction(probs=probs, maps=None, padding=None, regions={})
    thresholds = predict.decision_thresholds(["a", "b", "c", "d", "e"], decision)
    found = predict.top_findings(prediction, [0, 1, 2, 3, 4], top_k, thresholds)
    expected = []  # by hand: every class >= the threshold, highest first, ties by index
    for k in (4, 1, 2, 3, 0):
        if probs[k] >= decision and len(expected) < top_k:
            expected.append(k)
    assert found == expected


def test_decision_thresholds_per_class_and_bad_values():
    names = list(CLASS_NAMES)
    values = predict.decision_thresholds(names, {"Infiltrate": 0.2, "Hernia": 1.0})
    assert values[names.index("Infiltration")] == 0.2 and values[names.index("Hernia")] == 1.0
    assert (np.delete(values, [names.index("Infiltration"), names.index("Hernia")]) == 0.5).all()
    with pytest.raises(ValueError, match="unknown class 'Flu'"):
        predict.decision_thresholds(names, {"Flu": 0.3})
    with pytest.raises(ValueError, match="decision threshold of Mass must be in"):
        predict.decision_thresholds(names, {"Mass": 2})
    with pytest.raises(ValueError, match="decision_threshold must be in"):
        predict.decision_thresholds(names, float("nan"))


def test_predict_scan_takes_an_array_a_path_or_a_scan(stub_predictor, tmp_path):
    pixels = bright_square(40, 64, (4, 20), (40, 56))
    Image.fromarray(pixels).save(tmp_path / "scan.png")
    from_scan = predict.predict_scan(stub_predictor, io_lib.read_image(tmp_path / "scan.png"),
                                     0.5, [0])
    for image in (pixels, pixels[..., None], np.repeat(pixels[..., None], 3, axis=-1),
                  pixels.astype(np.uint16) * 257, pixels.astype(np.float32) / 255.0,
                  str(tmp_path / "scan.png"), tmp_path / "scan.png"):
        prediction = predict.predict_scan(stub_predictor, image, None, [0])
        np.testing.assert_allclose(prediction.probs, from_scan.probs, atol=1e-6)
        np.testing.assert_allclose(prediction.regions[0][0]["box"], [40, 4, 16, 16], atol=1e-4)
    with pytest.raises(io_lib.ImageReadError, match=r"numpy array int64 \[2, 3, 4\]"):
        predict.predict_scan(stub_predictor, np.zeros((2, 3, 4), np.int64), None, [0])
    with pytest.raises(io_lib.ImageReadError, match="aspect ratio"):
        predict.as_scan(np.zeros((10, 500), np.uint8))


def test_as_scan_grey_of_rgb_and_scaling_against_a_loop():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = predict.as_scan(rgb).pixels
    for i in range(5):  # ITU-R 601 luma, as Pillow's "L" mode
        for j in range(7):
            r, g, b = (float(v) for v in rgb[i, j])
            assert abs(int(grey[i, j]) - (0.299 * r + 0.587 * g + 0.114 * b)) <= 0.5 + 1e-9
    wide = np.array([[1000, 3000], [2000, 5000]], np.uint16)
    scan = predict.as_scan(np.tile(wide, (4, 4)))
    assert scan.pixels.dtype == np.uint8 and scan.pixels.max() == 255 and scan.pixels.min() == 0
    assert scan.pixels[0, 1] == round((3000 - 1000) * 255 / 4000)
    assert scan.source["format"] == "array" and scan.source["dtype"] == "uint16"


def test_cli_threshold_is_a_deprecated_alias_and_prints_the_notice(stub_saved_model, tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(bright_square(32, 32, (0, 8), (0, 8))).save(tmp_path / "in" / "ok.png")
    (tmp_path / "decide.json").write_text(json.dumps({"Atelectasis": 0.05}))
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.predict", f"--model={stub_saved_model}",
         f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", "--threshold=0.3",
         f"--decision_threshold={tmp_path / 'decide.json'}"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--threshold is deprecated" in result.stderr and "--map_threshold" in result.stderr
    assert predict.NOTICE in result.stdout
    found = read_json(tmp_path / "out" / "ok.json")
    assert found["map_threshold"] == 0.3 and found["decision_threshold"]["Atelectasis"] == 0.05


def test_threshold_flags_parsing(tmp_path):
    assert predict.parse_decision_threshold("0.25") == 0.25
    (tmp_path / "t.json").write_text('{"Mass": 0.3}')
    assert predict.parse_decision_threshold(str(tmp_path / "t.json")) == {"Mass": 0.3}
    (tmp_path / "list.json").write_text("[0.3]")
    (tmp_path / "bad.json").write_text("{")
    for value, message in [("high", "neither a number nor a JSON file"),
                           (str(tmp_path / "list.json"), "expected a JSON object"),
                           (str(tmp_path / "bad.json"), "not readable JSON")]:
        with pytest.raises(ValueError, match=message):
            predict.parse_decision_threshold(value)
    assert predict.map_threshold_of(0.4, None) == 0.4
    assert predict.map_threshold_of(None, 0.3) == predict.map_threshold_of(0.3, 0.3) == 0.3
    assert predict.map_threshold_of(None, None) is None
    with pytest.raises(ValueError, match="disagree"):
        predict.map_threshold_of(0.4, 0.3)
