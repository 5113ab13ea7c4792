"""Export: reload and compare every signature, hub.KerasLayer fine-tuning, TFSMLayer
(inference and fine-tuning through the training endpoints), atomic writes, overwrite,
bad input, and a fresh process without gali_tf."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from export import exporter
from gali_tf import data, exports, networks, training
from gali_tf.run_dir import RestoredRun, restore_networks
from gali_tf.errors import ConfigError
from gali_tf.model import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
LATENT = 3


def tiny_config(model_dir):
    return training.TrainConfig(
        model_dir=str(model_dir), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=LATENT, width=4),
        model=ModelConfig(), batch_size=50, steps=1, verbose=0, jit_compile=False,
        image_every=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    training.train(tiny_config(model_dir), flags_text="--tuples=gali4\n--width=4\n")
    assert os.path.exists(os.path.join(model_dir, "flags.txt"))
    return str(model_dir)


@pytest.fixture(scope="module")
def restored(run_dir):
    return restore_networks(run_dir)


@pytest.fixture(scope="module")
def exported(run_dir, restored, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("hub")
    with open(os.path.join(run_dir, "flags.txt")) as f:
        return exporter.export_networks(restored, str(export_dir), flags_text=f.read())


def _images(n=6, seed=0):
    return np.random.RandomState(seed).uniform(-1, 1, (n,) + SHAPE).astype(np.float32)


def _leftovers(export_dir):
    return [name for name in os.listdir(export_dir) if name.startswith(".")]


def test_export_layout_and_metadata(exported, run_dir):
    assert os.path.basename(exported) == "1"
    assert sorted(os.listdir(exported)) == ["encoder", "generator", "metadata.json"]
    with open(os.path.join(exported, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["variant"] == "gali4" and meta["tuples"].startswith("x, E(x); x, E(G(E(x)))")
    assert meta["image_shape"] == list(SHAPE) and meta["latent_dim"] == LATENT
    assert meta["value_range"] == [-1.0, 1.0] and meta["step"] == 1
    assert meta["checkpoint"] == os.path.join(os.path.abspath(run_dir), "checkpoints", "ckpt-1")
    assert meta["flags"] == ["--tuples=gali4", "--width=4"]
    assert meta["training_endpoints"] == {"encode": "encode_training",
                                          "serving_default": "serving_default_training"}
    assert _leftovers(os.path.dirname(exported)) == []


def test_every_signature_matches_the_in_process_model(exported, restored):
    run = restored
    x, z = _images(), np.random.RandomState(1).normal(size=(5, LATENT)).astype(np.float32)
    mu, log_sigma = run.encoder(x, training=False)
    features = run.encoder.features(x, training=False)
    close = dict(rtol=1e-5, atol=1e-6)

    encoder = tf.saved_model.load(os.path.join(exported, "encoder"))
    assert set(encoder.signatures) == {"encode", "encode_uint8", "serving_default"}
    out = encoder.signatures["encode"](images=tf.constant(x))
    np.testing.assert_allclose(out["z_mean"], mu, **close)
    np.testing.assert_allclose(out["z_stdev"], tf.exp(log_sigma), **close)
    np.testing.assert_allclose(out["features"], features, **close)
    assert out["z_sample"].shape == (6, LATENT) and np.isfinite(out["z_sample"]).all()
    assert out["features"].shape == (6, run.encoder.feature_width())
    np.testing.assert_allclose(encoder.signatures["serving_default"](images=tf.constant(x))
                               ["features"], features, **close)
    np.testing.assert_allclose(encoder(x), features, **close)
    np.testing.assert_allclose(encoder(x, training=False), features, **close)

    # uint8 of another size: resized bilinearly and scaled as the training data were.
    pictures = np.random.RandomState(2).randint(0, 256, (3, 20, 13, 1)).astype(np.uint8)
    scaled = tf.image.resize(pictures.astype(np.float32), SHAPE[:2]) / 127.5 - 1.0
    out8 = encoder.signatures["encode_uint8"](images=tf.constant(pictures))
    np.testing.assert_allclose(out8["z_mean"], run.encoder(scaled)[0], **close)
    np.testing.assert_allclose(out8["features"], run.encoder.features(scaled), **close)

    generator = tf.saved_model.load(os.path.join(exported, "generator"))
    generated = generator.signatures["generate"](z=tf.constant(z))
    np.testing.assert_allclose(generated["images"], run.generator(z, training=False), **close)
    expected_uint8 = np.round((run.generator(z).numpy() + 1) * 127.5).astype(np.uint8)
    assert generated["images_uint8"].dtype == tf.uint8
    assert np.abs(generated["images_uint8"].numpy().astype(int) - expected_uint8).max() <= 1
    recon = generator.signatures["reconstruct"](images=tf.constant(x))
    np.testing.assert_allclose(recon["images"], run.generator(mu, training=False), **close)
    assert recon["images_uint8"].shape == (6,) + SHAPE

    # training=True (batch statistics) last: it updates BatchNorm's moving averages.
    np.testing.assert_allclose(encoder(x, training=True),
                               run.encoder.features(x, training=True), **close)


def test_export_run_carries_the_checkpointed_weights(run_dir, tmp_path):
    # Unrestored networks keep their random initial values, which differ per build.
    x = _images()
    first = exporter.export_run(run_dir, str(tmp_path / "a"))
    second = exporter.export_run(run_dir, str(tmp_path / "b"))
    features = [tf.saved_model.load(os.path.join(v, "encoder"))(x) for v in (first, second)]
    np.testing.assert_allclose(features[0], features[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("signature, images", [
    ("encode", np.zeros((2, 8, 8, 3), np.float32)),           # wrong channel count
    ("encode", np.zeros((8, 8, 1), np.float32)),              # wrong rank
    ("encode_uint8", np.zeros((2, 20, 20, 3), np.uint8)),
    ("encode_uint8", np.zeros((20, 20, 1), np.uint8)),
])
def test_wrong_image_shape_is_a_clear_error(exported, signature, images):
    encoder = tf.saved_model.load(os.path.join(exported, "encoder"))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)) as info:
        encoder.signatures[signature](images=tf.constant(images))
    assert "shape" in str(info.value).lower()
    with pytest.raises((TypeError, ValueError)):
        encoder(tf.constant(images, tf.float32))


def test_hub_keras_layer_fine_tunes(exported):
    import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel

    images, labels = next(iter(data.make_dataset(
        data.DataConfig(dataset="digits", image_size=8), "train", 32, shuffle=False,
        repeat=False, with_labels=True)))
    tf_keras.utils.set_random_seed(0)
    layer = hub.KerasLayer(os.path.join(exported, "encoder"), trainable=True)
    model = tf_keras.Sequential([tf_keras.Input(SHAPE), layer, tf_keras.layers.Dense(10)])
    model.compile(tf_keras.optimizers.Adam(1e-2),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert layer.trainable_weights and not layer.losses
    before = [w.numpy().copy() for w in layer.trainable_weights]
    history = model.fit(images, labels, batch_size=32, epochs=6, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert max(np.abs(b - w.numpy()).max() for b, w in zip(before, layer.trainable_weights)) > 0


def test_training_endpoints_run_the_encoder_in_training_mode(exported, run_dir):
    # A fresh restore: training=True updates BatchNorm's moving averages, and the
    # module-scoped `restored` must keep its own for the inference comparisons.
    run = restore_networks(run_dir)
    x = _images(5, seed=3)
    encoder = tf.saved_model.load(os.path.join(exported, "encoder"))
    # Attributes, not signatures: a model server must not update BatchNorm.
    assert set(encoder.signatures) == {"encode", "encode_uint8", "serving_default"}
    out = encoder.encode_training(tf.constant(x))
    features = run.encoder.features(x, training=True)
    mu, log_sigma = run.encoder(x, training=True)
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["features"], features, **close)
    np.testing.assert_allclose(out["z_mean"], mu, **close)
    np.testing.assert_allclose(out["z_stdev"], tf.exp(log_sigma), **close)
    assert sorted(out) == ["features", "z_mean", "z_sample", "z_stdev"]
    np.testing.assert_allclose(encoder.serving_default_training(tf.constant(x))["features"],
                               features, **close)
    # Batch statistics, not the moving averages the inference endpoint uses.
    inference = encoder.signatures["serving_default"](images=tf.constant(x))["features"]
    assert np.abs(inference - features).max() > 1e-3
    with pytest.raises((TypeError, ValueError)):
        encoder.encode_training(tf.zeros((2, 8, 8, 3)))


def _inference(path, endpoint, images):
    """A fresh load's inference outputs: what the export on disk answers."""
    return tf.saved_model.load(path).signatures[endpoint](images=tf.constant(images))


