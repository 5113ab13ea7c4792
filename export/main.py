r"""Exports a run: the encoder as a TF Hub module, the generator as a SavedModel.

    python -m export.main --model_dir=runs/digits_gali4 --export_dir=hub/digits_gali4
    python -m export.main --model_dir=RUN --export_dir=OUT --checkpoint=RUN/checkpoints/ckpt-450

writes OUT/<step>/{encoder,generator,metadata.json}; an existing OUT/<step> is only
replaced with --overwrite.
"""

from __future__ import annotations

from absl import flags

from gali_tf.errors import ConfigError
from export import exporter
from trainers import cli

@cli.define_once
def define_flags():
    flags.DEFINE_string("model_dir", None, "Run directory written by trainers.main.")
    flags.DEFINE_string("export_dir", None, "Directory of versioned exports: writes EXPORT_DIR/<step>/.")
    flags.DEFINE_string("checkpoint", None,
                        "Checkpoint prefix such as RUN/checkpoints/ckpt-450 (default: the latest).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing EXPORT_DIR/<step>.")


FLAGS = flags.FLAGS

@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    if not FLAGS.model_dir:
        raise ConfigError("--model_dir is required: the run directory to export")
    if not FLAGS.export_dir:
        raise ConfigError("--export_dir is required: where to write <step>/")
    version = exporter.export_run(FLAGS.model_dir, FLAGS.export_dir,
                                  checkpoint=FLAGS.checkpoint, overwrite=FLAGS.overwrite)
    print(f"exported {FLAGS.model_dir} to {version}")
    print(f"  encoder (TF Hub module): {version}/{exporter.ENCODER_DIR}")
    print(f"  generator (SavedModel):  {version}/{exporter.GENERATOR_DIR}")


def run():
    """Console-script entry point (gali-export)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
