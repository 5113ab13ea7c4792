"""A run directory as every tool meets it: its files, the trainer's lock, the checkpoints
that are whole, and the history of the flags it was trained with.

    RUN/run.json             the run record (networks, tuple set, data, training flags)
    RUN/flags.txt            the last session's effective flags, a runnable flagfile
    RUN/flags_history.jsonl  one line per training session: its start step and changes
    RUN/trainer.lock         held (flock) by the one trainer writing RUN
    RUN/checkpoints/         tf.train.CheckpointManager's ckpt-<step>.{index,data-*}, the
                             newest --keep_checkpoints (the resume point)
    RUN/checkpoints/kept/    ckpt-<step> of every --keep_checkpoint_every multiple, never
                             deleted (a second manager's directory: the same layout)

Readers (training's resume, evaluation, export) never trust a checkpoint's name alone:
`latest_complete_checkpoint` reads every tensor of the candidate and falls back, with a
warning line, to the previous one when a file is missing, truncated or corrupt. They
read run.json as a typed `RunRecord` and restore networks with `restore_networks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import functools
import glob
import json
import os
import re
import socket
import sys
import time
from typing import Callable, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.python.checkpoint import checkpoint_management

from gali_tf import files, networks, tuples
from gali_tf.errors import ConfigError, first_line, last_line
from gali_tf.model import ModelConfig, discriminator_outputs

RUN_RECORD = "run.json"
FLAGS_FILE = "flags.txt"
FLAGS_HISTORY = "flags_history.jsonl"
CHECKPOINT_DIR = "checkpoints"
KEPT_CHECKPOINT_DIR = os.path.join(CHECKPOINT_DIR, "kept")
LOCK_FILE = "trainer.lock"
_STATE_FILE = "checkpoint"    # tf.train.CheckpointManager's state file
_CHECKPOINT_NAME = re.compile(r"^(.*)-(\d+)$")


def warn(message: str) -> None:
    """One warning line on stderr (the CLIs' `error:` lines' quieter sibling)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _is_local(path: str) -> bool:
    return "://" not in path


# ------------------------------------------------------------------------ checkpoints

def checkpoint_step(path: str) -> Optional[int]:
    """The step in a checkpoint prefix such as RUN/checkpoints/ckpt-450, else None."""
    match = _CHECKPOINT_NAME.match(os.path.basename(path))
    return int(match.group(2)) if match else None


def _state_paths(directory: str) -> List[str]:
    """The checkpoints named in `directory`'s state file, oldest first.

    Raises ValueError when the file exists but cannot be parsed (tf.train's own
    reader logs and returns None then, which a trainer would take for a new run).
    """
    state_file = os.path.join(directory, _STATE_FILE)
    if not tf.io.gfile.exists(state_file):
        return []
    with tf.io.gfile.GFile(state_file) as f:
        text = f.read()
    state = checkpoint_management.CheckpointState()
    try:
        text_format.Merge(text, state)
    except text_format.ParseError as error:
        raise ValueError(str(error).splitlines()[0][:120]) from None
    if not state.model_checkpoint_path:
        raise ValueError("no model_checkpoint_path")
    paths = list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]
    # Relative entries are relative to the directory (CheckpointManager writes them so).
    return [p if os.path.isabs(p) or not _is_local(p) else os.path.join(directory, p)
            for p in paths]


def _disk_paths(directory: str) -> List[str]:
    """Checkpoint prefixes that have an index file in `directory`."""
    found = tf.io.gfile.glob(os.path.join(glob.escape(directory), "*.index"))
    return [p[:-len(".index")] for p in found if checkpoint_step(p[:-len(".index")]) is not None]


def recorded_checkpoints(directory: str, on_warning: Callable[[str], None] = warn
                         ) -> Tuple[List[str], bool]:
    """(checkpoint prefixes newest first, whether the state file was readable).

    With an unreadable state file the prefixes come from the index files on disk
    (each still has to pass `checkpoint_problem` before use), with a warning.
    """
    try:
        paths, readable = _state_paths(directory), True
    except (ValueError, tf.errors.OpError) as error:
        on_warning(f"{os.path.join(directory, _STATE_FILE)} is unreadable ({error}); "
                   "looking for checkpoints on disk instead")
        paths, readable = _disk_paths(directory), False
    by_step = {checkpoint_step(p): p for p in paths if checkpoint_step(p) is not None}
    return [by_step[s] for s in sorted(by_step, reverse=True)], readable


