"""Comparison tables and learning curves: variant x metric over seeds, from eval reports.

Each cell is the mean and the (population) std over seeds of one metric's per-run
value; the within-run spread (e.g. over test batches or SVM draws) is in each run's
own report, not in the table.

A finished run is kept as a small *run results* file (`run_results`): its variant,
seed, commands, commit, machine, wall times and the metrics at every evaluated step.
Tables and curves are made from those files alone, so a table can grow across
sessions and machines while the runs themselves are thrown away.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from gali_tf import files
from gali_tf.errors import InputError

# Column order and headings; the arrow says which way is better.
COLUMNS = (
    ("pixel_mse", "pixel MSE ↓"),
    ("feature_mse", "feature MSE ↓"),
    ("class_agreement", "class agreement % ↑"),
    ("svm_error", "SVM error % ↓"),
    ("d_error", "semi-supervised D error % ↓"),
    ("fid", "FID ↓"),
    ("inpaint_pixel_mse", "inpainting hole MSE ↓"),
    ("inpaint_feature_mse", "inpainting feature MSE ↓"),
    ("modes_covered", "modes covered (of 25) ↑"),
    ("within_3std", "samples within 3 std % ↑"),
    ("point_mse", "reconstruction MSE ↓"),
    ("latent_snr", "latent SNR ↑"),
)
PERCENT = {"svm_error", "d_error", "within_3std", "class_agreement"}
# Metrics of the data, not of the model: the same in every run, printed once.
BASELINES = (("mean_image_mse", "the mean training image"),
             ("class_mean_image_mse", "the mean training image of x's class"))


def metric_values(reports: Sequence[dict], metric: str) -> List[float]:
    """The metric's value in every report that has it."""
    return [float(r["metrics"][metric]["mean"]) for r in reports if metric in r["metrics"]]


def summarize(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, population std) of a non-empty list."""
    if not len(values):
        raise ValueError("summarize: no values")
    return float(np.mean(values)), float(np.std(values))


def format_cell(metric: str, values: Sequence[float]) -> str:
    if not values:
        return "–"
    scale = 100.0 if metric in PERCENT else 1.0
    mean, std = summarize([scale * v for v in values])
    digits = (".1f" if metric in PERCENT or metric in ("modes_covered", "fid") else
              ".3g" if metric == "latent_snr" else ".4f")
    return f"{mean:{digits}} ± {std:{digits}}"


def comparison_table(reports_by_variant: Dict[str, Sequence[dict]]) -> str:
    """A Markdown table with one row per variant and one column per metric present."""
    every = [r for reports in reports_by_variant.values() for r in reports]
    columns = [(m, title) for m, title in COLUMNS if metric_values(every, m)]
    lines = ["| variant | seeds | " + " | ".join(title for _, title in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for variant, reports in reports_by_variant.items():
        cells = [format_cell(m, metric_values(reports, m)) for m, _ in columns]
        lines.append(f"| {variant} | {len(reports)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_json(reports_by_variant: Dict[str, Sequence[dict]]) -> dict:
    """variant -> metric -> {"mean", "std", "values"} (the table's numbers, unrounded)."""
    out = {}
    for variant, reports in reports_by_variant.items():
        out[variant] = {}
        for metric, _ in COLUMNS:
            values = metric_values(reports, metric)
            if values:
                mean, std = summarize(values)
                out[variant][metric] = {"mean": mean, "std": std, "values": values}
    return out


# ------------------------------------------------------------ run results and curves

METRICS_DIR = "metrics"


class ResultsError(InputError):
    """A results folder that cannot make a table (one line)."""


NOT_RECORDED = "not recorded"   # a commit that files written before the tool kept it lack


def run_results(variant: str, seed: int, reports: Sequence[dict], *, experiment: str,
                train_command: str, eval_command: str, commit: str, machine: str,
                seconds: Dict[str, object]) -> dict:
    """One finished run as kept: everything needed to re-make and trust its table row.
    `reports` are its eval reports in step order (the last is the final point)."""
    def numbers(entry):
        return {k: entry[k] for k in ("mean", "std") if k in entry}
    return {
        "experiment": experiment, "variant": variant, "seed": int(seed),
        "train_command": train_command, "eval_command": eval_command,
        "commit": commit, "train_commit": seconds.get("train_commit", NOT_RECORDED),
        "machine": machine,
        "train_seconds": round(float(seconds.get("train", 0.0)), 1),
        "eval_seconds": round(float(seconds.get("eval", 0.0)), 1),
        "notes": sorted({n for r in reports for n in r.get("notes", [])}),
        # Metric -> the fingerprint of the network it was computed on (final point).
        "networks": {m: e["network_fingerprint"]
                     for m, e in (reports[-1]["metrics"] if reports else {}).items()
                     if e.get("network_fingerprint")},
        # Metric -> how its real side was made (FID, KID: quantisation and reference set).
        "protocols": {m: fid_protocol(e)
                      for m, e in (reports[-1]["metrics"] if reports else {}).items()
                      if "quantisation" in e},
        "points": [{"step": int(r["step"]),
                    "metrics": {m: numbers(e) for m, e in r["metrics"].items()}}
                   for r in reports],
    }


def run_results_path(results_dir: str, variant: str, seed: int) -> str:
    """RESULTS/metrics/VARIANT_seed_S.json."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in variant)
    return os.path.join(results_dir, METRICS_DIR, f"{safe}_seed_{seed}.json")


def write_run_results(results_dir: str, results: dict) -> str:
    path = run_results_path(results_dir, results["variant"], results["seed"])
    files.write_text_atomically(path, json.dumps(results, indent=1) + "\n")
    return path


def _check_run_results(results: dict) -> dict:
    """The fields a table reads, with defaults for files written by hand before the
    tool kept them (one point, no times); KeyError/TypeError/ValueError when absent."""
    results.setdefault("points", [{"step": results.get("step", 0),
                                   "metrics": results.get("metrics", {})}])
    results.setdefault("commit", results.get("code", "unknown"))
    results.setdefault("machine", "unknown")
    results.setdefault("train_seconds", None)
    results.setdefault("train_commit", NOT_RECORDED)
    if not isinstance(results["variant"], str):
        raise TypeError(f"variant {results['variant']!r} is not a name")
    results["seed"] = int(results["seed"])
    if not results["points"]:
        raise ValueError("it has no evaluated point")
    for point in results["points"]:
        point["step"] = int(point["step"])
        if not isinstance(point["metrics"], dict):
            raise TypeError(f"the metrics at step {point['step']} are not a mapping")
    return results


def read_run_results_file(path: str) -> dict:
    """One run's metrics file, checked; ResultsError names a file that is not one."""
    try:
        with open(path) as f:
            return _check_run_results(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ResultsError(f"{path}: not a run results file "
                           f"({type(error).__name__}: {error})") from None


def read_run_results(results_dir: str, variants: Sequence[str]) -> Dict[str, List[dict]]:
    """variant -> its runs' results sorted by seed, for the given variants in that order
    (a variant with no finished run is left out). ResultsError names a file that is not
    a run results file."""
    found: Dict[str, List[dict]] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, METRICS_DIR, "*.json"))):
        results = read_run_results_file(path)
        found.setdefault(results["variant"], []).append(results)
    runs = {v: sorted(found[v], key=lambda r: r["seed"]) for v in variants if v in found}
    if not runs:
        raise ResultsError(f"{os.path.join(results_dir, METRICS_DIR)}: no finished run of "
                           f"{', '.join(variants)}")
    return runs