@pytest.mark.parametrize("call_endpoint, output", [("serving_default", "features"),
                                                   ("encode", "z_mean")])
def test_tfsm_layer_fine_tunes_through_the_training_endpoint(exported, restored,
                                                             call_endpoint, output):
    path = os.path.join(exported, "encoder")
    with open(os.path.join(exported, "metadata.json")) as f:
        training_endpoint = exports.training_endpoint(json.load(f), call_endpoint, path)
    keras.utils.set_random_seed(0)
    layer = keras.layers.TFSMLayer(path, call_endpoint=call_endpoint,
                                   call_training_endpoint=training_endpoint, trainable=True)
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)[output]))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = _images(8, seed=4)
    before = _inference(path, call_endpoint, x)
    # E's kernels, BatchNorm scales and offsets train; the moving averages do not.
    assert len(layer.trainable_weights) == len(restored.encoder.trainable_variables)
    assert layer.non_trainable_weights
    def values():
        return [[w.numpy().copy() for w in weights]
                for weights in (layer.trainable_weights, layer.non_trainable_weights)]

    trainable, moving = values()
    model.fit(x, np.ones((8, 2), np.float32), batch_size=4, epochs=1, verbose=0)  # 2 steps
    trained, moved = values()
    assert all(np.abs(a - b).max() > 0 for a, b in zip(trainable, trained))
    # Only a training=True pass updates BatchNorm's moving averages: the training
    # endpoint ran, not the inference one.
    assert all(np.abs(a - b).max() > 0 for a, b in zip(moving, moved))
    # Fine-tuning changes the layer's variables in memory, never the export on disk.
    after = _inference(path, call_endpoint, x)[output]
    np.testing.assert_allclose(after, before[output], rtol=1e-5, atol=1e-6)
    assert np.abs(layer(tf.constant(x))[output] - before[output]).max() > 1e-4


