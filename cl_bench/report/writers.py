"""Writing a leaderboard: Markdown and CSV here, HTML through :mod:`cl_bench.report.html`, all atomically."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from cl_bench.core import atomic
from cl_bench.report.html import to_html
from cl_bench.report.leaderboard import COST_COLUMNS, MARK_NOTE, Board, higher_is_better, tune_table


def _arrow(metric: str) -> str:
    return "↑" if higher_is_better(metric) else "↓"


def to_markdown(board: Board) -> str:
    """The board as Markdown tables, one per group, plus tuning summaries and skipped records."""
    lines = ["# Leaderboard", "",
             f"Mean ± std over seeds (sample std); n = seeds per row; ranked by {board.rank_by} "
             f"({'higher' if higher_is_better(board.rank_by) else 'lower'} is better). ↑/↓: direction of each metric.",
             ""]  # fmt: skip
    if board.marked:
        lines += [MARK_NOTE, ""]
    for g in board.groups:
        lines += [f"## {g.title}", ""]
        mark = ["mark"] if board.marked else []
        head = ["rank", "method", *mark, "n", *[f"{m} {_arrow(m)}" for m in board.metrics],
                *[COST_COLUMNS[k] for k in board.costs]]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in g.rows:
            cells = [str(r.rank or "-"), r.label, *([r.mark] if mark else []), str(len(r.records)),
                     *[r.cell(m).text() for m in board.metrics], *[r.cost_text(k) for k in board.costs]]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for t in board.tunes:
        lines += _tune_markdown(t)
    if board.skipped:
        lines += ["## Skipped records", ""]
        lines += [f"- `{p}`: {why}" for p, why in board.skipped]
        lines.append("")
    return "\n".join(lines)


def _tune_markdown(t: dict[str, Any]) -> list[str]:
    title, note, header, rows = tune_table(t)
    lines = [f"## {title}", "", note, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def to_csv(board: Board) -> str:
    """The board as CSV: one line per row, with mean, std and n of every metric."""
    buf = io.StringIO()
    w = csv.writer(buf)
    mark = ["mark"] if board.marked else []
    w.writerow(["scenario", "spec_hash", "protocol", "rank", "method", "label", *mark, "config", "n_seeds", "seeds",
                *[f"{m}_{s}" for m in board.metrics for s in ("mean", "std", "n")],
                *[f"cost_{k}_mean" for k in board.costs]])  # fmt: skip
    for g in board.groups:
        for r in g.rows:
            vals = []
            for m in board.metrics:
                c = r.cell(m)
                vals += ["" if math.isnan(c.mean) else repr(c.mean), "" if math.isnan(c.std) else repr(c.std), c.n]
            for k in board.costs:  # raw units (seconds, FLOPs, parameters)
                raw = [rec["cost"][k] for rec in r.records if rec["cost"].get(k) is not None]
                vals.append(repr(sum(raw) / len(raw)) if raw else "")
            w.writerow([g.scenario, g.spec_hash, json.dumps(g.protocol, sort_keys=True), r.rank or "", r.method,
                        r.label, *([r.mark] if mark else []), json.dumps(r.config, sort_keys=True), len(r.records),
                        " ".join(map(str, r.seeds)), *vals])  # fmt: skip
    return buf.getvalue()


def write_board(board: Board, out: str | Path) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.html`` into ``out`` (atomically each)."""
    out = Path(out)
    files = {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
    atomic.write_bytes(files["md"], to_markdown(board).encode())
    atomic.write_bytes(files["csv"], to_csv(board).encode())
    atomic.write_bytes(files["html"], to_html(board).encode())
    return files


__all__ = ["to_csv", "to_markdown", "write_board"]
