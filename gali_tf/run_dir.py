"""A run directory as every tool meets it: its files, the trainer's lock, the checkpoints
that are whole, and the history of the flags it was trained with.

    RUN/run.json             the run record (networks, tuple set, data, training flags)
    RUN/flags.txt            the last session's effective flags, a runnable flagfile
    RUN/flags_history.jsonl  one line per training session: its start step and changes
    RUN/trainer.lock         held (flock) by the one trainer writing RUN
    RUN/checkpoints/         tf.train.CheckpointManager's ckpt-<step>.{index,data-*}

Readers (training's resume, evaluation, export) never trust a checkpoint's name alone:
`latest_complete_checkpoint` reads every tensor of the candidate and falls back, with a
warning line, to the previous one when a file is missing, truncated or corrupt.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import glob
import json
import os
import re
import socket
import sys
import time
from typing import Callable, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.python.checkpoint import checkpoint_management

from gali_tf.model import ConfigError

RUN_RECORD = "run.json"
FLAGS_FILE = "flags.txt"
FLAGS_HISTORY = "flags_history.jsonl"
CHECKPOINT_DIR = "checkpoints"
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
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = lines[0][:120] if lines else type(error).__name__
        return f"its files are incomplete or unreadable ({reason})"
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

def read_run_record(model_dir: str) -> Optional[dict]:
    """RUN/run.json as a dict (None when absent); a damaged one is a one-line error."""
    path = os.path.join(model_dir, RUN_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            record = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON ({str(error)[:80]}); restore it from a "
                          "backup or use a new --model_dir") from None
    if not isinstance(record, dict) or "example_shape" not in record:
        raise ConfigError(f"{path} is not a run record of trainers.main (no example_shape)")
    return record


def write_text_atomically(path: str, text: str) -> None:
    """Writes a file via a temp file and a rename, never leaving half of it."""
    tmp = path + ".tmp"
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def append_flags_history(model_dir: str, entry: dict) -> None:
    """Appends one JSON line: a session's start step, time, flags and changes."""
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), **entry}
    path = os.path.join(model_dir, FLAGS_HISTORY)
    previous = ""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            previous = f.read()
    write_text_atomically(path, previous + json.dumps(entry, sort_keys=True) + "\n")


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