# (prefix, its files' names, sizes and times) -> non-finite tensor names: a restore that
# first picks the newest usable checkpoint and then checks it reads its files once.
_READS: dict = {}


def _read_all_tensors(path: str) -> List[str]:
    """Reads every tensor of a checkpoint (which checks sizes and checksums); returns
    the names of floating-point tensors holding NaN or Inf. Raises on unreadable data."""
    files = sorted(tf.io.gfile.glob(glob.escape(path) + ".*"))
    key = (path, tuple((f, s.length, s.mtime_nsec) for f in files
                       for s in [tf.io.gfile.stat(f)]))
    if key not in _READS:
        reader = tf.train.load_checkpoint(path)
        _READS[key] = [name for name, dtype in sorted(reader.get_variable_to_dtype_map().items())
                       if dtype.is_floating and not np.all(np.isfinite(
                           np.asarray(reader.get_tensor(name), np.float32)))]
    return _READS[key]


def nonfinite_variables(variables) -> List[str]:
    """Names of the floating-point variables (in memory) that hold NaN or Inf."""
    return [getattr(v, "path", v.name) for v in variables
            if tf.as_dtype(v.dtype).is_floating and not np.all(np.isfinite(np.asarray(v)))]


def checkpoint_problem(path: str, allow_nonfinite: bool = False) -> Optional[str]:
    """Why the checkpoint at prefix `path` cannot be used (None: it can).

    Only the index file's existence is not enough: a data file truncated by a full disk
    or a copy fails later, in the middle of a restore, with an IndexError.
    """
    if not tf.io.gfile.exists(path + ".index"):
        return "its .index file is missing"
    try:
        nonfinite = _read_all_tensors(path)
    except Exception as error:  # pylint: disable=broad-except
        # Truncation surfaces as IndexError, OutOfRange or DataLoss depending on where
        # the cut falls; any failure to read it back makes it unusable alike.
        return f"its files are incomplete or unreadable ({first_line(error, 120)})"
    if nonfinite and not allow_nonfinite:
        return (f"it holds non-finite weights ({len(nonfinite)} tensors, e.g. "
                f"{nonfinite[0]})")
    return None


@dataclasses.dataclass(frozen=True)
class CheckpointSearch:
    """What `find_checkpoint` saw: the newest usable checkpoint (or None), every
    recorded one newest first, those skipped, and whether the state file was readable."""

    path: Optional[str]
    recorded: Tuple[str, ...]
    skipped: Tuple[str, ...]
    state_readable: bool


def find_checkpoint(directory: str, skip_nonfinite: bool = False,
                    on_warning: Callable[[str], None] = warn) -> CheckpointSearch:
    """The newest recorded checkpoint in `directory` whose files read back whole.

    tf.train.CheckpointManager names a checkpoint in its state file only after writing
    its data and index, so a process killed while saving leaves files in no state file:
    never picked up. A recorded one whose files were lost or damaged later is skipped
    with a warning, and the next newest used: tf.train.latest_checkpoint would return
    None (a resumed run silently starts over) or a path whose restore fails half-way.
    `skip_nonfinite` also skips checkpoints with NaN or Inf weights (a trainer cannot
    resume from them; export and evaluation refuse them by name instead).
    """
    recorded, readable = recorded_checkpoints(directory, on_warning)
    skipped = []
    for path in recorded:
        problem = checkpoint_problem(path, allow_nonfinite=not skip_nonfinite)
        if problem is None:
            return CheckpointSearch(path, tuple(recorded), tuple(skipped), readable)
        on_warning(f"checkpoint {path} is skipped: {problem}")
        skipped.append(path)
    return CheckpointSearch(None, tuple(recorded), tuple(skipped), readable)


def step_checkpoint(model_dir: str, step: int) -> Optional[str]:
    """The prefix of the run's checkpoint of `step`, rolling or kept, or None when
    neither directory holds one (check it with `checkpoint_problem` before use)."""
    for directory in (CHECKPOINT_DIR, KEPT_CHECKPOINT_DIR):
        path = os.path.join(model_dir, directory, f"ckpt-{int(step)}")
        if tf.io.gfile.exists(path + ".index"):
            return path
    return None