def test_training_endpoint_of_older_or_unpaired_exports_is_a_one_line_error():
    meta = {"format": exports.FORMAT, "image_shape": [8, 8, 1], "latent_dim": 3, "step": 1}
    with pytest.raises(ConfigError) as info:
        exports.training_endpoint(meta, "encode", "hub/1/encoder")
    assert str(info.value) == ("hub/1/encoder: the export has no training endpoints (written "
                               "before them); re-export the run with export.main --overwrite")
    meta["training_endpoints"] = dict(exports.TRAINING_ENDPOINTS)
    with pytest.raises(ConfigError) as info:
        exports.training_endpoint(meta, "encode_uint8", "hub/1/encoder")
    assert str(info.value) == ("hub/1/encoder: no training endpoint pairs with 'encode_uint8'; "
                               "expected call_endpoint one of encode, serving_default")
    assert exports.training_endpoint(meta, "encode", "x") == "encode_training"


def test_tfsm_layer_in_a_keras3_model(exported):
    inputs = keras.Input(SHAPE)
    features = keras.layers.TFSMLayer(os.path.join(exported, "encoder"),
                                      call_endpoint="serving_default")(inputs)["features"]
    model = keras.Model(inputs, keras.layers.Dense(10)(features))
    assert model(_images(4)).shape == (4, 10)
    z_mean = keras.layers.TFSMLayer(os.path.join(exported, "encoder"),
                                    call_endpoint="encode")(inputs)["z_mean"]
    assert keras.Model(inputs, z_mean)(_images(4)).shape == (4, LATENT)


