r"""Trains and evaluates several variants with one budget; writes one comparison table.

    python -m trainers.experiment --config=configs/experiments/digits_table.flags
    python -m trainers.experiment --config=configs/experiments/toy_table.flags --seeds=5

--config is a flagfile of this tool's flags (later flags override it). For every
variant (NAME:FLAGFILE of trainers.main) and seed 0..--seeds-1 (from --first_seed: a
process, or a machine, per seed) it runs
`trainers.main --flagfile=FLAGFILE --seed=S --model_dir=OUT/NAME/seed_S` and then
`trainers.evaluate` on that run, each in its own process, logging to train.log and
eval.log next to the run. --classifier=digits first trains the project's digits
classifier into OUT/classifier and uses it as the feature MSE and FID network.

--eval_points=N evaluates every run at N equally spaced steps of --steps (the trainer
keeps a checkpoint at each), so the result is a learning curve, not one point.

Every finished run leaves a small metrics file, RESULTS/metrics/NAME_seed_S.json (the
variant, seed, exact commands with OUT for --out, the code's commit, the machine, wall
times and the metrics at every evaluated step), and the table (RESULTS/table.md,
table.json: the final step, mean ± std over seeds) and the curves (RESULTS/curves.png:
each metric against steps, mean and min-max over seeds, a line per variant) are made
from those files alone. RESULTS (--results, default OUT) can be a folder in the
repository: commit the metrics files, never the runs, and a table grows across
sessions and machines; --report_only remakes it without training. Re-running the
command resumes: finished runs and evaluations are reused. Experiments that share
variants (GALI-PT against the table's GALI-4 runs) share one RESULTS and each writes a
table of its own name (--table).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import List, Optional, Tuple

from absl import flags

from gali_tf import classifier, files
from gali_tf.errors import InputError

from gali_tf.evaluation import suite, tables
from trainers import cli

FLAGS = flags.FLAGS
DEFAULT_TABLE = "table"
# What recorded commands say for --out (`_with_out`), and what --train_flags and
# --eval_flags values may start with to name a file in it.
OUT = "OUT"


@cli.define_once
def define_flags():
    flags.DEFINE_string("config", None, "Flagfile of this tool's flags (an experiment).")
    flags.DEFINE_list("variants", [], "NAME:FLAGFILE pairs, a trainers.main flagfile each.")
    flags.DEFINE_integer("seeds", 3, "Seeds 0..seeds-1 per variant.")
    flags.DEFINE_integer("first_seed", 0, "Train and evaluate only seeds first_seed.."
                         "seeds-1 (the table still reports 0..seeds-1 from the metrics "
                         "files), so that processes or machines can take a seed each.")
    flags.DEFINE_integer("steps", 0, "Generator-encoder steps of every run (0 = the flagfile's).")
    flags.DEFINE_list("train_flags", [], "More trainers.main flags for every run "
                      "(e.g. --verbose=0), comma-separated; a value OUT/... is in --out "
                      "(e.g. --feature_model=OUT/classifier, the --classifier's export).")
    flags.DEFINE_list("metrics", [], f"trainers.evaluate --metrics (some of "
                      f"{', '.join(suite.METRICS)}; empty = all that apply).")
    flags.DEFINE_list("eval_flags", [], "More trainers.evaluate flags, comma-separated "
                      "(e.g. --svm_draws=10); a value OUT/... is in --out.")
    flags.DEFINE_enum("classifier", "", ["", *classifier.DATASETS],
                      "Train the project classifier on this dataset once and use it as the "
                      "feature MSE and FID network.")
    flags.DEFINE_list("classifier_flags", [], "More trainers.classifier flags.")
    flags.DEFINE_string("out", None, "Output directory (runs, logs, table).")
    flags.DEFINE_string("title", "", "The table's title.")
    flags.DEFINE_integer("eval_points", 1, "Evaluate each run at this many equally spaced "
                         "steps of --steps (1 = the final step only).")
    flags.DEFINE_string("results", None, "Folder of the metrics files, table and curves "
                        "(default: --out).")
    flags.DEFINE_string("table", DEFAULT_TABLE, "Name of the table's files in --results: "
                        "NAME.md, NAME.json and the curves (curves.png for the default "
                        "name, NAME_curves.png otherwise), so that several tables can be "
                        "made from one folder of metrics files.")
    flags.DEFINE_bool("report_only", False, "Make the table and curves from the metrics "
                      "files in --results without training or evaluating.")


class ExperimentError(InputError):
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


# The child's progress lines relayed to the experiment's screen: the trainer's
# `step 450/3000 [...] ... ETA 4:03 ...` (a line per 5% in a log) and the evaluator's
# `[2/4] svm: 95 s`.
_PROGRESS_LINE = re.compile(r"^(?:step \d+/\d+ |\[\d+/\d+\] )")
_RELAY_SECONDS = 5.0


def _relay_progress(log, what: str) -> None:
    """Prints the progress lines the child added to its log since the last call (a
    line it is still writing waits for the next)."""
    while True:
        position = log.tell()
        line = log.readline()
        if not line.endswith("\n"):
            log.seek(position)
            return
        if _PROGRESS_LINE.match(line):
            print(f"  {what}: {line.rstrip()}", flush=True)


def _run(command: List[str], log_path: str, what: str) -> float:
    """Runs a module in a subprocess, output to log_path, its progress lines relayed;
    returns its wall time."""
    started = time.time()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            with open(log_path) as reader:
                while True:
                    try:
                        done.wait(timeout=_RELAY_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        _relay_progress(reader, what)
                _relay_progress(reader, what)
        except BaseException:
            done.kill()   # as subprocess.run does: no child outlives an interrupted tool
            done.wait()
            raise
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


def _add_seconds(model_dir: str, train: float, evaluate: float, trained_by: str = "",
                 evaluated_by: str = "") -> dict:
    """Accumulates wall seconds of work actually done on a run (resumed parts too), and
    the commits of the code that last trained and evaluated it (a report reused by a
    later invocation keeps the commit that wrote it)."""
    path = os.path.join(model_dir, TIMES_FILE)
    times = {"train": 0.0, "eval": 0.0}
    if os.path.isfile(path):
        with open(path) as f:
            times.update(json.load(f))
    times["train"] += train
    times["eval"] += evaluate
    if trained_by:
        times["train_commit"] = trained_by
    if evaluated_by:
        times["eval_commit"] = evaluated_by
    with open(path, "w") as f:
        json.dump(times, f)
    return times


def eval_steps(total_steps: int, points: int) -> List[int]:
    """The steps a run is evaluated at: `points` equally spaced, the last = total_steps."""
    if points < 1:
        raise ExperimentError(f"--eval_points={points}: expected at least 1")
    if points > 1 and not total_steps:
        raise ExperimentError("--eval_points above 1 needs --steps (the budget to divide)")
    if points > 1 and total_steps % points:
        raise ExperimentError(f"--eval_points={points}: expected a divisor of "
                              f"--steps={total_steps}")
    return [total_steps * k // points for k in range(1, points + 1)] if points > 1 else []


def _train_command(name: str, flagfile: str, seed: int, model_dir: str) -> List[str]:
    points = eval_steps(FLAGS.steps, FLAGS.eval_points)
    keep = ([f"--checkpoint_every={points[0]}", f"--keep_checkpoints={len(points) + 1}"]
            if points else [])
    return _python_module("trainers.main", f"--flagfile={flagfile}", f"--seed={seed}",
                          f"--model_dir={model_dir}",
                          *(in_out(f, FLAGS.out) for f in FLAGS.train_flags), *keep,
                          *([f"--steps={FLAGS.steps}"] if FLAGS.steps else []))


def point_metrics(eval_args: List[str], final: bool) -> Optional[List[str]]:
    """The evaluate arguments of one point of a run's curve, None when it has nothing to
    compute: pictures belong to the final point, a curve needs the numbers only. Without
    --metrics (all that apply) the pictures stay: evaluate alone knows what applies, and
    they take a second."""
    if final:
        return list(eval_args)
    args = []
    for arg in eval_args:
        if arg.startswith("--metrics="):
            kept = [m for m in arg.split("=", 1)[1].split(",") if m and m != "pictures"]
            if not kept:
                return None   # "--metrics=" would mean all that apply: the costly ones
            arg = "--metrics=" + ",".join(kept)
        args.append(arg)
    return args


def _evaluate_at(name: str, seed: int, model_dir: str, step: int, eval_args: List[str],
                 final: bool) -> Tuple[Optional[dict], float, List[str]]:
    """The report of one checkpoint (reused when it exists): (report, seconds, command);
    the report is None for a curve point that is skipped (printed with the reason)."""
    from gali_tf import run_dir  # pylint: disable=import-outside-toplevel
    checkpoint = os.path.join(model_dir, run_dir.CHECKPOINT_DIR, f"ckpt-{step}")
    args = point_metrics(eval_args, final)
    if args is None:
        return None, 0.0, []
    command = _python_module("trainers.evaluate", f"--model_dir={model_dir}",
                             *([] if final else [f"--checkpoint={checkpoint}"]), *args)
    report_path = os.path.join(model_dir, suite.EVAL_DIR, f"{step}.json")
    seconds = 0.0
    if os.path.isfile(report_path) and not _report_has_metrics(report_path, args):
        # e.g. a pictures-only trainers.evaluate of the same checkpoint by hand: reusing
        # it would leave the point without its numbers.
        print(f"note: {name} seed {seed}: {report_path} lacks metrics this experiment asks "
              "for; evaluating again", flush=True)
        os.remove(report_path)
    if not os.path.isfile(report_path):
        problem = None if final else run_dir.checkpoint_problem(checkpoint)
        if problem:
            # e.g. a run trained before --eval_points kept fewer checkpoints: its curve
            # lacks this point, the table (the final point) does not.
            print(f"note: {name} seed {seed}: no point at step {step} on its curve: "
                  f"checkpoint ckpt-{step} cannot be used: {problem}",
                  flush=True)
            return None, 0.0, []
        seconds = _run(command, os.path.join(model_dir, f"eval_{step}.log"),
                       f"{name} seed {seed} evaluation at step {step}")
    with open(report_path) as f:
        return json.load(f), seconds, command


def _report_has_metrics(report_path: str, eval_args: List[str]) -> bool:
    """Whether an evaluation report holds every metric the arguments' --metrics name (a
    named metric that does not apply is an error in evaluate, so each one asked and
    run is in the report's timings; without --metrics any report will do)."""
    asked = [m for arg in eval_args if arg.startswith("--metrics=")
             for m in arg.split("=", 1)[1].split(",") if m]
    try:
        with open(report_path) as f:
            done = json.load(f).get("seconds_per_metric", {})
    except (OSError, ValueError, AttributeError):
        return False
    return all(m in done for m in asked)


