"""The evaluation metrics against cases with known answers."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data
from gali_tf.evaluation import fid, modes, pictures, reconstruction, svm, tables


def _image_batches(n=3, shape=(4, 6, 6, 1)):
    return [tf.random.stateless_uniform(shape, [i, 1], -1, 1) for i in range(n)]


# ------------------------------------------------------------------- reconstruction


def test_pixel_mse_of_identical_images_is_zero():
    result = reconstruction.pixel_mse(lambda x: x, _image_batches())
    assert result.mean == 0.0 and result.std == 0.0 and result.num_examples == 12


def _batches(*arrays, size=2):
    return tf.data.Dataset.from_tensor_slices(arrays if len(arrays) > 1 else arrays[0]).batch(size)


def test_mean_image_baselines_by_hand():
    # Train: class 0 images all -1 (0 in [0, 1]), class 1 all +1 (1). Mean image 0.5.
    train_x = np.array([-1.0, -1.0, 1.0, 1.0], np.float32).reshape(4, 1, 1, 1) * np.ones(
        (4, 2, 2, 1), np.float32)
    train_y = np.array([0, 0, 1, 1], np.int32)
    test_x, test_y = train_x[[0, 2]], train_y[[0, 2]]
    result = reconstruction.baseline_mse(_batches(train_x, train_y), _batches(test_x, test_y), 2)
    assert result.mean_image == pytest.approx(0.25) and result.class_mean_image == 0.0
    unlabelled = reconstruction.baseline_mse(_batches(train_x), _batches(test_x), 0)
    assert unlabelled.mean_image == pytest.approx(0.25) and unlabelled.class_mean_image is None


def test_class_agreement_counts_reconstructions_of_the_right_class():
    # The "classifier" reads the class off the first pixel's sign; the "reconstruction"
    # flips the sign of the second image of each batch of two.
    images = np.array([-1.0, 1.0, 1.0, -1.0], np.float32).reshape(4, 1, 1, 1)
    labels = np.array([0, 1, 1, 0], np.int32)

    def classify(x):
        first = tf.reshape(x, [-1, 1])
        return tf.concat([-first, first], axis=-1)

    def reconstruct(x):
        return x * tf.constant([1.0, -1.0])[:, None, None, None]

    result = reconstruction.class_agreement(classify, reconstruct, _batches(images, labels))
    assert (result.agreement, result.accuracy, result.num_examples) == (0.5, 1.0, 4)


def test_latent_snr_is_signal_variance_over_noise_variance():
    # mu of unit 0 takes +-2 (variance 4), unit 1 is constant; sigma = 1 everywhere.
    images = np.array([2.0, -2.0, 2.0, -2.0], np.float32).reshape(4, 1)

    def encode(x):
        mu = tf.concat([x, tf.zeros_like(x)], axis=-1)
        return mu, tf.zeros_like(mu)

    result = reconstruction.latent_snr(encode, _batches(images))
    assert result.snr == pytest.approx(2.0) and result.active_units == 1
    assert result.latent_dim == 2


def test_point_mse_is_in_data_units():
    points = [tf.constant([[3.0, -4.0], [1.0, 1.0]])]
    result = reconstruction.point_mse(lambda x: tf.zeros_like(x), points)
    assert result.mean == pytest.approx((9 + 16 + 1 + 1) / 4)   # no [0, 1] clipping


# ------------------------------------------------------------------------------- FID


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    # Diagonal covariances: FID = ||m1 - m2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)).
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert fid.frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(expected)


def test_frechet_distance_with_full_covariances_matches_scipy_free_formula():
    # Same covariance, shifted mean: the trace terms cancel exactly.
    rng = np.random.RandomState(0)
    a = rng.randn(4, 4)
    sigma = a @ a.T + np.eye(4)
    assert fid.frechet_distance(np.zeros(4), sigma, np.full(4, 2.0), sigma) == pytest.approx(16.0)


def test_fid_of_sampled_gaussians_approaches_the_closed_form():
    rng = np.random.RandomState(1)
    real = rng.randn(20000, 2) * [1.0, 2.0]
    generated = rng.randn(20000, 2) * [2.0, 2.0] + [3.0, 0.0]
    value = fid.frechet_distance(*fid.feature_statistics(real),
                                 *fid.feature_statistics(generated))
    assert value == pytest.approx(9.0 + (1 + 4 - 2 * 2) + 0.0, abs=0.2)


def test_fid_of_identical_image_streams_is_zero_and_names_the_network():
    batches = _image_batches(n=8, shape=(16, 2, 2, 1))
    result = fid.fid(lambda x: tf.reshape(x, [x.shape[0], -1]), batches, batches, "flatten")
    assert abs(result.value) < 1e-6
    assert result.num_generated == result.num_real == 128 and result.network == "flatten"


def test_fid_with_fewer_samples_than_features_is_finite():
    rng = np.random.RandomState(2)
    a, b = rng.randn(5, 16), rng.randn(5, 16) + 1.0
    value = fid.frechet_distance(*fid.feature_statistics(a), *fid.feature_statistics(b))
    assert np.isfinite(value) and value > 0


def _kid_by_definition(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out pair by pair."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (a @ b / d + 1.0) ** 3   # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    rng = np.random.RandomState(4)
    real, generated = rng.randn(12, 3), rng.randn(12, 3) + 0.5
    # One subset holding every example: exactly the definition.
    value, std = fid.kernel_distance(real, generated, subsets=1, subset_size=12)
    assert value == pytest.approx(_kid_by_definition(generated, real), rel=1e-10)
    assert std == 0.0
    # Unbiased: near zero for two samples of one distribution, clearly positive apart.
    same, _ = fid.kernel_distance(rng.randn(2000, 4), rng.randn(2000, 4), subset_size=500)
    apart, _ = fid.kernel_distance(rng.randn(2000, 4), rng.randn(2000, 4) + 1.0,
                                   subset_size=500)
    assert abs(same) < 0.01 and apart > 0.5


def test_fid_reports_kid_on_the_same_features():
    batches = _image_batches(n=8, shape=(16, 2, 2, 1))
    result = fid.fid(lambda x: tf.reshape(x, [x.shape[0], -1]), batches, batches, "flatten")
    assert np.isfinite(result.kid) and abs(result.kid) < 0.05


# ------------------------------------------------------------------------------- SVM


def _separable(num_per_class, classes=3, dim=6, seed=0):
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(classes), num_per_class)
    features = rng.randn(len(labels), dim) * 0.1
    features[np.arange(len(labels)), labels] += 5.0    # class k lights up feature k
    return features.astype(np.float32), labels


def test_svm_on_separable_features_makes_no_error():
    train_x, train_y = _separable(40)
    test_x, test_y = _separable(20, seed=1)
    result = svm.svm_protocol(train_x, train_y, test_x, test_y,
                              svm.SVMConfig(per_class=10, draws=3, validation_size=30))
    assert result.mean_error == 0.0 and result.std_error == 0.0
    assert result.draws == 3 and len(result.chosen_c) == 3 and result.num_test == 60


def test_svm_on_random_labels_is_near_chance():
    rng = np.random.RandomState(3)
    train_x, test_x = rng.randn(300, 5), rng.randn(300, 5)
    train_y, test_y = rng.randint(3, size=300), rng.randint(3, size=300)
    result = svm.svm_protocol(train_x, train_y, test_x, test_y,
                              svm.SVMConfig(per_class=20, draws=2, validation_size=60))
    assert 0.5 < result.mean_error < 0.8


def test_validation_set_is_held_out_of_every_draw_and_seeded():
    labels = np.repeat(np.arange(4), 30)
    rng = np.random.RandomState(0)
    validation = svm.validation_indices(labels, per_class=10, validation_size=40, rng=rng)
    assert len(validation) == 40 and np.bincount(labels[validation]).tolist() == [10] * 4
    pool = np.setdiff1d(np.arange(len(labels)), validation)
    labelled = svm.draw_labelled(labels, pool, 10, rng)
    assert not set(labelled) & set(validation)
    assert np.bincount(labels[labelled]).tolist() == [10] * 4
    again = svm.validation_indices(labels, 10, 40, np.random.RandomState(0))
    np.testing.assert_array_equal(validation, again)


def test_validation_leaves_enough_examples_for_the_draws():
    labels = np.repeat(np.arange(2), 12)
    validation = svm.validation_indices(labels, per_class=10, validation_size=1000,
                                        rng=np.random.RandomState(0))
    assert np.bincount(labels[validation]).tolist() == [2, 2]


def test_svm_needs_enough_examples_per_class():
    labels = np.array([0] * 50 + [1] * 5)
    with pytest.raises(ValueError, match=r"--svm_per_class=10: class 1 has only 5"):
        svm.svm_protocol(np.zeros((55, 2)), labels, np.zeros((2, 2)), np.array([0, 1]),
                         svm.SVMConfig(per_class=10, draws=1))


def test_span_projection_solves_the_same_svm_as_the_full_space():
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    rng = np.random.RandomState(4)
    x, y = rng.randn(30, 80), rng.randint(3, size=30)     # fewer examples than dimensions
    x[:, 5] = 2.0                                         # a constant feature
    x_test = rng.randn(50, 80)
    project = svm._LabelledSpan(x)
    scaler = StandardScaler().fit(x)

    def full(features):   # standardised, with LinearSVC's constant-1 bias feature
        return np.hstack([scaler.transform(features), np.ones((len(features), 1))])
    options = dict(C=0.1, dual=True, fit_intercept=False, tol=1e-8, max_iter=100000)
    in_full = LinearSVC(**options).fit(full(x), y).decision_function(full(x_test))
    in_span = LinearSVC(**options).fit(project(x), y).decision_function(project(x_test))
    np.testing.assert_allclose(in_span, in_full, atol=1e-4)


# ----------------------------------------------------------------------------- modes


def test_a_generator_of_the_25_means_covers_25_modes():
    samples = np.repeat(data.TOY25_MEANS, 4, axis=0)
    result = modes.mode_coverage(samples, data.TOY25_MEANS, data.TOY25_STD)
    assert result.modes_covered == 25 and result.within_3std == 1.0
    assert result.counts == (4,) * 25


def test_a_generator_of_one_mean_covers_one_mode():
    samples = np.tile(data.TOY25_MEANS[7], (100, 1))
    result = modes.mode_coverage(samples, data.TOY25_MEANS, data.TOY25_STD)
    assert result.modes_covered == 1 and result.counts[7] == 100


def test_samples_between_modes_count_for_the_nearest_but_not_as_within_3std():
    means = data.TOY25_MEANS
    samples = means[:2] * 0.5 + means[1:3] * 0.5 + [[0.3, 0.0], [0.0, 0.3]]
    result = modes.mode_coverage(samples, means, data.TOY25_STD)
    assert result.modes_covered >= 1 and result.within_3std == 0.0


def test_responsibilities_are_a_distribution():
    r = modes.responsibilities(np.array([[0.0, 0.0], [100.0, 100.0]]), data.TOY25_MEANS, 0.05)
    np.testing.assert_allclose(r.sum(axis=1), 1.0)
    assert r[0].argmax() == 12           # (0, 0) is the centre of the grid


# -------------------------------------------------------------------------- pictures


def test_interpolation_rows_start_and_end_at_the_real_images():
    starts = -tf.ones([2, 4, 4, 1])
    ends = tf.ones([2, 4, 4, 1])
    grid = pictures.interpolation_grid(lambda x: tf.reduce_mean(x, [1, 2]),
                                       lambda z: tf.ones([z.shape[0], 4, 4, 1]) * z[:, None, None],
                                       starts, ends, steps=5)
    assert grid.shape == (1, 8, 7 * 4, 1)
    row = grid[0, :4, :, 0].numpy()
    assert row[:, :4].max() == 0.0 and row[:, -4:].min() == 1.0      # real ends
    np.testing.assert_allclose(row[0, 4::4][:5], [0.0, 0.25, 0.5, 0.75, 1.0])  # the path


def test_interpolate_latents_includes_both_ends():
    path = pictures.interpolate_latents(tf.zeros([1, 2]), tf.ones([1, 2]), 3)
    np.testing.assert_allclose(path.numpy()[0], [[0, 0], [0.5, 0.5], [1, 1]])


def _pixel(figure, point, height):
    """The (row, col) where `point` (data coordinates) lands in the drawn image."""
    x, y = figure.axes[0].transData.transform(point)
    return int(round(height - y)), int(round(x))


def _has_color(pixels, row, col, color, tolerance=0.15):
    """Whether a pixel within 2 of (row, col) has `color` (markers are antialiased)."""
    patch = pixels[max(row - 2, 0):row + 3, max(col - 2, 0):col + 3]
    return bool((np.abs(patch - np.array(color)).max(axis=-1) < tolerance).any())


def test_toy_scatter_draws_points_where_the_axes_put_them():
    samples, data_points = np.array([[1.0, 1.0]]), np.array([[-5.0, 5.0]])
    image = pictures.toy_scatter(samples, data.TOY25_MEANS, data_points, size=240, extent=6.0)
    assert image.shape == (1, 240, 240, 3) and image.dtype == tf.float32
    pixels = image[0].numpy()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    figure = pictures.scatter_figure(samples, data.TOY25_MEANS, data_points, size=240)
    figure.canvas.draw()
    np.testing.assert_array_equal(np.asarray(figure.canvas.buffer_rgba())[..., :3],
                                  np.round(pixels * 255))   # the same drawing
    assert _has_color(pixels, *_pixel(figure, (0.0, 0.0), 240), (0.9, 0.1, 0.1))   # a mean
    assert _has_color(pixels, *_pixel(figure, (4.0, -4.0), 240), (0.9, 0.1, 0.1))
    assert _has_color(pixels, *_pixel(figure, (1.0, 1.0), 240), (0.1, 0.3, 0.9))   # sample
    assert _has_color(pixels, *_pixel(figure, (-5.0, 5.0), 240), (0.75, 0.75, 0.75))
    assert not _has_color(pixels, *_pixel(figure, (3.0, -1.0), 240), (0.1, 0.3, 0.9))
    np.testing.assert_allclose(pixels[2, 2], (1.0, 1.0, 1.0))   # the margin


def test_toy_scatter_has_axes_ticks_a_legend_and_equal_aspect():
    figure = pictures.scatter_figure(np.zeros((3, 2)), data.TOY25_MEANS, np.ones((4, 2)),
                                     size=200, extent=5.0)
    axes = figure.axes[0]
    assert axes.get_xlim() == (-5.0, 5.0) and axes.get_ylim() == (-5.0, 5.0)
    assert axes.get_aspect() == 1.0
    assert {-4.0, 0.0, 4.0} <= set(axes.get_xticks()) and len(axes.get_yticks()) >= 3
    assert axes.get_xlabel() and axes.get_ylabel()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "data", "samples", "mixture means"]
    without_data = pictures.scatter_figure(np.zeros((3, 2)), data.TOY25_MEANS)
    assert [t.get_text() for t in without_data.legends[0].get_texts()] == [
        "samples", "mixture means"]
    with pytest.raises(ValueError, match="size=10: expected at least 64"):
        pictures.toy_scatter(np.zeros((3, 2)), data.TOY25_MEANS, size=10)


# ---------------------------------------------------------------------------- tables


def _report(**metrics):
    return {"metrics": {name: {"mean": value} for name, value in metrics.items()}}


def test_comparison_table_has_mean_and_std_over_seeds():
    table = tables.comparison_table({
        "ALI": [_report(pixel_mse=0.1, svm_error=0.2), _report(pixel_mse=0.3, svm_error=0.4)],
        "GALI-4": [_report(pixel_mse=0.05, svm_error=0.1)],
    })
    lines = table.strip().splitlines()
    assert lines[0] == "| variant | seeds | pixel MSE ↓ | SVM error % ↓ |"
    assert lines[2] == "| ALI | 2 | 0.2000 ± 0.1000 | 30.0 ± 10.0 |"
    assert lines[3] == "| GALI-4 | 1 | 0.0500 ± 0.0000 | 10.0 ± 0.0 |"


def test_table_json_keeps_the_unrounded_values():
    out = tables.table_json({"ALI": [_report(modes_covered=20), _report(modes_covered=24)]})
    assert out["ALI"]["modes_covered"] == {"mean": 22.0, "std": 2.0, "values": [20.0, 24.0]}


def _run_results(variant, seed, points):
    return tables.run_results(
        variant, seed, [{"step": step, "metrics": {k: {"mean": v} for k, v in m.items()}}
                        for step, m in points],
        experiment="x.flags", train_command="python -m trainers.main", eval_command="e",
        commit="abc", machine="2 CPU cores", seconds={"train": 60.0, "eval": 6.0})


def test_tables_and_curves_come_from_run_results_files(tmp_path):
    for seed, final in ((0, 0.04), (1, 0.06)):
        tables.write_run_results(str(tmp_path), _run_results(
            "GALI-4", seed, [(10, {"pixel_mse": 0.09}),
                             (20, {"pixel_mse": final, "mean_image_mse": 0.08})]))
    tables.write_run_results(str(tmp_path), _run_results("ALI", 0, [(20, {"pixel_mse": 0.07})]))
    runs = tables.read_run_results(str(tmp_path), ["ALI", "GALI-4", "ALICE"])
    assert list(runs) == ["ALI", "GALI-4"] and [r["seed"] for r in runs["GALI-4"]] == [0, 1]
    steps, mean, low, high = tables.curve(runs["GALI-4"], "pixel_mse")
    np.testing.assert_allclose(steps, [10, 20])
    np.testing.assert_allclose(mean, [0.09, 0.05])
    np.testing.assert_allclose((low[-1], high[-1]), (0.04, 0.06))
    text = tables.experiment_report(runs, title="t", command="c", invocation_minutes=0)
    assert "| GALI-4 | 2 | 0.0500 ± 0.0100 |" in text
    assert "the mean training image 0.0800" in text
    assert "Code: abc." in text   # no training commit recorded: one commit to name
    runs["ALI"][0]["train_commit"] = "def"
    assert "Code: trained by def, evaluated by abc." in tables.experiment_report(
        runs, title="t", command="c", invocation_minutes=0)
    assert tables.plot_curves(runs, str(tmp_path / "curves.png")).endswith("curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(tables.ResultsError, match="no finished run of ALICE"):
        tables.read_run_results(str(tmp_path), ["ALICE"])


def test_a_damaged_run_results_file_is_one_results_error(tmp_path):
    good = _run_results("ALI", 0, [(20, {"pixel_mse": 0.07})])
    (tmp_path / "metrics").mkdir()
    for name, damaged, expected in (
            ("no_seed", {k: v for k, v in good.items() if k != "seed"}, "KeyError: 'seed'"),
            ("no_points", dict(good, points=[]), "no evaluated point"),
            ("a_list", [good], "AttributeError"),
            ("bad_metrics", dict(good, points=[{"step": 2, "metrics": [1]}]),
             "the metrics at step 2 are not a mapping")):
        path = tmp_path / "metrics" / f"{name}.json"
        path.write_text(json.dumps(damaged))
        with pytest.raises(tables.ResultsError, match=re.escape(
                f"{path}: not a run results file (")) as info:
            tables.read_run_results(str(tmp_path), ["ALI"])
        assert expected in str(info.value)
        path.unlink()


def test_select_runs_keeps_the_asked_seeds_at_the_budget():
    runs = {"ALI": [_run_results("ALI", s, [(step, {"pixel_mse": 0.05})])
                    for s, step in ((0, 20), (1, 10), (4, 20))]}
    kept, left_out = tables.select_runs(runs, seeds=range(3), final_step=20)
    assert [r["seed"] for r in kept["ALI"]] == [0]
    assert left_out == ["ALI seed 1 (final step 10, not the budget's 20)",
                        "ALI seed 4 (not among the seeds 0, 1, 2)"]
    assert tables.select_runs(runs, seeds=range(5))[1] == []
    text = tables.experiment_report(kept, title="t", command="c", invocation_minutes=0,
                                    left_out=left_out)
    assert "Left out of this table: ALI seed 1 (final step 10" in text


def test_a_table_says_when_its_runs_used_different_networks():
    runs = [_run_results("ALI", s, [(20, {"pixel_mse": 0.05, "fid": 30.0})]) for s in range(3)]
    for run, fingerprint in zip(runs, ("aaaa", "aaaa", None)):
        if fingerprint:
            run["networks"] = {"fid": fingerprint}
    assert tables.mixed_networks(runs) == ["fid on aaaa (2 runs), not recorded (1 run)"]
    text = tables.experiment_report({"ALI": runs}, title="t", command="c",
                                    invocation_minutes=0)
    assert "computed on different networks" in text and "fid on aaaa (2 runs)" in text
    runs[2]["networks"] = {"fid": "aaaa"}
    assert tables.mixed_networks(runs) == []
    assert "different networks" not in tables.experiment_report(
        {"ALI": runs}, title="t", command="c", invocation_minutes=0)


def test_a_table_says_when_fid_was_computed_on_differently_prepared_images():
    fid_entry = {"mean": 30.0, "quantisation": "uint8", "num_real": 297,
                 "reference_split": "test", "network_fingerprint": "aaaa"}
    kept = [tables.run_results("ALI", s, [{"step": 20, "metrics": {"fid": fid_entry}}],
                               experiment="x", train_command="t", eval_command="e",
                               commit="c", machine="m", seconds={}) for s in range(2)]
    assert kept[0]["protocols"] == {"fid": "uint8 images, 297 test"}
    older = _run_results("ALI", 2, [(20, {"fid": 31.0})])   # a file from before the protocol
    runs = {"ALI": kept + [older]}
    assert tables.mixed_networks(runs["ALI"], "protocols") == [
        "fid on not recorded (1 run), uint8 images, 297 test (2 runs)"]
    text = tables.experiment_report(runs, title="t", command="c", invocation_minutes=0)
    assert "FID's images were prepared differently" in text
    assert "FID's images were prepared differently" not in tables.experiment_report(
        {"ALI": kept}, title="t", command="c", invocation_minutes=0)


def test_run_results_keep_the_fingerprint_of_each_network_metric():
    report = {"step": 20, "metrics": {"fid": {"mean": 30.0, "network_fingerprint": "ab12"},
                                      "pixel_mse": {"mean": 0.05}}}
    kept = tables.run_results("ALI", 0, [report], experiment="x", train_command="t",
                              eval_command="e", commit="c", machine="m", seconds={})
    assert kept["networks"] == {"fid": "ab12"}
    assert kept["points"][0]["metrics"]["fid"] == {"mean": 30.0}


def test_draws_that_repeat_one_labelled_set_report_no_spread():
    # 12 examples per class, 10 labelled per class and a validation set that takes all it
    # may: the pool keeps exactly 10 per class, so every draw is the same labelled set.
    train_x, train_y = _separable(12)
    test_x, test_y = _separable(5, seed=1)
    result = svm.svm_protocol(train_x, train_y, test_x, test_y,
                              svm.SVMConfig(per_class=10, draws=4, validation_size=1000))
    assert result.draws == 1 and result.draws_asked == 4 and result.distinct_draws == 1
    assert result.std_error is None and "no spread" in str(result)
    # With room in the pool the draws differ, and the spread is measured.
    train_x, train_y = _separable(40)
    result = svm.svm_protocol(train_x, train_y, test_x, test_y,
                              svm.SVMConfig(per_class=10, draws=4, validation_size=30))
    assert result.distinct_draws == 4 and result.std_error is not None


def test_png_grids_show_small_images_at_a_readable_size(tmp_path):
    from gali_tf import visualize
    images = tf.random.stateless_uniform([4, 16, 16, 1], [0, 1], minval=-1.0, maxval=1.0)
    grid = visualize.image_grid(images, columns=2)
    visualize.write_png(grid, str(tmp_path / "digits.png"), image_size=16)
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "digits.png"))).numpy()
    assert png.shape == (2 * 64, 2 * 64, 1)
    # Nearest neighbour: each pixel becomes a 4x4 square of its own value.
    at_1x = tf.cast(tf.round(grid[0] * 255.0), tf.uint8).numpy()
    np.testing.assert_array_equal(png[::4, ::4], at_1x)
    np.testing.assert_array_equal(png[3::4, 3::4], at_1x)
    assert visualize.display_scale(64) == 1 and visualize.display_scale(28) == 2
