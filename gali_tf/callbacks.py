"""The Keras callbacks of a training run: stop on divergence or at the total step,
checkpoint every N steps and at SIGTERM (and keep every M-th step's for good), and
write TensorBoard scalars and images.

Each works on a GALIModel (its `step` counter and `total_steps`) inside `model.fit`;
`training.train` installs them.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

import keras
import tensorflow as tf

from gali_tf import run_dir, visualize
from gali_tf.errors import ConfigError
from gali_tf.evaluation import inpainting
from gali_tf.model import STEP_PREFIX


class TrainingDiverged(ConfigError):
    """Losses or weights stopped being finite (typically too high a learning rate)."""

    def __init__(self, step: int, what: str, manager: tf.train.CheckpointManager):
        kept = (f"the newest finite checkpoint, {os.path.basename(manager.latest_checkpoint)}, "
                "is kept; resume from it with a lower --learning_rate and "
                "--allow_flag_changes, or use a new --model_dir"
                if manager.latest_checkpoint else "no checkpoint was saved")
        super().__init__(f"step {step}: training diverged ({what}); {kept}")


def _nonfinite_logs(logs) -> dict:
    values = {k: float(v) for k, v in (logs or {}).items()}
    return {k: v for k, v in values.items() if not math.isfinite(v)}


class StopOnDivergence(keras.callbacks.Callback):
    """Raises TrainingDiverged after the first step with a non-finite loss.

    Keras' TerminateOnNaN only stops fit: the run would end "successfully", save the
    NaN weights at the end and rotate the last finite checkpoint away.
    """

    def __init__(self, manager: tf.train.CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_train_batch_end(self, batch, logs=None):
        bad = _nonfinite_logs(logs)
        if bad:
            what = ", ".join(f"{k}={v}" for k, v in sorted(bad.items())[:4])
            raise TrainingDiverged(int(self.model.step.numpy()), what, self.manager)


class StopAtStep(keras.callbacks.Callback):
    """Ends fit at a total step count, so resumed runs finish on the same step."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.step.numpy()) >= self.total_steps:
            self.model.stop_training = True


def progress_line(step: int, total: int, images_per_second: float, eta_seconds: float,
                  losses: dict, width: int = 20) -> str:
    """`step 450/3000 [===>                ]  15% 1043 images/s ETA 4:03 d_loss 1.234 ...`"""
    done = min(max(step / max(total, 1), 0.0), 1.0)
    bar = "=" * int(done * width)
    bar = (bar[:-1] + ">" if bar and done < 1.0 else bar).ljust(width)
    eta = ("--:--" if not math.isfinite(eta_seconds) else
           f"{int(eta_seconds) // 3600}:{int(eta_seconds) % 3600 // 60:02d}:"
           f"{int(eta_seconds) % 60:02d}" if eta_seconds >= 3600 else
           f"{int(eta_seconds) // 60}:{int(eta_seconds) % 60:02d}")
    text = (f"step {step}/{total} [{bar}] {100 * done:3.0f}% "
            f"{images_per_second:.0f} images/s ETA {eta}")
    return text + "".join(f" {name} {value:.4g}" for name, value in losses.items())


