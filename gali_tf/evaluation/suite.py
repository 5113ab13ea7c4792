"""The evaluation suite: the papers' protocols on one checkpoint of a run.

`evaluate_run(model_dir, config)` restores E and G from a run directory and computes
the requested metrics of `REGISTRY` (name -> when it applies, how it is computed):

- reconstruction  pixel MSE of G(mu(E(x))), images in [0, 1] (GALI Table 1), and the
                  feature MSE on a frozen classifier M when one is given (GALI-PT)
- svm             the linear-SVM protocol on E's features (ALI 4.3, GALI Table 2)
- fid             Fréchet distance (and KID) of G(z) to the real images of a split on M's
                  features (GALI Table 3), both quantised to 8 bits; the real side's
                  features cached (--fid_cache_dir), the samples dumped as PNGs on request
- inpainting      hole pixel MSE (and feature MSE) of the composite (GALI Table 5)
- modes           25-Gaussian toy: modes covered, share within 3 std (ALI 4.5)
- pictures        samples, reconstruction pairs, latent interpolations (ALI Fig. 6),
                  and for the toy a scatter of samples over the mixture means
- d_classifier    semi-supervised runs: test misclassification of D's K-way prediction
                  on the data tuple (x, mu(E(x))) (ALI 4.3, Tables 1-2)

Conditional runs (ALI 4.4) are evaluated with each test image's own y: reconstruction
and pictures (samples take the test labels as y; no interpolations).

`write_report` writes RUN/eval/<step>.json, RUN/eval/<step>.md, the pictures under
RUN/eval/<step>/ and TensorBoard summaries under RUN/eval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from gali_tf import data as data_lib
from gali_tf import features as features_lib
from gali_tf import files, objectives, run_dir, tuples
from gali_tf.evaluation import fid as fid_lib
from gali_tf.evaluation import inpainting, modes, pictures, reconstruction, svm
from gali_tf.errors import ConfigError
from gali_tf.visualize import write_png

EVAL_DIR = "eval"
# In the user's cache (XDG_CACHE_HOME, else ~/.cache), where clean-fid and Keras keep
# theirs; "~" is expanded when used.
DEFAULT_FID_CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache",
                                     "gali_tf", "fid")
FID_REFERENCES = ("", "train", "test")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; field names follow trainers.evaluate's flags."""

    metrics: Tuple[str, ...] = ()        # () = every metric that applies to the run
    split: str = "test"
    batch_size: int = 100
    data_dir: Optional[str] = None       # where the run's TFDS data lives on this machine
    image_dir: Optional[str] = None      # the run's --image_dir for --dataset=folder
    # M for the reconstruction feature MSE and inpainting feature MSE ("" = the run's own M).
    feature: features_lib.FeatureConfig = features_lib.FeatureConfig()
    # The FID network ("" = the feature model above).
    fid: features_lib.FeatureConfig = features_lib.FeatureConfig()
    fid_samples: int = 10_000            # generated images G(z)
    # FID's real images: "" = the evaluated split, or "train" / "test"; at most
    # fid_real_samples of them, 0 = the whole split (reference statistics describe the
    # data, not a sample budget, and the cache computes them once; the field's
    # precomputed statistics, TTUR's and clean-fid's, cover whole splits too).
    fid_reference: str = ""
    fid_real_samples: int = 0
    # The real side's features, kept between evaluations ("" = no cache): recomputing
    # them is most of an evaluation's FID time (every checkpoint of every run of an
    # experiment compares with the same images); the key covers M, the split, and a
    # digest of the images' bytes, so a cache entry is never stale.
    fid_cache_dir: str = DEFAULT_FID_CACHE_DIR
    # A new or empty folder: FID's G(z) as 000000.png ... (uint8, as FID saw them).
    dump_samples: str = ""
    svm: svm.SVMConfig = svm.SVMConfig()
    mode_samples: int = 10_000
    num_pictures: int = 64
    seed: int = 0


