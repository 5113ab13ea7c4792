"""GALI-PT: the frozen feature model M, the auxiliary classifier, M(...) tuples, bad input."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from gali_tf import classifier, data, features, networks, run_dir, training
from gali_tf.evaluation import reconstruction
from gali_tf.errors import ConfigError
from gali_tf.model import GALIModel, ModelConfig, StepNoise, check_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
BATCH = 4


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    """A tiny digits classifier exported by trainers.classifier (the CLI, 1 epoch)."""
    export_dir = tmp_path_factory.mktemp("classifier") / "export"
    done = subprocess.run(
        [sys.executable, "-m", "trainers.classifier", "--dataset=digits", "--image_size=8",
         "--epochs=1", "--width=4", "--feature_dim=8", "--batch_size=100", "--verbose=0",
         f"--export_dir={export_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test top-1 accuracy" in done.stdout
    return str(export_dir)


def load_m(path, **options):
    return features.load_feature_model(features.FeatureConfig(feature_model=path, **options))


def tiny_pt_model(feature_model, tuples="gali_pt"):
    net = networks.NetworkConfig(arch="small", example_shape=SHAPE, latent_dim=3, width=4,
                                 feature_dim=feature_model.dim)
    model = GALIModel(net, ModelConfig(tuples=tuples, mixed_precision="float32"),
                      global_batch_size=BATCH, total_steps=10, steps_per_epoch=5,
                      feature_model=feature_model)
    model.build()
    model.compile(optimizer=None, jit_compile=False)
    return model


def images(n=BATCH, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)), tf.float32)


def fit_steps(model, x, steps=2):
    return model.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=steps,
                     epochs=1, verbose=0).history


def test_classifier_export_loads_as_m(classifier_export):
    metadata = json.loads(open(os.path.join(classifier_export, "metadata.json")).read())
    assert metadata["image_shape"] == [8, 8, 1] and metadata["value_range"] == [-1.0, 1.0]
    assert metadata["feature_dim"] == 8 and metadata["num_classes"] == 10
    assert 0.0 <= metadata["test_accuracy"] <= 1.0
    m = load_m(classifier_export, feature_output="features")
    assert m.dim == 8 and m.input_shape == (8, 8, 1)
    out = m(images())
    assert out.shape == (BATCH, 8) and out.dtype == tf.float32
    # Other sizes and channel counts are resized / converted to M's contract.
    assert m(tf.zeros((2, 16, 16, 3))).shape == (2, 8)
    logits = load_m(classifier_export, feature_output="logits")
    assert logits.dim == 10
    # Inference mode: the same input gives the same features (dropout off).
    np.testing.assert_allclose(m(images()).numpy(), out.numpy())


def test_the_fingerprint_names_the_weights(classifier_export, tmp_path):
    m = load_m(classifier_export, feature_output="features")
    assert re.fullmatch(r"[0-9a-f]{12}", m.fingerprint)
    assert load_m(classifier_export, feature_output="logits").fingerprint == m.fingerprint
    # The same network with other weights (a retrained classifier) is another M.
    copy = tmp_path / "retrained"
    shutil.copytree(classifier_export, copy)
    data_file = next((copy / "variables").glob("variables.data-*"))
    weights = bytearray(data_file.read_bytes())
    weights[-1] ^= 1
    data_file.write_bytes(bytes(weights))
    assert features.weights_fingerprint(str(copy)) != m.fingerprint
    assert features.weights_fingerprint(str(tmp_path / "empty")) == ""


@pytest.mark.parametrize("tuples", ["gali_pt", "ali_pt", "alice_pt"])
def test_m_stays_frozen_while_gradients_reach_e_and_g(classifier_export, tuples):
    m = load_m(classifier_export, feature_output="features")
    model = tiny_pt_model(m, tuples)
    m_ids = {id(v) for v in m.variables}
    assert m.variables and not m_ids & {id(v) for v in model.trainable_variables}
    assert not m_ids & {id(v) for v in model.variables}
    m_before = [v.numpy().copy() for v in m.variables]
    e_before = [v.numpy().copy() for v in model.encoder.trainable_variables]

    # Gradients of M's features reach E and G through M.
    x = images()
    with tf.GradientTape() as tape:
        values = model.chain_values(x, StepNoise(0, tf.constant(0)))
        # M(G(z)) is in every set; M(G(E(x))) reaches E (ali_pt has it through no slot).
        loss = (tf.reduce_sum(values["M(G(z))"]) if "M(G(z))" in values else 0.0) + \
            tf.reduce_sum(model.feature_model(model.reconstruct(x, training=True)))
    grads = tape.gradient(loss, model.generator_encoder_variables)
    norms = [0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g))) for g in grads]
    n_enc = len(model.encoder.trainable_variables)
    assert max(norms[:n_enc]) > 0, "no gradient reaches E through M"
    assert max(norms[n_enc:]) > 0, "no gradient reaches G through M"

    history = fit_steps(model, x)
    for name in ("d_loss", "g_loss") + (("l2",) if tuples == "alice_pt" else ()):
        assert np.isfinite(history[name][-1]), name
    for before, v in zip(m_before, m.variables):
        np.testing.assert_array_equal(before, v.numpy())
    assert any(not np.allclose(b, v.numpy())
               for b, v in zip(e_before, model.encoder.trainable_variables))
    assert int(model.step.numpy()) == 2


def test_feature_mse_is_zero_for_perfect_reconstruction(classifier_export):
    m = load_m(classifier_export, feature_output="features")
    ds = tf.data.Dataset.from_tensor_slices(images(8)).batch(4)
    assert reconstruction.feature_mse(m, lambda x: x, ds).mean == 0.0
    result = reconstruction.feature_mse(m, lambda x: -x, ds)
    assert result.mean > 0 and result.num_examples == 8 and result.num_batches == 2


def test_train_with_m_reports_feature_mse_and_records_m(tmp_path, classifier_export):
    config = training.TrainConfig(
        model_dir=str(tmp_path), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(tuples="gali_pt", feature_model=classifier_export,
                          feature_output="features"),
        batch_size=50, steps=1, verbose=0, jit_compile=False, image_every=0)
    result = training.train(config)
    assert result.step == 1 and result.test_feature_mse is not None
    record = run_dir.read_run_record(str(tmp_path))
    assert record.network.feature_dim == 8 and record.feature_model == classifier_export
    # M is not in the run's checkpoint; E and G restore without it.
    names = [n for n, _ in tf.train.list_variables(tf.train.latest_checkpoint(tmp_path / "checkpoints"))]
    assert not any("features" in n or "classifier" in n for n in names)
    assert run_dir.restore_networks(str(tmp_path)).step == 1


# ------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def open_size_saved_model(tmp_path_factory):
    """A SavedModel whose signature leaves H and W open and has two outputs."""
    path = str(tmp_path_factory.mktemp("open") / "m")
    module = tf.Module()
    module.w = tf.Variable(tf.ones([3, 5]))

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    def serve(images):
        pooled = tf.reduce_mean(images, axis=[1, 2])
        return {"pool": tf.matmul(pooled, module.w), "raw": pooled}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def test_open_input_size_needs_feature_image_size(open_size_saved_model):
    with pytest.raises(features.FeatureModelError, match="set --feature_image_size"):
        load_m(open_size_saved_model, feature_output="pool")
    m = load_m(open_size_saved_model, feature_output="pool", feature_image_size=12)
    assert m.input_shape == (12, 12, 3) and m.dim == 5


@pytest.mark.parametrize("make, options, expected", [
    (lambda d: f"{d}/missing", {}, "no such directory"),
    (lambda d: d, {}, "not a SavedModel"),
    (lambda d: f"inception_v3:{d}/missing.h5", {}, "no weights file there"),
    (lambda d: f"inception_v3:{d}/missing.h5", {"feature_image_size": 32}, "at least 75"),
])
def test_bad_m_paths(tmp_path, make, options, expected):
    with pytest.raises(features.FeatureModelError, match=expected) as info:
        load_m(make(str(tmp_path)), **options)
    assert "\n" not in str(info.value)


def test_bad_output_and_signature_list_the_existing_ones(open_size_saved_model):
    with pytest.raises(features.FeatureModelError, match=r"no such output .*it has: pool, raw"):
        load_m(open_size_saved_model, feature_output="logits", feature_image_size=8)
    with pytest.raises(features.FeatureModelError, match="--feature_output is needed"):
        load_m(open_size_saved_model, feature_image_size=8)
    with pytest.raises(features.FeatureModelError, match="it has: serving_default"):
        load_m(open_size_saved_model, feature_signature="encode", feature_output="pool",
               feature_image_size=8)


@pytest.mark.parametrize("content, problem", [
    ('{"value_range": [-1', "is not readable JSON (Expecting ',' delimiter: line 1 column 20 "
                           "(char 19)); fix or delete it (without it [-1, 1] is assumed)"),
    ("[-1, 1]", "holds a JSON list, not an object"),
])
def test_corrupt_metadata_of_m_is_one_line_naming_it(open_size_saved_model, tmp_path, content,
                                                     problem):
    path = tmp_path / "m"
    shutil.copytree(open_size_saved_model, path)
    (path / "metadata.json").write_text(content)
    with pytest.raises(features.FeatureModelError) as info:
        load_m(str(path), feature_output="pool", feature_image_size=8)
    assert str(info.value) == f"--feature_model={path}: {path}/metadata.json {problem}"


def test_m_tuples_need_a_feature_model():
    with pytest.raises(ConfigError, match="set --feature_model"):
        check_model_config(ModelConfig(tuples="gali_pt"))
    assert check_model_config(ModelConfig(tuples="gali_pt", feature_model="dir")).num_classes == 4


def test_trainer_bad_m_is_one_line_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "trainers.main", "--flagfile=configs/digits_pt.flags",
         f"--feature_model={tmp_path}/nothing", f"--model_dir={model_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: --feature_model={tmp_path}/nothing: no such directory")
    assert not model_dir.exists()


# ------------------------------------------------------- celeba_pt with mock CelebA


def _celeba_metadata_dir(root):
    """TFDS metadata of celeb_a only (records are faked by mock_data), as test_data does."""
    builder = tfds.builder("celeb_a", data_dir=str(root))
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_path, dataset_name="celeb_a",
                                             split="train", filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0,
                            filename_template=template.replace(split=split))
        for split, n in (("train", 4), ("test", 2))]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)
    return str(root)


def test_celeba_pt_flagfile_starts_with_mock_celeba_and_inception(tmp_path, capsys,
                                                                   trainer_flags):
    import keras
    weights = str(tmp_path / "inception_v3_notop.weights.h5")
    keras.applications.InceptionV3(include_top=False, pooling="avg", weights=None,
                                   input_shape=(75, 75, 3)).save_weights(weights)
    metadata_dir = _celeba_metadata_dir(tmp_path / "tfds")
    model_dir = tmp_path / "run"
    trainer = trainer_flags([
        "--flagfile=configs/celeba_pt.flags", f"--model_dir={model_dir}",
        f"--feature_model=inception_v3:{weights}", "--feature_image_size=75",
        "--batch_size=2", "--steps=1", "--jit_compile=false", "--mixed_precision=float32",
        "--verbose=0",
        "--image_every=0"])
    with tfds.testing.mock_data(num_examples=6, data_dir=metadata_dir,
                                policy=tfds.testing.MockPolicy.USE_FILES):
        trainer.main(["trainers.main"])
    out = capsys.readouterr().out
    assert f"{model_dir}: step 1" in out and "test feature MSE" in out
    flags_text = (model_dir / "flags.txt").read_text()
    assert "--tuples=gali_pt" in flags_text and "--learning_rate=4e-05" in flags_text
    record = run_dir.read_run_record(str(model_dir))
    assert record.network.feature_dim == 2048 and record.network.arch == "celeba64"


def test_m_only_for_feature_mse_leaves_the_architecture_alone(classifier_export):
    """A GALI-4 run given M (for feature MSE) keeps feature_dim 0: resumable with or without."""
    m = load_m(classifier_export, feature_output="features")
    config = training.TrainConfig(
        model_dir="unused", data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(tuples="gali4", feature_model=classifier_export), batch_size=4)
    info = data.dataset_info(config.data)
    _, _, net = training.build_model(config, info, tf.distribute.get_strategy(), m)
    assert net.feature_dim == 0
    pt = training.TrainConfig(model_dir="unused", data=config.data, network=config.network,
                              model=ModelConfig(tuples="gali_pt", feature_model=classifier_export),
                              batch_size=4)
    _, _, net = training.build_model(pt, info, tf.distribute.get_strategy(), m)
    assert net.feature_dim == 8