class RunProgress(keras.callbacks.Callback):
    """One progress display over the run's total steps (not Keras' bar per epoch): the
    step of the total, images/s since this session started, the ETA and the latest
    losses. On a terminal the line is redrawn in place (at most twice a second);
    otherwise (a log file, `--verbose=2`) a line is printed every 5% of the run."""

    LOSSES = ("d_loss", "g_loss")

    def __init__(self, batch_size: int, live: bool, stream=None):
        super().__init__()
        self.batch_size, self.live = batch_size, live
        self.stream = stream or sys.stdout
        self._started = self._start_step = self._last_draw = None
        self._next_line = 0

    def on_train_begin(self, logs=None):
        self._start_step = int(self.model.step.numpy())
        self._started = self._last_draw = time.monotonic()
        every = max(self.model.total_steps // 20, 1)
        self._next_line = (self._start_step // every + 1) * every

    def on_train_batch_end(self, batch, logs=None):
        step, total = int(self.model.step.numpy()), self.model.total_steps
        now = time.monotonic()
        last = step >= total
        if self.live:
            if not last and now - self._last_draw < 0.5:
                return
            self._last_draw = now
        elif not last and step < self._next_line:
            return
        else:
            every = max(total // 20, 1)
            self._next_line = (step // every + 1) * every
        steps = step - self._start_step
        seconds = max(now - self._started, 1e-9)
        eta = (total - step) * seconds / steps if steps > 0 else math.inf
        losses = {k: float(logs[k]) for k in self.LOSSES if logs and k in logs}
        line = progress_line(step, total, steps * self.batch_size / seconds, eta, losses)
        if self.live:
            self.stream.write("\r" + line + ("\n" if last else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def on_train_end(self, logs=None):
        if self.live and int(self.model.step.numpy()) < self.model.total_steps:
            self.stream.write("\n")   # stopped early (SIGTERM): end the redrawn line
            self.stream.flush()


def probability_tags(tuple_set) -> dict:
    """The train_step's log key of each tuple class's mean D probability (p1..pn) ->
    its TensorBoard tag, named by the class: `p/x,E(x)`, `p/G(z),z`, ..."""
    return {f"p{c + 1}": "p/" + ",".join(node.name for node in tuple_class)
            for c, tuple_class in enumerate(tuple_set.classes)}


def write_session_summary(writer, step: int, flags_text: Optional[str],
                          training_flags: dict) -> None:
    """At the start of each session: the flags as text (TensorBoard's Text tab) and the
    run's training flags as hparams (its HParams tab, to compare runs side by side)."""
    from tensorboard.plugins.hparams import api as hparams_api  # pylint: disable=import-outside-toplevel
    with writer.as_default(step=step):
        if flags_text:
            # Indented: Markdown shows it as a code block, one flag per line.
            tf.summary.text("flags", "\n".join("    " + line
                                                for line in flags_text.splitlines()))
        hparams_api.hparams({name: value for name, value in training_flags.items()
                             if isinstance(value, (bool, int, float, str))})
    writer.flush()


def step_values(logs) -> dict:
    """The values of the logged step alone, by metric name: the logs' STEP_PREFIX keys
    (the others are running means since the epoch began)."""
    return {name[len(STEP_PREFIX):]: value for name, value in (logs or {}).items()
            if name.startswith(STEP_PREFIX)}


class ScalarSummaries(keras.callbacks.Callback):
    """Writes every N-th step's own metrics (its losses, mean D probabilities, ...; not
    Keras' running means over the epoch, whose smoothing restarts at each epoch) to
    TensorBoard under `train/<name>`, and the last step's; `tags` renames some (the
    class probabilities, probability_tags). Under a strategy they are the global batch's
    values (train_step)."""

    def __init__(self, writer, every: int, tags: Optional[dict] = None):
        super().__init__()
        self.writer, self.every, self.tags = writer, max(every, 1), tags or {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every == 0 or step >= self.model.total_steps:
            with self.writer.as_default(step=step):
                for name, value in step_values(logs).items():
                    tf.summary.scalar(f"train/{self.tags.get(name, name)}", float(value))


def _save(manager: tf.train.CheckpointManager, model, step: int,
          rolling: Optional[tf.train.CheckpointManager] = None) -> None:
    """Saves the model as `manager`'s ckpt-<step>, never a non-finite checkpoint: it
    would rotate the last good one away (TrainingDiverged names `rolling`'s newest, the
    resume point)."""
    if run_dir.nonfinite_variables(model.weights):
        raise TrainingDiverged(step, "non-finite weights", rolling or manager)
    manager.save(checkpoint_number=step)


class CheckpointEvery(keras.callbacks.Callback):
    """Saves every N steps and when training ends."""

    def __init__(self, manager: tf.train.CheckpointManager, every: int):
        super().__init__()
        self.manager, self.every = manager, every

    def save(self):
        step = int(self.model.step.numpy())
        if self.manager.latest_checkpoint != self._path(step):
            _save(self.manager, self.model, step)

    def _path(self, step):
        return f"{self.manager._checkpoint_prefix}-{step}"  # pylint: disable=protected-access

    def on_train_batch_end(self, batch, logs=None):
        if self.every > 0 and int(self.model.step.numpy()) % self.every == 0:
            self.save()

    def on_train_end(self, logs=None):
        self.save()


class KeepCheckpointEvery(keras.callbacks.Callback):
    """Saves every step that is a multiple of N to `kept`, a manager of its own
    directory that deletes nothing (RUN/checkpoints/kept/ckpt-<step>): those steps stay
    to be evaluated or exported later, whatever the rolling --keep_checkpoints deletes.
    With --steps_per_execution=k the step moves k at a time and may jump over a
    multiple: then the first step after it is kept, never none.

    A second manager rather than sparing some of the rolling one's files:
    tf.train.CheckpointManager has no public way to spare one, and its state file then
    keeps naming only what it rotates, so resume and every run_dir reader work on
    either directory unchanged. The cost is a second write at steps both save.
    """

    def __init__(self, kept: tf.train.CheckpointManager, every: int,
                 rolling: tf.train.CheckpointManager):
        super().__init__()
        self.kept, self.every, self.rolling = kept, every, rolling
        self._last = 0   # the step at the previous batch end

    def on_train_begin(self, logs=None):
        # A step kept by an earlier session is saved again: resumed from an older
        # checkpoint, the run retrained it and goes on from the new weights.
        self._last = int(self.model.step.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.step.numpy())
        # Once per multiple reached in this session (a skipped float16 step repeats its
        # number; a multi-step execution can jump over the multiple itself).
        if step // self.every > self._last // self.every:
            _save(self.kept, self.model, step, self.rolling)
        self._last = step


class SaveAtSigterm(keras.callbacks.Callback):
    """On SIGTERM: finish the running step, checkpoint it, and end training cleanly.

    The signal handler only sets a flag: TensorFlow state is not safe to touch from a
    handler that may run in the middle of a step. After each step the flag is read;
    under a multi-worker strategy the workers first agree (one scalar all-reduce per
    step) whether any of them was signalled, so they all save the same step and leave
    the step's collectives together instead of leaving a peer blocked in them.
    tf.distribute.experimental.PreemptionCheckpointHandler is not used: it probes the
    GCE metadata server over the network at start and does nothing on GCE CPU VMs.
    """

    def __init__(self, saver: "CheckpointEvery", strategy: tf.distribute.Strategy):
        super().__init__()
        self.saver, self.strategy = saver, strategy
        self.preempted = False
        self._signalled = threading.Event()
        self._multi_worker = strategy.extended._in_multi_worker_mode()  # pylint: disable=protected-access
        self._any_worker = None

    def installed(self):
        """Context manager: our SIGTERM handler while fit runs, the previous one after."""
        callback = self

        class _Installed:
            def __enter__(self):
                self.previous = None
                # signal.signal only works in the main thread; elsewhere SIGTERM keeps
                # its default action (the last periodic checkpoint is the resume point).
                if threading.current_thread() is threading.main_thread():
                    self.previous = signal.signal(signal.SIGTERM,
                                                  lambda signum, frame: callback._signalled.set())

            def __exit__(self, *exc):
                if self.previous is not None:
                    signal.signal(signal.SIGTERM, self.previous)
        return _Installed()

    def _agreed(self) -> bool:
        if not self._multi_worker:
            return self._signalled.is_set()
        if self._any_worker is None:
            strategy = self.strategy

            @tf.function
            def any_worker(flag):
                per_replica = strategy.run(lambda: tf.identity(flag))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self._any_worker = any_worker
        return int(self._any_worker(tf.constant(int(self._signalled.is_set())))) > 0

    def on_train_batch_end(self, batch, logs=None):
        if not self.preempted and self._agreed():
            self.saver.save()
            self.preempted = True
            self.model.stop_training = True


class EvaluateEvery(keras.callbacks.Callback):
    """Calls `evaluate(step)` every N steps before the last (the run's end evaluates
    anyway): the trainer's test-split reconstruction MSE, as a curve while it trains."""

    def __init__(self, every: int, evaluate: Callable[[int], None]):
        super().__init__()
        self.every, self.evaluate = every, evaluate

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every == 0 and step < self.model.total_steps:
            self.evaluate(step)


class ImageSummaries(keras.callbacks.Callback):
    """Samples G(z) for a fixed z and reconstruction pairs of a fixed batch; with a
    masked tuple set also (original, masked input, inpainted) triplets."""

    def __init__(self, writer, every: int, dataset: tf.data.Dataset, count: int = 32):
        super().__init__()
        self.writer, self.every = writer, every
        images = next(iter(dataset))
        # Conditional runs: samples and reconstructions use the batch's own y.
        images, condition = images if isinstance(images, tuple) else (images, None)
        images = images[:, -1] if images.shape.rank == 5 else images
        if condition is not None and condition.shape.rank == 3:
            condition = condition[:, -1]
        self.images = images[:count]
        self.condition = None if condition is None else condition[:count]
        self.count = count

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every == 0 or step >= self.model.total_steps:
            self.write(step)

    def write(self, step: int):
        model = self.model
        condition = self.condition
        if condition is not None and not model.condition_dim:
            condition = None     # a semi-supervised run's labels are no condition
        count = self.count if condition is None else int(condition.shape[0])
        samples = model.generate(model.prior_sample(count, seed=0), condition=condition)
        recon = model.reconstruct(self.images, condition=condition)
        with self.writer.as_default(step=step):
            tf.summary.image("samples", visualize.image_grid(samples), step=step)
            tf.summary.image("reconstructions",
                             visualize.pairs_grid(self.images, recon, columns=8), step=step)
            if "mask" in model.tuple_set.operator_families():
                # Fixed evaluation masks, so the grids of successive steps compare.
                mask = inpainting.eval_masks(self.images.shape, 0)
                masked, inpainted = inpainting.inpaint(
                    functools.partial(model.reconstruct, condition=condition), self.images,
                    mask, model.config.mask_fill)
                tf.summary.image("inpainting", inpainting.triplet_grid(
                    self.images, masked, inpainted, columns=4), step=step)
