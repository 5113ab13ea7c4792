"""The training engine: strategy, data, model, resume and fit (its callbacks live in
gali_tf.callbacks, the run directory's files in gali_tf.run_dir).

`train(config)` is what `python -m trainers.main` runs; `train(config, dataset=...)`
trains on the caller's images instead of config.data's. Re-running it on the same
`model_dir` resumes from the last checkpoint; `steps`/`epochs` count the total.
Nothing in `model_dir` is written before every input has been checked and any
existing checkpoint has been restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Dict, List, NamedTuple, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from gali_tf import callbacks as callbacks_lib
from gali_tf import data as data_lib
from gali_tf import features as features_lib
from gali_tf import execution as execution_lib
from gali_tf import files, networks, run_dir, tuples
from gali_tf.evaluation import reconstruction
from gali_tf.errors import ConfigError, first_line
from gali_tf.model import GALIModel, ModelConfig, check_model_config

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
# Exit status of a trainer that saved a checkpoint at SIGTERM and stopped early
# (TensorFlow's restart code on Borg; job schedulers can restart on it).
PREEMPTED_EXIT_CODE = 42
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
    jit_compile: Optional[bool] = None   # None: measured at start-up (gali_tf.execution)
    steps_per_execution: int = 1
    log_every: int = 50
    image_every: int = 500
    # Steps between test-split reconstruction MSEs written to TensorBoard while it
    # trains (test/pixel_mse, and test/feature_mse with M), so curves appear during a
    # run; 0: only at the end.
    eval_every: int = 1000
    checkpoint_every: int = 500      # also saved at SIGTERM and at the end
    keep_checkpoints: int = 3        # the newest checkpoints kept (the resume points)
    # Also keep, for good, the checkpoint of every step that is a multiple of this (in
    # RUN/checkpoints/kept/), to evaluate or export those steps later; 0: none.
    keep_checkpoint_every: int = 0
    verbose: int = 1
    # Resume with training flags other than the run's (they take effect; the run's
    # flags_history.jsonl records the change).
    allow_flag_changes: bool = False


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    # fit's last logs: the last epoch's running means, and the last step's own values
    # under model.STEP_PREFIX names.
    metrics: dict
    test_pixel_mse: Optional[reconstruction.MSEResult]
    # MSE between M(x) and M(G(mu(E(x)))) on the test split, when M is configured.
    test_feature_mse: Optional[reconstruction.MSEResult] = None
    # True when SIGTERM stopped the run early (after saving a checkpoint of `step`).
    preempted: bool = False
    # The trained model, for in-process callers (tests compare workers' weights).
    model: Optional[keras.Model] = None


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy called `name` (one of STRATEGIES).

    multi_worker reads the cluster and this process's task from the standard
    TF_CONFIG environment variable (without it, it is a one-worker cluster) and must
    be created before TensorFlow runs any op in the process. tpu connects to the TPU
    named by TPU_NAME, or to the local one on a Cloud TPU VM.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy={name!r}: expected one of {', '.join(STRATEGIES)}")
    if name == "auto":
        name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    try:
        if name == "mirrored":
            return tf.distribute.MirroredStrategy()
        if name == "multi_worker":
            return tf.distribute.MultiWorkerMirroredStrategy()
        if name == "tpu":
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=None if os.environ.get("TPU_NAME") else "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ConfigError(f"--strategy={name}: cannot be set up ({first_line(error)})"
                          ) from None
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run (checkpoints, TensorBoard, run.json).

    Only one task of a multi-worker cluster is: "chief", or worker 0 when the
    cluster has no chief task. Single-process strategies are always chief.
    """
    return bool(strategy.extended.should_checkpoint)


def run_record(config: TrainConfig, network_config: networks.NetworkConfig
               ) -> run_dir.RunRecord:
    """What run.json stores: enough to rebuild the networks (export, evaluation)."""
    return run_dir.RunRecord(
        network=network_config, tuples=config.model.tuples, dataset=config.data.dataset,
        generator_loss=config.model.generator_loss, mask_fill=config.model.mask_fill,
        feature_model=config.model.feature_model,
        feature_output=config.model.feature_output,
        feature_signature=config.model.feature_signature,
        feature_image_size=config.model.feature_image_size,
        conditional=config.model.conditional, num_labeled=config.model.num_labeled,
        labeled_seed=config.model.labeled_seed,
        data_dir=_absolute(config.data.data_dir), image_dir=_absolute(config.data.image_dir),
        training=training_settings(config))


