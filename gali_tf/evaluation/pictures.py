"""The pictures people look at: samples, reconstructions, interpolations, toy scatter.

Every function returns a [1, H, W, C] image in [0, 1] (TensorBoard's and
`visualize.write_png`'s format).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from gali_tf.visualize import image_grid, pairs_grid


def samples_grid(generate, z: tf.Tensor, columns: int = 8) -> tf.Tensor:
    """G(z) for prior draws z (ALI Figs. 2-4, left)."""
    return image_grid(generate(z), columns=columns)


def reconstructions_grid(reconstruct, images: tf.Tensor, columns: int = 8) -> tf.Tensor:
    """Pairs (x, G(mu(E(x)))) side by side (ALI Figs. 2-4, right)."""
    return pairs_grid(images, reconstruct(images), columns=columns)


def interpolate_latents(z_start: tf.Tensor, z_end: tf.Tensor, steps: int) -> tf.Tensor:
    """[B, steps, D] points on the segments z_start -> z_end, both ends included."""
    weights = tf.reshape(tf.linspace(0.0, 1.0, steps), [1, steps, 1])
    return (1.0 - weights) * z_start[:, None, :] + weights * z_end[:, None, :]


def interpolation_grid(encode, generate, starts: tf.Tensor, ends: tf.Tensor,
                       steps: int = 10) -> tf.Tensor:
    """ALI Fig. 6: one row per image pair, G of the linear path between mu(E(start)) and
    mu(E(end)), with the two real images at the ends of the row."""
    path = interpolate_latents(encode(starts), encode(ends), steps)
    batch, _, latent = path.shape
    decoded = tf.reshape(generate(tf.reshape(path, [-1, latent])),
                         [batch, steps, *starts.shape[1:]])
    rows = tf.concat([starts[:, None], tf.cast(decoded, starts.dtype), ends[:, None]], axis=1)
    return image_grid(tf.reshape(rows, [-1, *starts.shape[1:]]), columns=steps + 2)


def toy_scatter(samples: np.ndarray, means: np.ndarray, data: np.ndarray | None = None,
                size: int = 480, extent: float = 6.0) -> tf.Tensor:
    """A scatter plot (ALI Fig. 8) drawn with numpy: data in grey, samples in blue,
    the mixture means as red crosses, on [-extent, extent]^2."""
    canvas = np.ones((size, size, 3), np.float32)

    def to_pixels(points):
        points = np.asarray(points, np.float64)
        cols = np.round((points[:, 0] + extent) / (2 * extent) * (size - 1)).astype(int)
        rows = np.round((extent - points[:, 1]) / (2 * extent) * (size - 1)).astype(int)
        keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
        return rows[keep], cols[keep]

    def dots(points, color, radius):
        rows, cols = to_pixels(points)
        for dr in range(-radius, radius + 1):
            for dc in range(-radius, radius + 1):
                r, c = np.clip(rows + dr, 0, size - 1), np.clip(cols + dc, 0, size - 1)
                canvas[r, c] = color

    if data is not None:
        dots(data, (0.75, 0.75, 0.75), 0)
    dots(samples, (0.1, 0.3, 0.9), 1)
    rows, cols = to_pixels(means)
    for d in range(-5, 6):   # crosses drawn last, so they stay visible
        canvas[np.clip(rows + d, 0, size - 1), cols] = (0.9, 0.1, 0.1)
        canvas[rows, np.clip(cols + d, 0, size - 1)] = (0.9, 0.1, 0.1)
    return tf.constant(canvas[None])
