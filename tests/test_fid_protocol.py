"""FID as the field computes it (issue 17): 8-bit quantisation before the network, a
chosen reference split, cached reference features, and the samples dumped as PNGs."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, features, networks, training
from gali_tf.errors import ConfigError
from gali_tf.evaluation import fid, suite, tables
from gali_tf.features import FeatureConfig
from gali_tf.model import ModelConfig

DIGITS = data.DataConfig(dataset="digits", image_size=8)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flatten(images):
    return tf.reshape(images, [tf.shape(images)[0], -1])


# ------------------------------------------------------------------ quantisation


def test_quantize_keeps_every_8bit_level_and_rounds_between_them():
    levels = tf.reshape(tf.range(256, dtype=tf.int32), [1, 16, 16, 1])
    pixels = tf.cast(levels, tf.uint8)
    images = data.images_from_uint8(pixels, 16, 16)
    np.testing.assert_array_equal(fid.quantize(images).numpy(), pixels.numpy())
    np.testing.assert_array_equal(fid.dequantize(fid.quantize(images)).numpy(), images.numpy())
    # Between levels: to the nearest one; outside [-1, 1]: clipped.
    x = tf.constant([-1.5, -1.0, -1.0 + 0.4 / 127.5, -1.0 + 0.6 / 127.5, 0.0, 1.0, 3.0])
    assert fid.quantize(x).numpy().tolist() == [0, 0, 0, 1, 128, 255, 255]


def test_both_streams_reach_the_network_as_8bit_images():
    # A network that returns its input shows what it was given.
    rng = np.random.RandomState(0)
    floats = [tf.constant(rng.uniform(-1, 1, (5, 4, 4, 1)), tf.float32) for _ in range(2)]
    seen = fid.collect_features(_flatten, floats)
    levels = (seen + 1.0) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    np.testing.assert_allclose(seen, np.concatenate([fid.dequantize(fid.quantize(x)).numpy()
                                                     .reshape(5, -1) for x in floats]),
                               atol=1e-6)
    # Not a no-op for floats: they moved by up to half a level.
    original = np.concatenate([x.numpy().reshape(5, -1) for x in floats])
    assert 0 < np.abs(seen - original).max() <= 0.5 / 127.5 + 1e-6


# ------------------------------------------------------------- the cache file


def _key(**changes):
    fields = dict(network="flatten", network_fingerprint="abc123", network_input=(8, 8, 1),
                  network_value_range=(-1.0, 1.0), network_resize="bilinear",
                  network_input_dtype="float32", dataset="digits", split="test",
                  image_shape=(8, 8, 1), num_images=6, images_sha256="00ff")
    fields.update(changes)
    return fid.ReferenceKey(**fields)


def test_reference_features_round_trip_through_the_cache(tmp_path):
    key = _key()
    path = str(tmp_path / "cache" / key.file_name())
    features_ = np.random.RandomState(0).randn(6, 3).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fid.load_reference(path, key) is None   # no file: no warning
        assert fid.save_reference(path, key, features_)
        np.testing.assert_array_equal(fid.load_reference(path, key), features_)
    assert os.listdir(tmp_path / "cache") == [key.file_name()]   # no temporary left
    assert key.file_name().startswith("digits-test-6-")


def test_the_cache_name_changes_with_everything_that_determines_the_features():
    names = {_key().file_name()} | {_key(**change).file_name() for change in (
        dict(network="other"), dict(network_fingerprint="def456"),
        dict(network_input=(299, 299, 3)), dict(network_value_range=(0.0, 1.0)),
        dict(network_resize="tf1_bilinear"), dict(network_input_dtype="float16"),
        dict(dataset="svhn_cropped"), dict(split="train"), dict(image_shape=(16, 16, 1)),
        dict(num_images=7), dict(images_sha256="0100"), dict(quantisation="float32"))}
    assert len(names) == 13


@pytest.mark.parametrize("content", [b"", b"not a zip file", "truncated", "other key",
                                     "wrong rows"])
def test_an_unreadable_cache_file_is_a_warning_and_none(tmp_path, content):
    key = _key()
    path = str(tmp_path / key.file_name())
    good = np.ones((6, 3), np.float32)
    if content == "truncated":
        fid.save_reference(path, key, good)
        with open(path, "rb") as f:
            content = f.read()[:200]
    elif content == "other key":
        fid.save_reference(path, _key(images_sha256="0100"), good)
    elif content == "wrong rows":
        fid.save_reference(path, key, good[:4])
    if isinstance(content, bytes):
        with open(path, "wb") as f:
            f.write(content)
    with pytest.warns(UserWarning, match="unreadable.*computing the real images' features"):
        assert fid.load_reference(path, key) is None


def test_an_interrupted_cache_write_leaves_no_file(tmp_path, monkeypatch):
    key = _key()
    path = str(tmp_path / key.file_name())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tf.io.gfile, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fid.save_reference(path, key, np.ones((6, 3)))
    assert os.listdir(tmp_path) == []


def test_an_unwritable_cache_is_a_warning_not_a_failure(tmp_path):
    (tmp_path / "file").write_text("a file where the cache folder should be")
    path = str(tmp_path / "file" / _key().file_name())
    with pytest.warns(UserWarning, match="not written"):
        assert not fid.save_reference(path, _key(), np.ones((6, 3)))


# ----------------------------------------------------------------- on a run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("digits"))
    training.train(training.TrainConfig(
        model_dir=model_dir, data=DIGITS,
        network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
        model=ModelConfig(tuples="ali", instance_noise=0.0), batch_size=50, steps=2,
        verbose=0, jit_compile=False, image_every=0, checkpoint_every=2))
    return model_dir


@pytest.fixture
def run(digits_run, monkeypatch):
    """The digits run with G's kernels drawn at He scale on restore: two training steps
    leave N(0, 0.01) weights whose samples all round to one 8-bit image, which would
    make every check on samples vacuous."""
    restore = suite.run_dir.restore_networks

    def restore_varied(*args, **kwargs):
        restored = restore(*args, **kwargs)
        for i, v in enumerate(restored.generator.weights):
            if v.path.endswith("kernel"):
                fan_in = int(np.prod(v.shape[:-1]))
                v.assign(tf.random.stateless_normal(v.shape, [1, i]) * (2.0 / fan_in) ** 0.5)
        return restored
    monkeypatch.setattr(suite.run_dir, "restore_networks", restore_varied)
    return digits_run


class _CountingNetwork:
    """Pixels as features, counting the images it is called on (inside tf.function)."""

    def __init__(self):
        self.images = tf.Variable(0, dtype=tf.int64)

    def __call__(self, images):
        self.images.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        return _flatten(images)


@pytest.fixture
def network(monkeypatch):
    """The FID network --fid_model=test-network loads: _CountingNetwork, 64-d."""
    counting = _CountingNetwork()
    model = features.FeatureModel(counting, (8, 8, 1), description="test-network",
                                  dim=64, fingerprint="c0ffee")
    model.count = lambda: int(counting.images.numpy())
    monkeypatch.setattr(suite.features_lib, "load_feature_model",
                        lambda config: model if config.feature_model else None)
    return model


def _fid_config(**fields):
    fields.setdefault("fid_samples", 100)
    return suite.EvalConfig(metrics=("fid",), fid=FeatureConfig("test-network",
                                                                  flag_prefix="fid"), **fields)


def test_a_second_evaluation_reads_the_real_features_from_the_cache(run, network,
                                                                    tmp_path):
    cache = tmp_path / "cache"
    config = _fid_config(fid_cache_dir=str(cache))
    first = suite.evaluate_run(run, config).metrics
    assert network.count() == 100 + data.DIGITS_NUM_TEST   # G(z) and the test split
    [name] = os.listdir(cache)
    assert first["fid"]["reference_cache"] == f"computed, cached in {cache / name}"

    second = suite.evaluate_run(run, config).metrics
    assert network.count() == 100 + data.DIGITS_NUM_TEST + 100   # G(z) alone
    assert second["fid"]["reference_cache"] == f"read from {cache / name}"
    for metric in ("fid", "kid"):
        assert second[metric]["mean"] == first[metric]["mean"]
        assert second[metric]["num_real"] == data.DIGITS_NUM_TEST
    assert np.isfinite(first["fid"]["mean"]) and first["fid"]["mean"] > 0

    # A damaged file is computed again, with a warning, and replaced.
    (cache / name).write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="unreadable"):
        third = suite.evaluate_run(run, config).metrics
    assert network.count() == 3 * 100 + 2 * data.DIGITS_NUM_TEST
    assert third["fid"]["mean"] == first["fid"]["mean"]
    assert np.load(cache / name)["features"].shape == (data.DIGITS_NUM_TEST, 64)


def test_other_real_images_are_another_cache_entry(run, network, tmp_path):
    cache = tmp_path / "cache"
    for fields in (dict(), dict(fid_reference="train"), dict(fid_real_samples=50)):
        suite.evaluate_run(run, _fid_config(fid_cache_dir=str(cache), **fields))
    assert sorted(n.rsplit("-", 1)[0] for n in os.listdir(cache)) == [
        "digits-test-297", "digits-test-50", "digits-train-1500"]


def test_without_a_fingerprint_or_a_cache_dir_nothing_is_cached(run, network,
                                                                tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    off = suite.evaluate_run(run, _fid_config(fid_cache_dir="")).metrics
    assert off["fid"]["reference_cache"] == "computed (--fid_cache_dir is empty)"
    monkeypatch.setattr(network, "fingerprint", "")
    unnamed = suite.evaluate_run(run, _fid_config(fid_cache_dir=str(cache))).metrics
    assert "no weights fingerprint" in unnamed["fid"]["reference_cache"]
    assert not cache.exists()
    assert unnamed["fid"]["mean"] == off["fid"]["mean"]


def test_the_reference_split_and_its_cap_are_chosen_and_named(run, network):
    evaluated = suite.evaluate_run(run, _fid_config(fid_cache_dir="")).metrics["fid"]
    assert evaluated["reference_split"] == "test"
    assert evaluated["what"].startswith(
        f"FID of 100 G(z) vs {data.DIGITS_NUM_TEST} test images (the whole split) on "
        "test-network")
    train = suite.evaluate_run(run, _fid_config(
        fid_cache_dir="", fid_reference="train", fid_real_samples=400)).metrics
    assert train["fid"]["num_real"] == train["kid"]["num_real"] == 400
    assert train["fid"]["reference_split"] == "train"
    assert "100 G(z) vs 400 train images (the first 400 of 1500)" in train["fid"]["what"]
    assert "400 train images" in train["kid"]["what"]
    assert train["fid"]["mean"] != evaluated["mean"]


def test_dumped_samples_are_the_images_fid_used(run, network, tmp_path):
    dump = tmp_path / "samples"
    report = suite.evaluate_run(run, _fid_config(fid_cache_dir="",
                                                        dump_samples=str(dump)))
    names = sorted(os.listdir(dump))
    assert names == [f"{i:06d}.png" for i in range(100)]
    pixels = np.stack([tf.io.decode_png(tf.io.read_file(str(dump / n))).numpy()
                       for n in names])
    assert pixels.dtype == np.uint8 and pixels.shape == (100, 8, 8, 1)
    assert len({p.tobytes() for p in pixels}) == 100   # 100 different samples
    assert report.metrics["fid"]["samples_dir"] == str(dump)
    assert any(str(dump) in note for note in report.notes)
    # What a clean-fid user computes from the PNGs (same network, same real images) is
    # the report's FID.
    from_files = fid.fid(_flatten, [data.images_from_uint8(pixels, 8, 8)],
                         data.make_dataset(DIGITS, "test", 100, shuffle=False, repeat=False,
                                           drop_remainder=False), "flatten")
    assert from_files.value == pytest.approx(report.metrics["fid"]["mean"], rel=1e-9)


@pytest.mark.parametrize("fields, expected", [
    (dict(fid_reference="validation"), "--fid_reference=validation: expected train, test "
                                       "or empty"),
    (dict(fid_real_samples=-1), "--fid_real_samples=-1: expected 0 (the whole split) or at "
                                "least 2"),
    (dict(fid_samples=1), "--fid_samples=1: expected at least 2"),
    (dict(dump_samples="FILE"), "--dump_samples=FILE: is a file"),
    (dict(dump_samples="FULL"), "--dump_samples=FULL: not empty"),
])
def test_bad_fid_options_are_one_line_before_any_work(fields, expected, tmp_path,
                                                      monkeypatch):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "FULL").mkdir()
    (tmp_path / "FULL" / "000000.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the run was read before the options were checked")
    monkeypatch.setattr(suite.run_dir, "require_run_record", no_work)
    with pytest.raises(ConfigError) as info:
        suite.evaluate_run(str(tmp_path / "run"), _fid_config(**fields))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_dump_samples_needs_fid(digits_run, tmp_path):
    with pytest.raises(ConfigError, match=r"^--dump_samples=.*: writes FID's samples, but "
                                          r"fid is not computed \(metrics: pictures\)$"):
        suite.evaluate_run(digits_run, suite.EvalConfig(
            metrics=("pictures",), dump_samples=str(tmp_path / "samples")))
    assert not (tmp_path / "samples").exists()


def test_fid_entries_still_make_tables(run, network, tmp_path):
    report = suite.evaluate_run(run, _fid_config(fid_cache_dir=str(tmp_path)))
    reports = [report.to_json()]
    results = tables.run_results("ALI", 0, reports, experiment="x", train_command="t",
                                 eval_command="e", commit="c", machine="m", seconds={})
    assert results["networks"] == {"fid": "c0ffee", "kid": "c0ffee"}
    assert results["points"][0]["metrics"]["fid"] == {"mean": report.metrics["fid"]["mean"]}
    table = tables.comparison_table({"ALI": reports})
    assert "FID ↓" in table and f"{report.metrics['fid']['mean']:.1f} ± 0.0" in table
    assert "| fid |" in suite.report_markdown(report)


def test_the_evaluate_tool_maps_the_fid_flags_and_refuses_a_full_dump_folder(tmp_path):
    """In a process of its own (trainers.evaluate's flags clash with the trainer's):
    the flags reach EvalConfig by name, and a non-empty --dump_samples is one error
    line before the (missing) run is even looked at."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "000000.png").write_bytes(b"x")
    script = (
        "from absl import flags\n"
        "from trainers import evaluate\n"
        "evaluate.define_flags()\n"
        f"flags.FLAGS(['evaluate', '--model_dir={tmp_path}/no_run', '--fid_reference=train',\n"
        f"             '--fid_real_samples=50', '--fid_cache_dir={tmp_path}/cache',\n"
        f"             '--dump_samples={full}'])\n"
        "c = evaluate.config_from_flags()\n"
        "print(c.fid_reference, c.fid_real_samples, c.fid_cache_dir, c.dump_samples)\n"
        "evaluate.main([])\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"train 50 {tmp_path}/cache {full}"
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --dump_samples={full}: not empty (expected a new or empty folder, so the "
        "PNGs are FID's samples and nothing else)")


def test_the_images_digest_names_the_pixels_not_the_batching():
    pixels = tf.constant(np.random.RandomState(0).randint(0, 256, (6, 4, 4, 1)), tf.uint8)
    images = data.images_from_uint8(pixels, 4, 4)
    whole, count = fid.images_digest([images])
    assert count == 6 and fid.images_digest([images[:2], images[2:]]) == (whole, 6)
    # Less than half a level off: the same 8-bit images, so the same key.
    assert fid.images_digest([images + 0.3 / 127.5]) == (whole, 6)
    other = tf.tensor_scatter_nd_update(pixels, [[3, 1, 2, 0]], [pixels[3, 1, 2, 0] ^ 1])
    assert fid.images_digest([data.images_from_uint8(other, 4, 4)])[0] != whole
