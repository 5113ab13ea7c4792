r"""Evaluates a run with the papers' protocols (README, "Evaluation").

    python -m trainers.evaluate --model_dir=runs/digits_gali4 \
        --feature_model=runs/digits_classifier/export --feature_output=features
    python -m trainers.evaluate --model_dir=runs/svhn_gali4 --data_dir=~/tensorflow_datasets \
        --metrics=reconstruction,svm,fid --fid_model=ttur:~/classify_image_graph_def.pb
    python -m trainers.evaluate --model_dir=runs/toy25_ali        # modes + scatter

Writes MODEL_DIR/eval/<step>.json and <step>.md (also printed), the pictures under
MODEL_DIR/eval/<step>/ and TensorBoard summaries under MODEL_DIR/eval. --metrics takes
a comma list of reconstruction, svm, fid, inpainting, modes, pictures; empty = every
metric that applies to the run (fid only with a network: --fid_model or a feature model).
FID's real features are cached under --fid_cache_dir (default ~/.cache/gali_tf/fid);
--dump_samples=DIR writes its generated images as PNGs.
"""

from __future__ import annotations

from absl import flags

from gali_tf import features
from gali_tf.evaluation import suite
from gali_tf.evaluation.svm import SVMConfig
from gali_tf.errors import ConfigError
from trainers import cli

FLAGS = flags.FLAGS
_DEFAULTS = suite.EvalConfig()
_SVM = _DEFAULTS.svm
_FEATURE = _DEFAULTS.feature


@cli.define_once
def define_flags():
    """Defined on demand, not at import: tests import this module next to
    trainers.main, whose flags (--model_dir, --data_dir, ...) would clash."""
    flags.DEFINE_string("model_dir", None, "Run directory written by trainers.main.")
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: the run's latest).")
    flags.DEFINE_list("metrics", list(_DEFAULTS.metrics),
                      f"Some of {', '.join(suite.METRICS)}; empty = all that apply.")
    flags.DEFINE_enum("split", _DEFAULTS.split, ["train", "test"],
                      "Split the metrics are computed on.")
    flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Evaluation batch size.")
    flags.DEFINE_string("data_dir", _DEFAULTS.data_dir,
                        "TFDS data_dir holding the run's dataset (default: the run's own).")
    flags.DEFINE_string("image_dir", _DEFAULTS.image_dir,
                        "Image folder of a --dataset=folder run (default: the run's own).")
    for prefix, what in (("feature", "Feature MSE network M (default: the run's own M, if any)"),
                         ("fid", "FID network (default: the feature MSE network)")):
        flags.DEFINE_string(f"{prefix}_model", _FEATURE.feature_model,
                            f"{what}: a SavedModel directory such as a trainers.classifier "
                            "export, inception_v3:WEIGHTS.h5 (Keras notop weights), or the "
                            "papers' FID Inception: ttur:GRAPH.pb or tfgan:DIR.")
        flags.DEFINE_string(f"{prefix}_output", _FEATURE.feature_output,
                            "Named output of the network's signature.")
        flags.DEFINE_string(f"{prefix}_signature", _FEATURE.feature_signature,
                            "Signature to call.")
        flags.DEFINE_integer(f"{prefix}_image_size", _FEATURE.feature_image_size,
                             "Input size when the network leaves it open (0 = inferred; "
                             "inception_v3:, ttur:, tfgan: 299).")
    flags.DEFINE_integer("fid_samples", _DEFAULTS.fid_samples,
                         "Generated images G(z) for FID and KID.")
    flags.DEFINE_string("fid_reference", _DEFAULTS.fid_reference,
                        "Split of FID's real images: train, test, or empty = --split.")
    flags.DEFINE_integer("fid_real_samples", _DEFAULTS.fid_real_samples,
                         "Real images for FID, the first of the split (0 = all of it).")
    flags.DEFINE_string("fid_cache_dir", _DEFAULTS.fid_cache_dir,
                        "Folder keeping the real images' FID features between evaluations, "
                        "keyed by network, data and images (empty = no cache).")
    flags.DEFINE_string("dump_samples", _DEFAULTS.dump_samples,
                        "New or empty folder: FID's generated images as 000000.png ... "
                        "(8-bit, as FID saw them), for clean-fid or torchmetrics.")
    flags.DEFINE_integer("svm_draws", _SVM.draws, "Random draws of the labelled set (papers: 100).")
    flags.DEFINE_integer("svm_per_class", _SVM.per_class,
                         "Labelled examples per class (papers: 100).")
    flags.DEFINE_integer("svm_validation", _SVM.validation_size,
                         "Validation examples that choose C.")
    flags.DEFINE_integer("mode_samples", _DEFAULTS.mode_samples,
                         "Toy samples for mode coverage (ALI: 10,000).")
    flags.DEFINE_integer("num_pictures", _DEFAULTS.num_pictures, "Samples in the pictures.")
    flags.DEFINE_integer("seed", _DEFAULTS.seed,
                         "Seed of latents, SVM draws and inpainting masks.")


def _feature_config(prefix: str) -> features.FeatureConfig:
    """--PREFIX_model, --PREFIX_output, ... as a FeatureConfig (fields feature_*)."""
    return features.FeatureConfig(
        **{field: getattr(FLAGS, prefix + field[len("feature"):])
           for field in ("feature_model", "feature_output", "feature_signature",
                         "feature_image_size")},
        flag_prefix=prefix)


def config_from_flags() -> suite.EvalConfig:
    return cli.from_flags(
        suite.EvalConfig,
        metrics=tuple(m.strip() for m in FLAGS.metrics if m.strip()),
        feature=_feature_config("feature"), fid=_feature_config("fid"),
        svm=SVMConfig(per_class=FLAGS.svm_per_class, draws=FLAGS.svm_draws,
                      validation_size=FLAGS.svm_validation, seed=FLAGS.seed))


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    if not FLAGS.model_dir:
        raise ConfigError("--model_dir is required (a run directory of trainers.main)")
    # --fid_* values are checked by the library (suite.check_fid_options).
    for name in ("svm_draws", "svm_per_class", "svm_validation", "mode_samples",
                 "num_pictures"):
        if getattr(FLAGS, name) < 1:
            raise ConfigError(f"--{name}={getattr(FLAGS, name)}: expected at least 1")
    report = suite.evaluate_run(FLAGS.model_dir, config_from_flags(), FLAGS.checkpoint,
                                progress=lambda line: print(line, flush=True))
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