def _absolute(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path and "://" not in path else path


# TrainConfig fields that say how long or how a session runs, not what it computes:
# they may change from one session of a run to the next. Every other flag is part of
# the run (changing it needs allow_flag_changes). mixed_precision is here because a run
# resumes under another policy by design (build_model keeps the Adam states unwrapped).
SESSION_FIELDS = frozenset({
    "model_dir", "steps", "epochs", "strategy", "jit_compile", "steps_per_execution",
    "mixed_precision", "log_every", "image_every", "eval_every", "checkpoint_every",
    "keep_checkpoints", "keep_checkpoint_every",
    "verbose", "allow_flag_changes", "data_dir", "skip_bad_images",
    # Derived from the data and strategy, and compared as architecture instead.
    "example_shape", "feature_dim", "condition_dim", "label_classes", "synchronized_bn"})


def training_settings(config: TrainConfig) -> dict:
    """The run's flags that decide what it computes, by flag name."""
    settings = {}
    for part in (config, config.data, config.network, config.model):
        for field in dataclasses.fields(part):
            value = getattr(part, field.name)
            if field.name not in SESSION_FIELDS and not dataclasses.is_dataclass(value):
                settings[field.name] = value
    # The same folder named from another working directory is the same data.
    settings["image_dir"] = _absolute(settings.get("image_dir"))
    return settings


def check_resumable(model_dir: str, record: run_dir.RunRecord,
                    allow_flag_changes: bool = False) -> dict:
    """Refuses a model_dir whose run used another architecture or tuple set, or (unless
    `allow_flag_changes`) other training flags; returns the changed training flags as
    {name: (previous, now)}."""
    previous = run_dir.read_run_record(model_dir)
    if previous is None:
        return {}
    was, now = previous.architecture(), record.architecture()
    diffs = [f"{k}={was[k]!r} (now {now[k]!r})" for k in was if was[k] != now[k]]
    if diffs:
        raise ConfigError(f"--model_dir={model_dir} holds a run with other settings: "
                          f"{', '.join(diffs)}; use a new --model_dir")
    # Records written before the training settings were kept are not compared.
    changes = run_dir.changed_settings(dict(previous.training), dict(record.training))
    if changes and not allow_flag_changes:
        listed = ", ".join(f"--{k}={old!r} (now {new!r})" for k, (old, new) in changes.items())
        raise ConfigError(f"--model_dir={model_dir} was trained with other flags: {listed}; "
                          "pass --allow_flag_changes to resume with the new values, or use "
                          "a new --model_dir")
    return changes


def _check_model_dir(model_dir: str) -> None:
    if not model_dir:
        raise ConfigError("--model_dir is empty: expected a directory for checkpoints and logs")
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ConfigError(f"--model_dir={model_dir} is a file: expected a directory")


def _restore(checkpoint: tf.train.Checkpoint, path: str, model_dir: str) -> None:
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        raise ConfigError(f"--model_dir={model_dir}: checkpoint {os.path.basename(path)} does "
                          f"not match this model's architecture ({first_line(error)})"
                          ) from None


def feature_config(config: ModelConfig) -> features_lib.FeatureConfig:
    return features_lib.FeatureConfig(
        feature_model=config.feature_model, feature_output=config.feature_output,
        feature_signature=config.feature_signature,
        feature_image_size=config.feature_image_size)


def build_model(config: TrainConfig, info: data_lib.DatasetInfo,
                strategy: tf.distribute.Strategy, feature_model=None):
    """Creates and builds the model and its checkpoint inside the strategy scope.

    `feature_model` (GALI-PT's frozen M) sets D's feature width; it is not part of the
    checkpoint. A config asking for --mixed_precision=auto is built in float32 (`train`
    measures first and passes the chosen policy).
    """
    config = _in_precision(config, execution_lib.initial_precision(
        config.model.mixed_precision, None))
    # D's feature trunk exists only for tuple sets with M(...) slots; a run that loads M
    # just for feature MSE (or alice_pt's feature L2) keeps its architecture.
    has_feature_slot = tuples.FEATURE in tuples.parse_tuple_set(config.model.tuples).slot_kinds
    # Conditional ALI: y is the dataset's label as a one-hot class or CelebA's attributes;
    # semi-supervised ALI: D gets the dataset's K label classes.
    network_config = dataclasses.replace(
        config.network, example_shape=tuple(info.example_shape),
        condition_dim=info.num_classes if config.model.conditional else 0,
        label_classes=info.num_classes if config.model.num_labeled else 0,
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
        # The Adam states themselves (not a float16 loss-scale wrapper around them), so a
        # run can resume under another --mixed_precision; the loss scale restarts.
        checkpoint = tf.train.Checkpoint(
            encoder=model.encoder, generator=model.generator,
            discriminator=model.discriminator,
            d_optimizer=model.d_adam, g_optimizer=model.g_adam)
    return model, checkpoint, network_config


def train(config: TrainConfig, dataset=None, callbacks: Sequence = (),
          flags_text: Optional[str] = None) -> TrainResult:
    """Trains (or resumes) a run; returns its final step, metrics and test pixel MSE.

    `dataset`: the caller's training images instead of `config.data`'s source (see
    `caller_data` for what it accepts); the run then has no test split, and its record
    names the data CALLER_DATA. Resuming takes the same data again. (Under multi_worker
    pass a numpy array: making a Dataset before this call starts TensorFlow before the
    strategy can configure it.) `callbacks`: Keras callbacks run after the trainer's own
    (checkpoints, summaries) in `model.fit`; `self.model.step` is the run's step.

    Under multi_worker every worker runs this with the same config; the chief writes
    `model_dir` and the other workers write the same files to a temporary directory
    that is deleted at the end (TensorFlow's pattern: all workers take part in saving,
    which may involve collectives, but only one copy is kept). Resuming needs
    `model_dir` on storage every worker reads (GCS, NFS): each restores from it.
    """
    check_model_config(config.model)
    _check_model_dir(config.model_dir)
    if config.batch_size < 1:
        raise ConfigError(f"--batch_size={config.batch_size}: expected >= 1")
    if config.steps < 0 or config.epochs < 0 or not (config.steps or config.epochs):
        raise ConfigError(f"--steps={config.steps} --epochs={config.epochs}: expected a "
                          "number of steps > 0, or of epochs > 0 with --steps=0")
    if config.steps_per_execution < 1:
        raise ConfigError(f"--steps_per_execution={config.steps_per_execution}: expected >= 1")
    if config.keep_checkpoint_every < 0:
        raise ConfigError(f"--keep_checkpoint_every={config.keep_checkpoint_every}: expected "
                          ">= 0 (0 = keep only the newest --keep_checkpoints)")
    if dataset is not None and (config.model.conditional or config.model.num_labeled):
        raise ConfigError("train(dataset=...) takes unlabelled images: --conditional and "
                          "--num_labeled train on config.data's labelled dataset")
    # Before any other TF op: MultiWorkerMirroredStrategy configures the runtime.
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size} must be divisible by the "
                          f"{replicas} replicas of --strategy={config.strategy}")
    if (config.steps_per_execution > 1 and replicas > 1
            and not isinstance(strategy, tf.distribute.TPUStrategy)):
        raise ConfigError(f"--steps_per_execution={config.steps_per_execution} needs a single "
                          f"replica (Keras fails with {replicas} replicas of --strategy="
                          f"{config.strategy}); use 1")
    caller = None
    if dataset is not None:
        caller = caller_data(dataset, config.data)
        config = dataclasses.replace(config, data=caller.data_config)
    info = caller.info if caller else data_lib.dataset_info(config.data)
    if config.model.conditional or config.model.num_labeled:
        _check_labels(config, info)
    # M is loaded (and every --feature_* flag checked) before anything is built or written.
    feature_model = features_lib.load_feature_model(feature_config(config.model))
    previous = run_dir.read_run_record(config.model_dir)
    previous_execution = previous.execution if previous else None
    # --mixed_precision=auto: the model is built in the precision an earlier session of
    # the run measured, else in float32 until the start-up measurement says otherwise.
    requested_precision = config.model.mixed_precision
    config = _in_precision(config, execution_lib.initial_precision(
        requested_precision, execution_lib.recorded_choice(
            previous_execution, execution_lib.devices_description(
                replicas, requested_precision, config.batch_size))))
    model, checkpoint, network_config = build_model(config, info, strategy, feature_model)
    record = run_record(config, network_config)
    changes = check_resumable(config.model_dir, record, config.allow_flag_changes)
    chief = is_chief(strategy)
    # Multi-worker runs lock on the chief: the other workers write to temp directories.
    with (run_dir.locked_run_dir(config.model_dir) if chief else contextlib.nullcontext()):
        start_step = _resume(config, model, checkpoint, chief)
        train_ds = (_caller_train_dataset(caller, config, start_step) if caller
                    else _train_dataset(config, info, start_step))
        if start_step == 0:
            first = next(iter(train_ds))
            first = first[0] if isinstance(first, tuple) else first
            first = first[:, -1] if config.model.n_dis > 1 else first
            model.generator.set_output_bias_from_images(first)
        built = {config.model.mixed_precision: (model, checkpoint)}

        def build_in(policy):
            if policy not in built:
                built[policy] = build_model(_in_precision(config, policy), info, strategy,
                                            feature_model)[:2]
            return built[policy][0]

        def time_in_this_process(timed):
            # The run's own model first: `measure` copies its state to the others.
            own = config.model.mixed_precision
            models = {p: build_in(p) for p in dict.fromkeys(
                [own] + [c.mixed_precision for c in timed])}
            return execution_lib.measure(models, train_ds, timed)
        # On a CPU the measurement runs in a process of its own, so that its XLA
        # compilations and the unchosen model do not stay in this one's memory while
        # it trains; the caller's dataset cannot be sent there, so it is timed here.
        in_child = caller is None and execution_lib.measures_in_a_process_of_its_own()
        execution = execution_lib.choose(
            config.jit_compile, requested_precision, replicas, config.batch_size,
            functools.partial(execution_lib.in_child_process, time_afresh, config)
            if in_child else time_in_this_process,
            previous_execution, will_train=start_step < model.total_steps)
        if execution.mixed_precision not in built:
            execution_lib.copy_state(model, build_in(execution.mixed_precision))
        model, checkpoint = built[execution.mixed_precision]
        config = _in_precision(config, execution.mixed_precision)
        del built
        if config.verbose:
            print(f"{config.model_dir}: {execution.summary()}")
        record = dataclasses.replace(record, execution=execution.as_record())
        # Only now, with inputs checked and the checkpoint restored, write to model_dir.
        write_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="gali_worker_")
        try:
            _write_run_files(config, write_dir, record, flags_text, start_step, changes)
            return _fit_and_evaluate(config, strategy, model, checkpoint, info, train_ds,
                                     start_step, write_dir, chief, feature_model,
                                     execution.jit_compile, record, flags_text,
                                     list(callbacks))
        except Exception as error:  # pylint: disable=broad-except
            reason = run_dir.storage_failure(error)
            if reason is None:
                raise
            for directory in checkpoint_dirs(write_dir):
                run_dir.remove_failed_saves(directory)
            raise ConfigError(f"--model_dir={config.model_dir}: cannot write ({reason}); "
                              "free space or fix the permissions, then run the same command "
                              "again to resume from the last checkpoint") from None
        finally:
            if not chief:
                shutil.rmtree(write_dir, ignore_errors=True)