def select_runs(runs: Dict[str, List[dict]], seeds: Sequence[int],
                final_step: int = 0) -> Tuple[Dict[str, List[dict]], List[str]]:
    """(the runs of the experiment as asked, why each other run was left out).

    A results folder that grows across sessions can hold runs of another budget or of
    seeds beyond --seeds; a table row mixes only runs of the given seeds whose final
    point is `final_step` (0: any)."""
    kept: Dict[str, List[dict]] = {}
    left_out = []
    for variant, rs in runs.items():
        for run in rs:
            final = run["points"][-1]["step"]
            if run["seed"] not in seeds:
                left_out.append(f"{variant} seed {run['seed']} (not among the seeds "
                                f"{', '.join(map(str, seeds))})")
            elif final_step and final != final_step:
                left_out.append(f"{variant} seed {run['seed']} (final step {final}, "
                                f"not the budget's {final_step})")
            else:
                kept.setdefault(variant, []).append(run)
    return kept, left_out


def final_reports(runs: Dict[str, List[dict]]) -> Dict[str, List[dict]]:
    """variant -> each run's last evaluated point, in the shape `comparison_table` reads."""
    return {v: [r["points"][-1] for r in rs] for v, rs in runs.items()}


def final_table_json(runs: Dict[str, List[dict]]) -> dict:
    out = table_json(final_reports(runs))
    for variant, rs in runs.items():
        out[variant]["seeds"] = [r["seed"] for r in rs]
        out[variant]["final_steps"] = sorted({r["points"][-1]["step"] for r in rs})
    return out


