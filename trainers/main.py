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
from gali_tf.model import (AUTO_PRECISION, D_FORWARDS, NOISE_SCHEDULES, PRECISION_POLICIES,
                           ModelConfig)
from gali_tf import training
from trainers import cli

# Every default is the library's: the config dataclasses' fields of the same names.
_DATA, _NETWORK, _MODEL = data.DataConfig(), networks.NetworkConfig(), ModelConfig()
_RUN = training.TrainConfig(model_dir="")

@cli.define_once
def define_flags():
    """The trainer's flags (defined by run(), or by tests that parse them in-process)."""
    # -- data
    flags.DEFINE_enum("dataset", _DATA.dataset, list(data.DATASETS), "Training data.")
    flags.DEFINE_string("data_dir", _DATA.data_dir,
                        "TFDS data_dir holding prepared datasets (no download); "
                        "fashion_mnist: the folder of its four IDX files (default: "
                        f"{' or '.join(data.FASHION_MNIST_DIRS)}).")
    flags.DEFINE_enum("train_split", _DATA.train_split,
                      sorted({s for splits in data.TRAIN_SPLITS.values() for s in splits}),
                      "What the training data are: the train split, or for svhn_cropped its "
                      "531k-image extra split (the official GALI/ALI scripts) or both.")
    flags.DEFINE_string("image_dir", _DATA.image_dir,
                        "Directory of JPEG/PNG images for --dataset=folder.")
    flags.DEFINE_bool("skip_bad_images", _DATA.skip_bad_images,
                      "--dataset=folder: leave out images that cannot be decoded (counted in a "
                      "warning line) instead of stopping with an error naming the first.")
    flags.DEFINE_integer("image_size", _DATA.image_size,
                         "Image height = width (default: the dataset's own).")
    flags.DEFINE_integer("channels", _DATA.channels,
                         "Image channels, 1 or 3 (default: the dataset's own).")
    # -- networks
    flags.DEFINE_enum("arch", _NETWORK.arch, list(networks.ARCHITECTURES),
                      "Network set: svhn32 (ALI Table 4), celeba64 (ALI Table 5), small "
                      "(width-scalable conv set), mlp (the 25-Gaussian toy).")
    flags.DEFINE_integer("latent_dim", _NETWORK.latent_dim, "Size of z.")
    flags.DEFINE_integer("width", _NETWORK.width, "Base width of the small conv set.")
    flags.DEFINE_integer("mlp_hidden", _NETWORK.mlp_hidden, "Hidden units of the mlp set.")
    flags.DEFINE_float("leaky_slope", _NETWORK.leaky_slope,
                       "LeakyReLU slope (official: 0.01 SVHN, 0.02 CelebA).")
    flags.DEFINE_bool("stochastic_encoder", _NETWORK.stochastic_encoder,
                      "ALI's stochastic E; false = BiGAN's deterministic E.")
    # -- the game
    flags.DEFINE_string("tuples", _MODEL.tuples,
                        f"Tuple set: one of {', '.join(tuples.TUPLE_SETS)}, or classes written as "
                        "'x, E(x); G(z), z' (';' between classes, 'l2: a, b' for an L2 term).")
    flags.DEFINE_enum("generator_loss", _MODEL.generator_loss, list(objectives.GENERATOR_LOSSES),
                      "Generator-encoder objective (GALI eq. 4 by default).")
    flags.DEFINE_enum("loss_weighting", _MODEL.loss_weighting, list(objectives.LOSS_WEIGHTINGS),
                      "paper: every log term of an objective of m terms weighted 2/m; "
                      "official_code: the official scripts' weights (GALI-4: only the first "
                      "term of each sum scaled, by operator precedence; an ablation).")
    flags.DEFINE_float("l2_weight", _MODEL.l2_weight,
                       "Weight of the tuple set's l2 terms (ALICE lambda).")
    flags.DEFINE_enum("d_forward", _MODEL.d_forward, list(D_FORWARDS),
                      "fresh: E/G's gradient from a new D forward after D's step; shared: from "
                      "the last D step's forward (D before its update), as the official scripts.")
    flags.DEFINE_integer("n_dis", _MODEL.n_dis, "Discriminator steps per generator-encoder step.")
    flags.DEFINE_float("learning_rate", _MODEL.learning_rate, "Adam learning rate of both sides.")
    flags.DEFINE_float("beta_1", _MODEL.beta_1, "Adam beta_1.")
    flags.DEFINE_float("beta_2", _MODEL.beta_2, "Adam beta_2.")
    flags.DEFINE_float("instance_noise", _MODEL.instance_noise,
                       "Initial std of the noise on images D sees.")
    flags.DEFINE_enum("noise_schedule", _MODEL.noise_schedule,
                      list(NOISE_SCHEDULES),
                      "Decay of the instance noise over training.")
    flags.DEFINE_integer("seed", _MODEL.seed, "Seed of the latent, encoder and instance noise.")
    flags.DEFINE_float("mask_fill", _MODEL.mask_fill,
                       "Value in [-1, 1] of the hole of maskK(...) encoder inputs (-1 = black); "
                       "trainers.inpaint uses the run's value.")
    # -- GALI-PT: the frozen pretrained feature model M (README, "GALI-PT")
    flags.DEFINE_string("feature_model", _MODEL.feature_model,
                        "M for M(...) tuple nodes and feature MSE: a SavedModel directory (e.g. a "
                        "trainers.classifier export) or inception_v3:WEIGHTS.h5 (Keras notop weights).")
    flags.DEFINE_string("feature_output", _MODEL.feature_output,
                        "Named output of M's signature (e.g. features); empty = its only output.")
    flags.DEFINE_string("feature_signature", _MODEL.feature_signature, "Signature of M's SavedModel.")
    flags.DEFINE_integer("feature_image_size", _MODEL.feature_image_size,
                         "M's input height = width when the model does not fix it "
                         "(0 = inferred; inception_v3 default 299, at least 75).")
    # -- conditional and semi-supervised ALI (README, "Conditional and semi-supervised ALI")
    flags.DEFINE_bool("conditional", _MODEL.conditional,
                      "Conditional ALI (ALI 4.4): E(x, y), G(z, y), D(..., y) with y the data label "
                      "(one-hot class; CelebA's 40 attributes), with any tuple set.")
    flags.DEFINE_integer("condition_embedding", _NETWORK.condition_embedding,
                         "Units of y's linear embedding in E, G and D.")
    flags.DEFINE_integer("num_labeled", _MODEL.num_labeled,
                         "Semi-supervised ALI (ALI 4.3): labelled train examples (a multiple of the "
                         "classes, balanced per class); D gets K label classes. 0 = unsupervised.")
    flags.DEFINE_integer("labeled_seed", _MODEL.labeled_seed,
                         "Seed choosing the labelled subset of --num_labeled.")
    # -- the run
    flags.DEFINE_string("model_dir", None, "Run directory (default runs/<dataset>_<tuples>).")
    flags.DEFINE_integer("batch_size", _RUN.batch_size, "Global batch size.")
    flags.DEFINE_integer("epochs", _RUN.epochs, "Total epochs (ignored when --steps > 0).")
    flags.DEFINE_integer("steps", _RUN.steps, "Total generator-encoder steps; > 0 overrides --epochs.")
    flags.DEFINE_enum("strategy", _RUN.strategy, list(training.STRATEGIES),
                      "tf.distribute strategy: mirrored (GPUs of one host), multi_worker "
                      "(hosts named in TF_CONFIG), tpu (TPU_NAME or the local Cloud TPU VM), "
                      "default (one device); auto picks mirrored when there is more than one GPU.")
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                      "XLA compilation of the train step. auto: the faster of the two, timed "
                      "over a few steps at start-up on this run's model and devices (recorded "
                      "in run.json; off under a multi-replica strategy).")
    flags.DEFINE_enum("mixed_precision", _MODEL.mixed_precision,
                      [AUTO_PRECISION, *PRECISION_POLICIES],
                      "Keras dtype policy: mixed_float16 (GPUs; loss-scaled) or mixed_bfloat16 "
                      "(TPUs, recent GPUs); variables, spectral-norm vectors and losses stay "
                      "float32. auto: mixed_bfloat16 where the device has bfloat16 instructions "
                      "and the start-up measurement finds it at least 1.1x faster, else float32 "
                      "(recorded in run.json; float32 under a multi-replica strategy).")
    flags.DEFINE_integer("steps_per_execution", _RUN.steps_per_execution,
                         "Train steps per tf.function call (> 1 needs a single replica or a TPU).")
    flags.DEFINE_integer("log_every", _RUN.log_every, "Steps between TensorBoard scalar summaries.")
    flags.DEFINE_integer("image_every", _RUN.image_every, "Steps between TensorBoard image grids.")
    flags.DEFINE_integer("eval_every", _RUN.eval_every,
                         "Steps between test-split pixel MSEs (and feature MSEs with M) in "
                         "TensorBoard while training; 0: only at the end.")
    flags.DEFINE_integer("checkpoint_every", _RUN.checkpoint_every, "Steps between checkpoints.")
    flags.DEFINE_integer("keep_checkpoints", _RUN.keep_checkpoints,
                         "Newest checkpoints to keep (the resume points).")
    flags.DEFINE_integer("keep_checkpoint_every", _RUN.keep_checkpoint_every,
                         "Also keep for good the checkpoint of every multiple of this step, in "
                         "MODEL_DIR/checkpoints/kept/ (to evaluate or export it later); 0: none.")
    flags.DEFINE_bool("allow_flag_changes", _RUN.allow_flag_changes,
                      "Resume a run with training flags other than those it was trained with "
                      "(e.g. a lower --learning_rate); MODEL_DIR/flags_history.jsonl records it.")
    flags.DEFINE_integer("verbose", _RUN.verbose,
                         "Progress over the run's total steps: 0 silent, 1 a bar redrawn in "
                         "place on a terminal (a line per 5% otherwise), 2 a line per 5%.")


FLAGS = flags.FLAGS


def config_from_flags() -> training.TrainConfig:
    """The flags as the library's config dataclasses (the library never reads flags)."""
    tuple_name = FLAGS.tuples if FLAGS.tuples in tuples.TUPLE_SETS else "custom"
    if FLAGS.model_dir is not None and not FLAGS.model_dir.strip():
        raise ConfigError("--model_dir is empty: expected a directory for checkpoints and "
                          "logs (leave the flag out for the default runs/<dataset>_<tuples>)")
    return cli.from_flags(
        training.TrainConfig,
        model_dir=FLAGS.model_dir or (
            f"runs/{FLAGS.dataset}_{tuple_name}" + ("_conditional" if FLAGS.conditional else "")
            + (f"_semisup{FLAGS.num_labeled}" if FLAGS.num_labeled else "")),
        data=cli.from_flags(data.DataConfig), network=cli.from_flags(networks.NetworkConfig),
        model=cli.from_flags(ModelConfig),
        jit_compile={"auto": None, "true": True, "false": False}[FLAGS.jit_compile])


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
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