def _in_precision(config: TrainConfig, policy: str) -> TrainConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 mixed_precision=policy))


def time_afresh(config: TrainConfig, timed: Sequence[execution_lib.Candidate]
                ) -> Dict[str, float]:
    """The start-up measurement as a process of its own makes it (`in_child_process`):
    the run's data and, per timed precision, the run's model built afresh, on one
    device. A step's time does not depend on the weights' values, so the run's
    checkpoint is not needed; nothing is written."""
    info = data_lib.dataset_info(config.data)
    feature_model = features_lib.load_feature_model(feature_config(config.model))
    strategy = tf.distribute.get_strategy()
    precisions = list(dict.fromkeys(c.mixed_precision for c in timed))
    models = {p: build_model(_in_precision(config, p), info, strategy, feature_model)[0]
              for p in precisions}
    return execution_lib.seconds_per_step(models, _train_dataset(config, info, 0),
                                          list(timed))


def checkpoint_dirs(model_dir: str) -> List[str]:
    """The rolling checkpoints' directory (resume points) and the kept ones'."""
    return [os.path.join(model_dir, d)
            for d in (run_dir.CHECKPOINT_DIR, run_dir.KEPT_CHECKPOINT_DIR)]


def _resume(config: TrainConfig, model, checkpoint: tf.train.Checkpoint, chief: bool) -> int:
    """Restores the newest usable checkpoint of the run, if any; returns the start step.

    Checkpoints whose files are damaged or whose weights are not finite are skipped
    with a warning; the chief then rewrites the state file without them, so the
    checkpoint manager neither counts them when rotating nor skips saving their step.
    """
    checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    search = run_dir.find_checkpoint(checkpoint_dir, skip_nonfinite=True)
    if search.path is None and search.recorded:
        raise ConfigError(f"--model_dir={config.model_dir}: none of the checkpoints in "
                          f"{checkpoint_dir} can be restored (see the warnings above); move "
                          "them away to start over, or use a new --model_dir")
    if chief:
        for directory in checkpoint_dirs(config.model_dir):
            run_dir.remove_failed_saves(directory)
        if search.skipped or not search.state_readable:
            run_dir.rewrite_checkpoint_state(
                checkpoint_dir, [p for p in search.recorded if p not in search.skipped])
    if search.path is None:
        return 0
    _restore(checkpoint, search.path, config.model_dir)
    # The learning rate is a checkpointed optimizer variable: without this, a changed
    # --learning_rate (allow_flag_changes) would not take effect.
    for optimizer in (model.d_adam, model.g_adam):
        optimizer.learning_rate = config.model.learning_rate
    start_step = int(model.step.numpy())
    if config.verbose:
        print(f"{config.model_dir}: resuming from {os.path.basename(search.path)} "
              f"(step {start_step})")
    return start_step