def latest_complete_checkpoint(directory: str, skip_nonfinite: bool = False,
                               on_warning: Callable[[str], None] = warn) -> Optional[str]:
    """`find_checkpoint(...).path`: the newest usable checkpoint, or None."""
    return find_checkpoint(directory, skip_nonfinite, on_warning).path


def remove_failed_saves(directory: str) -> List[str]:
    """Deletes `<prefix>_temp` directories left by saves that were killed or ran out of
    disk (they can be as large as a checkpoint); returns what it removed."""
    removed = []
    for path in tf.io.gfile.glob(os.path.join(glob.escape(directory), "*_temp")):
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
            removed.append(path)
    return removed


def rewrite_checkpoint_state(directory: str, paths_newest_first: List[str]) -> None:
    """Writes a fresh state file naming `paths` (after an unreadable one, or without
    damaged checkpoints).

    Each entry gets a timestamp (its index file's time): tf.train.CheckpointManager
    forgets entries without one, and the next save would leave them out of the state
    file, so a later fall-back would find nothing older.
    """
    state_file = os.path.join(directory, _STATE_FILE)
    if not paths_newest_first:
        if tf.io.gfile.exists(state_file):
            tf.io.gfile.remove(state_file)
        return
    oldest_first = list(reversed(paths_newest_first))
    now = time.time()
    stamps = []
    for path in oldest_first:
        try:
            stamp = tf.io.gfile.stat(path + ".index").mtime_nsec / 1e9
        except tf.errors.OpError:
            stamp = now
        # Increasing and in the past, as the manager's own records are.
        stamps.append(min(max(stamp, stamps[-1] + 1e-3 if stamps else 0.0), now))
    checkpoint_management.update_checkpoint_state_internal(
        directory, model_checkpoint_path=os.path.basename(oldest_first[-1]),
        all_model_checkpoint_paths=[os.path.basename(p) for p in oldest_first],
        save_relative_paths=True, all_model_checkpoint_timestamps=stamps)


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_failure(error: BaseException) -> Optional[str]:
    """"<reason>: <path>" when `error` is the file system refusing a write (full disk
    or quota, read-only or forbidden path), else None."""
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
        return os.strerror(error.errno) + (f": {error.filename}" if error.filename else "")
    if isinstance(error, tf.errors.OpError):
        # TensorFlow's file errors read "<path>; <strerror>" (after an op name, if any).
        message = " ".join(str(error).split())
        for code in _STORAGE_ERRNOS:
            reason = os.strerror(code)
            if reason in message:
                path = re.search(r"(\S+); " + re.escape(reason), message)
                return reason + (f": {path.group(1)}" if path else "")
    return None


# ------------------------------------------------------------------------ run record

# Fields of the run record that decide the variables' shapes and meaning: a
# checkpoint written under other values cannot be resumed.
ARCHITECTURE_FIELDS = ("arch", "example_shape", "latent_dim", "width", "mlp_hidden",
                       "stochastic_encoder", "feature_dim", "tuples", "condition_dim",
                       "condition_embedding", "label_classes", "num_labeled", "labeled_seed")


