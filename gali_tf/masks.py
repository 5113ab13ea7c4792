"""Rectangular hole masks for GALI-mix and inpainting (GALI, "Mixed Images").

The distribution for H x W images: height h ~ U{1..H}, width w ~ U{1..W}, then the
top-left corner y ~ U{0..H-h}, x ~ U{0..W-w}, so the hole always fits. (The official
code draws the x-offset with h instead of w; not here.) Masks are float
[B, H, W, 1] tensors, 1 inside the hole, sampled with tensor ops from a `StepNoise`
(stateless, drawn for the global batch and sliced per replica, XLA-compatible).
"""

from __future__ import annotations

import tensorflow as tf


def boxes_from_uniform(u: tf.Tensor, height: int, width: int):
    """Maps U[0, 1) numbers [B, 4] to boxes (y, x, h, w), int32 [B] each.

    floor(u * n) is uniform on {0..n-1}; the minimum guards against u rounding to 1.
    """
    u = tf.cast(u, tf.float32)
    h = 1 + tf.minimum(tf.cast(tf.floor(u[:, 0] * height), tf.int32), height - 1)
    w = 1 + tf.minimum(tf.cast(tf.floor(u[:, 1] * width), tf.int32), width - 1)
    y_range, x_range = height - h + 1, width - w + 1
    y = tf.minimum(tf.cast(tf.floor(u[:, 2] * tf.cast(y_range, tf.float32)), tf.int32), y_range - 1)
    x = tf.minimum(tf.cast(tf.floor(u[:, 3] * tf.cast(x_range, tf.float32)), tf.int32), x_range - 1)
    return y, x, h, w


def boxes_to_masks(y, x, h, w, height: int, width: int) -> tf.Tensor:
    """Float masks [B, H, W, 1], 1 on rows y..y+h-1 and columns x..x+w-1."""
    y, x, h, w = (tf.reshape(tf.cast(v, tf.int32), [-1, 1, 1]) for v in (y, x, h, w))
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
    return tf.cast(inside, tf.float32)[..., None]


def sample_masks(noise, images_shape) -> tf.Tensor:
    """One random mask per image of this replica's static shape [B, H, W, C].

    `noise` is a `gali_tf.model.StepNoise`: one draw per call, so two calls give
    independent masks, and replicas get distinct slices of the global draw.
    """
    batch, height, width = (int(d) for d in images_shape[:3])
    return boxes_to_masks(*boxes_from_uniform(noise.uniform([batch, 4]), height, width),
                          height, width)


def box_masks(batch: int, height: int, width: int, x: int, y: int, w: int, h: int) -> tf.Tensor:
    """The same fixed box (top-left x, y; size w x h) for every image of a batch."""
    ones = tf.ones([batch], tf.int32)
    return boxes_to_masks(y * ones, x * ones, h * ones, w * ones, height, width)


def apply_mask(images: tf.Tensor, mask: tf.Tensor, fill: float) -> tf.Tensor:
    """The encoder's input: images with the hole set to `fill` (model scale [-1, 1])."""
    mask = tf.cast(mask, images.dtype)
    return images * (1.0 - mask) + tf.cast(fill, images.dtype) * mask


def mix(images: tf.Tensor, mask: tf.Tensor, filler: tf.Tensor) -> tf.Tensor:
    """Mix(x, M): images outside the hole, `filler` (e.g. G(E(M(x)))) inside."""
    mask = tf.cast(mask, images.dtype)
    return images * (1.0 - mask) + tf.cast(filler, images.dtype) * mask
