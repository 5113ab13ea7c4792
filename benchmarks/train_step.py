r"""Train-step throughput: images/s, ms/step, peak RSS and achieved vs matmul GFLOP/s.

    python benchmarks/train_step.py --model=gali4 --arch=svhn32 --batch=100 --steps=5
    python benchmarks/train_step.py --steps=5 --vs_torch          # against the PyTorch peer
    python benchmarks/train_step.py --steps=5 --compare=gali8     # GALI-8 / GALI-4 step time
    python benchmarks/train_step.py --steps=3 --breakdown         # D step vs E/G side

The step is the model's own `train_step` (one D step, then the E/G step with a fresh
D forward pass, or with the D step's under --d_forward=shared) in one tf.function,
XLA-compiled or not and in float32 or mixed_bfloat16 as the trainer would choose
(--jit_compile=auto --mixed_precision=auto), on a fixed
batch of uniform images in [-1, 1]: the input pipeline is timed apart
(benchmarks/input_pipeline.py). Steady state: --warmup untimed steps (tracing and XLA
compilation), then --steps timed ones, repeated --rounds times. With --vs_torch the
PyTorch peer (../shared/peers/torch_gali4.py, same networks, batch and thread count)
runs as a subprocess between our rounds, so both see the same machine load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

try:
    from benchmarks import common
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import common

flags.DEFINE_string("model", "gali4", "Tuple set (gali_tf.tuples), e.g. ali, gali4, gali8.")
flags.DEFINE_enum("arch", "svhn32", ["svhn32", "celeba64", "small", "mlp"], "Networks.")
flags.DEFINE_integer("batch", 100, "Global batch size.")
flags.DEFINE_integer("steps", 5, "Timed steps per round.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, XLA compilation).")
flags.DEFINE_integer("rounds", 2, "Timed rounds (alternating with the peer under --vs_torch).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "XLA-compile the step; auto: the faster of the two, measured as the trainer "
                  "measures it at start-up (its default).")
flags.DEFINE_enum("d_forward", "fresh", ["fresh", "shared"],
                  "E/G gradient through a fresh D forward, or the D step's (the peer's).")
flags.DEFINE_enum("mixed_precision", "auto",
                  ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy of the networks; auto: measured as the trainer measures "
                  "it at start-up (its default). The peer runs at the precision chosen.")
flags.DEFINE_integer("threads", 0, "Compute threads for both frameworks (0 = all cores).")
flags.DEFINE_integer("latent_dim", 0, "Size of z (0 = the papers': 256 svhn32, 512 celeba64).")
flags.DEFINE_integer("width", 32, "Width of --arch=small.")
flags.DEFINE_bool("vs_torch", False, "Also time the PyTorch GALI-4 peer, alternately with ours.")
flags.DEFINE_string("torch_script", os.path.join(common.REPO, "..", "shared", "peers",
                                                 "torch_gali4.py"), "The PyTorch peer.")
flags.DEFINE_string("compare", "", "A second tuple set timed alternately (e.g. gali8): "
                    "prints its step time / ours.")
flags.DEFINE_bool("breakdown", False, "Also time the D step and the chain forward alone.")
flags.DEFINE_bool("flops", True, "Count the step's FLOPs and measure the matmul rate.")

FLAGS = flags.FLAGS
_SHAPES = {"svhn32": (32, 32, 3), "celeba64": (64, 64, 3), "small": (32, 32, 3), "mlp": (2,)}
_LATENTS = {"svhn32": 256, "celeba64": 512, "small": 64, "mlp": 2}


class Bench:
    """One model's jitted train step on a fixed batch."""

    def __init__(self, tuples: str):
        from gali_tf import networks

        network = networks.NetworkConfig(
            arch=FLAGS.arch, example_shape=_SHAPES[FLAGS.arch], width=FLAGS.width,
            latent_dim=FLAGS.latent_dim or _LATENTS[FLAGS.arch])
        requested = {"auto": None, "true": True, "false": False}[FLAGS.jit_compile]
        self.model, self.x, self.run, choice = common.train_step(
            tuples, network, FLAGS.batch, requested, FLAGS.mixed_precision, FLAGS.d_forward)
        self.jit_compile, self.precision = choice.jit_compile, choice.mixed_precision
        self.name = tuples

    def seconds_per_step(self, steps: int, warmup: int = 0) -> float:
        return common.seconds_per_call(self.run, steps, warmup)

    def flops(self) -> int:
        import tensorflow as tf
        traced = tf.function(self.model.train_step).get_concrete_function(
            tf.TensorSpec(self.x.shape, self.x.dtype))
        return common.graph_flops(traced)

    def breakdown(self, steps: int) -> dict:
        """ms of the chain forward alone and of the D step alone (XLA like the step)."""
        import tensorflow as tf
        from gali_tf.model import StepNoise
        model, jit = self.model, self.jit_compile

        def chain(x):
            return model.chain_values(x, StepNoise(0, model.step))

        def d_step(x):
            noise = StepNoise(0, model.step)
            values = model.chain_values(x, noise)
            return model._discriminator_step(values, noise, model._noise_std())[0]  # pylint: disable=protected-access

        out = {}
        for name, fn in (("chain forward (3 E + 3 G)", chain), ("chain forward + D step", d_step)):
            f = tf.function(fn, jit_compile=jit)
            out[name] = 1000 * common.seconds_per_call(
                lambda: tf.nest.map_structure(lambda t: t.numpy(), f(self.x)), steps, 1)
        return out