def _train_dataset(config: TrainConfig, info: data_lib.DatasetInfo,
                   start_step: int) -> tf.data.Dataset:
    # A resumed run reshuffles from a seed tied to its start step, so the data
    # order of every (run, start step) is reproducible.
    train_seed = config.model.seed + start_step
    if config.model.num_labeled:
        return data_lib.make_semi_supervised_dataset(
            config.data, info, config.batch_size, config.model.num_labeled,
            config.model.labeled_seed, seed=train_seed, group=config.model.n_dis)
    if config.model.conditional:
        return data_lib.make_conditional_dataset(
            config.data, info, "train", config.batch_size, shuffle=True, repeat=True,
            seed=train_seed, group=config.model.n_dis)
    return data_lib.make_dataset(
        config.data, "train", config.batch_size, shuffle=True, repeat=True,
        seed=train_seed, group=config.model.n_dis)


# ----------------------------------------------------------- the caller's own data

CALLER_DATA = data_lib.CALLER_DATA


class CallerData(NamedTuple):
    """The caller's images as the run reads them (`caller_data`)."""

    images: tf.data.Dataset          # one epoch of single images, values as given
    info: data_lib.DatasetInfo
    data_config: data_lib.DataConfig  # what the run records: CALLER_DATA, size, channels
    shuffle: bool                    # a numpy array: shuffled by the run each epoch


