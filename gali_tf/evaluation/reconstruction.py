"""Reconstruction quality (GALI Table 1): pixel MSE of G(mu(E(x))) on test images,
feature MSE on a frozen classifier, and the toy's MSE in data units."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from gali_tf.visualize import to_unit_range


@dataclasses.dataclass(frozen=True)
class MSEResult:
    mean: float          # over every value of every test image
    std: float           # of the per-batch means (the papers' "±")
    num_batches: int
    num_examples: int

    def __str__(self) -> str:
        return (f"{self.mean:.5f} ± {self.std:.5f} "
                f"({self.num_examples} images, {self.num_batches} batches)")


class MeanAccumulator:
    """Mean over every value of a stream of batches, and the std of the batch means
    (the papers' "±"), as an MSEResult. Shared by the reconstruction and inpainting
    metrics."""

    def __init__(self):
        self.total, self.count, self.batch_means, self.examples = 0.0, 0.0, [], 0

    def add(self, total, count, examples: int) -> None:
        """One batch: the sum of its values, how many values, how many examples."""
        total, count = float(total), float(count)
        self.total += total
        self.count += count
        self.batch_means.append(total / count)
        self.examples += int(examples)

    def add_values(self, values: tf.Tensor, examples: int) -> None:
        self.add(tf.reduce_sum(values), tf.size(values), examples)

    def result(self, name: str) -> MSEResult:
        if not self.batch_means:
            raise ValueError(f"{name}: the dataset is empty")
        return MSEResult(self.total / self.count, float(np.std(self.batch_means)),
                         len(self.batch_means), self.examples)


def _mean_squared_error(squared_error, dataset: tf.data.Dataset, name: str) -> MSEResult:
    """Mean of `squared_error(images)` over every value, and the std of the batch means.

    A dataset of (images, y) pairs (conditional models) calls squared_error(images, y).
    """
    # One trace for every batch size of a tf.data.Dataset (the last batch is smaller): a
    # trace per shape of each call's new function makes TensorFlow warn of retracing at
    # every --eval_every. Other iterables of batches trace per shape.
    spec = getattr(dataset, "element_spec", None)
    squared_error = tf.function(squared_error, reduce_retracing=True) if spec is None else \
        tf.function(squared_error, input_signature=tuple(spec) if isinstance(spec, tuple)
                    else (spec,))
    accumulator = MeanAccumulator()
    for batch in dataset:
        batch = batch if isinstance(batch, tuple) else (batch,)
        accumulator.add_values(squared_error(*batch), batch[0].shape[0])
    return accumulator.result(name)


def pixel_mse(reconstruct, dataset: tf.data.Dataset) -> MSEResult:
    """Mean squared error between images and reconstructions, both scaled to [0, 1].

    `reconstruct` maps a batch in [-1, 1] to its reconstruction G(mu(E(x))) (z = mu,
    inference-mode BatchNorm); `dataset` yields image batches in [-1, 1], or (images, y)
    batches for a conditional model, whose reconstruct takes `condition=y`.
    """
    def squared_error(images, *condition):
        return tf.square(to_unit_range(images)
                         - to_unit_range(_reconstruct(reconstruct, images, condition)))
    return _mean_squared_error(squared_error, dataset, "pixel_mse")


def point_mse(reconstruct, dataset: tf.data.Dataset) -> MSEResult:
    """Mean squared error between points and reconstructions in data units (the
    25-Gaussian toy, ALI Fig. 8), for data that are not images."""
    def squared_error(points):
        return tf.square(points - tf.cast(reconstruct(points), points.dtype))
    return _mean_squared_error(squared_error, dataset, "point_mse")


def feature_mse(feature_fn, reconstruct, dataset: tf.data.Dataset) -> MSEResult:
    """Mean squared error between M(x) and M(G(mu(E(x)))) (GALI Table 4's feature MSE).

    `feature_fn` maps images in [-1, 1] to [B, F] features (a frozen feature model such
    as gali_tf.features.FeatureModel); `reconstruct` and `dataset` as in `pixel_mse`.
    """
    def squared_error(images, *condition):
        return tf.square(feature_fn(images)
                         - feature_fn(_reconstruct(reconstruct, images, condition)))
    return _mean_squared_error(squared_error, dataset, "feature_mse")


def _reconstruct(reconstruct, images, condition):
    return reconstruct(images, condition=condition[0]) if condition else reconstruct(images)


@dataclasses.dataclass(frozen=True)
class BaselineMSE:
    """Pixel MSE (images in [0, 1]) of predictors that ignore the code."""

    mean_image: float                 # the mean training image for every x
    class_mean_image: float | None    # the mean training image of x's own class


def baseline_mse(train: tf.data.Dataset, test: tf.data.Dataset,
                 num_classes: int) -> BaselineMSE:
    """What pixel MSE means on this data: a reconstruction no better than the mean image
    has learned nothing about x; one at the class-mean image has kept only the class.

    Both datasets yield (images in [-1, 1], int labels) batches, or image batches when
    num_classes = 0, which skips the class-mean baseline (unlabelled data).
    """
    classes = max(num_classes, 1)
    sums, counts = None, np.zeros(classes)
    for batch in train:
        images, labels = batch if num_classes else (batch, None)
        images = to_unit_range(images).numpy().astype(np.float64)
        index = labels.numpy().astype(int) if num_classes else np.zeros(len(images), int)
        if sums is None:
            sums = np.zeros((classes, *images.shape[1:]))
        np.add.at(sums, index, images)
        counts += np.bincount(index, minlength=classes)
    if sums is None:
        raise ValueError("baseline_mse: the train split is empty")
    mean_image = sums.sum(0) / counts.sum()
    class_means = sums / np.maximum(counts, 1).reshape(-1, *[1] * (sums.ndim - 1))
    overall, by_class, total = 0.0, 0.0, 0
    for batch in test:
        images, labels = batch if num_classes else (batch, None)
        images = to_unit_range(images).numpy().astype(np.float64)
        overall += float(np.square(images - mean_image).sum())
        if num_classes:
            by_class += float(np.square(images - class_means[labels.numpy()]).sum())
        total += images.size
    return BaselineMSE(overall / total, by_class / total if num_classes else None)


@dataclasses.dataclass(frozen=True)
class ClassAgreement:
    agreement: float        # share of G(mu(E(x))) that the classifier gives x's label
    accuracy: float         # the classifier's accuracy on x itself (the ceiling)
    num_examples: int


def class_agreement(classify, reconstruct, dataset: tf.data.Dataset) -> ClassAgreement:
    """GALI's "reconstructions of the right class": argmax classify(G(mu(E(x)))) == y.

    `classify` maps images in [-1, 1] to [B, K] logits (the project classifier, frozen);
    `dataset` yields (images, int labels) batches.
    """
    @tf.function
    def hits(images, labels):
        labels = tf.cast(labels, tf.int64)
        on_x = tf.argmax(classify(images), axis=-1) == labels
        on_reconstruction = tf.argmax(classify(reconstruct(images)), axis=-1) == labels
        return (tf.reduce_sum(tf.cast(on_reconstruction, tf.int64)),
                tf.reduce_sum(tf.cast(on_x, tf.int64)))

    agree = correct = total = 0
    for images, labels in dataset:
        batch_agree, batch_correct = hits(images, labels)
        agree, correct = agree + int(batch_agree), correct + int(batch_correct)
        total += int(images.shape[0])
    if not total:
        raise ValueError("class_agreement: the dataset is empty")
    return ClassAgreement(agree / total, correct / total, total)


@dataclasses.dataclass(frozen=True)
class LatentSNR:
    snr: float                  # mean over units of var_x(mu) / mean_x(sigma^2)
    active_units: int           # units whose ratio exceeds 1 (signal above E's own noise)
    latent_dim: int


def latent_snr(encode, dataset: tf.data.Dataset) -> LatentSNR:
    """How much of x a stochastic E's code carries beyond its own noise:
    per unit j, var over x of mu_j(x) divided by the mean over x of sigma_j(x)^2, then
    the mean over units. Near 0 the code is noise (E has not learned inference yet).

    `encode` maps images to (mu, log_sigma), each [B, latent_dim]; `dataset` yields
    image batches (labels, if present, are ignored).
    """
    encode = tf.function(encode)
    count, mu_sum, mu_square_sum, variance_sum = 0, 0.0, 0.0, 0.0
    for batch in dataset:
        images = batch[0] if isinstance(batch, tuple) else batch
        mu, log_sigma = encode(images)
        mu = tf.cast(mu, tf.float64).numpy()
        count += len(mu)
        mu_sum = mu_sum + mu.sum(0)
        mu_square_sum = mu_square_sum + np.square(mu).sum(0)
        variance_sum = variance_sum + np.exp(2.0 * tf.cast(log_sigma, tf.float64).numpy()).sum(0)
    if not count:
        raise ValueError("latent_snr: the dataset is empty")
    mu_variance = mu_square_sum / count - np.square(mu_sum / count)
    ratio = mu_variance / np.maximum(variance_sum / count, 1e-12)
    return LatentSNR(float(ratio.mean()), int((ratio > 1.0).sum()), int(ratio.size))