# Runs the peer unchanged and then prints its peak RSS. VmHWM is the high-water mark of
# the process's own address space; getrusage(RUSAGE_CHILDREN) in the parent would
# report the parent's size, which the child had at fork, before exec.
_TORCH_WRAPPER = """
import runpy, sys
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        print(*[l.strip() for l in status if l.startswith("VmHWM")])
"""


def run_torch(threads: int, bf16: bool) -> tuple:
    """(images/s, peak RSS in MiB or None) of one run of the PyTorch peer."""
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_WRAPPER, FLAGS.torch_script, "--batch", str(FLAGS.batch),
         "--steps", str(FLAGS.steps), "--warmup", str(FLAGS.warmup), "--threads", str(threads),
         # Matched precision: the peer's autocast against our mixed_bfloat16.
         *(["--bf16"] if bf16 else [])],
        capture_output=True, text=True, timeout=3600,
        env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if done.returncode != 0:
        raise SystemExit(f"error: --torch_script={FLAGS.torch_script} failed: "
                         f"{done.stderr.strip()[-500:]}")
    images_per_s = rss = None
    for line in done.stdout.splitlines():
        if line.startswith("images_per_s="):
            images_per_s = float(line.split("=", 1)[1])
        elif line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024.0  # kB
    if images_per_s is None:
        raise SystemExit(f"error: --torch_script={FLAGS.torch_script} printed no images_per_s=")
    return images_per_s, rss


