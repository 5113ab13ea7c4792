"""The training engine: strategy, data, model, checkpoints, TensorBoard and fit.

`train(config)` is what `python -m trainers.main` runs. Re-running it on the same
`model_dir` resumes from the last checkpoint; `steps`/`epochs` count the total.
Nothing in `model_dir` is written before every input has been checked and any
existing checkpoint has been restored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

import keras
import tensorflow as tf

from gali_tf import data as data_lib
from gali_tf import features as features_lib
from gali_tf import networks, tuples
from gali_tf.evaluation import inpainting, reconstruction
from gali_tf.model import ConfigError, GALIModel, ModelConfig, check_model_config
from gali_tf import visualize

STRATEGIES = ("auto", "default", "mirrored")
RUN_RECORD = "run.json"
FLAGS_FILE = "flags.txt"
CHECKPOINT_DIR = "checkpoints"

# Fields of the run record that decide the variables' shapes and meaning: a
# checkpoint written under other values cannot be resumed.
ARCHITECTURE_FIELDS = ("arch", "example_shape", "latent_dim", "width", "mlp_hidden",
                       "stochastic_encoder", "feature_dim", "tuples")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; field names equal the trainer's flags."""

    model_dir: str
    data: data_lib.DataConfig = data_lib.DataConfig()
    network: networks.NetworkConfig = networks.NetworkConfig()
    model: ModelConfig = ModelConfig()
    batch_size: int = 100
    epochs: int = 200
    steps: int = 0                   # total E/G steps; > 0 overrides epochs
    strategy: str = "auto"           # auto: mirrored when > 1 GPU, else default
    jit_compile: Optional[bool] = None   # None: XLA on a single device, off under a strategy
    steps_per_execution: int = 1
    log_every: int = 50
    image_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    verbose: int = 1


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    metrics: dict
    test_pixel_mse: Optional[reconstruction.MSEResult]
    # MSE between M(x) and M(G(mu(E(x)))) on the test split, when M is configured.
    test_feature_mse: Optional[reconstruction.MSEResult] = None


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy={name!r}: expected one of {', '.join(STRATEGIES)}")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    return tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()


def run_record(config: TrainConfig, network_config: networks.NetworkConfig) -> dict:
    """What run.json stores: enough to rebuild the networks (export, evaluation)."""
    return {
        **dataclasses.asdict(network_config),
        "example_shape": list(network_config.example_shape),
        "tuples": config.model.tuples,
        "dataset": config.data.dataset,
        "generator_loss": config.model.generator_loss,
        "mask_fill": config.model.mask_fill,
        "feature_model": config.model.feature_model,
        "feature_output": config.model.feature_output,
        "feature_signature": config.model.feature_signature,
        "feature_image_size": config.model.feature_image_size,
    }


def load_run_record(model_dir: str) -> Optional[dict]:
    path = os.path.join(model_dir, RUN_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def network_config_from_record(record: dict) -> networks.NetworkConfig:
    fields = {f.name for f in dataclasses.fields(networks.NetworkConfig)}
    values = {k: v for k, v in record.items() if k in fields}
    values["example_shape"] = tuple(values["example_shape"])
    return networks.NetworkConfig(**values)


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """E and G of a run, restored from one checkpoint (for export and evaluation)."""

    encoder: networks.Encoder
    generator: networks.Generator
    record: dict
    checkpoint: str
    step: int


def restore_networks(model_dir: str, checkpoint: Optional[str] = None) -> RestoredRun:
    """Rebuilds E and G from `model_dir/run.json` and restores them from a checkpoint.

    `checkpoint` is a path prefix such as RUN/checkpoints/ckpt-450; None means the
    latest. D and the optimizers are not built.
    """
    record = load_run_record(model_dir)
    if record is None:
        raise ConfigError(f"--model_dir={model_dir}: no {RUN_RECORD} (expected a run "
                          "directory written by trainers.main)")
    network_config = dataclasses.replace(network_config_from_record(record),
                                         synchronized_bn=False)
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    if not path:
        raise ConfigError(f"--model_dir={model_dir}: no checkpoint in "
                          f"{os.path.join(model_dir, CHECKPOINT_DIR)}")
    if not tf.io.gfile.exists(path + ".index"):
        raise ConfigError(f"--checkpoint={path}: no such checkpoint (expected a prefix "
                          "like RUN/checkpoints/ckpt-1000)")
    encoder = networks.build_encoder(network_config)
    generator = networks.build_generator(network_config)
    try:
        status = tf.train.Checkpoint(encoder=encoder, generator=generator).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError) as error:
        first_line = str(error).strip().splitlines()[0][:200]
        raise ConfigError(f"--model_dir={model_dir}: checkpoint {os.path.basename(path)} does "
                          f"not match the networks in {RUN_RECORD} ({first_line})") from None
    step = int(path.rsplit("-", 1)[-1]) if path.rsplit("-", 1)[-1].isdigit() else 0
    return RestoredRun(encoder, generator, record, path, step)