@pytest.mark.parametrize("failing", ["metadata", "generator"])
def test_interrupted_export_leaves_nothing(run_dir, tmp_path, monkeypatch, failing):
    export_dir = tmp_path / "hub"
    if failing == "metadata":
        def fail(*args, **kwargs):
            raise RuntimeError("disk full")
        monkeypatch.setattr(exporter, "write_metadata", fail)
    else:
        save = tf.saved_model.save

        def fail_on_generator(obj, path, **kwargs):
            if os.path.basename(path) == exporter.GENERATOR_DIR:
                raise RuntimeError("disk full")
            return save(obj, path, **kwargs)
        monkeypatch.setattr(tf.saved_model, "save", fail_on_generator)
    with pytest.raises(RuntimeError, match="disk full"):
        exporter.export_run(run_dir, str(export_dir))
    assert not export_dir.exists()  # created by this export, so removed with it

    # In an existing export_dir holding an older version: that version survives intact.
    export_dir.mkdir()
    (export_dir / "1").mkdir()
    (export_dir / "1" / "marker").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        exporter.export_run(run_dir, str(export_dir), overwrite=True)
    assert os.listdir(export_dir) == ["1"]
    assert (export_dir / "1" / "marker").read_text() == "old"


def test_existing_version_needs_overwrite(run_dir, tmp_path):
    export_dir = tmp_path / "hub"
    version = exporter.export_run(run_dir, str(export_dir))
    marker = os.path.join(version, "marker")
    with open(marker, "w") as f:
        f.write("first export")
    with pytest.raises(ConfigError, match="version 1 already exists.*--overwrite"):
        exporter.export_run(run_dir, str(export_dir))
    assert open(marker).read() == "first export"
    assert exporter.export_run(run_dir, str(export_dir), overwrite=True) == version
    assert not os.path.exists(marker)
    assert sorted(os.listdir(version)) == ["encoder", "generator", "metadata.json"]
    assert _leftovers(export_dir) == []


def test_bad_runs_are_refused_before_writing(run_dir, tmp_path):
    export_dir = tmp_path / "hub"
    with pytest.raises(ConfigError, match="no run.json"):
        exporter.export_run(str(tmp_path / "nothing"), str(export_dir))
    no_checkpoints = tmp_path / "no_checkpoints"
    no_checkpoints.mkdir()
    shutil.copy(os.path.join(run_dir, "run.json"), no_checkpoints)
    with pytest.raises(ConfigError, match="no checkpoint"):
        exporter.export_run(str(no_checkpoints), str(export_dir))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        exporter.export_run(run_dir, str(export_dir), checkpoint=f"{run_dir}/checkpoints/ckpt-7")
    # A checkpoint from other flags (run.json says 16x16 images, the weights are for 8x8;
    # a width change goes unnoticed until restore_networks sees the layer weights).
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    record = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**record, "example_shape": [16, 16, 1]}))
    with pytest.raises(ConfigError, match="does not match"):
        exporter.export_run(str(other), str(export_dir))
    assert not export_dir.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        exporter.export_run(run_dir, str(a_file))
    with pytest.raises(ConfigError, match="is under a file"):
        exporter.export_run(run_dir, str(a_file / "hub"))
    assert a_file.read_text() == "x"


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "export.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_exports_and_reports_bad_input_in_one_line(run_dir, tmp_path):
    export_dir = tmp_path / "hub"
    done = _cli(f"--model_dir={run_dir}", f"--export_dir={export_dir}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{export_dir}/1" in done.stdout and (export_dir / "1" / "encoder").is_dir()
    again = _cli(f"--model_dir={run_dir}", f"--export_dir={export_dir}",
                 f"--checkpoint={run_dir}/checkpoints/ckpt-1")
    assert again.returncode == 2
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "already exists" in errors[0], again.stderr[-2000:]


FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras
    import keras

    path = sys.argv[1]
    module = hub.load(path)
    x = np.random.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    encoded = module.signatures["encode"](images=tf.constant(x))
    uint8 = module.signatures["encode_uint8"](
        images=tf.constant(np.full((2, 30, 40, 1), 128, np.uint8)))
    assert encoded["z_mean"].shape == (2, 3) and uint8["features"].shape[0] == 2
    features = module(x)
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)), hub.KerasLayer(path),
                                 tf_keras.layers.Dense(10)])
    assert model(x).shape == (2, 10)
    inputs = keras.Input((8, 8, 1))
    out = keras.layers.TFSMLayer(path, call_endpoint="serving_default")(inputs)["features"]
    np.testing.assert_allclose(keras.Model(inputs, out)(x), features, rtol=1e-5, atol=1e-6)
    tuned = keras.layers.TFSMLayer(path, call_endpoint="serving_default",
                                   call_training_endpoint="serving_default_training")
    assert tuned(x, training=True)["features"].shape == features.shape
    assert not [name for name in sys.modules if name.startswith("gali_tf")]
    print("fresh process ok", features.shape)