def main(argv):
    del argv
    threads = FLAGS.threads or os.cpu_count()
    if FLAGS.vs_torch:
        try:
            import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
            raise SystemExit("error: --vs_torch needs PyTorch (pip install torch)") from None
        if not os.path.exists(FLAGS.torch_script):
            raise SystemExit(f"error: --torch_script={FLAGS.torch_script}: no such file")
        if FLAGS.model != "gali4" or FLAGS.arch != "svhn32":
            raise SystemExit("error: --vs_torch compares --model=gali4 --arch=svhn32 (the peer's)")
    common.set_threads(threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{started}  {common.load_average()}  threads={threads}", flush=True)

    ours = Bench(FLAGS.model)
    other = Bench(FLAGS.compare) if FLAGS.compare else None
    # The start-up measurement compiles every candidate (XLA's compilations are most of
    # the peak); training then runs in what is left resident, so the step's own peak
    # is counted from here.
    rss_start_up = common.peak_rss_mib()
    step_peak_counted = common.reset_peak_rss()
    for bench in (ours, other) if other is not None else (ours,):
        for _ in range(FLAGS.warmup):
            bench.run()

    ours_s, other_s, torch_ips, torch_rss = [], [], [], []
    for round_index in range(FLAGS.rounds):
        if FLAGS.vs_torch:
            images_per_s, rss = run_torch(threads, ours.precision == "mixed_bfloat16")
            torch_ips.append(images_per_s)
            torch_rss.append(rss or 0.0)
            print(f"round {round_index + 1}: torch {torch_ips[-1]:.2f} images/s", flush=True)
        ours_s.append(ours.seconds_per_step(FLAGS.steps))
        print(f"round {round_index + 1}: ours  {FLAGS.batch / ours_s[-1]:.2f} images/s "
              f"({1000 * ours_s[-1]:.1f} ms/step)", flush=True)
        if other is not None:
            other_s.append(other.seconds_per_step(FLAGS.steps))
            print(f"round {round_index + 1}: {other.name} {1000 * other_s[-1]:.1f} ms/step",
                  flush=True)

    seconds = sum(ours_s) / len(ours_s)
    rss_step = common.peak_rss_since_reset_mib() if step_peak_counted else None
    rows = {
        "model": f"{FLAGS.model} --arch={FLAGS.arch} --batch={FLAGS.batch} "
                 f"jit_compile={ours.jit_compile} {ours.precision} "
                 f"d_forward={FLAGS.d_forward}",
        "steady state": f"{1000 * seconds:.1f} ms/step, {FLAGS.batch / seconds:.2f} images/s "
                        f"(mean of {FLAGS.rounds} rounds x {FLAGS.steps} steps "
                        f"after {FLAGS.warmup} warm-up)",
        "peak RSS": (f"{rss_step:.0f} MiB while it trains; {rss_start_up:.0f} MiB before "
                     "(start-up: the models and the execution measurement)"
                     if rss_step is not None else
                     f"{common.peak_rss_mib():.0f} MiB (this process, start-up included)"),
    }
    if FLAGS.flops:
        step_flops = ours.flops()
        # The rate to compare with is the matmul's at the step's compute precision.
        dtype = "bfloat16" if ours.precision == "mixed_bfloat16" else "float32"
        matmul = common.matmul_gflops(jit_compile=ours.jit_compile, dtype=dtype)
        achieved = step_flops / seconds / 1e9
        rows["step FLOPs"] = (f"{step_flops / 1e9:.1f} GFLOP, {step_flops / FLAGS.batch / 1e9:.2f}"
                              " per image (ops that run, TF's op statistics)")
        rows["achieved"] = (f"{achieved:.1f} GFLOP/s vs measured 2048^2 {dtype} matmul "
                            f"{matmul:.1f} GFLOP/s ({100 * achieved / matmul:.0f}%)")
    if other is not None:
        other_mean = sum(other_s) / len(other_s)
        rows[f"{other.name} / {FLAGS.model}"] = (
            f"{other_mean / seconds:.3f}x step time ({1000 * other_mean:.1f} vs "
            f"{1000 * seconds:.1f} ms/step)")
    if FLAGS.vs_torch:
        torch_mean = sum(torch_ips) / len(torch_ips)
        peer = "--bf16" if ours.precision == "mixed_bfloat16" else "float32"
        rows[f"torch peer ({peer})"] = (f"{torch_mean:.2f} images/s (peak RSS "
                                        f"{max(torch_rss):.0f} MiB)")
        rows["ours / torch"] = f"{FLAGS.batch / seconds / torch_mean:.2f}x images/s"
    if FLAGS.breakdown:
        parts = ours.breakdown(FLAGS.steps)
        parts["whole step (+ E/G step)"] = 1000 * seconds
        for name, ms in parts.items():
            rows[name] = f"{ms:.1f} ms"
    rows["finished"] = f"{time.strftime('%H:%M:%S')}, {common.load_average()}"
    common.print_table(rows)


if __name__ == "__main__":
    app.run(main)