@dataclasses.dataclass
class EvalReport:
    model_dir: str
    checkpoint: str
    step: int
    dataset: str
    tuples: str
    split: str
    # name -> {"mean": float, "std": float (when there is a spread), "what": str, ...}
    metrics: Dict[str, dict] = dataclasses.field(default_factory=dict)
    pictures: Dict[str, str] = dataclasses.field(default_factory=dict)   # name -> PNG path
    notes: List[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    seconds_per_metric: Dict[str, float] = dataclasses.field(default_factory=dict)
    image_size: int = 0   # the run's image height: how much the PNGs are upscaled

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class _Run:
    """What every metric reads: the restored run, its data, and E, G and their
    composition as tf.functions in inference mode (z = mu(E(x)))."""

    def __init__(self, restored: run_dir.RestoredRun, config: EvalConfig):
        self.restored, self.record, self.config = restored, restored.record, config
        self.conditional = restored.conditional
        self.data_config = _data_config(self.record, config)
        self.info = data_lib.dataset_info(self.data_config)
        encoder, generator = restored.encoder, restored.generator
        self.encoder = encoder
        self.encode = tf.function(lambda x: encoder(x, training=False)[0])
        self.generate = tf.function(lambda z, condition=None: generator(
            z, training=False, condition=condition))
        self.reconstruct = tf.function(lambda x, condition=None: generator(
            encoder(x, training=False, condition=condition)[0], training=False,
            condition=condition))
        self.progress: Callable[[str], None] = lambda line: None
        self.feature_model = None   # M of the feature MSEs, loaded by load_feature_models
        self.fid_model = None
        self._samples = None

    def load_feature_models(self, metrics: Tuple[str, ...]) -> None:
        """Every M the metrics need, loaded (and its flags checked) before the first
        metric runs, so a bad --feature_model fails in seconds, not after the SVM."""
        config, record = self.config, self.record
        if {"reconstruction", "inpainting"} & set(metrics) and self.info.is_image:
            self.feature_model = _feature_model(config.feature, record)
        if "fid" in metrics:
            self.fid_model = (features_lib.load_feature_model(config.fid)
                              if _has_m(config.fid)
                              else self.feature_model or _feature_model(config.feature, record))

    def split_images(self) -> tf.data.Dataset:
        """The evaluated split in order; conditional runs: (images, y), y their labels."""
        if self.conditional:
            return data_lib.make_conditional_dataset(
                self.data_config, self.info, self.config.split, self.config.batch_size,
                shuffle=False, repeat=False, drop_remainder=False)
        return self.labelled(self.config.split, with_labels=False)

    def labelled(self, split: str, with_labels: bool = True) -> tf.data.Dataset:
        return data_lib.make_dataset(self.data_config, split, self.config.batch_size,
                                     shuffle=False, repeat=False, with_labels=with_labels,
                                     drop_remainder=False)

    def samples(self) -> np.ndarray:
        """G(z) for the toy's metrics, drawn once (modes and the scatter share them)."""
        if self._samples is None:
            self._samples = np.concatenate(list(_generated_batches(
                self.generate, self.record.latent_dim, self.config.mode_samples, 1000,
                self.config.seed)))
        return self._samples


@dataclasses.dataclass(frozen=True)
class Metric:
    """One entry of the registry: `applies(record, info, config)` is "" when the metric
    applies to the run, else why not (one line); `compute(run, report)` adds its
    entries (and pictures or notes) to the report."""

    applies: Callable[[run_dir.RunRecord, data_lib.DatasetInfo, EvalConfig], str]
    compute: Callable[[_Run, EvalReport], None]


_CONDITIONAL = "a conditional run's E and G take the label y (use trainers.generate)"


def _applies_always(record, info, config) -> str:
    del record, info, config
    return ""


def _svm_applies(record, info, config) -> str:
    del config
    if record.condition_dim:
        return _CONDITIONAL
    return ("" if info.num_classes and info.is_image
            else f"--dataset={info.name} has no class labels for the SVM protocol")


def _fid_applies(record, info, config) -> str:
    if record.condition_dim:
        return _CONDITIONAL
    if not info.is_image:
        return "toy data are 2-d points (use modes)"
    network = config.fid if _has_m(config.fid) else config.feature
    return ("" if _has_m(network) or record.feature_model else
            "no FID network: give --fid_model (the papers' FID Inception, ttur:GRAPH.pb or "
            "tfgan:DIR, or a trainers.classifier export)")


def _inpainting_applies(record, info, config) -> str:
    del config
    if record.condition_dim:
        return _CONDITIONAL
    uses_masks = any(node.family == "mask" for node in record.tuple_set.required_nodes())
    return ("" if uses_masks and info.is_image else
            f"--tuples={record.tuples} has no masked encoder inputs")


def _modes_applies(record, info, config) -> str:
    del record, config
    return "" if info.name == "toy25" else "mode coverage needs --dataset=toy25"


def _d_classifier_applies(record, info, config) -> str:
    del info, config
    return ("" if record.network.label_classes else
            "only semi-supervised runs (--num_labeled) have a D that predicts labels")


def _reconstruction(run: _Run, report: EvalReport) -> None:
    """Pixel MSE of G(mu(E(x))) (GALI Table 1), the feature MSE on M (GALI-PT), and
    what they mean (_add_reconstruction_context); the toy's point MSE (ALI Fig. 8)."""
    if not run.info.is_image:
        report.metrics["point_mse"] = _mse_entry(
            reconstruction.point_mse(run.reconstruct, run.split_images()),
            "MSE of x vs G(mu(E(x))) in data units (ALI Fig. 8)")
        return
    report.metrics["pixel_mse"] = _mse_entry(
        reconstruction.pixel_mse(run.reconstruct, run.split_images()),
        "pixel MSE of G(mu(E(x))), images in [0, 1]")
    if run.feature_model is not None:
        report.metrics["feature_mse"] = _mse_entry(
            reconstruction.feature_mse(run.feature_model, run.reconstruct,
                                       run.split_images()),
            f"MSE of M(x) vs M(G(mu(E(x)))), M = {run.feature_model.description}",
            run.feature_model)
    if not run.conditional:
        _add_reconstruction_context(run, report)


def _add_reconstruction_context(run: _Run, report: EvalReport) -> None:
    """Next to pixel MSE, what it means: the mean-image baselines, whether reconstructions
    keep x's class, and whether E's code carries information beyond its noise."""
    info, split = run.info, run.config.split
    labelled = bool(info.num_classes) and not data_lib.is_multi_label(info)
    if info.num_train:
        baseline = reconstruction.baseline_mse(run.labelled("train", labelled),
                                               run.labelled(split, labelled),
                                               info.num_classes if labelled else 0)
        report.metrics["mean_image_mse"] = {
            "mean": baseline.mean_image,
            "what": "pixel MSE of the mean training image (a baseline that ignores x)"}
        if baseline.class_mean_image is not None:
            report.metrics["class_mean_image_mse"] = {
                "mean": baseline.class_mean_image,
                "what": "pixel MSE of the mean training image of x's class (keeps only "
                        "the class)"}
    classify = _classifier_logits(run.config.feature, run.record, info) if labelled else None
    if classify is not None:
        agreement = reconstruction.class_agreement(classify, run.reconstruct,
                                                   run.labelled(split))
        report.metrics["class_agreement"] = {
            "mean": agreement.agreement, "n": agreement.num_examples,
            "classifier_accuracy": agreement.accuracy,
            "network_fingerprint": classify.fingerprint,
            "what": f"share of G(mu(E(x))) classified as x's label (the classifier's "
                    f"accuracy on x: {agreement.accuracy:.4f})"}
    if run.encoder.stochastic:
        encoder = run.encoder
        snr = reconstruction.latent_snr(lambda x: encoder(x, training=False),
                                        run.split_images())
        report.metrics["latent_snr"] = {
            "mean": snr.snr, "active_units": snr.active_units, "latent_dim": snr.latent_dim,
            "what": f"mean over units of var_x(mu)/mean_x(sigma^2); {snr.active_units} of "
                    f"{snr.latent_dim} units above 1"}


def _svm(run: _Run, report: EvalReport) -> None:
    """The linear-SVM protocol on E's features (ALI 4.3, GALI Table 2)."""
    train_x, train_y = svm.encoder_features(run.encoder, run.labelled("train"))
    test_x, test_y = svm.encoder_features(run.encoder, run.labelled(run.config.split))
    try:
        result = svm.svm_protocol(train_x, train_y, test_x, test_y, run.config.svm,
                                  progress=run.progress)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    spread = (f"mean ± std over {result.draws} draws ({result.distinct_draws} distinct)"
              if result.std_error is not None else "one labelled set (no spread)")
    entry = {
        "mean": result.mean_error, "n": result.num_test, "draws": result.draws,
        "distinct_draws": result.distinct_draws, "per_class": result.per_class,
        "num_validation": result.num_validation, "feature_dim": result.feature_dim,
        "chosen_c": list(result.chosen_c),
        "what": f"linear-SVM test error on E's features, {result.per_class} labels/class, "
                f"{spread}"}
    if result.std_error is not None:
        entry["std"] = result.std_error
    elif result.draws < result.draws_asked:
        report.notes.append(
            f"svm_error: one draw, not the {result.draws_asked} asked: the training split "
            f"leaves only {result.per_class} examples per class outside the "
            f"{result.num_validation}-example validation set, so every draw would take the "
            "same labelled set and no spread over draws was measured; lower "
            "--svm_validation or --svm_per_class for independent draws")
    report.metrics["svm_error"] = entry


def _fid(run: _Run, report: EvalReport) -> None:
    """Fréchet distance and KID of G(z) to the reference split's images on the FID
    network (GALI Table 3), both streams quantised to 8 bits as image files hold them
    (fid_lib.quantize); the real side's features come from the cache when an earlier
    evaluation computed them, and G(z) is written as PNGs when --dump_samples asks."""
    config, fid_model = run.config, run.fid_model
    split = reference_split(config)
    generated = _generated_batches(run.generate, run.record.latent_dim, config.fid_samples,
                                   config.batch_size, config.seed)
    if config.dump_samples:
        generated = fid_lib.writing_pngs(generated, os.path.expanduser(config.dump_samples))
    generated_features = fid_lib.collect_features(fid_model, generated)
    real_features, cache = _reference_features(run, split)
    run.progress(f"  fid: real features {cache}")
    result = fid_lib.fid_of_features(generated_features, real_features, fid_model.description)
    compared = (f"{result.num_generated} G(z) vs {result.num_real} {split} images "
                f"({_share_of_split(result.num_real, run.info, split)})")
    common = {"n": result.num_generated, "num_real": result.num_real,
              "reference_split": split, "quantisation": fid_lib.QUANTISATION,
              "reference_cache": cache, "network": result.network,
              "network_fingerprint": fid_model.fingerprint,
              "papers_fid": fid_model.papers_fid}
    report.metrics["fid"] = {
        "mean": result.value, **common,
        "what": f"FID of {compared} on {result.network}, both as 8-bit images"}
    report.metrics["kid"] = {
        "mean": result.kid, "std": result.kid_std, **common,
        "what": f"KID (unbiased cubic-kernel MMD^2) of {compared} on {result.network}, "
                f"mean ± std over {fid_lib.KID_SUBSETS} subsets"}
    if config.dump_samples:
        report.metrics["fid"]["samples_dir"] = config.dump_samples
        report.notes.append(f"fid: its {result.num_generated} generated images are in "
                            f"{config.dump_samples} (000000.png ..., 8-bit as FID saw them) "
                            "for clean-fid or torchmetrics")
    if not fid_model.papers_fid:
        report.notes.append(f"FID uses {fid_model.description}, not the papers' FID "
                            f"Inception ({features_lib.TTUR_PREFIX}GRAPH.pb or "
                            f"{features_lib.TFGAN_PREFIX}DIR): compare it only with FIDs on "
                            "the same network")


def reference_split(config: EvalConfig) -> str:
    """The split FID's real images come from: --fid_reference, else the evaluated one."""
    return config.fid_reference or config.split


def _split_size(info: data_lib.DatasetInfo, split: str) -> int:
    return info.num_train if split == "train" else info.num_test


def _share_of_split(count: int, info: data_lib.DatasetInfo, split: str) -> str:
    total = _split_size(info, split)
    return "the whole split" if count >= total else f"the first {count} of {total}"


def _reference_images(run: _Run, split: str) -> tf.data.Dataset:
    """The split's images in order, the first fid_real_samples of them (0 = all)."""
    images = run.labelled(split, with_labels=False)
    cap = run.config.fid_real_samples
    return images.unbatch().take(cap).batch(run.config.batch_size) if cap else images


def _real_features(fid_model, images: tf.data.Dataset) -> np.ndarray:
    # Rounded through float32, what the cache holds (and M returns), so that a cached
    # and an uncached evaluation give the same FID to the last digit.
    return fid_lib.collect_features(fid_model, images).astype(np.float32).astype(np.float64)


def _reference_features(run: _Run, split: str) -> Tuple[np.ndarray, str]:
    """(The real images' features on the FID network, where they came from).

    Cached under --fid_cache_dir by a key of everything that determines them
    (fid_lib.ReferenceKey), including a digest of the images, so one pass over the
    data (cheap) decides whether M must run on them (not cheap). A network without a
    weights fingerprint is never cached: nothing would tell it from a retrained one."""
    config, fid_model = run.config, run.fid_model
    images = _reference_images(run, split)
    if not config.fid_cache_dir:
        return _real_features(fid_model, images), "computed (--fid_cache_dir is empty)"
    if not fid_model.fingerprint:
        return _real_features(fid_model, images), (
            "computed, not cached: the FID network has no weights fingerprint")
    digest, count = fid_lib.images_digest(images)
    key = fid_lib.ReferenceKey(
        network=fid_model.description, network_fingerprint=fid_model.fingerprint,
        network_input=tuple(fid_model.input_shape),
        network_value_range=tuple(fid_model.value_range),
        network_resize=fid_model.resize_method,
        network_input_dtype=fid_model.input_dtype.name, dataset=run.info.name,
        split=split, image_shape=tuple(run.info.example_shape), num_images=count,
        images_sha256=digest)
    path = os.path.join(os.path.expanduser(config.fid_cache_dir), key.file_name())
    cached = fid_lib.load_reference(path, key)
    if cached is not None:
        return cached, f"read from {path}"
    features = _real_features(fid_model, images)
    if fid_lib.save_reference(path, key, features):
        return features, f"computed, cached in {path}"
    return features, "computed, not cached (the cache folder is not writable)"


def check_fid_options(config: EvalConfig) -> None:
    """The FID flags' values, before any evaluation work (a refused --dump_samples
    must not cost a restored run and a metric first)."""
    if config.fid_reference not in FID_REFERENCES:
        raise ConfigError(f"--fid_reference={config.fid_reference}: expected train, test "
                          "or empty (the evaluated split, --split)")
    if config.fid_samples < 2:
        raise ConfigError(f"--fid_samples={config.fid_samples}: expected at least 2 "
                          "(FID needs a covariance)")
    if config.fid_real_samples < 0 or config.fid_real_samples == 1:
        raise ConfigError(f"--fid_real_samples={config.fid_real_samples}: expected 0 (the "
                          "whole split) or at least 2")
    folder = os.path.expanduser(config.dump_samples)
    if folder and tf.io.gfile.exists(folder):
        if not tf.io.gfile.isdir(folder):
            raise ConfigError(f"--dump_samples={folder}: is a file (expected a new or "
                              "empty folder)")
        if tf.io.gfile.listdir(folder):
            raise ConfigError(f"--dump_samples={folder}: not empty (expected a new or empty "
                              "folder, so the PNGs are FID's samples and nothing else)")


def _check_fid_run(run: _Run, metrics: Tuple[str, ...]) -> None:
    """What the FID options need of the run: FID itself for --dump_samples, and real
    images in the reference split."""
    config = run.config
    if config.dump_samples and "fid" not in metrics:
        raise ConfigError(f"--dump_samples={config.dump_samples}: writes FID's samples, but "
                          f"fid is not computed (metrics: {', '.join(metrics) or 'none'})")
    split = reference_split(config)
    if "fid" in metrics and _split_size(run.info, split) < 2:
        flag = (f"--fid_reference={split}" if config.fid_reference else f"--split={split}")
        raise ConfigError(f"{flag}: --dataset={run.info.name} has "
                          f"{_split_size(run.info, split)} {split} images; FID needs at "
                          "least 2 (choose the other split with --fid_reference)")


def _inpainting(run: _Run, report: EvalReport) -> None:
    """Hole pixel MSE (and feature MSE) of the inpainted composite (GALI Table 5)."""
    result = inpainting.evaluate(run.reconstruct, run.split_images(), run.record.mask_fill,
                                 seed=run.config.seed, feature_fn=run.feature_model)
    report.metrics["inpaint_pixel_mse"] = _mse_entry(
        result.pixel_mse, "hole pixel MSE of the composite, images in [0, 1]")
    if result.feature_mse is not None:
        report.metrics["inpaint_feature_mse"] = _mse_entry(
            result.feature_mse,
            f"composite vs original on M = {run.feature_model.description}",
            run.feature_model)


def _modes(run: _Run, report: EvalReport) -> None:
    """25-Gaussian toy: mixture components with a sample, share within 3 std (ALI 4.5)."""
    coverage = modes.mode_coverage(run.samples(), data_lib.TOY25_MEANS, data_lib.TOY25_STD)
    report.metrics["modes_covered"] = {
        "mean": coverage.modes_covered, "n": coverage.num_samples,
        "counts": list(coverage.counts),
        "what": f"of {coverage.num_modes} mixture components with a sample (ALI 4.5)"}
    report.metrics["within_3std"] = {
        "mean": coverage.within_3std, "n": coverage.num_samples,
        "what": "share of samples within 3 std of their component's mean"}


def _pictures(run: _Run, report: EvalReport) -> None:
    """Samples, reconstruction pairs and latent interpolations (ALI Fig. 6); conditional
    runs use the test images' labels as y; the toy gets a scatter over the means."""
    config, count = run.config, run.config.num_pictures
    if not run.info.is_image:
        points, _ = data_lib.toy25_arrays(config.split)
        report.pictures = {"scatter": pictures.toy_scatter(
            run.samples(), data_lib.TOY25_MEANS, points[:5000])}
    elif run.conditional:
        test_images, labels = next(iter(run.split_images().unbatch().batch(count)))
        z = tf.random.stateless_normal([int(labels.shape[0]), run.record.latent_dim],
                                       [config.seed, 7])
        half = max(int(labels.shape[0]) // 2, 1)
        report.pictures = {
            "samples": pictures.samples_grid(lambda z: run.generate(z, labels), z),
            "reconstructions": pictures.reconstructions_grid(
                lambda x: run.reconstruct(x, labels[:half]), test_images[:half]),
        }
        report.notes.append("conditional run: samples use the test images' labels as y; "
                            "trainers.generate draws the ALI Fig. 7 grid")
    else:
        test_images = _first_images(run.split_images(), 2 * max(count // 8, 1) + count // 2)
        z = tf.random.stateless_normal([count, run.record.latent_dim], [config.seed, 7])
        rows = max(1, min(8, int(test_images.shape[0]) // 2))
        report.pictures = {
            "samples": pictures.samples_grid(run.generate, z),
            "reconstructions": pictures.reconstructions_grid(
                run.reconstruct, test_images[:count // 2]),
            "interpolations": pictures.interpolation_grid(
                run.encode, run.generate, test_images[:rows], test_images[rows:2 * rows]),
        }


def _d_classifier(run: _Run, report: EvalReport) -> None:
    report.metrics["d_error"] = d_classifier_error(run.restored,
                                                   run.labelled(run.config.split))


# name -> Metric, in the order a report lists them (and the order they run).
REGISTRY: Dict[str, Metric] = {
    "reconstruction": Metric(_applies_always, _reconstruction),
    "svm": Metric(_svm_applies, _svm),
    "fid": Metric(_fid_applies, _fid),
    "inpainting": Metric(_inpainting_applies, _inpainting),
    "modes": Metric(_modes_applies, _modes),
    "pictures": Metric(_applies_always, _pictures),
    "d_classifier": Metric(_d_classifier_applies, _d_classifier),
}
METRICS = tuple(REGISTRY)


def _has_m(config: features_lib.FeatureConfig) -> bool:
    return bool(config.feature_model)


def applicable_metrics(record: run_dir.RunRecord, info: data_lib.DatasetInfo,
                       config: EvalConfig) -> Dict[str, str]:
    """Metric -> "" when it applies to the run, else why not (one line)."""
    return {name: metric.applies(record, info, config) for name, metric in REGISTRY.items()}


def resolve_metrics(record: run_dir.RunRecord, info: data_lib.DatasetInfo,
                    config: EvalConfig) -> Tuple[str, ...]:
    """The metrics to run, in the registry's order: the requested ones (each must
    apply), or all that apply."""
    reasons = applicable_metrics(record, info, config)
    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"--metrics={','.join(config.metrics)}: unknown {', '.join(unknown)} "
                          f"(expected some of {', '.join(METRICS)})")
    for metric in config.metrics:
        if reasons[metric]:
            raise ConfigError(f"--metrics={metric}: {reasons[metric]}")
    return tuple(m for m in METRICS if (m in config.metrics if config.metrics
                                        else not reasons[m]))


def _data_config(record: run_dir.RunRecord, config: EvalConfig) -> data_lib.DataConfig:
    shape, image = record.example_shape, record.is_image
    # The run's own data locations (recorded absolute) unless given again.
    return data_lib.DataConfig(
        dataset=record.dataset, data_dir=config.data_dir or record.data_dir,
        image_dir=config.image_dir or record.image_dir,
        image_size=shape[0] if image else None, channels=shape[2] if image else None)


def _feature_model(config: features_lib.FeatureConfig, record: run_dir.RunRecord):
    """The configured M, else the run's own (GALI-PT runs record theirs), else None."""
    if not _has_m(config) and record.feature_model:
        config = features_lib.FeatureConfig(
            record.feature_model, record.feature_output, record.feature_signature,
            record.feature_image_size)
    return features_lib.load_feature_model(config)


def _classifier_logits(config: features_lib.FeatureConfig, record: run_dir.RunRecord,
                       info: data_lib.DatasetInfo):
    """The logits of the feature model when it is a classifier of this dataset's classes
    (the project classifier's "logits" output), else None: what class agreement needs."""
    path = config.feature_model or record.feature_model
    imagenet = (features_lib.INCEPTION_PREFIX, features_lib.TTUR_PREFIX,
                features_lib.TFGAN_PREFIX)
    if (not path or path.startswith(imagenet) or not info.num_classes
            or data_lib.is_multi_label(info)):
        return None
    try:
        logits = features_lib.load_feature_model(features_lib.FeatureConfig(
            path, "logits", config.feature_signature, config.feature_image_size))
    except features_lib.FeatureModelError:
        return None   # M has no "logits" output: a feature network, not a classifier
    return logits if logits.dim == info.num_classes else None


def _mse_entry(result: reconstruction.MSEResult, what: str,
               network: Optional[features_lib.FeatureModel] = None) -> dict:
    entry = {"mean": result.mean, "std": result.std, "n": result.num_examples, "what": what}
    if network is not None:
        entry["network_fingerprint"] = network.fingerprint
    return entry


def _first_images(dataset: tf.data.Dataset, count: int) -> tf.Tensor:
    images = []
    for batch in dataset:
        images.append(batch)
        if sum(int(b.shape[0]) for b in images) >= count:
            break
    return tf.concat(images, axis=0)[:count]


def _generated_batches(generate, latent_dim: int, total: int, batch_size: int, seed: int):
    for start in range(0, total, batch_size):
        n = min(batch_size, total - start)
        yield generate(tf.random.stateless_normal([n, latent_dim], [seed, start]))


def evaluate_run(model_dir: str, config: EvalConfig = EvalConfig(),
                 checkpoint: Optional[str] = None,
                 progress: Optional[Callable[[str], None]] = None) -> EvalReport:
    """Computes the metrics of one checkpoint (default: the latest) of a run;
    `progress` (e.g. print) is told when each metric starts and how long it took, and
    each SVM draw, so a user of a long protocol sees it move."""
    started = time.time()
    check_fid_options(config)
    # Semi-supervised runs: D too, for d_classifier.
    semi_supervised = bool(run_dir.require_run_record(model_dir).network.label_classes)
    restored = run_dir.restore_networks(model_dir, checkpoint,
                                        with_discriminator=semi_supervised)
    run = _Run(restored, config)
    metrics = resolve_metrics(run.record, run.info, config)
    if config.batch_size < 1:
        raise ConfigError(f"--batch_size={config.batch_size}: expected at least 1")
    _check_fid_run(run, metrics)
    run.load_feature_models(metrics)
    report = EvalReport(model_dir, restored.checkpoint, restored.step, run.record.dataset,
                        run.record.tuples, config.split,
                        image_size=run.record.example_shape[0] if run.info.is_image else 0)
    run.progress = progress or (lambda line: None)
    for index, name in enumerate(metrics):
        run.progress(f"[{index + 1}/{len(metrics)}] {name} ...")
        metric_started = time.time()
        REGISTRY[name].compute(run, report)
        report.seconds_per_metric[name] = time.time() - metric_started
        run.progress(f"[{index + 1}/{len(metrics)}] {name}: "
                     f"{report.seconds_per_metric[name]:.0f} s")
    report.seconds = time.time() - started
    return report


def d_classifier_error(restored: run_dir.RestoredRun, dataset: tf.data.Dataset) -> dict:
    """Test misclassification of a semi-supervised D (ALI 4.3): argmax of D's K label
    logits on the data tuple of each test image, built with z = mu(E(x)), D in
    inference mode and without instance noise."""
    record = restored.record
    tuple_set = record.tuple_set
    num_labels = record.network.label_classes
    data_class = tuples.TupleSet("data", (tuple_set.classes[0],))
    operators = {
        "E": lambda ev, node: restored.encoder(ev.value(node.arg), training=False)[0],
        "G": lambda ev, node: restored.generator(ev.value(node.arg), training=False),
    }
    if not data_class.operator_families() <= set(operators):
        raise ConfigError(f"--metrics=d_classifier: the data tuple of --tuples="
                          f"{record.tuples!r} needs operators other than E and G")

    @tf.function
    def predict(x):
        evaluator = tuples.ChainEvaluator(operators, {"x": x})
        values = {node.name: evaluator.value(node) for node in data_class.slot_nodes()}
        logits = tuples.tuple_logits(restored.discriminator, data_class, values,
                                     training=False)[0]
        return objectives.label_predictions(tf.cast(logits, tf.float32), num_labels)

    wrong = total = 0
    for images, labels in dataset:
        wrong += int(tf.reduce_sum(tf.cast(predict(images) != labels, tf.int32)))
        total += int(labels.shape[0])
    return {"mean": wrong / max(total, 1), "n": total,
            "what": f"test misclassification of semi-supervised D's {num_labels}-way "
                    f"prediction on (x, mu(E(x))), {record.num_labeled} labels (ALI 4.3)"}


def report_markdown(report: EvalReport) -> str:
    """The report as a Markdown table (metric, value, what it is)."""
    lines = [f"# Evaluation of {report.model_dir} at step {report.step}", "",
             f"checkpoint `{report.checkpoint}`, dataset {report.dataset}, split "
             f"{report.split}, tuples `{report.tuples}`, {report.seconds:.0f} s ("
             + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds_per_metric.items())
             + ")", "",
             "| metric | value | what |", "|---|---|---|"]
    for name, entry in report.metrics.items():
        lines.append(f"| {name} | {format_value(entry)} | {entry['what']} |")
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    if report.pictures:
        lines += [""] + [f"![{name}]({path})" for name, path in report.pictures.items()]
    return "\n".join(lines) + "\n"


def format_value(entry: dict) -> str:
    mean = entry["mean"]
    text = f"{mean:.4g}" if isinstance(mean, float) else str(mean)
    if "std" in entry:
        text += f" ± {entry['std']:.2g}"
    return text


def write_report(report: EvalReport) -> Tuple[str, str]:
    """Writes RUN/eval/<step>.{json,md}, the PNGs and TensorBoard summaries; returns
    the JSON and Markdown paths. `report.pictures` becomes name -> PNG path."""
    eval_dir = os.path.join(report.model_dir, EVAL_DIR)
    picture_dir = os.path.join(eval_dir, str(report.step))
    tf.io.gfile.makedirs(picture_dir)
    writer = tf.summary.create_file_writer(eval_dir)
    with writer.as_default(step=report.step):
        for name, entry in report.metrics.items():
            tf.summary.scalar(f"eval/{name}", float(entry["mean"]))
        for name, image in report.pictures.items():
            if not isinstance(image, str):
                tf.summary.image(f"eval/{name}", image)
    writer.flush()
    paths = {}
    for name, image in report.pictures.items():
        if not isinstance(image, str):
            path = os.path.join(picture_dir, f"{name}.png")
            write_png(image, path, image_size=report.image_size)
            image = os.path.relpath(path, eval_dir)
        paths[name] = image
    report.pictures = paths
    base = os.path.join(eval_dir, str(report.step))
    files.write_text_atomically(base + ".json", json.dumps(report.to_json(), indent=2) + "\n")
    files.write_text_atomically(base + ".md", report_markdown(report))
    return base + ".json", base + ".md"