def kept_results(name: str, seed: int, model_dir: str) -> Optional[dict]:
    """The metrics file of a run finished at --steps whose run directory is not here (an
    earlier session's, on another machine), or None. The table grows across sessions
    from the committed metrics files: such a run is kept, not trained again."""
    path = tables.run_results_path(_results_dir(), name, seed)
    if not FLAGS.steps or _latest_step(model_dir) >= 0 or not os.path.isfile(path):
        return None
    results = tables.read_run_results_file(path)
    if results["points"][-1]["step"] != FLAGS.steps:
        return None
    print(f"{name} seed {seed}: kept from {path} (final step {FLAGS.steps}; its run "
          f"directory {model_dir} is not here)", flush=True)
    return results


def train_and_evaluate(name: str, flagfile: str, seed: int, eval_args: List[str]) -> dict:
    """One run and its evaluations (reused when already done); returns its metrics file's
    contents (also written to RESULTS/metrics/)."""
    model_dir = os.path.join(FLAGS.out, name, f"seed_{seed}")
    kept = kept_results(name, seed, model_dir)
    if kept is not None:
        return kept
    os.makedirs(model_dir, exist_ok=True)
    train = _train_command(name, flagfile, seed, model_dir)
    start_step = _latest_step(model_dir)
    train_seconds = 0.0
    # With --steps the finished state is known: a finished run is not even re-checked.
    if not (FLAGS.steps and start_step == FLAGS.steps):
        train_seconds = _run(train, os.path.join(model_dir, "train.log"),
                             f"{name} seed {seed} training")
    step = _latest_step(model_dir)
    points = [s for s in eval_steps(FLAGS.steps, FLAGS.eval_points) if s < step] + [step]
    reports, eval_seconds, eval_command = [], 0.0, []
    for point in points:
        report, seconds, command = _evaluate_at(name, seed, model_dir, point, eval_args,
                                                final=point == step)
        if report is not None:
            reports.append(report)
            eval_seconds += seconds
            eval_command = command
    # A run that was already finished cost nothing now (the trainer only checked it).
    trained = step != start_step
    times = _add_seconds(model_dir, train_seconds if trained else 0.0, eval_seconds,
                         trained_by=_commit() if trained else "",
                         evaluated_by=_commit() if eval_seconds else "")
    print(f"{name} seed {seed}: step {step}, train {train_seconds:.0f} s, "
          f"eval {eval_seconds:.0f} s ({len(reports)} points)", flush=True)
    results = tables.run_results(
        name, seed, reports, experiment=_config_path(),
        train_command=_portable(train), eval_command=_portable(eval_command),
        commit=times.get("eval_commit", _commit()), machine=_machine(), seconds=times)
    results["notes"] = sorted({_with_out(note) for note in results["notes"]})
    tables.write_run_results(_results_dir(), results)
    return results


