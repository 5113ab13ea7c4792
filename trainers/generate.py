r"""Conditional generation with a conditional ALI run (ALI 4.4, Fig. 7).

    python -m trainers.generate --model_dir=runs/celeba_ali_conditional \
        --attributes=Black_Hair,Brown_Hair,Blond_Hair --base_attributes=Male,Attractive,Young \
        --z_seed=3 --out=/tmp/faces
    python -m trainers.generate --model_dir=runs/digits_ali_conditional --classes=0,1,2,3 \
        --z_seed=0 --out=/tmp/digits --classifier=runs/digits_classifier/export

Writes OUT/grid.png in the style of ALI Fig. 7: each column is one fixed latent z
(--columns of them, drawn from --z_seed), each row one value of y. With --classes
(class-labelled data: digits, SVHN) row k is the one-hot class k. With --attributes
(CelebA) row k switches on attribute k on top of --base_attributes (every other
attribute 0); --cumulative keeps the earlier rows' attributes on, as in Fig. 7 (i)-(l).
OUT/rows.json names each row. --classifier=DIR (a trainers.classifier export of the
same dataset) also classifies --eval_samples generated images per row and prints how
often it finds the requested class (or, for CelebA, each requested attribute).
"""

from __future__ import annotations

from absl import flags

from gali_tf import generation
from trainers import cli

FLAGS = flags.FLAGS
# Every default is the library's (GenerateOptions' field of the same name).
_DEFAULTS = generation.GenerateOptions(model_dir="", out="")


@cli.define_once
def define_flags():
    flags.DEFINE_string("model_dir", None, "Run directory of a --conditional trainers.main run.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the run's latest).")
    flags.DEFINE_list("attributes", [], "CelebA attributes, one per row (e.g. Male,Smiling).")
    flags.DEFINE_list("base_attributes", [], "CelebA attributes switched on in every row.")
    flags.DEFINE_bool("cumulative", _DEFAULTS.cumulative,
                      "Row k keeps the attributes of rows < k on.")
    flags.DEFINE_list("classes", [], "Classes, one per row (digits, SVHN; default: all).")
    flags.DEFINE_integer("columns", _DEFAULTS.columns, "Fixed latents z, one per column.")
    flags.DEFINE_integer("z_seed", _DEFAULTS.z_seed, "Seed of the columns' z.")
    flags.DEFINE_string("out", None, "Output directory for grid.png and rows.json.")
    flags.DEFINE_string("classifier", "", "A trainers.classifier export: classify generated "
                        "images per row and print the accuracy.")
    flags.DEFINE_integer("eval_samples", _DEFAULTS.eval_samples,
                         "Generated images per row for --classifier.")


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    generation.generate_run(cli.from_flags(generation.GenerateOptions))


def run():
    """Console-script entry point."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