def _caller_error(what: str) -> ConfigError:
    return ConfigError(f"train(dataset=...): {what}")


def caller_images(data) -> tf.data.Dataset:
    """The caller's data as a dataset of single images, values as given.

    A numpy array [N, H, W, C], or a tf.data.Dataset of images [H, W, C] or of batches
    [B, H, W, C] (unbatched: the run batches by its own batch_size, which its losses
    are reduced by). No labels: conditional and semi-supervised runs need config.data.
    """
    if isinstance(data, np.ndarray):
        if data.ndim != 4:
            raise _caller_error(f"an array of shape {list(data.shape)}; expected images "
                                "[N, H, W, C]")
        return tf.data.Dataset.from_tensor_slices(data)
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, tf.TensorSpec) or spec.shape.rank not in (3, 4):
            raise _caller_error(f"elements {spec}; expected images [H, W, C] or batches "
                                "[B, H, W, C], without labels")
        if data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise _caller_error("an endless dataset; expected one pass over the images "
                                "(the run repeats it)")
        return data.unbatch() if spec.shape.rank == 4 else data
    raise _caller_error(f"a {type(data).__name__}; expected a tf.data.Dataset or a numpy "
                        "array of images")


def check_caller_shape(shape, config: data_lib.DataConfig) -> None:
    """Square images of config's image_size and channels where it sets them (None: any)."""
    height, _, channels = shape
    if channels not in (1, 3):
        raise _caller_error(f"images of shape {list(shape)}; expected 1 or 3 channels")
    size = config.image_size or height
    expected = (size, size, config.channels or channels)
    if tuple(shape) != expected:
        settings = ([f"image_size={config.image_size}"] if config.image_size else []) + (
            [f"channels={config.channels}"] if config.channels else [])
        why = f"config.data's {', '.join(settings)}" if settings else "square images"
        raise _caller_error(f"images of shape {list(shape)}; expected {list(expected)} "
                            f"({why})")


