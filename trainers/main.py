r"""Trains ALI, ALICE or a GALI variant.

    python -m trainers.main                                  # GALI-4 on the bundled digits
    python -m trainers.main --flagfile=configs/svhn_gali4.flags --data_dir=~/tensorflow_datasets

Re-running the same command resumes from the last checkpoint in --model_dir.
The run's effective flags are written to MODEL_DIR/flags.txt, itself a flagfile.
"""

from __future__ import annotations

import sys

from absl import flags

from gali_tf import data, networks, objectives, tuples
from gali_tf.errors import ConfigError
from gali_tf.model import D_FORWARDS, PRECISION_POLICIES, ModelConfig
from gali_tf import training
from trainers import cli

# -- data
flags.DEFINE_enum("dataset", "digits", list(data.DATASETS), "Training data.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding prepared datasets (no download); "
                    "fashion_mnist: the folder of its four IDX files (default: "
                    f"{' or '.join(data.FASHION_MNIST_DIRS)}).")
flags.DEFINE_enum("train_split", "train", ["train", "extra", "train+extra"],
                  "What the training data are: the train split, or for svhn_cropped its "
                  "531k-image extra split (the official GALI/ALI scripts) or both.")
flags.DEFINE_string("image_dir", None, "Directory of JPEG/PNG images for --dataset=folder.")
flags.DEFINE_bool("skip_bad_images", False,
                  "--dataset=folder: leave out images that cannot be decoded (counted in a "
                  "warning line) instead of stopping with an error naming the first.")
flags.DEFINE_integer("image_size", None, "Image height = width (default: the dataset's own).")
flags.DEFINE_integer("channels", None, "Image channels, 1 or 3 (default: the dataset's own).")
# -- networks
flags.DEFINE_enum("arch", "small", list(networks.ARCHITECTURES),
                  "Network set: svhn32 (ALI Table 4), celeba64 (ALI Table 5), small "
                  "(width-scalable conv set), mlp (the 25-Gaussian toy).")
flags.DEFINE_integer("latent_dim", 64, "Size of z.")
flags.DEFINE_integer("width", 16, "Base width of the small conv set.")
flags.DEFINE_integer("mlp_hidden", 400, "Hidden units of the mlp set.")
flags.DEFINE_float("leaky_slope", 0.01, "LeakyReLU slope (official: 0.01 SVHN, 0.02 CelebA).")
flags.DEFINE_bool("stochastic_encoder", True, "ALI's stochastic E; false = BiGAN's deterministic E.")
# -- the game
flags.DEFINE_string("tuples", "gali4",
                    f"Tuple set: one of {', '.join(tuples.TUPLE_SETS)}, or classes written as "
                    "'x, E(x); G(z), z' (';' between classes, 'l2: a, b' for an L2 term).")
flags.DEFINE_enum("generator_loss", "product_of_terms", list(objectives.GENERATOR_LOSSES),
                  "Generator-encoder objective (GALI eq. 4 by default).")
flags.DEFINE_enum("loss_weighting", "paper", list(objectives.LOSS_WEIGHTINGS),
                  "paper: every log term of an objective of m terms weighted 2/m; "
                  "official_code: the official scripts' weights (GALI-4: only the first "
                  "term of each sum scaled, by operator precedence; an ablation).")
flags.DEFINE_float("l2_weight", 1.0, "Weight of the tuple set's l2 terms (ALICE lambda).")
flags.DEFINE_enum("d_forward", "fresh", list(D_FORWARDS),
                  "fresh: E/G's gradient from a new D forward after D's step; shared: from "
                  "the last D step's forward (D before its update), as the official scripts.")
flags.DEFINE_integer("n_dis", 1, "Discriminator steps per generator-encoder step.")
flags.DEFINE_float("learning_rate", 2e-4, "Adam learning rate of both sides.")
flags.DEFINE_float("beta_1", 0.5, "Adam beta_1.")
flags.DEFINE_float("beta_2", 0.999, "Adam beta_2.")
flags.DEFINE_float("instance_noise", 0.1, "Initial std of the noise on images D sees.")
flags.DEFINE_enum("noise_schedule", "linear", ["linear", "exponential", "constant"],
                  "Decay of the instance noise over training.")
