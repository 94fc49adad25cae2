"""Leaderboards from run records (the model): group, aggregate over seeds, rank.

Writing a board (Markdown, CSV, HTML) is :mod:`cl_bench.report.writers`.

Records are grouped by scenario (name and ``spec_hash``) and protocol, so runs
on different streams or evaluated differently never share a table. Within a
group, a row is one method with one configuration; its cells are mean +- std
(sample standard deviation) over seeds, and each row says how many seeds it
has. Unreadable or schema-invalid records, unfinished runs and duplicate seeds
are listed and skipped, never averaged in.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_bench.core.errors import UserError
from cl_bench.core.record import RECORD_FILE, RecordError, load_record, record_kind
from cl_bench.core.registry import METHODS

DEFAULT_METRICS = ("final_acc", "avg_incremental_acc", "forgetting", "min_acc", "wc_acc", "stability_gap")
#: Shown instead of (or, for a mix of records, besides) the defaults for test-time adaptation records.
TTA_METRICS = ("online_error", "online_error_max_severity", "online_error_clean", "clean_acc_after")
TUNE_FILE = "tune.json"
#: Compute and memory columns (the record's ``cost``), shown when some record of a table has them: what a
#: method spends for its accuracy (NEVIS'22, Bornschein et al., JMLR 2023, compares at equal compute).
COST_COLUMNS = {"data_seconds": "data s", "train_seconds": "train s", "eval_seconds": "eval s",
                "train_flops": "train GFLOPs", "eval_flops": "eval GFLOPs", "n_params": "params",
                "buffer_bytes": "memory KB", "peak_gpu_mb": "peak GPU MB"}


@dataclass(frozen=True)
class Cell:
    """Mean, sample standard deviation (NaN for one value) and count of a metric over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Cell:
        """Aggregate the defined (non-None) values."""
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return cls(math.nan, math.nan, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, len(vals))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        """Inverse of the ``{mean, std, n}`` form in ``tune.json`` (None = NaN)."""
        nan = math.nan
        return cls(nan if d.get("mean") is None else d["mean"], nan if d.get("std") is None else d["std"], d["n"])

    def text(self, digits: int = 4) -> str:
        """``mean ± std`` (or ``mean`` without a std, e.g. one seed; ``n/a`` for no value)."""
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f}" + ("" if math.isnan(self.std) else f" ± {self.std:.{digits}f}")


@dataclass(frozen=True)
class Reported:
    """A published value that runs of a reproduction recipe are compared with.

    Attributes:
        recipe: The recipe's name (what a record's ``protocol.recipe`` names).
        source: Paper and table the value is from.
        metric: The metric it is a value of.
        value: The reported value (a fraction, as the record's metrics).
        std: The reported standard deviation, if the paper gives one.
        tolerance: Largest ``|measured mean - value|`` that counts as reproduced.
    """

    recipe: str
    source: str
    metric: str
    value: float
    std: float | None
    tolerance: float


#: Marks of a row: a published value, our own runs, or our runs compared with the published value.
MARKS = ("reported", "measured", "reproduced", "not reproduced", "smoke only")
MARK_NOTE = ("mark: **reported** = the published value of a reproduction recipe (not run by us); **measured** = "
             "our runs; **reproduced** / **not reproduced** = our runs of that recipe, within / outside its "
             "tolerance of the reported value; **smoke only** = smoke runs, never compared.")


