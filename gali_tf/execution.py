"""How the train step runs fastest on this machine: measured at start-up, not assumed.

Neither XLA nor bfloat16 is faster everywhere, and not even on one kind of machine: on
a 2-core AMD EPYC with AVX-512 and AVX512_BF16 the small-network step took about twice
as long with XLA as without and svhn32 ran 1.6x faster in mixed_bfloat16; on a 2-core
EPYC without AVX-512 svhn32 ran 1.30x faster with XLA and bfloat16 was 10x slower
(emulated); on GPUs XLA usually wins (README, "Benchmarks"). So "auto" times a few
steps of each candidate (XLA or not, float32 or mixed_bfloat16 where the device has
bfloat16 instructions) on the run's own model, data and device, keeps the fastest, and
the run records the choice (run.json "execution") so that a resume on the same devices
does not measure again. On a CPU the timing runs in a process of its own
(`in_child_process`), so that the candidates it compiled and the models it built do not
stay in the training process's memory.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import re
import time
from typing import Callable, Dict, List, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from gali_tf.model import AUTO_PRECISION as AUTO
# The reduced precision that the measurement may choose: on CPUs with AVX512_BF16 or
# AMX, Arm's BF16 and GPUs from compute capability 8.0 it needs no loss scaling and
# trained digits GALI-4 as well as float32 (README, "Results": 3 seeds, every metric
# within the seed spread). float16 needs loss scaling, skipped steps, and is not chosen.
BFLOAT16 = "mixed_bfloat16"
# bfloat16 is chosen only when it is at least this much faster than float32's best
# mode: a run's numerics should not hang on a timing within the noise of the machine.
BFLOAT16_MIN_SPEEDUP = 1.1

# Timed steps per candidate, after two untimed ones (tracing, XLA compilation, and the
# first-call set-up of oneDNN kernels). The candidates alternate step by step and the
# median counts, so a load that comes and goes on the machine biases none of them.
MEASURED_STEPS = 5
_WARM_UP_STEPS = 2


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to run the train step: a Keras dtype policy and XLA or not."""

    mixed_precision: str
    jit_compile: bool

    @property
    def name(self) -> str:
        """Its key in run.json's timings, e.g. "float32/no_xla"."""
        return f"{self.mixed_precision}/{'xla' if self.jit_compile else 'no_xla'}"