flags.DEFINE_integer("seed", 0, "Seed of the latent, encoder and instance noise.")
flags.DEFINE_float("mask_fill", -1.0,
                   "Value in [-1, 1] of the hole of maskK(...) encoder inputs (-1 = black); "
                   "trainers.inpaint uses the run's value.")
# -- GALI-PT: the frozen pretrained feature model M (README, "GALI-PT")
flags.DEFINE_string("feature_model", "",
                    "M for M(...) tuple nodes and feature MSE: a SavedModel directory (e.g. a "
                    "trainers.classifier export) or inception_v3:WEIGHTS.h5 (Keras notop weights).")
flags.DEFINE_string("feature_output", "",
                    "Named output of M's signature (e.g. features); empty = its only output.")
flags.DEFINE_string("feature_signature", "serving_default", "Signature of M's SavedModel.")
flags.DEFINE_integer("feature_image_size", 0,
                     "M's input height = width when the model does not fix it "
                     "(0 = inferred; inception_v3 default 299, at least 75).")
# -- conditional and semi-supervised ALI (README, "Conditional and semi-supervised ALI")
flags.DEFINE_bool("conditional", False,
                  "Conditional ALI (ALI 4.4): E(x, y), G(z, y), D(..., y) with y the data label "
                  "(one-hot class; CelebA's 40 attributes), with any tuple set.")
flags.DEFINE_integer("condition_embedding", 64, "Units of y's linear embedding in E, G and D.")
flags.DEFINE_integer("num_labeled", 0,
                     "Semi-supervised ALI (ALI 4.3): labelled train examples (a multiple of the "
                     "classes, balanced per class); D gets K label classes. 0 = unsupervised.")
flags.DEFINE_integer("labeled_seed", 0, "Seed choosing the labelled subset of --num_labeled.")
# -- the run
flags.DEFINE_string("model_dir", None, "Run directory (default runs/<dataset>_<tuples>).")
flags.DEFINE_integer("batch_size", 100, "Global batch size.")
flags.DEFINE_integer("epochs", 200, "Total epochs (ignored when --steps > 0).")
flags.DEFINE_integer("steps", 0, "Total generator-encoder steps; > 0 overrides --epochs.")
flags.DEFINE_enum("strategy", "auto", list(training.STRATEGIES),
                  "tf.distribute strategy: mirrored (GPUs of one host), multi_worker "
                  "(hosts named in TF_CONFIG), tpu (TPU_NAME or the local Cloud TPU VM), "
                  "default (one device); auto picks mirrored when there is more than one GPU.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "XLA compilation of the train step. auto: the faster of the two, timed "
                  "over a few steps at start-up on this run's model and devices (recorded "
                  "in run.json; off under a multi-replica strategy).")
flags.DEFINE_enum("mixed_precision", "float32", list(PRECISION_POLICIES),
                  "Keras dtype policy: mixed_float16 (GPUs; loss-scaled) or mixed_bfloat16 "
                  "(TPUs, recent GPUs); variables, spectral-norm vectors and losses stay float32.")
flags.DEFINE_integer("steps_per_execution", 1,
                     "Train steps per tf.function call (> 1 needs a single replica or a TPU).")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard scalar summaries.")
flags.DEFINE_integer("image_every", 500, "Steps between TensorBoard image grids.")
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.")
flags.DEFINE_bool("allow_flag_changes", False,
                  "Resume a run with training flags other than those it was trained with "
                  "(e.g. a lower --learning_rate); MODEL_DIR/flags_history.jsonl records it.")
flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 bar, 2 one line per epoch.")

FLAGS = flags.FLAGS


