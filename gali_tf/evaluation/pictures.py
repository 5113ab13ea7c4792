"""The pictures people look at: samples, reconstructions, interpolations, toy scatter.

Every function returns a [1, H, W, C] image in [0, 1] (TensorBoard's and
`visualize.write_png`'s format); the toy scatter is drawn with matplotlib.
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


# toy_scatter's layout, in inches: a fixed layout scaled by the dpi, so every size
# looks the same (fonts and markers included).
_SCATTER_INCHES = 4.8


def scatter_figure(samples: np.ndarray, means: np.ndarray, data: np.ndarray | None = None,
                   size: int = 480, extent: float = 6.0):
    """The matplotlib Figure of toy_scatter, size x size pixels once drawn.

    A bare Figure on an Agg canvas, not pyplot: no global figure registry to leak
    into or close, and no backend switch in a process that may have chosen another.
    """
    # Imported here, as in tables.py: only the toy's evaluation draws with matplotlib.
    from matplotlib.backends import backend_agg  # pylint: disable=import-outside-toplevel
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    if int(size) < 64:
        raise ValueError(f"toy_scatter size={size}: expected at least 64 pixels")
    figure = Figure(figsize=(_SCATTER_INCHES, _SCATTER_INCHES),
                    dpi=int(size) / _SCATTER_INCHES)
    backend_agg.FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # plot() with markers and no line draws 10^4 points far faster than scatter().
    if data is not None:
        axes.plot(*np.asarray(data).T[:2], ".", color="0.75", markersize=1.5,
                  label="data", zorder=1)
    axes.plot(*np.asarray(samples).T[:2], ".", color=(0.1, 0.3, 0.9), markersize=2.5,
              label="samples", zorder=2)
    axes.plot(*np.asarray(means).T[:2], "x", color=(0.9, 0.1, 0.1), markersize=7,
              markeredgewidth=2, label="mixture means", zorder=3)  # last: always visible
    axes.set_xlim(-extent, extent)
    axes.set_ylim(-extent, extent)
    axes.set_aspect("equal")
    axes.set_xlabel("$x_1$")
    axes.set_ylabel("$x_2$")
    axes.tick_params(labelsize=8)
    axes.grid(alpha=0.3)
    # Below the axes: inside, it would hide the outer modes.
    legend = figure.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    for handle in legend.legend_handles:
        handle.set_markersize(7)  # the data's 1.5-point dots are invisible in a legend
    figure.subplots_adjust(left=0.13, right=0.97, top=0.97, bottom=0.17)
    return figure


def toy_scatter(samples: np.ndarray, means: np.ndarray, data: np.ndarray | None = None,
                size: int = 480, extent: float = 6.0) -> tf.Tensor:
    """A scatter plot (ALI Fig. 8) on [-extent, extent]^2 with axes, ticks and a legend:
    data in grey, samples in blue, the mixture means as red crosses. [1, size, size, 3]."""
    figure = scatter_figure(samples, means, data, size, extent)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return tf.constant(rgba[None, :, :, :3].astype(np.float32) / 255.0)