@dataclasses.dataclass(frozen=True)
class ExecutionChoice:
    """The chosen XLA setting and precision, and how they were chosen."""

    jit_compile: bool
    # Seconds per train step by Candidate.name; empty when not measured. (Records of
    # runs before the precision was measured have the keys "xla" and "no_xla".)
    seconds_per_step: Dict[str, float]
    # What the measurement is valid for: a resume on other devices measures again.
    measured_for: Dict[str, object]
    reason: str
    mixed_precision: str = "float32"

    def as_record(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        mode = (f"XLA {'on' if self.jit_compile else 'off'}, {self.mixed_precision}")
        chosen = Candidate(self.mixed_precision, self.jit_compile).name
        timings = dict(self.seconds_per_step)
        if len(timings) < 2 or chosen not in timings:
            return f"{mode} ({self.reason})"
        others = ", ".join(f"{name} {1000 * seconds:.0f}"
                           for name, seconds in sorted(timings.items(), key=lambda kv: kv[1])
                           if name != chosen)
        return (f"{mode}: {1000 * timings[chosen]:.0f} ms/step; {others} ms/step "
                f"({self.reason})")


def devices_description(replicas: int, mixed_precision: str, batch_size: int) -> dict:
    """What a timing depends on besides the model: devices, precision asked, batch."""
    gpus = tf.config.list_logical_devices("GPU")
    kind = (tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            .get("device_name", "GPU") if gpus else "CPU")
    return {"device": kind, "replicas": int(replicas), "mixed_precision": mixed_precision,
            "batch_size": int(batch_size)}


def has_bfloat16_instructions() -> bool:
    """Whether the device computes bfloat16 natively (TensorFlow emulates it elsewhere,
    10x slower than float32 on a CPU without it): a GPU of compute capability >= 8.0,
    else a CPU whose /proc/cpuinfo lists avx512_bf16, amx_bf16 or (Arm) bf16."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability")
        return bool(capability) and tuple(capability) >= (8, 0)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", text) is not None


def candidates(jit_compile: Optional[bool], mixed_precision: str) -> List[Candidate]:
    """What the measurement compares: the forced settings, or each one left to it."""
    modes = [False, True] if jit_compile is None else [jit_compile]
    precisions = ([mixed_precision] if mixed_precision != AUTO
                  else ["float32", BFLOAT16] if has_bfloat16_instructions() else ["float32"])
    return [Candidate(p, jit) for p in precisions for jit in modes]


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


def seconds_per_step(models: Mapping[str, keras.Model], dataset: tf.data.Dataset,
                     timed: List[Candidate], steps: int = MEASURED_STEPS
                     ) -> Dict[str, float]:
    """Median wall seconds of one train step per candidate (by name), each on
    `models[candidate.mixed_precision]`; a candidate that fails to compile is left
    out. The models' states change."""
    batches = iter(dataset)

    def time_one(step) -> float:
        start = time.perf_counter()
        logs = step(next(batches))
        # Reading a value waits for the step: the time covers the whole computation.
        float(next(iter(logs.values())))
        return time.perf_counter() - start

    steps_of = {}
    for candidate in timed:
        step = tf.function(models[candidate.mixed_precision].train_step,
                           jit_compile=candidate.jit_compile)
        try:
            for _ in range(_WARM_UP_STEPS):
                time_one(step)
        except (tf.errors.OpError, ValueError, NotImplementedError):
            continue
        steps_of[candidate.name] = step
    times = {name: [] for name in steps_of}
    for _ in range(steps):
        for name, step in steps_of.items():
            times[name].append(time_one(step))
    return {name: float(np.median(t)) for name, t in times.items()}


def fastest(timings: Mapping[str, float], timed: List[Candidate]) -> Candidate:
    """The fastest candidate of float32, unless one in bfloat16 beats it by
    BFLOAT16_MIN_SPEEDUP; `timings` has at least one of `timed`."""
    measured = [c for c in timed if c.name in timings]
    best = min(measured, key=lambda c: timings[c.name])
    full = [c for c in measured if c.mixed_precision != BFLOAT16]
    if best.mixed_precision != BFLOAT16 or not full:
        return best
    best_full = min(full, key=lambda c: timings[c.name])
    speedup = timings[best_full.name] / timings[best.name]
    return best if speedup >= BFLOAT16_MIN_SPEEDUP else best_full


def measure(models: Mapping[str, keras.Model], dataset: tf.data.Dataset,
            timed: List[Candidate], steps: int = MEASURED_STEPS) -> Dict[str, float]:
    """`seconds_per_step` in this process, leaving the run's state as it was.

    The first of `models` holds the run's state (restored checkpoint, output bias); the
    others get a copy before they are timed, and every model gets it back afterwards,
    so the run trains exactly as it would have without the measurement.
    """
    base, *others = list(models.values())
    saved = [v.numpy() for v in _state_variables(base)]

    def restore_all():
        for model in models.values():
            for variable, value in zip(_state_variables(model), saved):
                variable.assign(value)
    restore_all()
    try:
        return seconds_per_step(models, dataset, timed, steps)
    finally:
        restore_all()


def copy_state(source: keras.Model, target: keras.Model) -> None:
    """Gives `target` (the same run built in another precision) `source`'s state."""
    for variable, value in zip(_state_variables(target), _state_variables(source)):
        variable.assign(value)


def in_child_process(function: Callable[..., Dict[str, float]], *args) -> Dict[str, float]:
    """`function(*args)` run in a new Python process (multiprocessing "spawn"); its
    result, or its exception re-raised here (a crash is BrokenProcessPool).

    Where the measurement runs on a CPU: what it leaves behind stays resident in the
    process that made it for the rest of the run (TensorFlow keeps every XLA
    compilation; oneDNN and malloc keep the unchosen model's buffers). On svhn32
    GALI-4 at batch 100 the step trained in 3879 MiB after an in-process measurement
    and in 1569 MiB with the mode forced (README, "Benchmarks").
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def measures_in_a_process_of_its_own() -> bool:
    """Whether the start-up measurement runs in `in_child_process`: on a CPU. A GPU's
    memory already belongs to the training process (TensorFlow reserves it at its
    first op), so a second process would find none; there it runs in the process."""
    return not tf.config.list_logical_devices("GPU")


def choice_from(timings: Mapping[str, float], timed: List[Candidate], measured_for: dict,
                failure: str = "") -> ExecutionChoice:
    """The fastest of `timings` (`fastest`), with the reason it was chosen; XLA off in
    the first precision asked when nothing could be timed (`failure` says why)."""
    failed = [c.name for c in timed if c.name not in timings]
    reason = "measured" + (f"; {', '.join(failed)} failed to compile"
                           if failed and timings else "")
    if not timings:
        return ExecutionChoice(False, {}, measured_for,
                               f"not measured: {failure or 'no candidate compiled'}",
                               timed[0].mixed_precision)
    best = fastest(timings, timed)
    if best.mixed_precision != BFLOAT16 and any(
            c.mixed_precision == BFLOAT16 and timings.get(c.name, np.inf) < timings[best.name]
            for c in timed):
        reason += f"; {BFLOAT16} is faster by less than {BFLOAT16_MIN_SPEEDUP}x"
    return ExecutionChoice(best.jit_compile, dict(timings), measured_for, reason,
                           best.mixed_precision)


def recorded_choice(previous: Optional[Mapping], measured_for: dict
                    ) -> Optional[ExecutionChoice]:
    """A run's earlier measurement, when it was made for the same devices, precision
    request and batch (None otherwise)."""
    if not previous or previous.get("measured_for") != measured_for \
            or not previous.get("seconds_per_step"):
        return None
    return dataclasses.replace(ExecutionChoice(**previous),
                               reason="measured at an earlier session of this run")


def initial_precision(mixed_precision: str, recorded: Optional[ExecutionChoice]) -> str:
    """The policy to build the run's model in, before any measurement."""
    if mixed_precision != AUTO:
        return mixed_precision
    return recorded.mixed_precision if recorded else "float32"


def choose(jit_compile: Optional[bool], mixed_precision: str, replicas: int,
           batch_size: int, time_candidates: Callable[[List[Candidate]], Dict[str, float]],
           previous: Optional[Mapping] = None, will_train: bool = True) -> ExecutionChoice:
    """The XLA setting and precision of a session.

    `jit_compile` None and `mixed_precision` AUTO leave each to the measurement; the
    run's recorded measurement is reused when made for the same devices, else
    `time_candidates(candidates)` times them (seconds per step by Candidate.name; see
    `measure` and `in_child_process`), unless the session `will_train` no step.
    """
    measured_for = devices_description(replicas, mixed_precision, batch_size)
    fixed_precision = initial_precision(mixed_precision, None)
    if jit_compile is not None and mixed_precision != AUTO:
        return ExecutionChoice(jit_compile, {}, measured_for,
                               f"--jit_compile={str(jit_compile).lower()}", fixed_precision)
    if replicas > 1:
        # Keras' own "auto" under a strategy; XLA fails under MirroredStrategy on
        # logical CPU devices, and a failed compile there can leave collectives waiting.
        return ExecutionChoice(bool(jit_compile), {}, measured_for,
                               f"not measured under {replicas} replicas", fixed_precision)
    recorded = recorded_choice(previous, measured_for)
    if recorded is not None:
        return recorded
    if not will_train:
        return ExecutionChoice(bool(jit_compile), {}, measured_for,
                               "not measured: nothing to train", fixed_precision)
    timed = candidates(jit_compile, mixed_precision)
    if len(timed) == 1:
        forced = f"--jit_compile={str(jit_compile).lower()}; " if jit_compile is not None else ""
        return ExecutionChoice(timed[0].jit_compile, {}, measured_for,
                               forced + "float32: no bfloat16 instructions on this device",
                               timed[0].mixed_precision)
    try:
        return choice_from(time_candidates(timed), timed, measured_for)
    except (concurrent.futures.BrokenExecutor, OSError) as error:
        # The measuring process died (out of memory, a crashed compilation): train as
        # if XLA were off rather than not at all.
        return choice_from({}, timed, measured_for,
                           f"the measuring process failed ({type(error).__name__})")
