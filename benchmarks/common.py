"""Shared pieces of the benchmarks: threads, timing, peak memory, FLOPs, matmul rate."""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from typing import Callable, Dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout, without installing
    sys.path.insert(0, REPO)


def set_threads(threads: int) -> None:
    """TF intra-op threads = `threads`, one inter-op thread: the same compute threads as
    a PyTorch process with torch.set_num_threads(threads), which runs ops one by one.
    Must run before TensorFlow executes its first op."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (getrusage ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def reset_peak_rss() -> bool:
    """Restarts the process's peak resident size from its current size (Linux: "5" to
    /proc/self/clear_refs resets VmHWM, and ru_maxrss with it); False elsewhere.

    So the peak of what runs next (training) is not the start-up's (the measurement's
    XLA compilations)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mib() -> float:
    """VmHWM of /proc/self/status in MiB: the peak since `reset_peak_rss` (or since the
    process started)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    raise OSError("no VmHWM in /proc/self/status")


def seconds_per_call(fn: Callable[[], object], calls: int, warmup: int = 1) -> float:
    """Mean wall time of `fn()` after `warmup` untimed calls; `fn` must block until done."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / max(calls, 1)


def graph_flops(concrete_function) -> int:
    """FLOPs of one call of a traced tf.function, from TF's registered op statistics.

    Only ops that run are counted: those the outputs and the stateful control outputs
    (variable updates) depend on. The tape emits gradient ops nobody uses (e.g. D's
    weight gradients in the E/G step), which TF prunes before running; the v1
    profiler (tf.compat.v1.profiler with float_operation()) counts them all and
    gives about twice the FLOPs actually run. Ops without a registered "flops"
    statistic (element-wise activations, BatchNorm) count 0, so this is slightly low.

    The convolution gradients are counted exactly here, 2 * (output gradient size) *
    kh * kw * Cin, as torch.utils.flop_counter counts them: TF's registered statistic
    for Conv2DBackpropInput/Filter assumes "SAME" padding and over-counted the svhn32
    step ("valid" convs, and G's transposed convs, which are Conv2DBackpropInput) by
    0.70 GFLOP per image, which looked like 27% more arithmetic than the PyTorch peer.
    """
    from tensorflow.python.framework import ops as tf_ops  # pylint: disable=import-outside-toplevel

    graph = concrete_function.graph
    pending = [t.op for t in concrete_function.outputs] + list(graph.control_outputs)
    seen, total = set(), 0
    while pending:
        op = pending.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        pending.extend(t.op for t in op.inputs)
        pending.extend(op.control_inputs)
        if op.type in _CONV_GRADIENTS:
            flops = _conv_gradient_flops(op)
        else:
            try:
                flops = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            except ValueError:  # shape unknown: only happens for ops off the hot path
                flops = None
        total += int(flops or 0)
    return total


_CONV_GRADIENTS = ("Conv2DBackpropInput", "Conv2DBackpropFilter")


def _conv_gradient_flops(op) -> int:
    """2 multiply-adds' FLOPs per (output gradient element, kernel tap, input channel)."""
    gradient = op.inputs[2].shape                      # out_backprop [N, Ho, Wo, Cout]
    kernel = (op.inputs[1] if op.type == "Conv2DBackpropInput" else op.outputs[0]).shape
    if not gradient.is_fully_defined() or not kernel.is_fully_defined():
        return 0
    return 2 * gradient.num_elements() * kernel[0] * kernel[1] * kernel[2]


def matmul_gflops(size: int = 2048, calls: int = 10, jit_compile: bool = True,
                  dtype: str = "float32") -> float:
    """Measured matmul rate of this machine (GFLOP/s) at `dtype`, same threads."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    a = tf.cast(tf.random.stateless_normal([size, size], [0, 1]), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], [0, 2]), dtype)
    matmul = tf.function(tf.linalg.matmul, jit_compile=jit_compile)
    seconds = seconds_per_call(lambda: matmul(a, b).numpy(), calls, warmup=2)
    return 2.0 * size ** 3 / seconds / 1e9


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def print_table(rows: Dict[str, str]) -> None:
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def _built_model(tuples: str, network, batch: int, d_forward: str, policy: str):
    from gali_tf.model import GALIModel, ModelConfig  # pylint: disable=import-outside-toplevel
    model = GALIModel(network, ModelConfig(tuples=tuples, mixed_precision=policy,
                                           d_forward=d_forward),
                      batch, total_steps=10_000, steps_per_epoch=100)
    model.build()
    return model


def _batches(network, batch: int):
    """The benchmark's one synthetic batch, repeated."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    x = tf.random.stateless_uniform([batch, *network.example_shape], [0, 0], -1.0, 1.0)
    return tf.data.Dataset.from_tensors(x).repeat()


def _time_afresh(tuples: str, network, batch: int, d_forward: str, timed) -> Dict[str, float]:
    """The start-up measurement in a process of its own, as the trainer makes it on a
    CPU (gali_tf.execution.in_child_process)."""
    from gali_tf import execution  # pylint: disable=import-outside-toplevel
    models = {p: _built_model(tuples, network, batch, d_forward, p)
              for p in dict.fromkeys(c.mixed_precision for c in timed)}
    return execution.seconds_per_step(models, _batches(network, batch), list(timed))


def train_step(tuples: str, network, batch: int, jit_compile=None,
               mixed_precision: str = "auto", d_forward: str = "fresh"):
    """(model, x, step, choice) for timing GALIModel.train_step on a fixed batch.

    `step()` runs one train step and waits for it. The batch is synthetic so that only
    the step is timed (input pipelines are timed by benchmarks/input_pipeline.py).
    `jit_compile=None` and `mixed_precision="auto"` decide as the trainer does
    (gali_tf.execution: the candidates timed, the fastest kept), so a default benchmark
    row is what `trainers.main` users get; `choice` says what was chosen.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from gali_tf import execution  # pylint: disable=import-outside-toplevel

    built = {}

    def build_in(policy):
        built[policy] = _built_model(tuples, network, batch, d_forward, policy)
        return built[policy]

    def time_in_this_process(timed):
        return execution.measure(
            {p: build_in(p) for p in dict.fromkeys(c.mixed_precision for c in timed)},
            _batches(network, batch), timed)
    # As the trainer does: the run's model first, in float32 until measured.
    build_in(execution.initial_precision(mixed_precision, None))
    choice = execution.choose(
        jit_compile, mixed_precision, 1, batch,
        functools.partial(execution.in_child_process, _time_afresh, tuples, network, batch,
                          d_forward)
        if execution.measures_in_a_process_of_its_own() else time_in_this_process)
    if choice.mixed_precision not in built:
        build_in(choice.mixed_precision)
    x = next(iter(_batches(network, batch)))
    print(f"execution (as the trainer measures it): {choice.summary()}", flush=True)
    model = built[choice.mixed_precision]
    compiled = tf.function(model.train_step, jit_compile=choice.jit_compile)
    return model, x, lambda: float(compiled(x)["d_loss"]), choice  # float(): waits