def config_from_flags() -> training.TrainConfig:
    """The flags as the library's config dataclasses (the library never reads flags)."""
    tuple_name = FLAGS.tuples if FLAGS.tuples in tuples.TUPLE_SETS else "custom"
    if FLAGS.model_dir is not None and not FLAGS.model_dir.strip():
        raise ConfigError("--model_dir is empty: expected a directory for checkpoints and "
                          "logs (leave the flag out for the default runs/<dataset>_<tuples>)")
    return training.TrainConfig(
        model_dir=FLAGS.model_dir or (
            f"runs/{FLAGS.dataset}_{tuple_name}" + ("_conditional" if FLAGS.conditional else "")
            + (f"_semisup{FLAGS.num_labeled}" if FLAGS.num_labeled else "")),
        data=data.DataConfig(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                             image_dir=FLAGS.image_dir, image_size=FLAGS.image_size,
                             channels=FLAGS.channels,
                             skip_bad_images=FLAGS.skip_bad_images,
                             train_split=FLAGS.train_split),
        network=networks.NetworkConfig(
            arch=FLAGS.arch, latent_dim=FLAGS.latent_dim, width=FLAGS.width,
            mlp_hidden=FLAGS.mlp_hidden, leaky_slope=FLAGS.leaky_slope,
            stochastic_encoder=FLAGS.stochastic_encoder,
            condition_embedding=FLAGS.condition_embedding),
        model=ModelConfig(
            tuples=FLAGS.tuples, generator_loss=FLAGS.generator_loss,
            loss_weighting=FLAGS.loss_weighting,
            l2_weight=FLAGS.l2_weight, n_dis=FLAGS.n_dis, learning_rate=FLAGS.learning_rate,
            beta_1=FLAGS.beta_1, beta_2=FLAGS.beta_2, instance_noise=FLAGS.instance_noise,
            noise_schedule=FLAGS.noise_schedule, seed=FLAGS.seed, mask_fill=FLAGS.mask_fill,
            feature_model=FLAGS.feature_model, feature_output=FLAGS.feature_output,
            feature_signature=FLAGS.feature_signature,
            feature_image_size=FLAGS.feature_image_size,
            mixed_precision=FLAGS.mixed_precision, conditional=FLAGS.conditional,
            num_labeled=FLAGS.num_labeled, labeled_seed=FLAGS.labeled_seed,
            d_forward=FLAGS.d_forward),
        batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, steps=FLAGS.steps,
        strategy=FLAGS.strategy,
        jit_compile={"auto": None, "true": True, "false": False}[FLAGS.jit_compile],
        steps_per_execution=FLAGS.steps_per_execution, log_every=FLAGS.log_every,
        image_every=FLAGS.image_every, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints, verbose=FLAGS.verbose,
        allow_flag_changes=FLAGS.allow_flag_changes)


def flags_as_flagfile(model_dir: str) -> str:
    """This module's flags, every one written out, as a runnable flagfile."""
    lines = []
    for flag in FLAGS.get_flags_for_module(sys.modules[__name__]):
        if flag.name == "model_dir":
            lines.append(f"--model_dir={model_dir}")
        elif flag.name == "allow_flag_changes":
            continue   # a permission for one session, not a setting of the run
        elif flag.value is not None:
            lines.append(flag.serialize())
    return "\n".join(lines) + "\n"


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    config = config_from_flags()
    result = training.train(config, flags_text=flags_as_flagfile(config.model_dir))
    if result.preempted:
        # Checkpoint saved at SIGTERM: a distinct status, so a scheduler can restart us.
        sys.exit(training.PREEMPTED_EXIT_CODE)
    print(f"{config.model_dir}: step {result.step}")
    if result.test_pixel_mse is not None:
        print(f"test pixel MSE (images in [0, 1], G(mu(E(x)))): {result.test_pixel_mse}")
    if result.test_feature_mse is not None:
        print(f"test feature MSE (M(x) vs M(G(mu(E(x))))): {result.test_feature_mse}")


def run():
    """Console-script entry point (gali-train)."""
    cli.run(main)


if __name__ == "__main__":
    run()
