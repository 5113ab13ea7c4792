"""How the train step runs fastest on this machine: measured at start-up, not assumed.

XLA is not faster everywhere, and not even on one kind of machine: on a 2-core AMD EPYC
with AVX-512 the small-network step took about twice as long with XLA as without; on a
2-core EPYC without AVX-512 it took 1.07x longer, while the svhn32 step ran 1.30x faster
with XLA (README, "Benchmarks"); on GPUs XLA usually wins. So `jit_compile=None` ("auto") times a few steps of each candidate on the
run's own model, data and device, keeps the faster, and the run records the choice
(run.json "execution") so that a resume on the same devices does not measure again.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf

# Timed steps per candidate, after two untimed ones (tracing, XLA compilation, and the
# first-call set-up of oneDNN kernels). The candidates alternate step by step and the
# median counts, so a load that comes and goes on the machine biases neither.
MEASURED_STEPS = 5
_WARM_UP_STEPS = 2


@dataclasses.dataclass(frozen=True)
class ExecutionChoice:
    """The chosen XLA setting, and how it was chosen."""

    jit_compile: bool
    # Seconds per train step by candidate ("xla", "no_xla"); empty when not measured.
    seconds_per_step: Dict[str, float]
    # What the measurement is valid for: a resume on other devices measures again.
    measured_for: Dict[str, object]
    reason: str

    def as_record(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        mode = "XLA on" if self.jit_compile else "XLA off"
        if len(self.seconds_per_step) < 2:
            return f"{mode} ({self.reason})"
        xla, plain = self.seconds_per_step["xla"], self.seconds_per_step["no_xla"]
        ratio = max(xla, plain) / min(xla, plain)
        return (f"{mode}: {1000 * plain:.0f} ms/step without XLA, {1000 * xla:.0f} ms/step "
                f"with, {ratio:.2f}x ({self.reason})")


def devices_description(replicas: int, mixed_precision: str, batch_size: int) -> dict:
    """What a timing depends on besides the model: devices, precision, batch."""
    gpus = tf.config.list_logical_devices("GPU")
    kind = (tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            .get("device_name", "GPU") if gpus else "CPU")
    return {"device": kind, "replicas": int(replicas), "mixed_precision": mixed_precision,
            "batch_size": int(batch_size)}


def _state_variables(model: keras.Model):
    """Everything a train step changes: weights, optimizer slots and step counters,
    metric accumulators (deduplicated; LossScaleOptimizer shares its inner Adam's)."""
    seen, out = set(), []
    for v in (list(model.weights) + list(model.d_optimizer.variables)
              + list(model.g_optimizer.variables)
              + [w for m in model.metrics for w in m.variables]):
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def seconds_per_step(model: keras.Model, dataset: tf.data.Dataset,
                     candidates: Dict[str, bool], steps: int = MEASURED_STEPS
                     ) -> Dict[str, float]:
    """Median wall seconds of one train step per candidate {name: jit_compile}; a
    candidate that fails to compile is left out. The model's state changes."""
    batches = iter(dataset)

    def timed(step) -> float:
        start = time.perf_counter()
        logs = step(next(batches))
        # Reading a value waits for the step: the time covers the whole computation.
        float(next(iter(logs.values())))
        return time.perf_counter() - start

    steps_of = {}
    for name, jit in candidates.items():
        step = tf.function(model.train_step, jit_compile=jit)
        try:
            for _ in range(_WARM_UP_STEPS):
                timed(step)
        except (tf.errors.OpError, ValueError, NotImplementedError):
            continue
        steps_of[name] = step
    times = {name: [] for name in steps_of}
    for _ in range(steps):
        for name, step in steps_of.items():
            times[name].append(timed(step))
    return {name: float(np.median(t)) for name, t in times.items()}


# The modes compared, by the names run.json records their timings under.
CANDIDATES = {"no_xla": False, "xla": True}


def measure_jit_compile(model: keras.Model, dataset: tf.data.Dataset,
                        measured_for: dict, steps: int = MEASURED_STEPS,
                        candidates: Optional[Dict[str, bool]] = None) -> ExecutionChoice:
    """Times the train step with and without XLA and picks the faster.

    The model's weights, optimizer states and step count are restored afterwards, so
    the run trains exactly as it would have without the measurement. A candidate that
    fails to compile is not chosen.
    """
    state = _state_variables(model)
    saved = [v.numpy() for v in state]
    candidates = candidates or CANDIDATES
    try:
        timings = seconds_per_step(model, dataset, candidates, steps)
    finally:
        for variable, value in zip(state, saved):
            variable.assign(value)
    failed = [name for name in candidates if name not in timings]
    reason = "measured" + (f"; {', '.join(failed)} failed to compile" if failed else "")
    if not timings:
        return ExecutionChoice(False, {}, measured_for, reason)
    best = min(timings, key=timings.get)
    return ExecutionChoice(best == "xla", timings, measured_for, reason)


def choose_jit_compile(requested: Optional[bool], model: keras.Model,
                       dataset: tf.data.Dataset, replicas: int, mixed_precision: str,
                       batch_size: int, previous: Optional[dict] = None,
                       will_train: bool = True) -> ExecutionChoice:
    """The XLA setting of a session: `requested` when forced; otherwise the run's
    recorded measurement when it was made for the same devices, else a new one (none
    when the session `will_train` no step)."""
    measured_for = devices_description(replicas, mixed_precision, batch_size)
    if requested is not None:
        return ExecutionChoice(requested, {}, measured_for, "--jit_compile=" +
                               str(requested).lower())
    if replicas > 1:
        # Keras' own "auto" under a strategy; XLA fails under MirroredStrategy on
        # logical CPU devices, and a failed compile there can leave collectives waiting.
        return ExecutionChoice(False, {}, measured_for,
                               f"not measured under {replicas} replicas")
    if previous and previous.get("measured_for") == measured_for \
            and previous.get("seconds_per_step"):
        return dataclasses.replace(ExecutionChoice(**previous),
                                   reason="measured at an earlier session of this run")
    if not will_train:
        return ExecutionChoice(False, {}, measured_for, "not measured: nothing to train")
    return measure_jit_compile(model, dataset, measured_for)
