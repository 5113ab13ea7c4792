"""Comparison tables: variant x metric, mean ± std over seeds, from eval reports.

Each cell is the mean and the (population) std over seeds of one metric's per-run
value; the within-run spread (e.g. over test batches or SVM draws) is in each run's
own report, not in the table.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

# Column order and headings; the arrow says which way is better.
COLUMNS = (
    ("pixel_mse", "pixel MSE ↓"),
    ("feature_mse", "feature MSE ↓"),
    ("svm_error", "SVM error % ↓"),
    ("d_error", "semi-supervised D error % ↓"),
    ("fid", "FID ↓"),
    ("inpaint_pixel_mse", "inpainting hole MSE ↓"),
    ("inpaint_feature_mse", "inpainting feature MSE ↓"),
    ("modes_covered", "modes covered (of 25) ↑"),
    ("within_3std", "samples within 3 std % ↑"),
    ("point_mse", "reconstruction MSE ↓"),
)
PERCENT = {"svm_error", "d_error", "within_3std"}


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
    digits = ".1f" if metric in PERCENT or metric in ("modes_covered", "fid") else ".4f"
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
