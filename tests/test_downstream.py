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
from gali_tf import data, downstream, exports, files, networks, training
from gali_tf.errors import ConfigError
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


# ------------------------------------------------------------- faults (issue 13)


def _copied_export(encoder_dir, tmp_path):
    """A copy of the export directory: tests below damage it."""
    export_dir = tmp_path / "hub"
    shutil.copytree(os.path.dirname(os.path.dirname(encoder_dir)), export_dir)
    return export_dir, str(export_dir / "1" / exporter.ENCODER_DIR)


@pytest.mark.parametrize("content, problem", [
    ('{"format": ', "{path} is not valid JSON (Expecting value: line 1 column 12 (char 11))"),
    ("[8, 8, 1]", "{path} holds a JSON list, not an object"),
    ('{"format": "gali_tf-export-1", "image_shape": [8, 8, 1]}', "{path} lacks latent_dim, step"),
    ('{"format": "gali_tf-export-1", "image_shape": "8x8", "latent_dim": 3, "step": 1}',
     "image_shape in {path} is '8x8', expected [height, width, channels]"),
])
def test_corrupt_metadata_is_one_config_error_naming_it(encoder_dir, tmp_path, content,
                                                        problem):
    export_dir, encoder = _copied_export(encoder_dir, tmp_path)
    metadata = export_dir / "1" / files.METADATA_FILE
    metadata.write_text(content)
    with pytest.raises(ConfigError) as info:
        downstream.module_image_shape(encoder)
    assert str(info.value) == (f"--hub_module={encoder}: {problem.format(path=metadata)}; "
                               "re-export the run with export.main --overwrite")


def test_corrupt_metadata_in_the_cli_is_one_error_line(encoder_dir, tmp_path):
    export_dir, encoder = _copied_export(encoder_dir, tmp_path)
    metadata = export_dir / "1" / files.METADATA_FILE
    metadata.write_text("")
    done = _downstream(f"--hub_module={encoder}")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --hub_module={encoder}: {metadata} is not valid JSON (Expecting "
                      "value: line 1 column 1 (char 0)); re-export the run with export.main "
                      "--overwrite"], done.stderr[-2000:]


def test_loading_an_export_killed_mid_overwrite_restores_it(encoder_dir, tmp_path, capsys):
    export_dir, encoder = _copied_export(encoder_dir, tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is the killed export's
    aside = f".old-1-{exports.host()}-{child.pid}-0123abcd"
    os.rename(export_dir / "1", export_dir / aside)
    assert downstream.module_image_shape(encoder) == (8, 8, 1)
    assert sorted(os.listdir(export_dir)) == ["1"]
    assert capsys.readouterr().err == (
        f"warning: --export_dir={export_dir}: version 1 restored from {aside}, left by an "
        "export killed while replacing it\n")