@dataclass
class Row:
    """One method configuration in a group, with its records (one per seed).

    A row is ``measured`` (our records); when its records come from a reproduction recipe whose published value
    the board knows, it is ``reproduced`` or ``not reproduced`` (``smoke only`` for smoke runs, never compared);
    a ``reported`` row holds the published value itself and no records.
    """

    method: str
    config: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""
    rank: int | None = None
    reported: Reported | None = None
    is_reported: bool = False

    @property
    def mark(self) -> str:
        """One of :data:`MARKS`."""
        if self.is_reported:
            return "reported"
        if self.reported is None:
            return "measured"
        if all(r["protocol"].get("max_iterations") for r in self.records):
            return "smoke only"
        c = self.cell(self.reported.metric)
        if c.n == 0:
            return "measured"
        close = abs(c.mean - self.reported.value) <= self.reported.tolerance + 1e-12
        return "reproduced" if close else "not reproduced"

    @property
    def seeds(self) -> list[int]:
        """Seeds of the row's records, sorted."""
        return sorted(r["seed"] for r in self.records)

    def cell(self, metric: str) -> Cell:
        """The row's aggregate of ``metric`` (for a reported row: the published value, ``n`` = 0 seeds of ours)."""
        if self.is_reported:
            rep = self.reported
            if rep is None or rep.metric != metric:
                return Cell(math.nan, math.nan, 0)
            return Cell(rep.value, math.nan if rep.std is None else rep.std, 0)
        return Cell.of([r["metrics"].get(metric) for r in self.records])

    def cost(self, key: str) -> Cell:
        """The row's aggregate of ``cost[key]`` (GFLOPs for ``*_flops``, KB for ``*_bytes``)."""
        scale = 1e-9 if key.endswith("_flops") else 1 / 1024 if key.endswith("_bytes") else 1.0
        return Cell.of([None if r["cost"].get(key) is None else r["cost"][key] * scale for r in self.records])

    def cost_text(self, key: str) -> str:
        """The cost cell as shown: seconds with 1 decimal, params as int, the rest with 3 significant digits."""
        c = self.cost(key)
        if c.n == 0:
            return "—"
        if key == "n_params":
            return f"{int(c.mean):,}"
        if key.endswith("_bytes"):  # KB, with thousands separators (a 200-image MNIST memory is ~600 KB)
            return f"{c.mean:,.1f}"
        return f"{c.mean:.1f}" if key.endswith("_seconds") else f"{c.mean:.3g}"


@dataclass
class Group:
    """Records on one scenario spec under one protocol."""

    scenario: str
    spec_hash: str
    protocol: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Human-readable identity of the group."""
        proto = ", ".join(f"{k}={v}" for k, v in self.protocol.items() if k != "setting")
        return f"{self.scenario} [{self.protocol.get('setting', '?')}] spec {self.spec_hash[:8]} ({proto})"

    @property
    def anchor(self) -> str:
        """A stable id for links."""
        return f"{self.scenario}-{self.spec_hash[:8]}-{_hash(self.protocol)[:6]}"


@dataclass(frozen=True)
class Board:
    """A leaderboard: groups, metrics shown, the ranking metric, skipped records, tuning summaries."""

    groups: list[Group]
    metrics: tuple[str, ...]
    rank_by: str
    skipped: list[tuple[str, str]]
    tunes: list[dict[str, Any]]
    costs: tuple[str, ...] = ()  # keys of COST_COLUMNS some record has

    @property
    def marked(self) -> bool:
        """Whether some row is other than plainly measured (the writers then show a ``mark`` column)."""
        return any(r.mark != "measured" for g in self.groups for r in g.rows)


def _hash(obj: Any) -> str:
    from cl_bench.core.types import spec_hash

    return spec_hash(obj if isinstance(obj, dict) else {"v": obj})


def higher_is_better(metric: str) -> bool:
    """Direction of ``metric`` (unknown metrics count as higher-is-better)."""
    from cl_bench.metrics import METRIC_SPECS

    spec = METRIC_SPECS.get(metric)
    return True if spec is None else spec.higher_is_better


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``run.json`` under ``paths`` (files or directories, searched recursively), sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob(RECORD_FILE)))
        else:
            raise UserError(f"{p} does not exist; pass directories holding run records or run.json files")
    return sorted(dict.fromkeys(found))


def load_records(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[str, str]]]:
    """Load every record under ``paths``.

    Returns:
        ``(path, record)`` of the valid, completed records, and ``(path, reason)``
        of the ones skipped (unreadable, schema-invalid, or not completed).
    """
    good, skipped = [], []
    for path in find_records(paths):
        try:
            record = load_record(path)
        except RecordError as err:
            skipped.append((str(path), str(err)))
            continue
        if record["status"] != "completed":
            skipped.append((str(path), f"status {record['status']}: the run has not completed"))
            continue
        good.append((path, record))
    return good, skipped


def _same(a: Any, b: Any) -> bool:
    """Equal once both are spelled as JSON (a record's lists are a config's tuples)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _labels(rows: list[Row]) -> None:
    """Label rows by method, plus every parameter that differs from the method's default or between rows.

    A row that stands alone in its table still shows its non-default parameters, so ``er (lr=0.1)`` is never
    shown as plain ``er``.
    """
    by_method: dict[str, list[Row]] = {}
    for row in rows:
        by_method.setdefault(row.method, []).append(row)
    for method, same in by_method.items():
        defaults = METHODS.defaults(method) or {}
        keys = sorted({k for r in same for k in r.config})
        shown = [k for k in keys
                 if len({json.dumps(r.config.get(k), sort_keys=True) for r in same}) > 1
                 or any(k in defaults and not _same(r.config.get(k), defaults[k]) for r in same)]  # fmt: skip
        for r in same:
            extra = ", ".join(f"{k}={r.config.get(k)}" for k in shown)
            r.label = f"{r.method} ({extra})" if extra else r.method


