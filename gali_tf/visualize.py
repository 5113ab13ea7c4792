"""Image grids for TensorBoard and PNG files (what people look at while training)."""

from __future__ import annotations

import math

import tensorflow as tf


def to_unit_range(images: tf.Tensor) -> tf.Tensor:
    """[-1, 1] model scale -> [0, 1] display and metric scale."""
    return tf.clip_by_value((tf.cast(images, tf.float32) + 1.0) / 2.0, 0.0, 1.0)


def image_grid(images: tf.Tensor, columns: int | None = None) -> tf.Tensor:
    """Tiles [N, H, W, C] images in [-1, 1] into one [1, rows*H, columns*W, C] image in [0, 1]."""
    images = to_unit_range(images)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    pad = rows * columns - n
    if pad:
        images = tf.concat([images, tf.zeros([pad, h, w, c])], axis=0)
    grid = tf.reshape(images, [rows, columns, h, w, c])
    grid = tf.transpose(grid, [0, 2, 1, 3, 4])
    return tf.reshape(grid, [1, rows * h, columns * w, c])


def pairs_grid(originals: tf.Tensor, reconstructions: tf.Tensor, columns: int = 8) -> tf.Tensor:
    """Original/reconstruction pairs side by side (ALI Fig. 2: odd columns are originals)."""
    pairs = tf.stack([originals, tf.cast(reconstructions, originals.dtype)], axis=1)
    return image_grid(tf.reshape(pairs, [-1, *originals.shape[1:]]), columns=2 * columns)


# A grid's images are written at least this many pixels high: a 16x16 digit shown at 1x
# is 16 pixels on screen.
DISPLAY_SIZE = 64


def display_scale(image_size: int) -> int:
    """The integer upscaling that shows images of `image_size` pixels at DISPLAY_SIZE."""
    return max(1, DISPLAY_SIZE // max(int(image_size), 1))


def write_png(grid: tf.Tensor, path: str, image_size: int = 0) -> None:
    """Writes a [1, H, W, C] grid in [0, 1] as a PNG file; a grid of `image_size`-pixel
    images is upscaled (nearest neighbour, so every pixel stays a sharp square) by
    display_scale(image_size) (0: as it is)."""
    pixels = tf.cast(tf.round(grid[0] * 255.0), tf.uint8)
    scale = display_scale(image_size) if image_size else 1
    if scale > 1:
        pixels = tf.repeat(tf.repeat(pixels, scale, axis=0), scale, axis=1)
    tf.io.write_file(path, tf.io.encode_png(pixels))


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    """[-1, 1] model scale -> uint8 [0, 255], rounded (the inverse of
    gali_tf.data.images_from_uint8 at the same size)."""
    return tf.cast(tf.round(to_unit_range(images) * 255.0), tf.uint8)
