"""chestxray_tf/export.py and cli/export.py: a SavedModel that needs only TensorFlow."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from chestxray_tf import export, inference
from chestxray_tf.tasks.base import RegionRule
from chestxray_tf import io as io_lib
from chestxray_tf.data import pipeline
from chestxray_tf import workdir as workdir_lib

LI_RULE = RegionRule(0.5)  # Li et al.: every cell > 0.5 together as one region
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    pngs = [tf.io.read_file(f"{sys.argv[2]}/image_{i}.png") for i in range(3)]
    encoded = loaded.signatures["serving_default"](images=tf.stack(pngs))
    pixels = loaded.signatures["serving_float"](
        pixels=tf.constant(np.load(f"{sys.argv[2]}/pixels.npy")))
    np.savez(sys.argv[3], **{"encoded_" + k: v.numpy() for k, v in encoded.items()},
             **{"float_" + k: v.numpy() for k, v in pixels.items()})
    print(json.dumps({"imported": sorted(m for m in sys.modules if m.startswith("chestxray"))}))
""")


def region_boxes_reference(maps, threshold, sizes):
    """Per image and class, cell by cell: the bounding box of the cells > threshold on the
    padded square (cell (r, c) of h x w covers [r S / h, (r + 1) S / h) x [c S / w, ...)),
    moved to the input frame (the padding `top = (S - H) // 2`, `left = (S - W) // 2` taken
    off), normalised by (H, W) and clipped to [0, 1]; the largest value; zeros if none."""
    batch, rows, cols, classes = maps.shape
    boxes, scores = np.zeros((batch, classes, 4)), np.zeros((batch, classes))
    for b in range(batch):
        height, width = sizes[b]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        for k in range(classes):
            cells = [(r, c) for r in range(rows) for c in range(cols)
                     if maps[b, r, c, k] > threshold]
            if not cells:
                continue
            scores[b, k] = max(maps[b, r, c, k] for r, c in cells)
            r0, r1 = min(r for r, _ in cells), max(r for r, _ in cells) + 1
            c0, c1 = min(c for _, c in cells), max(c for _, c in cells) + 1
            corners = [(r0 * side / rows - top) / height, (c0 * side / cols - left) / width,
                       (r1 * side / rows - top) / height, (c1 * side / cols - left) / width]
            boxes[b, k] = [min(max(v, 0.0), 1.0) for v in corners]
    return boxes, scores


def test_region_boxes_hand_checked():
    # One 4 x 4 map of one class on a 40 x 80 image (H x W): square S = 80, top = 20.
    maps = np.zeros((1, 4, 4, 2), np.float32)
    maps[0, 1, 2, 0] = 0.7
    maps[0, 2, 3, 0] = 0.9       # class 0: rows 1-2, cols 2-3; class 1: nothing
    maps[0, 0, 0, 1] = 0.5       # not > 0.5
    boxes, scores = inference.region_boxes(maps, LI_RULE)
    np.testing.assert_allclose(boxes[0, :, 0], [[0.25, 0.5, 0.75, 1.0], [0, 0, 0, 0]])
    np.testing.assert_allclose(scores[0, :, 0], [0.9, 0.0])
    moved = export.boxes_to_input_frame(boxes, tf.constant([[40, 80]]))
    # y: 0.25 * 80 = 20 -> (20 - 20) / 40 = 0; 0.75 * 80 = 60 -> 40 / 40 = 1.
    np.testing.assert_allclose(moved[0, :, 0], [[0.0, 0.5, 1.0, 1.0], [0, 0, 0, 0]])


def test_region_boxes_random_maps_match_the_reference():
    rng = np.random.default_rng(4)
    maps = rng.uniform(0, 1, (5, 6, 7, 3)).astype(np.float32) ** 4   # sparse above 0.5
    maps[1] = 0.1                                                      # an image without regions
    sizes = np.array([[30, 30], [30, 50], [50, 30], [17, 64], [64, 9]], np.int32)
    boxes, scores = inference.region_boxes(maps, LI_RULE)
    moved = export.boxes_to_input_frame(boxes, tf.constant(sizes))
    expected_boxes, expected_scores = region_boxes_reference(maps, 0.5, sizes)
    assert expected_scores.any() and not expected_scores[1].any()
    np.testing.assert_allclose(moved[:, :, 0], expected_boxes, atol=1e-6)
    np.testing.assert_allclose(scores[:, :, 0], expected_scores, atol=1e-7)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    config, model, _ = workdir_lib.restore_model(str(trained_run))
    out = tmp_path_factory.mktemp("export") / "saved_model"
    # A threshold that some patches of the barely trained model pass: its median on a mid-grey
    # image (the regions are compared exactly, whatever passes).
    grey = tf.zeros([1, config.data.image_size, config.data.image_size, 3])
    threshold = float(np.median(model(grey, training=False)["patch_probs"]))
    export.export_saved_model(model, config, str(out), region_threshold=threshold)
    return config, model, out