def _rank(rows: list[Row], metric: str) -> list[Row]:
    sign = -1.0 if higher_is_better(metric) else 1.0

    def key(r: Row) -> tuple[int, float]:
        c = r.cell(metric)
        return (1, 0.0) if c.n == 0 else (0, sign * c.mean)

    ordered = sorted(rows, key=lambda r: (key(r), r.label))
    rank, prev = 0, None
    for i, r in enumerate(ordered, 1):
        k = key(r)
        if k != prev:
            rank, prev = i, k
        r.rank = rank if k[0] == 0 else None
    return ordered


def build_board(
    paths: Iterable[str | Path],
    metrics: Sequence[str] = DEFAULT_METRICS,
    rank_by: str | None = None,
    reported: Mapping[str, Reported] | None = None,
) -> Board:
    """Read records under ``paths`` and build a ranked :class:`Board`.

    Args:
        paths: Directories (searched recursively) or run.json files.
        metrics: Metrics to show.
        rank_by: Metric that ranks methods (default: the first of ``metrics``).
        reported: Published values by recipe name: rows whose records name a recipe (``protocol.recipe``) are
            marked reproduced / not reproduced against it, and the published value joins their table as a
            ``reported`` row (unranked).

    Raises:
        UserError: For unknown metric names or paths that do not exist.
    """
    from cl_bench.metrics import METRIC_SPECS

    unknown = [m for m in [*metrics, rank_by or metrics[0]] if m not in METRIC_SPECS]
    if unknown:
        raise UserError(f"unknown metrics {unknown}; see `cl-bench list metrics` ({', '.join(METRIC_SPECS)})")
    paths = list(paths)
    good, skipped = load_records(paths)
    if tuple(metrics) == DEFAULT_METRICS and good:
        tta = [record_kind(rec) == "tta" for _, rec in good]
        if all(tta):
            metrics, rank_by = TTA_METRICS, rank_by or TTA_METRICS[0]
        elif any(tta):
            metrics = (*DEFAULT_METRICS, *TTA_METRICS)
    groups: dict[tuple[str, str, str], Group] = {}
    rows: dict[tuple[tuple[str, str, str], str], Row] = {}
    for path, rec in good:
        proto = dict(sorted(rec["protocol"].items()))
        gkey = (rec["scenario"]["name"], rec["scenario"]["spec_hash"], _hash(proto))
        group = groups.setdefault(gkey, Group(rec["scenario"]["name"], rec["scenario"]["spec_hash"], proto))
        config = rec["method"]["config"]
        rkey = (gkey, rec["method"]["name"] + _hash(config))
        row = rows.get(rkey)
        if row is None:
            row = rows[rkey] = Row(rec["method"]["name"], config)
            group.rows.append(row)
        if rec["seed"] in row.seeds:
            skipped.append((str(path), f"duplicate of seed {rec['seed']} of the same run (kept the first)"))
            continue
        row.records.append(rec)
    rank_by = rank_by or metrics[0]
    ordered = []
    for group in sorted(groups.values(), key=lambda g: (g.scenario, g.title)):
        _labels(group.rows)
        group.rows = _rank(group.rows, rank_by)
        group.rows += _reported_rows(group.rows, reported or {})
        ordered.append(group)
    costs = tuple(k for k in COST_COLUMNS if any(rec["cost"].get(k) is not None for _, rec in good))
    return Board(ordered, tuple(metrics), rank_by, skipped, find_tunes(paths), costs)


