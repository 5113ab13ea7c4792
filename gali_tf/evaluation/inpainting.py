"""Inpainting quality (GALI Table 5): hole pixel MSE and feature MSE of the composite.

The inpainter is the reconstruction path of the encoder input: the hole of x is
set to `fill` (as during training), then G(mu(E(masked))) fills it:

    composite = x * (1 - m) + G(mu(E(mask(x)))) * m

Masks come from a fixed seed (batch i of the test set always gets the same masks),
so evaluations of different models on the same data are comparable.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from gali_tf import masks as masks_lib
from gali_tf.evaluation.reconstruction import MeanAccumulator, MSEResult
from gali_tf.model import StepNoise
from gali_tf.visualize import image_grid, to_unit_range

# feature_fn(images in [-1, 1], [B, H, W, C]) -> features [B, F]
FeatureFn = Callable[[tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class InpaintingResult:
    pixel_mse: MSEResult                  # over hole pixels, images in [0, 1]
    feature_mse: Optional[MSEResult]      # composite vs original features (if feature_fn)


def eval_masks(images_shape, batch_index: int, seed: int = 0) -> tf.Tensor:
    """The evaluation masks of test batch `batch_index` (the training distribution)."""
    return masks_lib.sample_masks(StepNoise(seed, tf.constant(batch_index)), images_shape)


def inpaint(reconstruct, images: tf.Tensor, mask: tf.Tensor, fill: float):
    """(masked input, composite): the hole of `images` filled from reconstruct(masked)."""
    masked = masks_lib.apply_mask(images, mask, fill)
    return masked, masks_lib.mix(images, mask, reconstruct(masked))


def hole_squared_error(images: tf.Tensor, composite: tf.Tensor, mask: tf.Tensor):
    """(sum of squared error inside the hole, number of hole values), images in [0, 1]."""
    mask = tf.cast(mask, tf.float32)
    squared = tf.square(to_unit_range(images) - to_unit_range(composite)) * mask
    channels = int(images.shape[-1])
    return tf.reduce_sum(squared), tf.reduce_sum(mask) * channels


def evaluate(reconstruct, dataset: tf.data.Dataset, fill: float, seed: int = 0,
             feature_fn: Optional[FeatureFn] = None,
             mask_fn: Optional[Callable[[tuple, int], tf.Tensor]] = None) -> InpaintingResult:
    """Hole pixel MSE (and feature MSE with `feature_fn`) over a dataset of image batches.

    `reconstruct` maps masked images in [-1, 1] to G(mu(E(.))) (inference mode);
    `mask_fn(shape, batch_index)` overrides the seeded random masks (e.g. a fixed box).
    Means are over every hole value (every feature) of the set; the ± is the std of
    the per-batch means, as in `reconstruction.MSEResult`.
    """
    reconstruct = tf.function(reconstruct)
    mask_fn = mask_fn or (lambda shape, i: eval_masks(shape, i, seed))
    pixel, feature = MeanAccumulator(), MeanAccumulator()
    for i, images in enumerate(dataset):
        mask = mask_fn(tuple(images.shape), i)
        _, composite = inpaint(reconstruct, images, mask, fill)
        pixel.add(*hole_squared_error(images, composite, mask), images.shape[0])
        if feature_fn is not None:
            feature.add_values(tf.square(tf.cast(feature_fn(composite), tf.float32)
                                         - tf.cast(feature_fn(images), tf.float32)),
                               images.shape[0])
    pixel = pixel.result("inpainting.evaluate")
    feature = feature.result("inpainting.evaluate") if feature_fn is not None else None
    return InpaintingResult(pixel, feature)


def triplet_grid(originals, masked, inpainted, columns: int = 1) -> tf.Tensor:
    """Rows of (original, masked input, inpainted) triplets, `columns` triplets per row,
    as one [1, rows*H, 3*columns*W, C] image in [0, 1]."""
    triplets = tf.stack([originals, tf.cast(masked, originals.dtype),
                         tf.cast(inpainted, originals.dtype)], axis=1)
    return image_grid(tf.reshape(triplets, [-1, *originals.shape[1:]]), columns=3 * columns)
