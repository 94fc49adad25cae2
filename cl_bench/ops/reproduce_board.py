"""``cl-bench reproduce board DIR``: reported vs measured (mean ± std over seeds) vs delta, with a verdict.

A record belongs to a recipe when its ``protocol.recipe`` names it. Smoke records (``max_iterations`` set)
prove that a recipe starts, not what it reaches: they are counted, never compared. Verdicts: "reproduced"
(``|mean - reported| <= tolerance``), "not reproduced", "smoke only", "not run".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cl_bench.core.record import load_record
from cl_bench.ops.reproduce import Recipe
from cl_bench.report.leaderboard import find_records


def board_rows(dirs: Iterable[str | Path], recipes: Mapping[str, Recipe]) -> list[dict[str, Any]]:
    """One row per recipe: reported, measured mean and std, seeds, delta, verdict."""
    full: dict[str, list[float]] = {}
    smoke: dict[str, int] = {}
    for path in find_records(dirs):
        record = load_record(path)
        name = record.get("protocol", {}).get("recipe")
        if record.get("status") != "completed" or name not in recipes:
            continue
        if record["protocol"].get("max_iterations"):
            smoke[name] = smoke.get(name, 0) + 1
            continue
        value = record["metrics"].get(recipes[name].metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            full.setdefault(name, []).append(float(value))
    rows = []
    for name, r in recipes.items():
        values = full.get(name, [])
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        delta = None if mean is None else mean - r.reported
        if delta is not None:
            verdict = "reproduced" if abs(delta) <= r.tolerance + 1e-12 else "not reproduced"
        else:
            verdict = "smoke only" if smoke.get(name) else "not run"
        rows.append({"name": name, "metric": r.metric, "reported": r.reported, "reported_std": r.reported_std,
                     "tolerance": r.tolerance, "measured": mean, "std": std, "seeds": len(values), "delta": delta,
                     "verdict": verdict, "smoke_runs": smoke.get(name, 0)})  # fmt: skip
    return rows


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def format_board(rows: list[dict[str, Any]]) -> str:
    """The board as a Markdown table (values in percent)."""
    lines = ["| recipe | metric | reported | measured (mean ± std, seeds) | delta | tolerance | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        rep = _pct(r["reported"]) + (f" ± {_pct(r['reported_std'])}" if r["reported_std"] is not None else "")
        meas = "-" if r["measured"] is None else f"{_pct(r['measured'])} ± {_pct(r['std'])} ({r['seeds']})"
        lines.append(f"| {r['name']} | {r['metric']} | {rep} | {meas} | {_pct(r['delta'], True)} | "
                     f"{_pct(r['tolerance'])} | {r['verdict']} |")  # fmt: skip
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("reproduced", "not reproduced", "smoke only",
                                                                    "not run")}  # fmt: skip
    lines.append("")
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()))
    return "\n".join(lines)


__all__ = ["board_rows", "format_board"]