def _reported_rows(rows: list[Row], reported: Mapping[str, Reported]) -> list[Row]:
    """Attach each row's published value (all its records name one known recipe); one reported row per value."""
    extra: list[Row] = []
    for row in rows:
        names = {r["protocol"].get("recipe") for r in row.records}
        if len(names) != 1 or (name := names.pop()) not in reported:
            continue
        row.reported = reported[name]
        if all(r.reported is not row.reported for r in extra):
            extra.append(Row(row.method, row.config, label=f"{row.method}: reported ({name})",
                             reported=row.reported, is_reported=True))  # fmt: skip
    return extra


def pareto_front(points: Sequence[tuple[float, float]], higher: bool = True) -> list[int]:
    """Indices of the points (compute, score) that no other point beats on both: no more compute and a
    better-or-equal score, strictly better in one. ``higher``: whether a higher score is better."""
    front = []
    for i, (ci, si) in enumerate(points):
        si = si if higher else -si
        dominated = any(
            cj <= ci and (sj if higher else -sj) >= si and (cj < ci or (sj if higher else -sj) > si)
            for j, (cj, sj) in enumerate(points) if j != i
        )  # fmt: skip
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def find_tunes(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Two-phase tuning summaries (``tune.json``, written by ``cl-bench tune``) under ``paths``."""
    out = []
    for p in map(Path, paths):
        for f in sorted(p.rglob(TUNE_FILE)) if p.is_dir() else []:
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
    return out


def tune_table(t: dict[str, Any]) -> tuple[str, str, list[str], list[list[str]]]:
    """Title, note, header and rows of a two-phase tuning summary (``tune.json``)."""
    metric = t["metric"]
    title = f"Two-phase tuning: {t['tune_scenario']['name']} -> {t['eval_scenario']['name']}"
    note = (f"Hyper-parameters chosen on the tuning scenario by {metric} ({t['strategy']} search, budget "
            f"{t['budget']} per method), then evaluated unchanged on the evaluation scenario (Cha & Cho, "
            f"'Hyperparameters in Continual Learning: a Reality Check', arXiv:2403.09066).")  # fmt: skip
    header = ["method", "chosen", f"tuning {metric}", f"evaluation {metric}", "eval seeds completed"]
    rows = []
    for m in t["methods"]:
        tune_c, eval_c = Cell.from_json(m["tune_score"]), Cell.from_json(m["eval_score"])
        chosen = ", ".join(f"{k}={v}" for k, v in m["chosen"].items()) or "(defaults)"
        n_eval = len(m.get("eval_run_ids", [])) or eval_c.n
        done = f"{eval_c.n}/{n_eval}" + (" (others failed or diverged)" if eval_c.n < n_eval else "")
        rows.append([m["method"], chosen, tune_c.text(), eval_c.text(), done])
    return title, note, header, rows


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """Split a comma-separated metric list (None = the defaults)."""
    if not text:
        return DEFAULT_METRICS
    return tuple(m.strip() for m in text.split(",") if m.strip())


def run_labels(records: Sequence[dict[str, Any]]) -> list[str]:
    """Legend labels telling records apart: method, differing parameters, scenario if mixed, the protocol fields
    that differ between the records (e.g. ``epochs=2``), seed."""
    rows = [Row(r["method"]["name"], r["method"]["config"]) for r in records]
    _labels(rows)
    mixed = len({r["scenario"]["spec_hash"] for r in records}) > 1
    protocols = [r.get("protocol") or {} for r in records]
    keys = sorted({k for p in protocols for k in p if len({repr(q.get(k)) for q in protocols}) > 1})
    return [f"{row.label}{' on ' + r['scenario']['name'] if mixed else ''}"
            f"{''.join(f' {k}={p.get(k)}' for k in keys)} s{r['seed']}"
            for row, r, p in zip(rows, records, protocols, strict=True)]  # fmt: skip