""")


def test_export_loads_in_a_fresh_process_without_gali_tf(exported, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script), os.path.join(exported, "encoder")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fresh process ok" in done.stdout


# ------------------------------------------------------------- faults (issue 13)


def _with_nan_weights(run_dir, tmp_path):
    """A copy of the run with one more checkpoint, ckpt-5, whose E holds a NaN."""
    copy = tmp_path / "diverged"
    shutil.copytree(run_dir, copy)
    run = restore_networks(str(copy))
    kernel = next(v for v in run.encoder.variables if len(v.shape) > 1)
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    prefix = str(copy / "checkpoints" / "ckpt-5")
    tf.train.Checkpoint(encoder=run.encoder, generator=run.generator).write(prefix)
    return copy, prefix, run, kernel


def test_non_finite_weights_are_refused_naming_the_checkpoint(run_dir, tmp_path):
    copy, prefix, run, kernel = _with_nan_weights(run_dir, tmp_path)
    export_dir = tmp_path / "hub"
    with pytest.raises(ConfigError) as info:
        exporter.export_networks(RestoredRun(
            run.encoder, run.generator, run.record, prefix, 5), str(export_dir))
    assert str(info.value) == (
        f"--checkpoint={prefix}: non-finite weights (NaN or Inf in 1 variables of E and G, "
        f"e.g. {kernel.path}); export an earlier checkpoint with "
        "--checkpoint=RUN/checkpoints/ckpt-<step>")
    assert not export_dir.exists()

    done = _cli(f"--model_dir={copy}", f"--export_dir={export_dir}", f"--checkpoint={prefix}")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    assert re.fullmatch(rf"error: --checkpoint={re.escape(prefix)}: .*non-finite weights.*",
                        lines[-1]), lines[-1]
    assert not export_dir.exists()


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_killed_between_its_renames_is_restored_by_the_next(run_dir, tmp_path, capsys):
    export_dir = tmp_path / "hub"
    version = exporter.export_run(run_dir, str(export_dir))
    (export_dir / "1" / "marker").write_text("the previous export")
    # What a kill between the two renames of --overwrite leaves (owner: a dead pid here).
    dead = f"{exports.host()}-{_dead_pid()}"
    os.rename(version, export_dir / f".old-1-{dead}-0123abcd")
    (export_dir / f".tmp-1-{dead}-0123abcd" / "encoder").mkdir(parents=True)
    # Another export's temp dirs: running in this process; on another host; unowned
    # (older naming) and fresh; unowned and two hours old (dead).
    kept = [f".tmp-1-{exports.host()}-{os.getpid()}-89abcdef",
            ".tmp-1-otherhost-7-aaaaaaaa", ".tmp-1-fedcba98"]
    for name in kept + [".tmp-1-76543210"]:
        (export_dir / name).mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(export_dir / ".tmp-1-76543210", (two_hours_ago, two_hours_ago))

    with pytest.raises(ConfigError, match="version 1 already exists"):
        exporter.export_run(run_dir, str(export_dir))
    assert (export_dir / "1" / "marker").read_text() == "the previous export"
    assert sorted(_leftovers(export_dir)) == sorted(kept)
    assert capsys.readouterr().err == (
        f"warning: --export_dir={export_dir}: version 1 restored from .old-1-{dead}-0123abcd, "
        "left by an export killed while replacing it\n")

    # A dead export's moved-aside copy whose version is back in place is only removed.
    (export_dir / f".old-1-{dead}-bbbbbbbb").mkdir()
    assert exporter.recover_versions(str(export_dir)) == []
    assert sorted(_leftovers(export_dir)) == sorted(kept)
    assert exporter.export_run(run_dir, str(export_dir), overwrite=True) == version
    assert sorted(_leftovers(export_dir)) == sorted(kept)