def test_saved_model_in_a_fresh_process_matches_keras(exported, tmp_path):
    config, model, out = exported
    rng = np.random.default_rng(0)
    # Grey images of other sizes than the model's (the signature pads and resizes them).
    grey = [rng.integers(0, 256, (96, 96), dtype=np.uint8),
            rng.integers(0, 256, (50, 50), dtype=np.uint8),
            rng.integers(0, 256, (40, 72), dtype=np.uint8)]
    pixels = rng.integers(0, 256, (2, 80, 80, 1)).astype(np.float32)
    for i, g in enumerate(grey):
        Image.fromarray(g).save(tmp_path / f"image_{i}.png")
    np.save(tmp_path / "pixels.npy", pixels)
    script = tmp_path / "serve.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, str(script), str(out), str(tmp_path),
         str(tmp_path / "outputs.npz")], capture_output=True, text=True, timeout=300,
        cwd=str(tmp_path), env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["imported"] == []
    served = np.load(tmp_path / "outputs.npz")

    size, norm = config.data.image_size, config.data.normalization
    # The signature pads as chestxray_tf.io does (centred, black).
    encoded_batch = tf.stack([pipeline.preprocess_image(io_lib.pad_to_square(g[..., None])[0],
                                                        size, norm) for g in grey])
    float_batch = tf.stack([pipeline.preprocess_image(tf.cast(p, tf.uint8), size, norm)
                            for p in pixels])
    for prefix, batch in (("encoded_", encoded_batch), ("float_", float_batch)):
        expected = model(batch, training=False)
        for key in ("image_probs", "patch_probs"):
            np.testing.assert_allclose(served[prefix + key], expected[key], rtol=1e-5,
                                       atol=1e-6)
    threshold = export.read_metadata(str(out))["region_threshold"]
    for prefix, sizes in (("encoded_", [g.shape for g in grey]), ("float_", [(80, 80)] * 2)):
        boxes, scores = region_boxes_reference(served[prefix + "patch_probs"], threshold, sizes)
        assert scores.any() and not scores.all()
        np.testing.assert_allclose(served[prefix + "region_boxes"][:, :, 0], boxes, atol=1e-6)
        np.testing.assert_allclose(served[prefix + "region_scores"][:, :, 0], scores, atol=1e-7)
        np.testing.assert_allclose(served[prefix + "maps"], served[prefix + "patch_probs"])


def test_metadata_names_the_outputs(exported):
    config, _, out = exported
    metadata = export.read_metadata(str(out))
    assert metadata["class_names"][:2] == ["Atelectasis", "Cardiomegaly"]
    assert len(metadata["class_names"]) == config.model.num_classes
    assert (metadata["map_key"], metadata["score_key"]) == ("maps", "scores")
    assert metadata["region_rule"]["keep"] == "all" and metadata["task"] == "li2018"
    assert metadata["image_size"] == config.data.image_size
    assert 0 < metadata["region_threshold"] < 1
    with pytest.raises(FileNotFoundError, match="not written by chestxray_tf.export"):
        export.read_metadata(str(out / "variables"))


def test_variables_are_stored_once(exported):
    _, model, out = exported
    variables = sum(os.path.getsize(p) for p in glob.glob(str(out / "variables" / "*")))
    weights = sum(np.asarray(w).nbytes for w in model.weights)
    assert weights <= variables < 1.5 * weights + 200_000, (variables, weights)


def test_cli_export(trained_run, tmp_path):
    out = tmp_path / "cli_export"
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.export", f"--workdir={trained_run}",
         f"--output={out}", "--checkpoint=latest"], capture_output=True, text=True,
        timeout=300, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "saved_model.pb").exists() and "ckpt-12" in result.stdout


def test_saved_model_cli_runs_the_export(exported, tmp_path):
    """The C++ loader of `saved_model_cli run` (and TF Serving) finds every variable: PNG bytes
    in, the Keras model's outputs out."""
    config, model, out = exported
    grey = np.random.default_rng(3).integers(0, 256, (config.data.image_size,) * 2,
                                             dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "scan.png")
    np.save(tmp_path / "images.npy", np.array([(tmp_path / "scan.png").read_bytes()],
                                              dtype=object))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "run", "--dir", str(out), "--tag_set", "serve", "--signature_def",
         "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}",
         "--outdir", str(tmp_path / "cli_out")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    expected = model(pipeline.preprocess_image(grey[..., None], config.data.image_size,
                                               config.data.normalization)[None],
                     training=False)
    for key in ("image_probs", "patch_probs"):
        np.testing.assert_allclose(np.load(tmp_path / "cli_out" / f"{key}.npy"), expected[key],
                                   rtol=1e-5, atol=1e-6)


def test_serving_bounds_the_work_per_image(exported):
    """A 4 x 400 image (aspect 100:1) would be padded to 400 x 400: refused in-graph, naming
    the bound (the same bounds as predict's, `chestxray_tf.io`)."""
    config, model, _ = exported
    serving = export.Serving(model, export.serving_metadata(config), config)
    with pytest.raises(tf.errors.InvalidArgumentError, match="MAX_ASPECT"):
        serving.serve_float(tf.zeros([1, 4, 400, 1]))
    assert serving.serve_float(tf.zeros([1, 40, 60, 1]))["scores"].shape == (1, 14)