# The record's defaults are the model's: ModelConfig's fields of the same names.
_MODEL = ModelConfig()


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """RUN/run.json, typed: what a run is (its networks, tuple set and data), enough to
    rebuild E, G and D for export and evaluation.

    Records written before a field existed get the value such runs had, once, in
    `from_json` (the field defaults below: today's defaults, which older runs trained
    with); every reader uses this class, never the JSON.
    """

    network: networks.NetworkConfig
    tuples: str
    dataset: str
    generator_loss: str = _MODEL.generator_loss
    mask_fill: float = _MODEL.mask_fill
    feature_model: str = _MODEL.feature_model
    feature_output: str = _MODEL.feature_output
    feature_signature: str = _MODEL.feature_signature
    feature_image_size: int = _MODEL.feature_image_size
    # Conditional ALI: network.condition_dim > 0 is what rebuilds E(x, y), G(z, y), D.
    conditional: bool = _MODEL.conditional
    # Semi-supervised ALI: D's network.label_classes and the labelled subset.
    num_labeled: int = _MODEL.num_labeled
    labeled_seed: int = _MODEL.labeled_seed
    # Where the data was, absolute, so evaluation finds it from any working directory.
    data_dir: Optional[str] = None
    image_dir: Optional[str] = None
    # The training flags that decide what the run computes, by flag name (compared on
    # resume); empty in records written before they were kept.
    training: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # How the last session executed the step (gali_tf.execution), when measured.
    execution: Optional[Mapping[str, object]] = None

    @functools.cached_property
    def tuple_set(self) -> tuples.TupleSet:
        return tuples.parse_tuple_set(self.tuples)

    @property
    def example_shape(self) -> Tuple[int, ...]:
        return self.network.example_shape

    @property
    def latent_dim(self) -> int:
        return self.network.latent_dim

    @property
    def condition_dim(self) -> int:
        """Width of y for a conditional run (E(x, y), G(z, y)); 0 otherwise."""
        return self.network.condition_dim

    @property
    def is_image(self) -> bool:
        return self.dataset != "toy25"

    def architecture(self) -> dict:
        """The ARCHITECTURE_FIELDS' values: two runs that differ here cannot share a
        checkpoint."""
        values = {**dataclasses.asdict(self.network), **dataclasses.asdict(self)}
        values["example_shape"] = list(self.network.example_shape)
        return {name: values[name] for name in ARCHITECTURE_FIELDS}

    def to_json(self) -> dict:
        """The layout of run.json (the network's fields at the top level)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "network"}
        if values["execution"] is None:
            del values["execution"]
        return {**dataclasses.asdict(self.network),
                "example_shape": list(self.network.example_shape), **values}

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> "RunRecord":
        network_fields = {f.name for f in dataclasses.fields(networks.NetworkConfig)}
        network = networks.NetworkConfig(**{
            **{k: v for k, v in values.items() if k in network_fields},
            "example_shape": tuple(int(s) for s in values["example_shape"])})
        own = {f.name for f in dataclasses.fields(cls)} - {"network"}
        known = {k: v for k, v in values.items() if k in own and v is not None}
        return cls(network=network, **{**known, "data_dir": values.get("data_dir"),
                                       "image_dir": values.get("image_dir")})


def read_run_record(model_dir: str) -> Optional[RunRecord]:
    """RUN/run.json (None when absent); a damaged one is a one-line error."""
    path = os.path.join(model_dir, RUN_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            values = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON ({str(error)[:80]}); restore it from a "
                          "backup or use a new --model_dir") from None
    if not isinstance(values, dict) or "example_shape" not in values:
        raise ConfigError(f"{path} is not a run record of trainers.main (no example_shape)")
    try:
        return RunRecord.from_json(values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path} is not a run record of this version of trainers.main "
                          f"({first_line(error)})") from None


def require_run_record(model_dir: str) -> RunRecord:
    """read_run_record, refusing a directory without one."""
    record = read_run_record(model_dir)
    if record is None:
        raise ConfigError(f"--model_dir={model_dir}: no {RUN_RECORD} (expected a run "
                          "directory written by trainers.main)")
    return record


# ------------------------------------------------------------------------ restore

@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """E and G of a run, restored from one checkpoint (for export and evaluation)."""

    encoder: networks.Encoder
    generator: networks.Generator
    record: RunRecord
    checkpoint: str
    step: int
    # Only with restore_networks(..., with_discriminator=True).
    discriminator: Optional[networks.Discriminator] = None

    @property
    def condition_dim(self) -> int:
        return self.record.condition_dim

    @property
    def conditional(self) -> bool:
        return self.condition_dim > 0


def checkpoint_to_restore(model_dir: str, checkpoint: Optional[str] = None) -> str:
    """`checkpoint`, or the run's newest complete one; refuses (one line) a missing,
    damaged or diverged (NaN/Inf weights) checkpoint rather than restoring it."""
    checkpoint_dir = os.path.join(model_dir, CHECKPOINT_DIR)
    if checkpoint:
        if not tf.io.gfile.exists(checkpoint + ".index"):
            raise ConfigError(f"--checkpoint={checkpoint}: no such checkpoint (expected a "
                              "prefix like RUN/checkpoints/ckpt-1000)")
        path, flag = checkpoint, f"--checkpoint={checkpoint}"
    else:
        path = latest_complete_checkpoint(checkpoint_dir)
        if not path:
            raise ConfigError(f"--model_dir={model_dir}: no checkpoint in {checkpoint_dir} "
                              "that can be restored")
        flag = f"--model_dir={model_dir}"
    problem = checkpoint_problem(path)
    if problem:
        earlier = "" if checkpoint else "; pass --checkpoint=<an earlier one> to use that"
        raise ConfigError(f"{flag}: checkpoint {os.path.basename(path)} cannot be used: "
                          f"{problem}{earlier}")
    return path


def restore_networks(model_dir: str, checkpoint: Optional[str] = None,
                     with_discriminator: bool = False) -> RestoredRun:
    """Rebuilds E and G (and D if asked) from RUN/run.json and restores them from a
    checkpoint.

    `checkpoint` is a path prefix such as RUN/checkpoints/ckpt-450; None means the
    newest complete one. The optimizers are not built. A checkpoint whose variables do
    not fit the record's networks is a one-line ConfigError.
    """
    record = require_run_record(model_dir)
    network_config = dataclasses.replace(record.network, synchronized_bn=False)
    path = checkpoint_to_restore(model_dir, checkpoint)
    encoder = networks.build_encoder(network_config)
    generator = networks.build_generator(network_config)
    parts = {"encoder": encoder, "generator": generator}
    if with_discriminator:
        parts["discriminator"] = networks.build_discriminator(
            network_config, record.tuple_set.slot_kinds,
            discriminator_outputs(record.tuple_set, network_config.label_classes))
    try:
        status = tf.train.Checkpoint(**parts).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        # A shape mismatch is raised by restore() itself, with the useful line last.
        raise ConfigError(f"--model_dir={model_dir}: checkpoint {os.path.basename(path)} does "
                          f"not match the networks in {RUN_RECORD} ({last_line(error)})"
                          ) from None
    step = checkpoint_step(path) or 0
    return RestoredRun(encoder, generator, record, path, step, parts.get("discriminator"))


def append_flags_history(model_dir: str, entry: dict) -> None:
    """Appends one JSON line: a session's start step, time, flags and changes."""
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), **entry}
    path = os.path.join(model_dir, FLAGS_HISTORY)
    previous = ""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            previous = f.read()
    files.write_text_atomically(path, previous + json.dumps(entry, sort_keys=True) + "\n")