def check_caller_values(dtype: tf.DType, low: float, high: float, seen: str) -> None:
    """uint8 pixels, or floats in [-1, 1]: the range every image of the run is in.

    Floats in [0, 1] cannot be told from dark [-1, 1] images by range, only suspected:
    a warning, when none of `seen` is negative.
    """
    if dtype == tf.uint8:
        return
    if not dtype.is_floating:
        raise _caller_error(f"{dtype.name} images; expected uint8 (0..255) or floats in "
                            "[-1, 1]")
    if low < -1.0 or high > 1.0:
        raise _caller_error(f"float images with values in [{low:.4g}, {high:.4g}] ({seen}); "
                            "expected [-1, 1], or uint8 for 0..255")
    if low >= 0.0:
        run_dir.warn(f"train(dataset=...): no negative value in {seen}: images in [0, 1]? "
                     "The run expects [-1, 1] (x * 2 - 1)")


def to_model_range(image: tf.Tensor, shape) -> tf.Tensor:
    """A checked caller image (check_caller_values) as float32 in [-1, 1]."""
    if image.dtype == tf.uint8:
        return data_lib.images_from_uint8(image, shape[0], shape[1])
    return tf.cast(image, tf.float32)


def caller_data(data, config: data_lib.DataConfig) -> CallerData:
    """Checks and describes the caller's images (`caller_images`) for a run.

    Values: uint8 0..255, or floats in [-1, 1], checked on the whole array or on a
    Dataset's first image. Size: a Dataset of unknown length is counted once, one pass
    (`.apply(tf.data.experimental.assert_cardinality(n))` spares it); an epoch is one
    pass. A Dataset is read in its own order each epoch (shuffle it in its pipeline); a
    numpy array is shuffled as config.data's sources are (shuffle_buffer, --seed).
    """
    images = caller_images(data)
    dtype = images.element_spec.dtype
    if isinstance(data, np.ndarray):
        shape = tuple(data.shape[1:])
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        seen = "the array"
    else:
        first = next(iter(images.take(1)), None)
        if first is None:
            raise _caller_error("an empty dataset; expected images")
        shape = tuple(int(d) for d in first.shape)
        low, high = float(tf.reduce_min(first)), float(tf.reduce_max(first))
        seen = "its first image"
    check_caller_shape(shape, config)
    check_caller_values(dtype, low, high, seen)
    count = int(images.cardinality())
    if count < 0:
        count = int(images.reduce(np.int64(0), lambda n, _: n + 1))
    if count == 0:
        raise _caller_error("no images; expected at least one")
    info = data_lib.DatasetInfo(name=CALLER_DATA, example_shape=shape, num_train=count,
                                num_test=0, num_classes=0, is_image=True)
    data_config = dataclasses.replace(config, dataset=CALLER_DATA, image_size=shape[0],
                                      channels=shape[2], data_dir=None, image_dir=None)
    return CallerData(images, info, data_config, shuffle=isinstance(data, np.ndarray))


