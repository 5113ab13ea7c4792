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
    squared_error = tf.function(squared_error)
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