def check_resumable(model_dir: str, record: dict) -> None:
    """Refuses a model_dir whose run used another architecture or tuple set."""
    previous = load_run_record(model_dir)
    if previous is None:
        return
    diffs = [f"{k}={previous.get(k)!r} (now {record.get(k)!r})"
             for k in ARCHITECTURE_FIELDS if previous.get(k) != record.get(k)]
    if diffs:
        raise ConfigError(f"--model_dir={model_dir} holds a run with other settings: "
                          f"{', '.join(diffs)}; use a new --model_dir")


def _check_model_dir(model_dir: str) -> None:
    if not model_dir:
        raise ConfigError("--model_dir is empty: expected a directory for checkpoints and logs")
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ConfigError(f"--model_dir={model_dir} is a file: expected a directory")


def _restore(checkpoint: tf.train.Checkpoint, path: str, model_dir: str) -> None:
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0][:200]
        raise ConfigError(f"--model_dir={model_dir}: checkpoint {os.path.basename(path)} does "
                          f"not match this model's architecture ({first_line})") from None


def feature_config(config: ModelConfig) -> features_lib.FeatureConfig:
    return features_lib.FeatureConfig(
        feature_model=config.feature_model, feature_output=config.feature_output,
        feature_signature=config.feature_signature,
        feature_image_size=config.feature_image_size)


def build_model(config: TrainConfig, info: data_lib.DatasetInfo,
                strategy: tf.distribute.Strategy, feature_model=None):
    """Creates and builds the model and its checkpoint inside the strategy scope.

    `feature_model` (GALI-PT's frozen M) sets D's feature width; it is not part of the
    checkpoint.
    """
    # D's feature trunk exists only for tuple sets with M(...) slots; a run that loads M
    # just for feature MSE (or alice_pt's feature L2) keeps its architecture.
    has_feature_slot = tuples.FEATURE in tuples.parse_tuple_set(config.model.tuples).slot_kinds
    network_config = dataclasses.replace(
        config.network, example_shape=tuple(info.example_shape),
        feature_dim=(feature_model.dim if feature_model is not None and has_feature_slot
                     else config.network.feature_dim),
        synchronized_bn=config.network.synchronized_bn or strategy.num_replicas_in_sync > 1)
    steps_per_epoch = data_lib.steps_per_epoch(info, config.batch_size, config.model.n_dis)
    total_steps = config.steps or config.epochs * steps_per_epoch
    # --seed also fixes the initial weights, so runs with seeds 0..k are a reproducible
    # sample of the run-to-run spread (the experiment tables' "± over seeds").
    keras.utils.set_random_seed(config.model.seed)
    with strategy.scope():
        model = GALIModel(network_config, config.model, config.batch_size,
                          total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                          feature_model=feature_model)
        model.build()
        checkpoint = tf.train.Checkpoint(
            encoder=model.encoder, generator=model.generator,
            discriminator=model.discriminator,
            d_optimizer=model.d_optimizer, g_optimizer=model.g_optimizer)
    return model, checkpoint, network_config


