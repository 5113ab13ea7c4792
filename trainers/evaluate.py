r"""Evaluates a run with the papers' protocols (README, "Evaluation").

    python -m trainers.evaluate --model_dir=runs/digits_gali4 \
        --feature_model=runs/digits_classifier/export --feature_output=features
    python -m trainers.evaluate --model_dir=runs/svhn_gali4 --data_dir=~/tensorflow_datasets \
        --metrics=reconstruction,svm,fid --fid_model=inception_v3:~/inception_notop.h5
    python -m trainers.evaluate --model_dir=runs/toy25_ali        # modes + scatter

Writes MODEL_DIR/eval/<step>.json and <step>.md (also printed), the pictures under
MODEL_DIR/eval/<step>/ and TensorBoard summaries under MODEL_DIR/eval. --metrics takes
a comma list of reconstruction, svm, fid, inpainting, modes, pictures; empty = every
metric that applies to the run (fid only with a network: --fid_model or a feature model).
"""

from __future__ import annotations

from absl import flags

from gali_tf import features
from gali_tf.evaluation import suite
from gali_tf.evaluation.svm import SVMConfig
from gali_tf.errors import ConfigError
from trainers import cli

FLAGS = flags.FLAGS


@cli.define_once
def define_flags():
    """Defined on demand, not at import: tests import this module next to
    trainers.main, whose flags (--model_dir, --data_dir, ...) would clash."""
    flags.DEFINE_string("model_dir", None, "Run directory written by trainers.main.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the run's latest).")
    flags.DEFINE_list("metrics", [], f"Some of {', '.join(suite.METRICS)}; empty = all that apply.")
    flags.DEFINE_enum("split", "test", ["train", "test"], "Split the metrics are computed on.")
    flags.DEFINE_integer("batch_size", 100, "Evaluation batch size.")
    flags.DEFINE_string("data_dir", None,
                        "TFDS data_dir holding the run's dataset (default: the run's own).")
    flags.DEFINE_string("image_dir", None,
                        "Image folder of a --dataset=folder run (default: the run's own).")
    for prefix, what in (("feature", "Feature MSE network M (default: the run's own M, if any)"),
                         ("fid", "FID network (default: the feature MSE network)")):
        flags.DEFINE_string(f"{prefix}_model", "",
                            f"{what}: a SavedModel directory such as a trainers.classifier "
                            "export, or inception_v3:WEIGHTS.h5 (Keras notop weights).")
        flags.DEFINE_string(f"{prefix}_output", "", "Named output of the network's signature.")
        flags.DEFINE_string(f"{prefix}_signature", "serving_default", "Signature to call.")
        flags.DEFINE_integer(f"{prefix}_image_size", 0, "Input size when the network leaves it "
                             "open (0 = inferred; inception_v3: 299).")
    flags.DEFINE_integer("fid_samples", 10_000, "Generated images for FID (real: the split, "
                         "capped at this number).")
    flags.DEFINE_integer("svm_draws", 100, "Random draws of the labelled set (papers: 100).")
    flags.DEFINE_integer("svm_per_class", 100, "Labelled examples per class (papers: 100).")
    flags.DEFINE_integer("svm_validation", 10_000, "Validation examples that choose C.")
    flags.DEFINE_integer("mode_samples", 10_000, "Toy samples for mode coverage (ALI: 10,000).")
    flags.DEFINE_integer("num_pictures", 64, "Samples in the pictures.")
    flags.DEFINE_integer("seed", 0, "Seed of latents, SVM draws and inpainting masks.")


def _feature_config(prefix: str) -> features.FeatureConfig:
    return features.FeatureConfig(
        getattr(FLAGS, f"{prefix}_model"), getattr(FLAGS, f"{prefix}_output"),
        getattr(FLAGS, f"{prefix}_signature"), getattr(FLAGS, f"{prefix}_image_size"),
        flag_prefix=prefix)


def config_from_flags() -> suite.EvalConfig:
    return suite.EvalConfig(
        metrics=tuple(m.strip() for m in FLAGS.metrics if m.strip()), split=FLAGS.split,
        batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir, image_dir=FLAGS.image_dir,
        feature=_feature_config("feature"), fid=_feature_config("fid"),
        fid_samples=FLAGS.fid_samples,
        svm=SVMConfig(per_class=FLAGS.svm_per_class, draws=FLAGS.svm_draws,
                      validation_size=FLAGS.svm_validation, seed=FLAGS.seed),
        mode_samples=FLAGS.mode_samples, num_pictures=FLAGS.num_pictures, seed=FLAGS.seed)


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    if not FLAGS.model_dir:
        raise ConfigError("--model_dir is required (a run directory of trainers.main)")
    for name in ("fid_samples", "svm_draws", "svm_per_class", "svm_validation",
                 "mode_samples", "num_pictures"):
        if getattr(FLAGS, name) < 1:
            raise ConfigError(f"--{name}={getattr(FLAGS, name)}: expected at least 1")
    report = suite.evaluate_run(FLAGS.model_dir, config_from_flags(), FLAGS.checkpoint)
    json_path, markdown_path = suite.write_report(report)
    with open(markdown_path) as f:
        print(f.read())
    print(f"wrote {json_path} and {markdown_path}")


def run():
    """Console-script entry point (gali-evaluate)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
