r"""Trains the auxiliary classifier that provides GALI-PT's features M(x), and exports it.

    python -m trainers.classifier --dataset=digits --export_dir=runs/digits_classifier/export
    python -m trainers.classifier --dataset=svhn_cropped --data_dir=~/tensorflow_datasets \
        --export_dir=runs/svhn_classifier/export
    python -m trainers.classifier --dataset=celeb_a --data_dir=~/tensorflow_datasets \
        --export_dir=runs/celeba_classifier/export

The export (SavedModel + metadata.json) loads as M with
`--feature_model=EXPORT_DIR --feature_output=features` (README, "GALI-PT").
"""

from __future__ import annotations

from absl import flags

from gali_tf import classifier, data
from trainers import cli

# Every default is the library's (ClassifierConfig's field of the same name).
_CONFIG = classifier.ClassifierConfig()


@cli.define_once
def define_flags():
    flags.DEFINE_enum("dataset", _CONFIG.data.dataset, list(classifier.DATASETS),
                      "Labelled training data (celeb_a: 40 binary attributes).")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir holding prepared datasets (no download); "
                        "fashion_mnist: the folder of its four IDX files.")
    flags.DEFINE_integer("image_size", None, "Image height = width (default: the dataset's own; "
                         "use the GAN run's size).")
    flags.DEFINE_string("export_dir", None,
                        "Where the SavedModel goes (default runs/{digits,fashion,svhn,celeba}_classifier/export).")
    flags.DEFINE_integer("epochs", _CONFIG.epochs, "Training epochs.")
    flags.DEFINE_integer("batch_size", _CONFIG.batch_size, "Batch size.")
    flags.DEFINE_float("learning_rate", _CONFIG.learning_rate, "Adam learning rate.")
    flags.DEFINE_integer("width", _CONFIG.width, "Channels of the first conv block.")
    flags.DEFINE_integer("feature_dim", _CONFIG.feature_dim, "Size of the last hidden layer (the features).")
    flags.DEFINE_integer("seed", _CONFIG.seed, "Seed of initialisation and shuffling.")
    flags.DEFINE_integer("verbose", _CONFIG.verbose, "Keras progress output.")


FLAGS = flags.FLAGS


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    short = {"svhn_cropped": "svhn", "celeb_a": "celeba",
             "fashion_mnist": "fashion"}.get(FLAGS.dataset, FLAGS.dataset)
    export_dir = FLAGS.export_dir or f"runs/{short}_classifier/export"
    config = classifier.ClassifierConfig(
        data=data.DataConfig(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                             image_size=FLAGS.image_size),
        export_dir=export_dir, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, width=FLAGS.width, feature_dim=FLAGS.feature_dim,
        seed=FLAGS.seed, verbose=FLAGS.verbose)
    result = classifier.train_classifier(config)
    print(f"test {result.metadata['accuracy_kind']}: {result.test_accuracy:.4f}")
    print(f"exported to {result.export_dir} (--feature_model={result.export_dir} "
          "--feature_output=features)")


def run():
    """Console-script entry point (gali-classifier)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
