"""The comparison a sweep hands back: one table of every cell's metrics, mean ± std over seeds, and plots.

Files (published as one `metrics` artifact of the store): `comparison.json` (every cell and every group),
`comparison.csv` (one row per group of cells that differ only in their seed: the swept values, then
`<metric>_mean`, `<metric>_std`, `n`), and `<metric>.png` for each headline metric against each swept
parameter. Timings (wall times, speeds) are left out: concurrent cells share the machine.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from .sweep import Cell, _fmt, _short  # noqa: E402
from .timings import is_timing  # noqa: E402
from .ui import flatten  # noqa: E402


def cell_metrics(entries: list[dict[str, Any]]) -> dict[str, float]:
    """`stage.metric` -> value for every numeric, non-timing metric of a cell's stages."""
    out = {}
    for entry in entries:
        for path, value in flatten(entry.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            if not any(is_timing(part) for part in path.split(".")):
                out[f"{entry['name']}.{path}"] = float(value)
    return out


def build_report(cells: list[Cell], summary: dict[str, list[dict[str, Any]]], headline: list[str]) -> dict[str, Any]:
    """Cells, groups (mean ± std over seeds) and the headline metrics, as one JSON-able dict."""
    rows = [{"cell": c.name, "label": c.label, "pipeline": c.spec.name, "params": c.params, "seed": c.seed,
             "states": {e["name"]: e["state"] for e in summary[c.name]}, "metrics": cell_metrics(summary[c.name])}
            for c in cells]
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = json.dumps(row["params"], sort_keys=True, default=str)
        groups.setdefault(key, {"params": row["params"], "cells": [], "seeds": [], "values": {}})
        group = groups[key]
        group["cells"].append(row["cell"])
        group["seeds"].append(row["seed"])
        for metric, value in row["metrics"].items():
            group["values"].setdefault(metric, []).append(value)
    table = [{"params": g["params"], "cells": g["cells"], "seeds": g["seeds"],
              "metrics": {m: _mean_std(v) for m, v in sorted(g["values"].items())}} for g in groups.values()]
    metrics = sorted({m for row in rows for m in row["metrics"]})
    chosen = headline or default_headline(metrics, _evaluate_stages(cells))
    return {"parameters": list(cells[0].params), "cells": rows, "groups": table, "metrics": metrics,
            "headline": [m for m in chosen if m in metrics]}


HEADLINE_NAMES = frozenset({"frechet_distance", "classifier_accuracy", "mmd2", "sliced_wasserstein", "mae", "rmsd",
                            "nrmse", "crps", "accuracy", "reward_gain", "gain", "spread_skill"})
"""Metric names plotted by default, also as the start of a name (`mae_frame_bohr`); a sweep's `metrics:` list
chooses others."""
MAX_DEFAULT_PLOTS = 12
"""At most this many metrics are plotted by default (a spec with many evaluate stages scores hundreds); every
metric stays in comparison.json and comparison.csv."""


def default_headline(metrics: list[str], evaluate_stages: set[str]) -> list[str]:
    """The evaluate stages' metrics with a headline name, not the data floor (else every evaluate metric),
    shallowest paths first (overall scores before per-group ones), at most MAX_DEFAULT_PLOTS."""
    evaluated = [m for m in metrics if m.split(".")[0] in evaluate_stages and "data_floor" not in m]
    named = [m for m in evaluated if _is_headline(m.rsplit(".", 1)[-1])] or evaluated
    return sorted(named, key=lambda m: m.count("."))[:MAX_DEFAULT_PLOTS]


def _is_headline(name: str) -> bool:
    return name in HEADLINE_NAMES or any(name.startswith(f"{h}_") for h in HEADLINE_NAMES)


def _evaluate_stages(cells: list[Cell]) -> set[str]:
    return {s.name for s in cells[0].spec.stages if s.stage == "evaluate"}


def _mean_std(values: list[float]) -> dict[str, float | int]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def write_report(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write comparison.json, comparison.csv and one PNG per headline metric; returns the PNGs by metric."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    with open(folder / "comparison.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*report["parameters"], "n", *[f"{m}_{s}" for m in report["metrics"] for s in ("mean", "std")]])
        for g in report["groups"]:
            stats = [g["metrics"].get(m, {}) for m in report["metrics"]]
            writer.writerow([_fmt(g["params"][p]) for p in report["parameters"]] + [len(g["cells"])]
                            + [v for s in stats for v in (s.get("mean", ""), s.get("std", ""))])
    return {m: plot_metric(report, m, folder / f"{_file_name(m)}.png") for m in report["headline"]}


def plot_metric(report: dict[str, Any], metric: str, path: Path) -> Path:
    """Mean ± std of `metric` against each swept parameter (one panel each; one line per other setting)."""
    params = report["parameters"] or ["seed"]
    fig = Figure(figsize=(4 * len(params), 3))
    for i, param in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        for label, points in _series(report, metric, param).items():
            xs = list(range(len(points)))
            ax.errorbar(xs, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3, label=label)
            ax.set_xticks(xs, [p[0] for p in points], rotation=20, fontsize=7)
        ax.set_xlabel(_short(param))
        ax.set_ylabel(metric, fontsize=7)
        if len(params) > 1 or len(ax.get_lines()) > 1:
            ax.legend(fontsize=6)
    fig.suptitle(f"{metric}: mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _series(report: dict[str, Any], metric: str, param: str) -> dict[str, list[tuple[str, float, float]]]:
    """Other-parameter setting -> [(value of `param`, mean, std)] in grid order."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for g in report["groups"]:
        if metric not in g["metrics"]:
            continue
        stats = g["metrics"][metric]
        if param == "seed":
            out.setdefault("all", []).append(("all seeds", stats["mean"], stats["std"]))
            continue
        rest = ",".join(f"{_short(p)}={_fmt(v)}" for p, v in g["params"].items() if p != param) or "mean ± std"
        out.setdefault(rest, []).append((_fmt(g["params"][param]), stats["mean"], stats["std"]))
    return out


def markdown_table(report: dict[str, Any], limit: int = 8) -> str:
    """The comparison as a markdown table (headline metrics first, at most `limit` metric columns)."""
    metrics = (report["headline"] + [m for m in report["metrics"] if m not in report["headline"]])[:limit]
    header = [*(_short(p) for p in report["parameters"]), "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in report["groups"]:
        cells = [_fmt(g["params"][p]) for p in report["parameters"]] + [str(len(g["seeds"]))]
        cells += [_pm(g["metrics"].get(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{stats['mean']:.4g} ± {stats['std']:.2g}"


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)
