"""Conditional ALI (ALI 4.4) and semi-supervised ALI (ALI 4.3): networks, losses, steps,
the labelled subset, trainers.generate and the d_classifier metric."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import (data, downstream, files, generation, networks, objectives, run_dir,
                     training)
from gali_tf.evaluation import suite
from gali_tf.errors import ConfigError
from gali_tf.model import GALIModel, ModelConfig, StepNoise, check_model_config
from export import exporter

SHAPE = (8, 8, 1)


def tiny_net(**fields):
    return networks.NetworkConfig(arch="small", example_shape=SHAPE, latent_dim=3, width=4,
                                  condition_embedding=5, **fields)


def tiny_model(net, **options):
    model = GALIModel(net, ModelConfig(**{"mixed_precision": "float32", **options}), global_batch_size=4, total_steps=10,
                      steps_per_epoch=5)
    model.build()
    model.compile(optimizer=None, jit_compile=False)
    return model


def images(n=4, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)), tf.float32)


# ------------------------------------------------------------------ conditioning


def test_the_condition_changes_g_e_and_d_for_fixed_inputs():
    cfg = tiny_net(condition_dim=3)
    gen, enc = networks.build_generator(cfg), networks.build_encoder(cfg)
    disc = networks.build_discriminator(cfg, ("image", "latent"), 2)
    z, x = tf.random.normal([2, 3], seed=1), images(2)
    y0, y1 = tf.one_hot([0, 0], 3), tf.one_hot([2, 2], 3)

    def differs(a, b):
        # Fresh nets' outputs are tiny (N(0, 0.01) weights): compare relative changes.
        a, b = np.asarray(a), np.asarray(b)
        return np.abs(a - b).max() > 1e-3 * np.abs(a).max()

    assert differs(gen(z, condition=y0), gen(z, condition=y1))
    assert differs(enc(x, condition=y0)[0], enc(x, condition=y1)[0])
    assert differs(disc([x, z, y0]), disc([x, z, y1]))
    assert not differs(gen(z, condition=y0), gen(z, condition=y0))
    with pytest.raises(ValueError, match="condition"):
        gen(z)
    # Unconditional nets keep their layout: no embedding, no extra D input.
    plain = tiny_net()
    assert networks.build_generator(plain).condition_embedding is None
    assert networks.build_discriminator(plain, ("image", "latent"), 2).condition is None


# ------------------------------------------------------------ the K + 1 objective


def _semi_logits():
    # K = 2 labels, n = 2 tuple classes -> 3 outputs [label 0, label 1, generated].
    real = [[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0]]       # p = 1/3 each; (3/5, 1/5, 1/5)
    fake = [[0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]]       # p_gen = 1/2; 1/3
    return tf.constant([real, fake], tf.float32)


def test_semi_supervised_losses_against_hand_computed_values():
    logits, labels = _semi_logits(), tf.constant([1, -1])
    np.testing.assert_allclose(objectives.merge_label_logits(logits, 2)[0, 0],
                               [math.log(2.0), 0.0], rtol=1e-6)
    # Example 0 is labelled 1: -log p_1(real) - log p_gen(fake) = log 3 + log 2.
    # Example 1 is unlabelled: -log(p_0 + p_1)(real) - log p_gen(fake) = -log(4/5) + log 3.
    np.testing.assert_allclose(objectives.semi_supervised_discriminator_loss(logits, labels, 2),
                               [math.log(6.0), math.log(15.0 / 4.0)], rtol=1e-5)
    # Non-saturating (product of terms, n = 2): -log p_gen(real) - log p_real(fake).
    # Example 0: -log(1/3) - log(1/2); example 1: -log(1/5) - log(2/3).
    np.testing.assert_allclose(
        objectives.semi_supervised_generator_loss("product_of_terms", logits, 2),
        [math.log(6.0), math.log(7.5)], rtol=1e-5)
    np.testing.assert_array_equal(objectives.label_predictions(logits[0], 2), [0, 0])


# --------------------------------------------------------------------- train steps


@pytest.mark.parametrize("tuples, mode", [("ali", "conditional"), ("gali4", "conditional"),
                                          ("ali", "semi")])
def test_one_step_moves_every_network(tuples, mode):
    if mode == "conditional":
        model = tiny_model(tiny_net(condition_dim=3), tuples=tuples, conditional=True)
        side = tf.one_hot([0, 1, 2, 1], 3)
    else:
        model = tiny_model(tiny_net(label_classes=3), tuples=tuples, num_labeled=3)
        side = tf.constant([0, -1, 2, -1])
    parts = ("encoder", "generator", "discriminator")
    before = {p: [w.numpy().copy() for w in getattr(model, p).trainable_weights] for p in parts}
    history = model.fit(tf.data.Dataset.from_tensors((images(), side)).repeat(),
                        steps_per_epoch=1, epochs=1, verbose=0).history
    for part in parts:
        after = [w.numpy() for w in getattr(model, part).trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before[part], after)), part
    assert np.isfinite(history["d_loss"][0]) and np.isfinite(history["g_loss"][0])
    assert ("label_acc" in history) == (mode == "semi")
    n = model.tuple_set.num_classes
    assert model.discriminator.num_classes == (n + 3 - 1 if mode == "semi" else n)


def test_semi_supervised_d_learns_its_labelled_digits():
    """D steps alone (E and G fixed) on the K + 1 loss: D must learn the labels of its
    labelled digits while it separates real from generated pairs. With Keras'
    projection-style spectral norm it stayed at chance (every digit one class)."""
    train_images, train_labels = data._digits_arrays("train", SHAPE)  # pylint: disable=protected-access
    labelled = data.labeled_subset(train_labels, 20, 10, 0)
    unlabelled = np.setdiff1d(np.arange(40), labelled)[:20]
    x = tf.constant(np.concatenate([train_images[labelled], train_images[unlabelled]]))
    labels = tf.constant(np.concatenate([train_labels[labelled], -np.ones(20, np.int32)]))
    model = GALIModel(networks.NetworkConfig(arch="small", example_shape=SHAPE, latent_dim=8,
                                             width=8, label_classes=10),
                      ModelConfig(tuples="ali", num_labeled=20, mixed_precision="float32"),
                      global_batch_size=40,
                      total_steps=10, steps_per_epoch=5)
    model.build()
    noise = StepNoise(seed=0, step=tf.constant(0, tf.int64))
    values = model.chain_values(x, noise, training=False)

    @tf.function
    def d_step():
        return model._discriminator_step(values, noise, 0.0, labels=labels)[1]  # pylint: disable=protected-access

    for _ in range(150):
        logits = d_step()
    predicted = objectives.label_predictions(logits[0], 10).numpy()[:20]
    assert np.mean(predicted == train_labels[labelled]) >= 0.9, predicted


@pytest.mark.parametrize("options, flag", [
    (dict(num_labeled=-1), "--num_labeled"),
    (dict(num_labeled=100, conditional=True), "--conditional"),
    (dict(num_labeled=100, tuples="G(z), z; x, E(x)"), "--num_labeled"),
])
def test_bad_options_are_one_line_errors(options, flag):
    with pytest.raises(ConfigError, match=flag) as info:
        check_model_config(ModelConfig(**options))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- labelled subset


def test_labelled_subset_is_balanced_and_fixed_by_its_seed():
    labels = np.repeat(np.arange(10), 30)[np.random.RandomState(5).permutation(300)]
    first = data.labeled_subset(labels, 100, 10, seed=0)
    np.testing.assert_array_equal(first, data.labeled_subset(labels, 100, 10, seed=0))
    assert not np.array_equal(first, data.labeled_subset(labels, 100, 10, seed=1))
    assert len(set(first)) == 100
    np.testing.assert_array_equal(np.bincount(labels[first], minlength=10), [10] * 10)


@pytest.mark.parametrize("num, match", [(2000, "larger than the train split"),
                                        (105, "multiple of the 10 classes"),
                                        (5, "multiple of the 10 classes")])
def test_bad_num_labeled_is_a_one_line_error(tmp_path, num, match):
    config = _tiny_config(tmp_path / "run", num_labeled=num)
    with pytest.raises(data.DataError, match=match) as info:
        training.train(config)
    assert "\n" not in str(info.value) and not os.path.exists(tmp_path / "run")


def test_semi_supervised_batches_mix_the_labelled_subset_with_unlabelled_data():
    cfg = data.DataConfig(dataset="digits", image_size=8)
    info = data.dataset_info(cfg)
    ds = data.make_semi_supervised_dataset(cfg, info, 10, 20, labeled_seed=3, seed=0)
    subset = set(data.labeled_subset(data.train_labels(cfg), 20, 10, 3))
    train_images = data._digits_arrays("train", (8, 8, 1))[0]   # pylint: disable=protected-access
    for x, labels in ds.take(3):
        assert x.shape == (10, 8, 8, 1) and labels.shape == (10,)
        labels = labels.numpy()
        assert (labels[0::2] == -1).all() and (labels[1::2] >= 0).all()  # interleaved halves
        for image, label in zip(x.numpy()[1::2], labels[1::2]):
            index = int(np.argmin(np.abs(train_images - image).sum(axis=(1, 2, 3))))
            assert index in subset
    grouped = data.make_semi_supervised_dataset(cfg, info, 10, 20, group=2)
    x, labels = next(iter(grouped))
    assert x.shape == (10, 2, 8, 8, 1) and labels.shape == (10, 2)


# ------------------------------------------------ runs: generate, restore, evaluate


def _tiny_config(model_dir, steps=1, **model_options):
    return training.TrainConfig(
        model_dir=str(model_dir), data=data.DataConfig(dataset="digits", image_size=8),
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=2,
                                       condition_embedding=4),
        model=ModelConfig(tuples="ali", **model_options), batch_size=10, steps=steps,
        verbose=0, jit_compile=False, log_every=1, checkpoint_every=0,
        # Image summaries exercise the conditional path (samples with the batch's y).
        image_every=1 if model_options.get("conditional") else 0)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("conditional") / "run"
    training.train(_tiny_config(model_dir, conditional=True))
    return str(model_dir)


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("semi") / "run"
    training.train(_tiny_config(model_dir, num_labeled=20))
    return str(model_dir)


def test_run_records_the_conditioning_and_restore_rebuilds_it(conditional_run, semi_run):
    record = json.load(open(os.path.join(conditional_run, "run.json")))
    assert record["conditional"] and record["condition_dim"] == 10
    restored = run_dir.restore_networks(conditional_run, with_discriminator=True)
    assert restored.conditional and restored.discriminator.condition is not None
    semi = run_dir.restore_networks(semi_run, with_discriminator=True)
    assert semi.record.network.label_classes == 10 and semi.record.num_labeled == 20
    assert semi.discriminator.num_classes == 11
    # Resuming with another conditioning is refused before anything is written.
    with pytest.raises(ConfigError, match="condition_dim"):
        training.train(_tiny_config(conditional_run, steps=2))


def test_export_of_a_conditional_run_takes_y_in_every_signature(conditional_run, tmp_path):
    version = exporter.export_run(conditional_run, str(tmp_path / "export"))
    run = run_dir.restore_networks(conditional_run)
    meta = json.load(open(os.path.join(version, files.METADATA_FILE)))
    assert meta["condition"] == {"dim": 10, "columns": [f"class {k}" for k in range(10)]}
    encoder = tf.saved_model.load(os.path.join(version, exporter.ENCODER_DIR))
    generator = tf.saved_model.load(os.path.join(version, exporter.GENERATOR_DIR))
    x = tf.constant(data._digits_arrays("test", SHAPE)[0][:3])  # pylint: disable=protected-access
    y = tf.one_hot([3, 7, 1], 10)
    z = tf.constant(np.random.default_rng(0).normal(size=(3, 3)), tf.float32)

    np.testing.assert_allclose(generator.signatures["generate"](z=z, y=y)["images"],
                               run.generator(z, training=False, condition=y), atol=1e-5)
    mu, _ = run.encoder(x, training=False, condition=y)
    np.testing.assert_allclose(encoder.signatures["encode"](images=x, y=y)["z_mean"], mu,
                               atol=1e-5)
    # y is an input, not a constant of the trace: another y, another code (relative to
    # the tiny outputs of a 1-step run; its G's tanh is saturated, so E shows it).
    mu0 = encoder.signatures["encode"](images=x, y=tf.one_hot([0, 0, 0], 10))["z_mean"]
    assert np.abs(mu0 - mu).max() > 1e-3 * np.abs(mu).max()
    np.testing.assert_allclose(
        generator.signatures["reconstruct"](images=x, y=y)["images"],
        run.generator(mu, training=False, condition=y), atol=1e-5)
    features = run.encoder.features(x, training=False, condition=y)
    np.testing.assert_allclose(encoder({"images": x, "y": y}, training=False), features,
                               atol=1e-5)
    np.testing.assert_allclose(encoder.signatures["serving_default"](images=x, y=y)["features"],
                               features, atol=1e-5)
    # The training endpoints take y too (last: training=True updates BatchNorm).
    np.testing.assert_allclose(encoder.encode_training(x, y)["z_mean"],
                               run.encoder(x, training=True, condition=y)[0], atol=1e-5)
    with pytest.raises(ConfigError, match="conditional run's encoder takes the label"):
        downstream.module_image_shape(os.path.join(version, exporter.ENCODER_DIR))


def test_generate_writes_a_grid_of_classes_by_columns(conditional_run, tmp_path):
    result = generation.generate_run(generation.GenerateOptions(
        model_dir=conditional_run, out=str(tmp_path), classes=["3", "7", "1"], columns=5,
        z_seed=2))
    assert result.grid_shape == (3 * 8, 5 * 8, 1)
    png = tf.io.decode_png(tf.io.read_file(os.path.join(tmp_path, "grid.png")))
    assert tuple(png.shape) == (24 * 8, 40 * 8, 1)   # 8x8 images shown at 64x64
    assert json.load(open(tmp_path / "rows.json"))["rows"] == ["class 3", "class 7", "class 1"]
    # Each column keeps one z: row 0 of two calls with the same seed is the same.
    again = generation.generate_run(generation.GenerateOptions(
        model_dir=conditional_run, out=str(tmp_path / "b"), classes=["3"], columns=5, z_seed=2))
    np.testing.assert_array_equal(
        png[:8 * 8], tf.io.decode_png(tf.io.read_file(again.grid_path)))


@pytest.mark.parametrize("options, match", [
    (dict(attributes=["Male"]), "conditioned on a class; use --classes"),
    (dict(classes=["10"]), "not a class of --dataset=digits"),
    (dict(classes=["x"]), "not a class"),
])
def test_generate_bad_flags_are_one_line_errors(conditional_run, tmp_path, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        generation.generate_run(generation.GenerateOptions(model_dir=conditional_run,
                                                       out=str(tmp_path), **options))
    assert "\n" not in str(info.value)


def test_generate_refuses_an_unconditional_run(semi_run, tmp_path):
    with pytest.raises(ConfigError, match="not a conditional run"):
        generation.generate_run(generation.GenerateOptions(model_dir=semi_run, out=str(tmp_path)))


def test_celeba_attribute_rows_and_unknown_attributes():
    opts = generation.GenerateOptions(model_dir="m", out="o", attributes=["Black_Hair", "smiling"],
                                    base_attributes=["Male"], cumulative=True)
    names, rows, _ = generation.condition_rows(opts, "celeb_a", 40)
    index = {n: i for i, n in enumerate(data.CELEBA_ATTRIBUTES)}
    assert names == ["Black_Hair+Male", "Black_Hair+Male+Smiling"]
    assert rows.shape == (2, 40) and rows[1].sum() == 3 and rows[1, index["Smiling"]] == 1
    bad = generation.GenerateOptions(model_dir="m", out="o", attributes=["Male", "Smiling2"])
    with pytest.raises(ConfigError, match="unknown CelebA attribute 'Smiling2'") as info:
        generation.condition_rows(bad, "celeb_a", 40)
    assert "\n" not in str(info.value)


def test_suite_reports_d_error_only_for_semi_supervised_runs(semi_run, conditional_run):
    report = suite.evaluate_run(semi_run, suite.EvalConfig(metrics=("d_classifier",)))
    assert 0.0 <= report.metrics["d_error"]["mean"] <= 1.0
    assert report.metrics["d_error"]["n"] == data.DIGITS_NUM_TEST
    with pytest.raises(ConfigError, match="only semi-supervised runs") as info:
        suite.evaluate_run(conditional_run, suite.EvalConfig(metrics=("d_classifier",)))
    assert "\n" not in str(info.value)
    report = suite.evaluate_run(conditional_run, suite.EvalConfig(num_pictures=8))
    assert set(report.metrics) == {"pixel_mse"} and set(report.pictures) == {
        "samples", "reconstructions"}