def experiment_report(runs: Dict[str, List[dict]], *, title: str, command: str,
                      invocation_minutes: float, left_out: Sequence[str] = ()) -> str:
    """The Markdown table of the final points with where and how it was made, and the
    runs of the results folder it leaves out (see `select_runs`)."""
    every = [r for rs in runs.values() for r in rs]
    lines = [f"## {title}", "", f"`{command}`", ""]
    for variant, rs in runs.items():
        steps = sorted({r["points"][-1]["step"] for r in rs})
        seconds = [r["train_seconds"] for r in rs if r["train_seconds"] is not None]
        train = (f"training {np.mean(seconds) / 60:.0f} min per run (mean of "
                 f"{len(seconds)})" if seconds else "training time not recorded")
        lines.append(f"- {variant}: seeds {', '.join(str(r['seed']) for r in rs)}; final "
                     f"step {', '.join(map(str, steps))}; "
                     f"{_count(len(rs[0]['points']), 'evaluated point')}; {train}")
    machines = sorted({r["machine"] for r in every})
    commits = sorted({r["commit"] for r in every})
    train_commits = sorted({r["train_commit"] for r in every} - {NOT_RECORDED})
    code = (f"trained by {', '.join(train_commits)}, evaluated by {', '.join(commits)}"
            if train_commits and train_commits != commits else ", ".join(commits))
    lines += ["", f"Machine: {'; '.join(machines)}. Code: {code}. "
              f"Mean ± std over seeds at each run's final step (this invocation: "
              f"{invocation_minutes:.0f} min).", "", ""]
    text = "\n".join(lines) + comparison_table(final_reports(runs))
    finals = [r["points"][-1]["metrics"] for r in every]
    baselines = [f"{what} {np.mean([m[key]['mean'] for m in finals if key in m]):.4f}"
                 for key, what in BASELINES if any(key in m for m in finals)]
    if baselines:
        text += "\nPixel MSE of predictors that ignore the code: " + "; ".join(baselines) + ".\n"
    for note in sorted({n for r in every for n in r.get("notes", [])}):
        text += f"\nNote: {note}\n"
    mixed = mixed_networks(every)
    if mixed:
        text += ("\nNote: these metrics were computed on different networks across the "
                 "runs of this table (a classifier retrained on another machine is another "
                 "network), so their rows compare only roughly: " + "; ".join(mixed) + ".\n")
    mixed = mixed_networks(every, "protocols")
    if mixed:
        text += ("\nNote: FID's images were prepared differently across the runs of this "
                 "table (\"not recorded\": before images were quantised to 8 bits and the "
                 "protocol recorded), so these rows compare only roughly: "
                 + "; ".join(mixed) + ".\n")
    if left_out:
        text += "\nLeft out of this table: " + "; ".join(left_out) + ".\n"
    return text


def fid_protocol(entry: dict) -> str:
    """How an FID/KID entry's two image sets were made, e.g. "uint8 images, 10000 test"."""
    return (f"{entry['quantisation']} images, {entry.get('num_real', '?')} "
            f"{entry.get('reference_split', '?')}")


def mixed_networks(runs: Sequence[dict], field: str = "networks") -> List[str]:
    """For each network-based metric whose runs do not share one network, a line naming
    the fingerprints and how many runs used each ("not recorded" for older files).
    field="protocols" does the same for FID's protocol (fid_protocol)."""
    lines = []
    metrics = sorted({m for r in runs for m in r.get(field, {})})
    for metric in metrics:
        counts: Dict[str, int] = {}
        for run in runs:
            if metric in run["points"][-1]["metrics"]:
                key = run.get(field, {}).get(metric, "not recorded")
                counts[key] = counts.get(key, 0) + 1
        if len(counts) > 1:
            lines.append(f"{metric} on " + ", ".join(
                f"{key} ({_count(n, 'run')})" for key, n in sorted(counts.items())))
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def curve(runs: Sequence[dict], metric: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:
    """(steps, mean, min, max) over the runs of one variant, at the steps every run has."""
    per_run = [{p["step"]: float(p["metrics"][metric]["mean"]) for p in r["points"]
                if metric in p["metrics"]} for r in runs]
    steps = sorted(set.intersection(*(set(v) for v in per_run))) if per_run else []
    values = np.array([[v[s] for s in steps] for v in per_run]).reshape(len(per_run), -1)
    scale = 100.0 if metric in PERCENT else 1.0
    return (np.array(steps), scale * values.mean(0), scale * values.min(0),
            scale * values.max(0))


def plot_curves(runs: Dict[str, List[dict]], path: str) -> Optional[str]:
    """Every metric against steps (mean line, min-max band over seeds, a line per
    variant) in one PNG; pixel MSE shows the mean-image baselines. None when no run
    has more than one evaluated point."""
    metrics = [(m, t) for m, t in COLUMNS
               if any(len(curve(rs, m)[0]) > 1 for rs in runs.values())]
    if not metrics:
        return None
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = pyplot.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows),
                                   squeeze=False)
    for axis, (metric, title) in zip(axes.flat, metrics):
        for variant, rs in runs.items():
            steps, mean, low, high = curve(rs, metric)
            if not len(steps):
                continue
            line, = axis.plot(steps, mean, marker="o", markersize=3,
                              label=f"{variant} ({len(rs)} seeds)")
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        if metric == "pixel_mse":
            finals = [r["points"][-1]["metrics"] for rs in runs.values() for r in rs]
            for (key, what), style in zip(BASELINES, ("--", ":")):
                values = [m[key]["mean"] for m in finals if key in m]
                if values:
                    axis.axhline(np.mean(values), color="grey", linestyle=style, label=what)
        if metric == "latent_snr":
            axis.set_yscale("log")
        axis.set_title(title)
        axis.set_xlabel("generator-encoder steps")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=80)
    pyplot.close(figure)
    return path