def changed_settings(previous: dict, current: dict) -> dict:
    """{name: (previous value, current value)} of the settings that differ; names only
    one side records (a newer or older trainer) are not compared."""
    return {k: (previous[k], current[k]) for k in sorted(previous.keys() & current.keys())
            if previous[k] != current[k]}


# ------------------------------------------------------------------------ the lock

class TrainerLock:
    """An exclusive advisory lock on a run directory, held while a trainer writes it.

    `flock` on RUN/trainer.lock: the kernel drops it when the holder exits, however it
    exits, so a crashed trainer's lock file is simply taken over; the file's text
    (pid, host, time) only names the holder in the refusal. On object stores (gs://)
    there is no lock: run one trainer per directory there.
    """

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> "TrainerLock":
        if not _is_local(self.model_dir):
            return self
        import fcntl  # POSIX only; imported here so the module loads elsewhere
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ConfigError(f"--model_dir={self.model_dir} is in use by another trainer "
                              f"({self._holder()}); wait for it to end or use another "
                              "--model_dir") from None
        holder = (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # drops the flock; the file stays for the next holder
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def locked_run_dir(model_dir: str):
    """Creates `model_dir` if needed and holds its trainer lock; a directory this call
    created is removed again if the session fails before writing anything to it."""
    created = not tf.io.gfile.exists(model_dir)
    try:
        tf.io.gfile.makedirs(model_dir)
    except (OSError, tf.errors.OpError) as error:
        raise ConfigError(f"--model_dir={model_dir}: cannot create it "
                          f"({first_line(error)})") from None
    lock = TrainerLock(model_dir)
    try:
        lock.acquire()
    except OSError as error:
        raise ConfigError(f"--model_dir={model_dir}: cannot write its lock file "
                          f"({first_line(error)})") from None
    try:
        yield lock
    finally:
        lock.release()
        if created and tf.io.gfile.listdir(model_dir) == [LOCK_FILE]:
            tf.io.gfile.rmtree(model_dir)