def _caller_train_dataset(caller: CallerData, config: TrainConfig,
                          start_step: int) -> tf.data.Dataset:
    """Endless batches of the caller's images in [-1, 1], as _train_dataset's: shuffled
    (a numpy array) before conversion, so the buffer holds the images as given, and
    grouped by n_dis."""
    images = caller.images
    if caller.shuffle:
        # Seeded by the start step, as _train_dataset: reproducible per (run, session).
        images = images.shuffle(config.data.shuffle_buffer, seed=config.model.seed + start_step,
                                reshuffle_each_iteration=True)
    shape = caller.info.example_shape
    images = images.repeat().map(
        lambda image: tf.ensure_shape(to_model_range(image, shape), shape),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if config.model.n_dis > 1:
        images = images.batch(config.model.n_dis, drop_remainder=True)
    return images.batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _write_run_files(config: TrainConfig, write_dir: str, record: run_dir.RunRecord,
                     flags_text: Optional[str], start_step: int, changes: dict) -> None:
    """run.json and flags.txt describe the run as it now trains; flags_history.jsonl
    keeps every session's start step and changed flags, so neither overwrite loses
    what the run was trained with before."""
    tf.io.gfile.makedirs(write_dir)
    files.write_text_atomically(os.path.join(write_dir, run_dir.RUN_RECORD),
                                  json.dumps(record.to_json(), indent=2))
    if flags_text is not None:
        files.write_text_atomically(os.path.join(write_dir, run_dir.FLAGS_FILE), flags_text)
    run_dir.append_flags_history(write_dir, {
        "start_step": start_step,
        "changed": {k: {"was": old, "now": new} for k, (old, new) in changes.items()},
        "flags": flags_text})


def _check_labels(config: TrainConfig, info: data_lib.DatasetInfo) -> None:
    """One-line errors for --conditional / --num_labeled on data that cannot serve them."""
    flag = "--conditional" if config.model.conditional else "--num_labeled"
    if not info.num_classes:
        raise ConfigError(f"{flag} needs a labelled dataset; --dataset={info.name} has no labels"
                          + (" (class subfolders label a folder)" if info.name == "folder"
                             else ""))
    if config.model.num_labeled:
        if data_lib.is_multi_label(info):
            raise ConfigError(f"--num_labeled: --dataset={info.name} has multi-label "
                              "attributes; semi-supervised ALI needs one class per example")
        # Checks the size and the per-class divisibility before anything is built.
        data_lib.labeled_subset(data_lib.train_labels(config.data), config.model.num_labeled,
                                info.num_classes, config.model.labeled_seed)


def _fit_and_evaluate(config, strategy, model, checkpoint, info, train_ds, start_step,
                      write_dir, chief, feature_model, jit_compile, record,
                      flags_text, extra_callbacks) -> TrainResult:
    rolling_dir, kept_dir = checkpoint_dirs(write_dir)
    manager = tf.train.CheckpointManager(checkpoint, rolling_dir,
                                         max_to_keep=config.keep_checkpoints)

    model.compile(optimizer=None, jit_compile=jit_compile,
                  steps_per_execution=config.steps_per_execution)
    writer = tf.summary.create_file_writer(os.path.join(write_dir, "train"))
    if chief:
        callbacks_lib.write_session_summary(writer, start_step, flags_text, record.training)
    test_ds = None
    if info.num_test and info.is_image:
        # Conditional runs evaluate with each test image's own y: (images, y) batches.
        make = (functools.partial(data_lib.make_conditional_dataset, config.data, info)
                if config.model.conditional else functools.partial(data_lib.make_dataset,
                                                                   config.data))
        test_ds = make("test", min(config.batch_size, 100), shuffle=False, repeat=False,
                       drop_remainder=False)

    def test_reconstruction():
        """(pixel MSE, feature MSE or None) of G(mu(E(x))) on the test split."""
        mse = reconstruction.pixel_mse(model.reconstruct, test_ds)
        return mse, (reconstruction.feature_mse(feature_model, model.reconstruct, test_ds)
                     if feature_model is not None else None)

    def write_test_reconstruction(step, mse, feature_mse):
        with writer.as_default(step=step):
            tf.summary.scalar("test/pixel_mse", mse.mean)
            if feature_mse is not None:
                tf.summary.scalar("test/feature_mse", feature_mse.mean)

    saver = callbacks_lib.CheckpointEvery(manager, config.checkpoint_every)
    preemption = callbacks_lib.SaveAtSigterm(saver, strategy)
    callbacks = [
        # First: a diverged step must stop the run before any callback saves or logs it.
        callbacks_lib.StopOnDivergence(manager),
        callbacks_lib.StopAtStep(model.total_steps),
        callbacks_lib.ScalarSummaries(writer, config.log_every,
                                      callbacks_lib.probability_tags(model.tuple_set)),
        saver,
        preemption,
    ]
    if config.keep_checkpoint_every > 0:
        kept = tf.train.CheckpointManager(checkpoint, kept_dir, max_to_keep=None)
        callbacks.append(callbacks_lib.KeepCheckpointEvery(kept, config.keep_checkpoint_every,
                                                           manager))
    if config.verbose and chief:
        # verbose=1: redrawn in place on a terminal; 2 (or a log file): a line per 5%.
        callbacks.append(callbacks_lib.RunProgress(
            config.batch_size, live=config.verbose == 1 and sys.stdout.isatty()))
    if test_ds is not None and config.eval_every > 0:
        callbacks.append(callbacks_lib.EvaluateEvery(
            config.eval_every, lambda step: write_test_reconstruction(
                step, *test_reconstruction())))
    if info.is_image and config.image_every > 0 and chief:
        callbacks.append(callbacks_lib.ImageSummaries(writer, config.image_every,
                                                      test_ds or train_ds))
    callbacks += extra_callbacks

    history = {}
    if start_step < model.total_steps:
        steps_per_epoch = model.steps_per_epoch
        epochs = math.ceil(model.total_steps / steps_per_epoch)
        if config.model.mixed_precision == "mixed_float16":
            # A float16 step whose scaled gradients overflow is skipped and not counted
            # (a few while the loss scale settles, then about one per 2000 steps): spare
            # epochs let StopAtStep end the run on the right total anyway.
            epochs += 1 + math.ceil(0.01 * epochs)
        with preemption.installed():
            fit = model.fit(train_ds, epochs=epochs,
                            initial_epoch=start_step // steps_per_epoch,
                            steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                            # The dataset shuffles itself (seeded, resumable); Keras
                            # would only warn that it ignores its own shuffle.
                            shuffle=False, verbose=0)   # RunProgress shows progress
        history = {k: float(v[-1]) for k, v in fit.history.items()}
    elif config.verbose:
        print(f"{config.model_dir}: already trained to step {start_step} "
              f"of {model.total_steps}; nothing to do")
    step = int(model.step.numpy())
    if preemption.preempted:
        # The grace period after SIGTERM is short: the checkpoint is saved, leave now.
        writer.flush()
        if config.verbose:
            print(f"{config.model_dir}: SIGTERM: saved the checkpoint of step {step}; "
                  "run the same command again to resume")
        return TrainResult(step, history, None, None, preempted=True, model=model)

    mse = feature_mse = None
    if test_ds is not None:
        mse, feature_mse = test_reconstruction()
        write_test_reconstruction(step, mse, feature_mse)
    writer.flush()
    return TrainResult(step, history, mse, feature_mse, model=model)
