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

from chestxray_tf import export
from chestxray_tf.data import pipeline
from chestxray_tf.training import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    pngs = [tf.io.read_file(f"{sys.argv[2]}/image_{i}.png") for i in range(2)]
    encoded = loaded.signatures["serving_default"](images=tf.stack(pngs))
    pixels = loaded.signatures["serving_float"](
        pixels=tf.constant(np.load(f"{sys.argv[2]}/pixels.npy")))
    np.savez(sys.argv[3], **{"encoded_" + k: v.numpy() for k, v in encoded.items()},
             **{"float_" + k: v.numpy() for k, v in pixels.items()})
    print(json.dumps({"imported": sorted(m for m in sys.modules if m.startswith("chestxray"))}))
""")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    config, model, _ = checkpoints.restore_model(str(trained_run))
    out = tmp_path_factory.mktemp("export") / "saved_model"
    export.export_saved_model(model, config, str(out))
    return config, model, out


def test_saved_model_in_a_fresh_process_matches_keras(exported, tmp_path):
    config, model, out = exported
    rng = np.random.default_rng(0)
    # Two grey images of other sizes than the model's (the signature resizes them).
    grey = [rng.integers(0, 256, (96, 96), dtype=np.uint8),
            rng.integers(0, 256, (50, 50), dtype=np.uint8)]
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
    encoded_batch = tf.stack([pipeline.preprocess_image(g[..., None], size, norm) for g in grey])
    float_batch = tf.stack([pipeline.preprocess_image(tf.cast(p, tf.uint8), size, norm)
                            for p in pixels])
    for prefix, batch in (("encoded_", encoded_batch), ("float_", float_batch)):
        expected = model(batch, training=False)
        for key in ("image_probs", "patch_probs"):
            np.testing.assert_allclose(served[prefix + key], expected[key], rtol=1e-5,
                                       atol=1e-6)


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
