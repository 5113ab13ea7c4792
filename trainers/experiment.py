r"""Trains and evaluates several variants with one budget; writes one comparison table.

    python -m trainers.experiment --config=configs/experiments/digits_table.flags
    python -m trainers.experiment --config=configs/experiments/toy_table.flags --seeds=5

--config is a flagfile of this tool's flags (later flags override it). For every
variant (NAME:FLAGFILE of trainers.main) and seed 0..--seeds-1 it runs
`trainers.main --flagfile=FLAGFILE --seed=S --model_dir=OUT/NAME/seed_S` and then
`trainers.evaluate` on that run, each in its own process, logging to train.log and
eval.log next to the run. --classifier=digits first trains the project's digits
classifier into OUT/classifier and uses it as the feature MSE and FID network.

OUT/table.md and OUT/table.json hold variant x metric, mean ± std over seeds, with the
command and the time it took. Re-running the command resumes: finished runs and
evaluations are reused.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import List, Tuple

from absl import flags

from gali_tf.evaluation import suite, tables
from trainers import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("config", None, "Flagfile of this tool's flags (an experiment).")
    flags.DEFINE_list("variants", [], "NAME:FLAGFILE pairs, a trainers.main flagfile each.")
    flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 per variant.")
    flags.DEFINE_integer("steps", 0, "Generator-encoder steps of every run (0 = the flagfile's).")
    flags.DEFINE_list("train_flags", [], "More trainers.main flags for every run "
                      "(e.g. --verbose=0), comma-separated.")
    flags.DEFINE_list("metrics", [], f"trainers.evaluate --metrics (some of "
                      f"{', '.join(suite.METRICS)}; empty = all that apply).")
    flags.DEFINE_list("eval_flags", [], "More trainers.evaluate flags, comma-separated "
                      "(e.g. --svm_draws=10).")
    flags.DEFINE_enum("classifier", "", ["", "digits", "fashion_mnist", "svhn_cropped", "celeb_a"],
                      "Train the project classifier on this dataset once and use it as the "
                      "feature MSE and FID network.")
    flags.DEFINE_list("classifier_flags", [], "More trainers.classifier flags.")
    flags.DEFINE_string("out", None, "Output directory (runs, logs, table).")
    flags.DEFINE_string("title", "", "The table's title.")


class ExperimentError(ValueError):
    """A bad flag or a failed run (one line)."""


def parse_variants(items: List[str]) -> List[Tuple[str, str]]:
    """[(name, flagfile)] from NAME:FLAGFILE items; names unique, files present."""
    variants = []
    for item in items:
        name, sep, path = item.partition(":")
        if not sep or not name.strip() or not path.strip():
            raise ExperimentError(f"--variants={item}: expected NAME:FLAGFILE")
        if not os.path.isfile(path.strip()):
            raise ExperimentError(f"--variants={item}: no flagfile {path.strip()}")
        variants.append((name.strip(), path.strip()))
    if not variants:
        raise ExperimentError("--variants: expected at least one NAME:FLAGFILE")
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise ExperimentError(f"--variants: names repeat ({', '.join(names)})")
    return variants


def _run(command: List[str], log_path: str, what: str) -> float:
    """Runs a module in a subprocess, output to log_path; returns its wall time."""
    started = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        with open(log_path) as log:
            errors = [line.strip() for line in log if line.startswith("error:")]
        raise ExperimentError(f"{what} failed (exit {done.returncode}): "
                              f"{errors[-1] if errors else 'see ' + log_path}")
    return time.time() - started


def _latest_step(model_dir: str) -> int:
    from gali_tf import run_dir
    path = run_dir.latest_complete_checkpoint(os.path.join(model_dir, run_dir.CHECKPOINT_DIR))
    return run_dir.checkpoint_step(path) if path else -1


def _python_module(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]


def ensure_classifier(out: str) -> List[str]:
    """Trains the project classifier once; returns the evaluate flags that use it."""
    export_dir = os.path.join(out, "classifier")
    if not os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        os.makedirs(out, exist_ok=True)
        seconds = _run(_python_module("trainers.classifier", f"--dataset={FLAGS.classifier}",
                                      f"--export_dir={export_dir}", *FLAGS.classifier_flags),
                       os.path.join(out, "classifier.log"), "trainers.classifier")
        print(f"classifier: {seconds:.0f} s -> {export_dir}", flush=True)
    return [f"--feature_model={export_dir}", "--feature_output=features"]


TIMES_FILE = "times.json"


def _add_seconds(model_dir: str, **seconds: float) -> dict:
    """Accumulates wall seconds of work actually done on a run (resumed parts too)."""
    path = os.path.join(model_dir, TIMES_FILE)
    times = {"train": 0.0, "eval": 0.0}
    if os.path.isfile(path):
        with open(path) as f:
            times.update(json.load(f))
    for key, value in seconds.items():
        times[key] += value
    with open(path, "w") as f:
        json.dump(times, f)
    return times


def train_and_evaluate(name: str, flagfile: str, seed: int, eval_args: List[str]):
    """One run and its evaluation (both reused when already done): (report, times), times
    the run's accumulated train and eval wall seconds."""
    model_dir = os.path.join(FLAGS.out, name, f"seed_{seed}")
    os.makedirs(model_dir, exist_ok=True)
    train = _python_module("trainers.main", f"--flagfile={flagfile}", f"--seed={seed}",
                           f"--model_dir={model_dir}", *FLAGS.train_flags,
                           *([f"--steps={FLAGS.steps}"] if FLAGS.steps else []))
    start_step = _latest_step(model_dir)
    train_seconds = 0.0
    # With --steps the finished state is known: a finished run is not even re-checked.
    if not (FLAGS.steps and start_step == FLAGS.steps):
        train_seconds = _run(train, os.path.join(model_dir, "train.log"),
                             f"{name} seed {seed} training")
    step = _latest_step(model_dir)
    report_path = os.path.join(model_dir, suite.EVAL_DIR, f"{step}.json")
    eval_seconds = 0.0
    if not os.path.isfile(report_path):
        evaluate = _python_module("trainers.evaluate", f"--model_dir={model_dir}", *eval_args)
        eval_seconds = _run(evaluate, os.path.join(model_dir, "eval.log"),
                            f"{name} seed {seed} evaluation")
    # A run that was already finished cost nothing now (the trainer only checked it).
    times = _add_seconds(model_dir, train=train_seconds if step != start_step else 0.0,
                         eval=eval_seconds)
    with open(report_path) as f:
        report = json.load(f)
    print(f"{name} seed {seed}: step {step}, train {train_seconds:.0f} s, "
          f"eval {eval_seconds:.0f} s", flush=True)
    return report, times


