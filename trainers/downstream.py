r"""Trains a linear classifier on an exported encoder (the "used-by" case, end to end).

    python -m trainers.downstream --hub_module=hub/digits_gali4/3000/encoder --dataset=digits
    python -m trainers.downstream --hub_module=... --dataset=digits --fine_tune
    python -m trainers.downstream --raw_pixels --dataset=digits      # the same classifier on pixels

Prints the test accuracy. The classifier and its input contract: gali_tf/downstream.py.
"""

from __future__ import annotations

from absl import flags

from gali_tf.downstream import DATASETS, DownstreamConfig, run_downstream
from trainers import cli

FLAGS = flags.FLAGS
_DEFAULTS = DownstreamConfig()


@cli.define_once
def define_flags():
    """Defined on demand, not at import: tests import this module next to
    trainers.main, whose flags (--dataset, --data_dir, ...) would clash."""
    flags.DEFINE_string("hub_module", _DEFAULTS.hub_module,
                        "Exported encoder directory, e.g. OUT/<step>/encoder.")
    flags.DEFINE_enum("dataset", _DEFAULTS.dataset, list(DATASETS),
                      "Labelled image dataset (single-label classes).")
    flags.DEFINE_string("data_dir", _DEFAULTS.data_dir,
                        "TFDS data_dir holding prepared datasets (no download).")
    flags.DEFINE_bool("fine_tune", _DEFAULTS.fine_tune,
                      "Also train the encoder's weights (hub.KerasLayer trainable).")
    flags.DEFINE_bool("raw_pixels", _DEFAULTS.raw_pixels,
                      "Train the same linear classifier on flattened pixels instead (a baseline).")
    flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Passes over the train split.")
    flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Batch size.")
    flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Adam learning rate.")
    flags.DEFINE_integer("seed", _DEFAULTS.seed,
                         "Seed of the classifier's initialisation and data order.")
    flags.DEFINE_integer("verbose", _DEFAULTS.verbose,
                         "tf_keras fit output: 0 silent, 1 bar, 2 one line per epoch.")


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    result = run_downstream(cli.from_flags(DownstreamConfig))
    print(f"test accuracy: {result.test_accuracy:.4f} ({result.description})")


def run():
    """Console-script entry point."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
