r"""Inpaints images with a trained run: composite x * (1 - m) + G(mu(E(mask(x)))) * m.

    python -m trainers.inpaint --model_dir=runs/digits_gali_mix --dataset=digits \
        --num_images=16 --mask=random --out=/tmp/inpaint --metrics
    python -m trainers.inpaint --model_dir=runs/celeba_gali_mix --images='faces/*.jpg' \
        --mask=16,20,32,24 --out=/tmp/faces

Writes every composite as a PNG (named after the source image, or inpainted_0000.png
for dataset images) and grid.png, one row per image: original, masked input,
inpainted. --mask=x,y,w,h is a fixed hole (top-left corner x, y; width w, height h,
in pixels of the run's image size); --mask=random draws the training distribution
from --seed. The hole is filled with the run's --mask_fill unless given here.
--metrics prints the hole pixel MSE (GALI Table 5) over the images (with --dataset:
the whole --split; masks from --seed, so models evaluated alike compare).
Loading a --hub export is not supported: use the run directory.
"""

from __future__ import annotations

from absl import flags

from gali_tf import data, inpaint
from trainers import cli

FLAGS = flags.FLAGS
# Every default is the library's (InpaintOptions' field of the same name).
_DEFAULTS = inpaint.InpaintOptions(model_dir="", out="")


@cli.define_once
def define_flags():
    flags.DEFINE_string("model_dir", None, "Run directory written by trainers.main.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the run's latest).")
    flags.DEFINE_string("images", None,
                        "Glob of images to inpaint (JPEG, PNG, GIF, BMP or WebP; resized to the run's size).")
    flags.DEFINE_string("dataset", None, "Instead of --images: take images from this gali_tf.data "
                        "dataset (e.g. digits).")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir for --dataset.")
    flags.DEFINE_enum("split", _DEFAULTS.split, list(data.SPLITS), "Split of --dataset.")
    flags.DEFINE_integer("num_images", _DEFAULTS.num_images, "Images of --dataset to inpaint and show.")
    flags.DEFINE_string("mask", _DEFAULTS.mask, "x,y,w,h (hole's top-left corner and size) or random.")
    flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of --mask=random.")
    flags.DEFINE_float("mask_fill", None, "Hole value in [-1, 1] (default: the run's --mask_fill).")
    flags.DEFINE_string("out", None, "Output directory for the PNGs.")
    flags.DEFINE_bool("metrics", _DEFAULTS.metrics, "Print the inpainting pixel MSE over the hole.")
    flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Batch size of --metrics.")


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    inpaint.inpaint_run(cli.from_flags(inpaint.InpaintOptions))


def run():
    """Console-script entry point."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