_ARGV: List[str] = []   # the command line as typed (run() rewrites --config)


def command_line() -> str:
    return " ".join(["python -m trainers.experiment", *(_ARGV or sys.argv)[1:]])


def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    started = time.time()
    try:
        if not FLAGS.out:
            raise ExperimentError("--out is required (the experiment's directory)")
        if FLAGS.seeds < 1:
            raise ExperimentError(f"--seeds={FLAGS.seeds}: expected at least 1")
        variants = parse_variants(FLAGS.variants)
        eval_args = ([f"--metrics={','.join(FLAGS.metrics)}"] if FLAGS.metrics else [])
        eval_args += list(FLAGS.eval_flags)
        if FLAGS.classifier:
            eval_args += ensure_classifier(FLAGS.out)
        done = {name: [train_and_evaluate(name, flagfile, seed, eval_args)
                       for seed in range(FLAGS.seeds)]
                for name, flagfile in variants}
    except ExperimentError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    reports = {name: [report for report, _ in runs] for name, runs in done.items()}
    run_minutes = sum(t["train"] + t["eval"] for runs in done.values() for _, t in runs) / 60
    minutes = (time.time() - started) / 60
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU" if not _has_gpu() \
        else f"{os.cpu_count()} CPU cores + GPU"
    header = [f"## {FLAGS.title or os.path.basename(FLAGS.out.rstrip('/'))}", "",
              f"`{command_line()}`", "",
              f"{machine}; the runs' training and evaluation took {run_minutes:.0f} min of "
              f"wall time in all (this invocation: {minutes:.0f} min); mean ± std over "
              f"seeds 0..{FLAGS.seeds - 1}.", "", ""]
    table = "\n".join(header) + tables.comparison_table(reports)
    notes = sorted({note for rs in reports.values() for r in rs for note in r["notes"]})
    table += "".join(f"\nNote: {note}\n" for note in notes)
    with open(os.path.join(FLAGS.out, "table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(FLAGS.out, "table.json"), "w") as f:
        json.dump({"command": command_line(), "minutes": minutes, "run_minutes": run_minutes,
                   "machine": machine,
                   "table": tables.table_json(reports)}, f, indent=2)
    print(table)


def _has_gpu() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def run():
    """Console-script entry point (gali-experiment). --config=F is --flagfile=F put first,
    so flags given after it on the command line override the experiment's."""
    define_flags()
    argv = list(sys.argv)
    _ARGV[:] = argv
    configs = [a for a in argv[1:] if a.startswith("--config=")]
    rest = [a for a in argv[1:] if not a.startswith("--config=")]
    sys.argv = [argv[0], *[f"--flagfile={c.split('=', 1)[1]}" for c in configs], *rest]
    if configs and not os.path.isfile(configs[-1].split("=", 1)[1]):
        print(f"error: {configs[-1]}: no such experiment file", file=sys.stderr)
        sys.exit(2)
    cli.run(main)


if __name__ == "__main__":
    run()
