"""Inpainting with a trained run, composite x * (1 - m) + G(mu(E(mask(x)))) * m: the
library part of `python -m trainers.inpaint` (its docstring describes the outputs)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Optional

import tensorflow as tf

from gali_tf import data, masks, run_dir, visualize
from gali_tf.errors import ConfigError
from gali_tf.evaluation import inpainting


def parse_mask(text: str):
    """None for "random", else the box (x, y, w, h) as ints."""
    if text.strip() == "random":
        return None
    parts = text.split(",")
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ConfigError(f"--mask={text}: expected x,y,w,h (four integers) or random")
    return box


def check_box(box, text: str, height: int, width: int) -> None:
    x, y, w, h = box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ConfigError(f"--mask={text}: the hole x={x}..{x + w - 1}, y={y}..{y + h - 1} "
                          f"is not inside the {width}x{height} image (need w, h >= 1, "
                          f"x + w <= {width}, y + h <= {height})")


def load_images(pattern: str, shape) -> tuple:
    """(images in [-1, 1] [N, H, W, C], names) from a glob of image files (the formats
    of --dataset=folder)."""
    paths = sorted(p for p in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(p))
    if not paths:
        raise ConfigError(f"--images={pattern}: no files match")
    height, width, channels = shape
    images = []
    for path in paths:
        try:
            image = data.decode_rgb(tf.io.read_file(path).numpy())
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, OSError,
                ValueError, SyntaxError):
            # OSError and the others: Pillow's errors on a damaged WebP.
            raise ConfigError(f"--images: cannot read {path} as an image (JPEG, PNG, GIF, "
                              "BMP or WebP)") from None
        images.append(data.images_from_uint8(image, height, width, channels))
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return tf.stack(images), names


def check_out_dir(out: str) -> None:
    """--out must be a directory this process can write in, or one it can create.

    Checked before the run is restored and images decoded, by creating (and removing) an
    empty directory there: permission bits alone do not tell (root ignores them, and a
    read-only mount refuses everyone).
    """
    if "://" in out:
        return  # object stores: no cheap check; writes fail with their own error
    path = os.path.abspath(out)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"is under a file ({existing})"
        raise ConfigError(f"--out={out} {where}: expected a directory for the PNGs")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".inpaint-check-", dir=existing))
    except OSError as error:
        raise ConfigError(f"--out={out}: cannot write in {existing} "
                          f"({error.strerror or error}); pass a writable directory") from None


@dataclasses.dataclass(frozen=True)
class InpaintOptions:
    """What to inpaint (trainers.inpaint's flags of the same names)."""

    model_dir: str
    out: str
    images: Optional[str] = None
    dataset: Optional[str] = None
    checkpoint: Optional[str] = None
    data_dir: Optional[str] = None
    split: str = "test"
    num_images: int = 16
    mask: str = "random"
    seed: int = 0
    mask_fill: Optional[float] = None
    metrics: bool = False
    batch_size: int = 100


def inpaint_run(opts: InpaintOptions):
    """Writes the composites and grid.png; returns the InpaintingResult with --metrics."""
    if not opts.model_dir:
        raise ConfigError("--model_dir is required (a run directory written by trainers.main)")
    if not opts.out:
        raise ConfigError("--out is required (a directory for the PNGs)")
    check_out_dir(opts.out)
    if (opts.images is None) == (opts.dataset is None):
        raise ConfigError("give exactly one of --images=GLOB and --dataset=NAME")
    if opts.mask_fill is not None and not -1.0 <= opts.mask_fill <= 1.0:
        raise ConfigError(f"--mask_fill={opts.mask_fill}: expected a value in [-1, 1]")
    if opts.num_images < 1 or opts.batch_size < 1:
        raise ConfigError("--num_images and --batch_size must be >= 1")
    box = parse_mask(opts.mask)
    run = run_dir.restore_networks(opts.model_dir, opts.checkpoint)
    height, width, channels = shape = run.record.example_shape
    if box is not None:
        check_box(box, opts.mask, height, width)
    fill = opts.mask_fill if opts.mask_fill is not None else run.record.mask_fill

    if opts.images is not None:
        images, names = load_images(opts.images, shape)
        names = [f"{name}_inpainted" for name in names]
        eval_ds = tf.data.Dataset.from_tensor_slices(images).batch(opts.batch_size)
    else:
        cfg = data.DataConfig(dataset=opts.dataset, data_dir=opts.data_dir,
                              image_size=int(height), channels=int(channels))
        images = next(iter(data.make_dataset(cfg, opts.split, opts.num_images, shuffle=False,
                                             repeat=False, drop_remainder=False)))
        names = [f"inpainted_{i:04d}" for i in range(int(images.shape[0]))]
        eval_ds = data.make_dataset(cfg, opts.split, opts.batch_size, shuffle=False,
                                    repeat=False, drop_remainder=False)

    def reconstruct(masked):
        mu, _ = run.encoder(masked, training=False)
        return run.generator(mu, training=False)

    def mask_fn(batch_shape, batch_index):
        if box is None:
            return inpainting.eval_masks(batch_shape, batch_index, opts.seed)
        return masks.box_masks(batch_shape[0], height, width, *box)

    masked, composite = inpainting.inpaint(reconstruct, images,
                                           mask_fn(tuple(images.shape), 0), fill)
    tf.io.gfile.makedirs(opts.out)
    for name, image in zip(names, visualize.to_uint8(composite).numpy()):
        tf.io.write_file(os.path.join(opts.out, f"{name}.png"), tf.io.encode_png(image))
    visualize.write_png(inpainting.triplet_grid(images, masked, composite),
                        os.path.join(opts.out, "grid.png"), image_size=int(images.shape[1]))
    print(f"{opts.out}: {len(names)} inpainted images and grid.png "
          f"(columns: original, masked input, inpainted; {run.checkpoint})")
    if not opts.metrics:
        return None
    result = inpainting.evaluate(reconstruct, eval_ds, fill, seed=opts.seed, mask_fn=mask_fn)
    print(f"inpainting pixel MSE (hole, images in [0, 1]): {result.pixel_mse}")
    return result