def _config_path() -> str:
    configs = [a.split("=", 1)[1] for a in _ARGV[1:] if a.startswith("--config=")]
    return configs[-1] if configs else ""


def _with_out(text: str) -> str:
    """`text` with OUT for the experiment's --out (the runs' place on one machine)."""
    return text.replace(FLAGS.out.rstrip("/"), OUT)


def in_out(flag: str, out: str) -> str:
    """A --train_flags/--eval_flags item with a value OUT or OUT/... put in `out`: the
    experiment's own files (its classifier) named the way its records name them."""
    name, equals, value = flag.partition("=")
    if equals and (value == OUT or value.startswith(OUT + "/")):
        return name + equals + out.rstrip("/") + value[len(OUT):]
    return flag


def _portable(command: List[str]) -> str:
    """A command as a user types it, with OUT for the experiment's --out."""
    return _with_out(shlex.join("python" if w == sys.executable else w for w in command))


def _commit() -> str:
    """The code's git commit (+ "-dirty" for uncommitted changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gali_tf", "trainers",
                                "configs"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        cpu = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                   if line.startswith("model name"))
        cpu += " with AVX-512" if "avx512f" in text else " without AVX-512"
    except (OSError, StopIteration):
        pass
    gpu = "GPU" if _has_gpu() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}"


def _results_dir() -> str:
    return FLAGS.results or FLAGS.out


_ARGV: List[str] = []   # the command line as typed (run() rewrites --config)


def command_line() -> str:
    return "python -m trainers.experiment " + shlex.join((_ARGV or sys.argv)[1:])


@cli.user_errors
def main(argv):
    del argv  # trainers.cli.parse_flags refuses positional arguments
    started = time.time()
    if not FLAGS.out and not (FLAGS.report_only and FLAGS.results):
        raise ExperimentError("--out is required (the experiment's directory)")
    seeds_to_run = seeds_this_invocation(FLAGS.first_seed, FLAGS.seeds)
    variants = parse_variants(FLAGS.variants)
    eval_steps(FLAGS.steps, FLAGS.eval_points)
    table_files(_results_dir(), FLAGS.table)   # a bad --table fails now, not after the runs
    if not FLAGS.report_only:
        eval_args = ([f"--metrics={','.join(FLAGS.metrics)}"] if FLAGS.metrics else [])
        eval_args += [in_out(f, FLAGS.out) for f in FLAGS.eval_flags]
        if FLAGS.classifier:
            eval_args += ensure_classifier(FLAGS.out)
        for name, flagfile in variants:
            for seed in seeds_to_run:
                train_and_evaluate(name, flagfile, seed, eval_args)
    runs, left_out = tables.select_runs(
        tables.read_run_results(_results_dir(), [name for name, _ in variants]),
        seeds=range(FLAGS.seeds), final_step=FLAGS.steps)
    if not runs:
        budget = f" at --steps={FLAGS.steps}" if FLAGS.steps else ""
        raise tables.ResultsError(f"{_results_dir()}: no run of seeds 0-{FLAGS.seeds - 1}"
                                  f"{budget} (left out: {'; '.join(left_out)})")
    minutes = (time.time() - started) / 60
    text = tables.experiment_report(runs, title=FLAGS.title or os.path.basename(
        _results_dir().rstrip("/")), command=command_line(), invocation_minutes=minutes,
        left_out=left_out)
    table, curves = table_files(_results_dir(), FLAGS.table)
    files.write_text_atomically(table + ".md", text)
    files.write_text_atomically(table + ".json", json.dumps(
        {"command": command_line(), "table": tables.final_table_json(runs)}, indent=2) + "\n")
    figure = tables.plot_curves(runs, curves)
    print(text + (f"\ncurves: {figure}" if figure else ""))


def seeds_this_invocation(first_seed: int, seeds: int) -> range:
    """The seeds this process trains: first_seed..seeds-1 of the table's 0..seeds-1."""
    if seeds < 1:
        raise ExperimentError(f"--seeds={seeds}: expected at least 1")
    if not 0 <= first_seed < seeds:
        raise ExperimentError(f"--first_seed={first_seed}: expected 0..{seeds - 1} "
                              f"(--seeds={seeds} makes the table of seeds 0..{seeds - 1})")
    return range(first_seed, seeds)


def table_files(results: str, name: str) -> Tuple[str, str]:
    """(the table's path without .md/.json, the curves' PNG) of --table=name."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ExperimentError(f"--table={name!r}: expected a file name (letters, digits, "
                              "_ . -)")
    curves = "curves.png" if name == DEFAULT_TABLE else f"{name}_curves.png"
    return os.path.join(results, name), os.path.join(results, curves)


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
        cli.fail(f"{configs[-1]}: no such experiment file")
    cli.run(main)


if __name__ == "__main__":
    run()
