"""The downstream trainer: a linear classifier on an exported encoder, and on raw pixels.

The trainer runs in subprocesses, as users run it: its absl flags are defined by its
`run()`, and parsing them in this process would leave them set for other tests.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from export import exporter
from gali_tf import data, networks, training
from gali_tf.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    training.train(training.TrainConfig(
        model_dir=str(model_dir), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(), batch_size=50, steps=1, verbose=0, jit_compile=False,
        image_every=0))
    version = exporter.export_run(str(model_dir), str(tmp_path_factory.mktemp("hub")))
    return os.path.join(version, exporter.ENCODER_DIR)


def _downstream(*args):
    return subprocess.run([sys.executable, "-m", "trainers.downstream", "--dataset=digits",
                           "--epochs=2", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _accuracy(done, description):
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r"test accuracy: ([0-9.]+) \((.*)\)", done.stdout)
    assert match, done.stdout
    assert match.group(2) == description
    return float(match.group(1))


def test_linear_classifier_on_exported_features_and_on_raw_pixels(encoder_dir):
    features = _accuracy(_downstream(f"--hub_module={encoder_dir}"),
                         "linear on exported encoder features")
    raw = _accuracy(_downstream("--raw_pixels"), "linear on raw pixels")
    # Ten classes: chance is 0.1; even a 1-step encoder's features separate digits.
    assert 0.3 < features <= 1.0 and 0.5 < raw <= 1.0


def test_fine_tuning_reads_the_input_shape_from_the_module(encoder_dir, tmp_path):
    # Without metadata.json next to it, the module's __call__ signature gives the shape.
    bare = tmp_path / "encoder"
    shutil.copytree(encoder_dir, bare)
    accuracy = _accuracy(_downstream(f"--hub_module={bare}", "--fine_tune", "--epochs=1"),
                         "linear on fine-tuned exported encoder")
    assert 0.0 <= accuracy <= 1.0


def test_not_a_module_is_one_line_error(encoder_dir):
    done = _downstream(f"--hub_module={os.path.dirname(encoder_dir)}")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not a SavedModel directory" in errors[0], done.stderr[-2000:]