def train(config: TrainConfig, flags_text: Optional[str] = None) -> TrainResult:
    """Trains (or resumes) a run; returns its final step, metrics and test pixel MSE."""
    check_model_config(config.model)
    _check_model_dir(config.model_dir)
    if config.batch_size < 1 or config.steps < 0 or config.epochs < 0:
        raise ConfigError("--batch_size must be >= 1 and --steps/--epochs >= 0")
    info = data_lib.dataset_info(config.data)
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size} must be divisible by the "
                          f"{replicas} replicas of --strategy={config.strategy}")
    # M is loaded (and every --feature_* flag checked) before anything is built or written.
    feature_model = features_lib.load_feature_model(feature_config(config.model))
    model, checkpoint, network_config = build_model(config, info, strategy, feature_model)
    record = run_record(config, network_config)
    check_resumable(config.model_dir, record)

    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.model_dir, CHECKPOINT_DIR),
        max_to_keep=config.keep_checkpoints)
    if manager.latest_checkpoint:
        _restore(checkpoint, manager.latest_checkpoint, config.model_dir)
    start_step = int(model.step.numpy())

    train_ds = data_lib.make_dataset(
        config.data, "train", config.batch_size, shuffle=True, repeat=True,
        # A resumed run reshuffles from a seed tied to its start step, so the data
        # order of every (run, start step) is reproducible.
        seed=config.model.seed + start_step, group=config.model.n_dis)
    if start_step == 0:
        first = next(iter(train_ds))
        first = first[:, -1] if config.model.n_dis > 1 else first
        model.generator.set_output_bias_from_images(first)

    # Only now, with inputs checked and the checkpoint restored, touch model_dir.
    tf.io.gfile.makedirs(config.model_dir)
    _write_text(os.path.join(config.model_dir, RUN_RECORD), json.dumps(record, indent=2))
    if flags_text is not None:
        _write_text(os.path.join(config.model_dir, FLAGS_FILE), flags_text)

    jit = config.jit_compile if config.jit_compile is not None else replicas == 1
    model.compile(optimizer=None, jit_compile=jit,
                  steps_per_execution=config.steps_per_execution)
    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
    test_ds = (data_lib.make_dataset(config.data, "test", min(config.batch_size, 100),
                                     shuffle=False, repeat=False, drop_remainder=False)
               if info.num_test and info.is_image else None)
    callbacks = [
        StopAtStep(model.total_steps),
        ScalarSummaries(writer, config.log_every),
        CheckpointEvery(manager, config.checkpoint_every),
    ]
    if info.is_image and config.image_every > 0:
        callbacks.append(ImageSummaries(writer, config.image_every, test_ds or train_ds))

    history = {}
    if start_step < model.total_steps:
        steps_per_epoch = model.steps_per_epoch
        fit = model.fit(train_ds, epochs=math.ceil(model.total_steps / steps_per_epoch),
                        initial_epoch=start_step // steps_per_epoch,
                        steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                        verbose=config.verbose)
        history = {k: float(v[-1]) for k, v in fit.history.items()}
    elif config.verbose:
        print(f"{config.model_dir}: already trained to step {start_step} "
              f"of {model.total_steps}; nothing to do")

    mse = feature_mse = None
    if test_ds is not None:
        mse = reconstruction.pixel_mse(model.reconstruct, test_ds)
        if feature_model is not None:
            feature_mse = reconstruction.feature_mse(feature_model, model.reconstruct, test_ds)
        with writer.as_default(step=int(model.step.numpy())):
            tf.summary.scalar("test/pixel_mse", mse.mean)
            if feature_mse is not None:
                tf.summary.scalar("test/feature_mse", feature_mse.mean)
    writer.flush()
    return TrainResult(int(model.step.numpy()), history, mse, feature_mse)


def _write_text(path: str, text: str) -> None:
    """Writes a file atomically (temp file, then rename), never leaving half of it."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


class StopAtStep(keras.callbacks.Callback):
    """Ends fit at a total step count, so resumed runs finish on the same step."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.step.numpy()) >= self.total_steps:
            self.model.stop_training = True


class ScalarSummaries(keras.callbacks.Callback):
    """Writes the step's metrics (running means over the epoch) to TensorBoard."""

    def __init__(self, writer, every: int):
        super().__init__()
        self.writer, self.every = writer, max(every, 1)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every == 0 or step >= self.model.total_steps:
            with self.writer.as_default(step=step):
                for name, value in (logs or {}).items():
                    tf.summary.scalar(f"train/{name}", float(value))


class CheckpointEvery(keras.callbacks.Callback):
    """Saves every N steps and when training ends."""

    def __init__(self, manager: tf.train.CheckpointManager, every: int):
        super().__init__()
        self.manager, self.every = manager, every

    def _save(self):
        step = int(self.model.step.numpy())
        if self.manager.latest_checkpoint != self._path(step):
            self.manager.save(checkpoint_number=step)

    def _path(self, step):
        return f"{self.manager._checkpoint_prefix}-{step}"  # pylint: disable=protected-access

    def on_train_batch_end(self, batch, logs=None):
        if self.every > 0 and int(self.model.step.numpy()) % self.every == 0:
            self._save()

    def on_train_end(self, logs=None):
        self._save()


class ImageSummaries(keras.callbacks.Callback):
    """Samples G(z) for a fixed z and reconstruction pairs of a fixed batch; with a
    masked tuple set also (original, masked input, inpainted) triplets."""

    def __init__(self, writer, every: int, dataset: tf.data.Dataset, count: int = 32):
        super().__init__()
        self.writer, self.every = writer, every
        images = next(iter(dataset))
        images = images[:, -1] if images.shape.rank == 5 else images
        self.images = images[:count]
        self.count = count

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every == 0 or step >= self.model.total_steps:
            self.write(step)

    def write(self, step: int):
        model = self.model
        samples = model.generate(model.prior_sample(self.count, seed=0))
        recon = model.reconstruct(self.images)
        with self.writer.as_default(step=step):
            tf.summary.image("samples", visualize.image_grid(samples), step=step)
            tf.summary.image("reconstructions",
                             visualize.pairs_grid(self.images, recon, columns=8), step=step)
            if "mask" in model.tuple_set.operator_families():
                # Fixed evaluation masks, so the grids of successive steps compare.
                mask = inpainting.eval_masks(self.images.shape, 0)
                masked, inpainted = inpainting.inpaint(model.reconstruct, self.images, mask,
                                                       model.config.mask_fill)
                tf.summary.image("inpainting", inpainting.triplet_grid(
                    self.images, masked, inpainted, columns=4), step=step)
