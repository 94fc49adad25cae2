"""CI regression of baselines: rerun the golden records and compare every metric.

``results/golden/`` holds reference run records (``<run_id>/run.json``), the
sweep spec that produced them (``baselines.yaml``) and optionally per-metric
absolute tolerances (``tolerances.yaml``). :func:`regress` reruns each golden
record's stored request (or reads fresh records from a directory) and compares,
per cell (method configuration x scenario spec x protocol, over its seeds), the
mean of every metric with the golden mean. A metric has *moved* when

    |fresh mean - golden mean| > tolerance[metric] + spread * std(golden values over seeds)

so cells with several seeds tolerate their own seed-to-seed spread. The report
names the metric, both values, the delta and the direction (better / worse, by
the metric's registered direction). ``update=True`` reruns the golden set (from
``baselines.yaml`` when present), shows the diff against the old golden values
and replaces the golden records.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cl_bench.core.errors import UserError
from cl_bench.core.registry import METHODS
from cl_bench.report.leaderboard import higher_is_better, load_records

BASELINES_FILE = "baselines.yaml"
TOLERANCES_FILE = "tolerances.yaml"
DEFAULT_ABS_TOL = 0.02
DEFAULT_TOLERANCES: dict[str, float] = {"stability_gap_recovery": 10.0}  # iterations, not a fraction
PATH_KEYS = ("root",)


@dataclass(frozen=True)
class RegressConfig:
    """How :func:`regress` compares.

    Attributes:
        tolerances: Metric -> absolute tolerance (metrics not listed use ``default_tol``).
        default_tol: Absolute tolerance of unlisted metrics (accuracies are fractions).
        spread: Multiples of the golden seed standard deviation added to the tolerance.
        only_worse: Fail only when a metric moved in its worse direction.
        metrics: Metrics compared (default: every metric of the golden records).
    """

    tolerances: Mapping[str, float] = field(default_factory=dict)
    default_tol: float = DEFAULT_ABS_TOL
    spread: float = 1.0
    only_worse: bool = False
    metrics: tuple[str, ...] | None = None

    def tol(self, metric: str) -> float:
        """Absolute tolerance of ``metric``."""
        return float(self.tolerances.get(metric, DEFAULT_TOLERANCES.get(metric, self.default_tol)))


@dataclass(frozen=True)
class Comparison:
    """One metric of one cell: fresh vs golden."""

    cell: str
    metric: str
    value: float | None
    golden: float | None
    tolerance: float
    n_seeds: int

    @property
    def delta(self) -> float | None:
        """fresh - golden (None when either is undefined)."""
        return None if self.value is None or self.golden is None else self.value - self.golden

    @property
    def moved(self) -> bool:
        """Outside the tolerance (or defined on one side only)."""
        if (self.value is None) != (self.golden is None):
            return True
        return self.delta is not None and abs(self.delta) > self.tolerance + 1e-12

    @property
    def direction(self) -> str:
        """"better", "worse", "undefined" or "" (no change)."""
        if (self.value is None) != (self.golden is None):
            return "undefined"
        d = self.delta
        if not d:
            return ""
        return "better" if (d > 0) == higher_is_better(self.metric) else "worse"


@dataclass(frozen=True)
class Report:
    """Everything :func:`regress` found."""

    comparisons: list[Comparison]
    problems: list[str]  # missing or failed cells, invalid records
    config: RegressConfig

    @property
    def failures(self) -> list[Comparison]:
        """Comparisons that fail the check."""
        return [c for c in self.comparisons if c.moved and (not self.config.only_worse or c.direction != "better")]

    @property
    def ok(self) -> bool:
        """True when nothing moved and nothing is missing."""
        return not self.failures and not self.problems


def cell_key(record: dict[str, Any]) -> str:
    """Identity of a record's cell (everything but the seed), as canonical JSON."""
    proto = dict(sorted(record["protocol"].items()))
    # Only non-default values identify a cell: a field added later with a behaviour-preserving default
    # (e.g. the LR schedule) must not orphan golden records written before it existed.
    defaults = METHODS.defaults(record["method"]["name"]) or {}
    config = {k: v for k, v in record["method"]["config"].items() if k not in defaults or defaults[k] != v}
    return json.dumps([record["method"]["name"], config, record["scenario"]["name"],
                       record["scenario"]["spec_hash"], proto], sort_keys=True)  # fmt: skip


def cell_label(record: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """Short readable name of a record's cell."""
    cfg = record["method"]["config"]
    extra = ", ".join(f"{k}={v}" for k, v in cfg.items() if defaults is not None and defaults.get(k) != v)
    name = record["method"]["name"] + (f"({extra})" if extra else "")
    return f"{name} on {record['scenario']['name']}/{record['scenario']['spec_hash'][:6]}"


def load_tolerances(golden: Path) -> dict[str, float]:
    """Per-metric tolerances from ``golden/tolerances.yaml`` (empty when absent)."""
    path = golden / TOLERANCES_FILE
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {path}: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise UserError(f"{path} must map metric names to absolute tolerances (numbers)")
    return {str(k): float(v) for k, v in data.items()}


def compare(golden: Sequence[dict[str, Any]], fresh: Sequence[dict[str, Any]], config: RegressConfig) -> Report:
    """Compare fresh records with golden ones, cell by cell, over the golden seeds."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in golden:
        by_cell.setdefault(cell_key(r), []).append(r)
    fresh_by = {(cell_key(r), r["seed"]): r for r in fresh}
    comparisons, problems = [], []
    for key, recs in by_cell.items():
        label = cell_label(recs[0], METHODS.defaults(recs[0]["method"]["name"]))
        seeds = sorted(r["seed"] for r in recs)
        missing = [s for s in seeds if (key, s) not in fresh_by]
        if missing:
            problems.append(f"{label}: no completed fresh run for seed(s) {missing}")
            continue
        metrics = config.metrics or tuple(dict.fromkeys(m for r in recs for m in r["metrics"]))
        for metric in metrics:
            g = [r["metrics"].get(metric) for r in recs]
            f = [fresh_by[(key, r["seed"])]["metrics"].get(metric) for r in recs]
            g_def, f_def = [v for v in g if v is not None], [v for v in f if v is not None]
            spread = statistics.stdev(g_def) if len(g_def) > 1 else 0.0
            comparisons.append(Comparison(
                label, metric, statistics.fmean(f_def) if f_def else None, statistics.fmean(g_def) if g_def else None,
                config.tol(metric) + config.spread * spread, len(recs),
            ))  # fmt: skip
    return Report(comparisons, problems, config)


def _num(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def format_table(comparisons: Sequence[Comparison], title: str) -> str:
    """A fixed-width table: cell, metric, value, golden, delta, tolerance, direction."""
    head = ("cell", "metric", "value", "golden", "delta", "tolerance", "direction")
    rows = [(c.cell, c.metric, _num(c.value), _num(c.golden), _num(c.delta, True), _num(c.tolerance),
             c.direction or "-") for c in comparisons]  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*head), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in rows)])  # fmt: skip


def format_report(report: Report, verbose: bool = False) -> str:
    """What :func:`regress` prints."""
    n_cells = len({c.cell for c in report.comparisons})
    lines = []
    if report.failures:
        lines.append(format_table(report.failures, f"REGRESSION: {len(report.failures)} metric value(s) moved "
                                  "beyond tolerance (tolerance = absolute + spread x golden seed std):"))  # fmt: skip
    if verbose:
        lines.append(format_table(report.comparisons, "all comparisons:"))
    for p in report.problems:
        lines.append(f"PROBLEM: {p}")
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"regress {verdict}: {len(report.comparisons)} metric values in {n_cells} cells compared, "
                 f"{len(report.failures)} moved, {len(report.problems)} problem(s)")  # fmt: skip
    return "\n".join(lines)


def _resolve_path(value: str, anchors: Sequence[Path]) -> str:
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return value
    for anchor in anchors:
        if (anchor / p).exists():
            return str((anchor / p).resolve())
    return value


def rerun_spec(record: dict[str, Any], golden_dir: Path, scenario_sets: Mapping[str, Any]) -> Any:
    """The :class:`RunSpec` that reruns ``record``, with data paths made findable.

    Relative paths (``root``) resolve against the current directory, else
    against the golden directory and its ancestors (so the repository's
    ``../shared/data/mnist`` is found from anywhere in the checkout); ``scenario_sets``
    (``--set scenario.root=DIR``) override parameters the scenario has.
    """
    from cl_bench.core.registry import SCENARIOS
    from cl_bench.engine.spec import RunSpec, spec_from_record

    spec = spec_from_record(record)
    sc = dict(spec.scenario_config)
    params = SCENARIOS.parameters(spec.scenario)
    for key, value in scenario_sets.items():
        if key in params:
            sc[key] = value
    anchors = [golden_dir.resolve(), *golden_dir.resolve().parents]
    for key in PATH_KEYS:
        if isinstance(sc.get(key), str):
            sc[key] = _resolve_path(sc[key], anchors)
    return RunSpec.from_mapping({**spec.to_mapping(), "scenario": {"name": spec.scenario, **sc}}, "the rerun")


def _load_golden(golden: Path, strict: bool) -> list[dict[str, Any]]:
    if not golden.is_dir():
        raise UserError(f"golden directory {golden} does not exist; create it with `cl-bench regress --against "
                        f"{golden} --update` from a {BASELINES_FILE} sweep spec")  # fmt: skip
    good, skipped = load_records([golden])
    if skipped and strict:
        raise UserError("golden records are unreadable or invalid: " + "; ".join(f"{p}: {w}" for p, w in skipped)
                        + f". Restore them from git or regenerate with `cl-bench regress --against {golden} --update`.")
    return [r for _, r in good]


def _fresh_runs(specs: Sequence[Any], out: Path, workers: int | None, log: Callable[[str], None]) -> list[dict]:
    from cl_bench.ops.sweep import run_specs

    result = run_specs(specs, out, checkpoint_every=0, workers=workers, max_retries=1, log=log)
    good, _ = load_records([out])
    for run_id, err in result.errors.items():
        log(f"[regress] run {run_id} failed: {err}")
    return [r for _, r in good]


def regress(
    against: str | Path,
    *,
    fresh: str | Path | None = None,
    out: str | Path | None = None,
    config: RegressConfig | None = None,
    workers: int | None = None,
    scenario_sets: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Rerun (or read) fresh records for the golden set under ``against`` and compare.

    Args:
        against: The golden directory.
        fresh: Read fresh records from here instead of rerunning.
        out: Where reruns are written (default: a temporary directory, removed after).
        config: Tolerances and options (default: ``against/tolerances.yaml`` + defaults).
        workers: Parallel reruns (default: CPU cores).
        scenario_sets: Scenario parameter overrides for the reruns (e.g. ``root``).
        log: Progress sink.
    """
    from cl_bench.ops.executors import stderr_log

    golden_dir = Path(against)
    golden = _load_golden(golden_dir, strict=True)
    if not golden:
        raise UserError(f"{golden_dir} holds no golden records; create them with `cl-bench regress --against "
                        f"{golden_dir} --update`")  # fmt: skip
    if config is None:
        config = RegressConfig(tolerances=load_tolerances(golden_dir))
    if fresh is not None:
        records, _ = load_records([fresh])
        return compare(golden, [r for _, r in records], config)
    specs = [rerun_spec(r, golden_dir, scenario_sets or {}) for r in golden]
    with tempfile.TemporaryDirectory(prefix="cl_bench_regress_") as tmp:
        target = Path(out) if out else Path(tmp)
        fresh_records = _fresh_runs(specs, target, workers, log or stderr_log)
    return compare(golden, fresh_records, config)


def update_golden(
    against: str | Path,
    *,
    fresh: str | Path | None = None,
    workers: int | None = None,
    scenario_sets: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """Regenerate the golden set, replace its records and return the diff as text.

    Runs come from ``against/baselines.yaml`` (a sweep spec; its ``out`` is
    ignored) when present, else from the stored requests of the current golden
    records; ``fresh`` takes finished records from a directory instead.
    """
    from cl_bench.core.record import write_record
    from cl_bench.engine.spec import run_id_for
    from cl_bench.ops.executors import stderr_log
    from cl_bench.ops.sweep import expand, load_sweep_spec

    log = log or stderr_log
    golden_dir = Path(against)
    golden_dir.mkdir(parents=True, exist_ok=True)
    old = _load_golden(golden_dir, strict=False)
    with tempfile.TemporaryDirectory(prefix="cl_bench_golden_") as tmp:
        if fresh is not None:
            new = [r for _, r in load_records([fresh])[0]]
        else:
            baselines = golden_dir / BASELINES_FILE
            if baselines.exists():
                specs = expand(load_sweep_spec(baselines))
            elif old:
                specs = [rerun_spec(r, golden_dir, scenario_sets or {}) for r in old]
            else:
                raise UserError(f"{golden_dir} has neither {BASELINES_FILE} nor golden records to regenerate")
            new = _fresh_runs(specs, Path(tmp), workers, log)
            if len(new) != len({run_id_for(s) for s in specs}):
                raise UserError(f"only {len(new)} of {len(specs)} golden runs completed; the golden set was "
                                f"not changed. See the failures above.")  # fmt: skip
        report = compare(old, new, RegressConfig(default_tol=0.0, spread=0.0))
        changed = [c for c in report.comparisons if c.delta != 0 or c.direction == "undefined"]
        old_cells, new_cells = {cell_key(r) for r in old}, {cell_key(r) for r in new}
        lines = [format_table(changed, f"golden values that change ({len(changed)}):") if changed
                 else "no golden metric value changes"]  # fmt: skip
        lines += [f"new cell: {cell_label(r)} seed {r['seed']}" for r in new if cell_key(r) not in old_cells]
        lines += [f"removed cell: {cell_label(r)} seed {r['seed']}" for r in old if cell_key(r) not in new_cells]
        for child in golden_dir.iterdir():
            if child.is_dir() and (child / "run.json").exists():
                shutil.rmtree(child)
        for r in new:
            write_record(golden_dir / r["run_id"], r)
    lines.append(f"golden set {golden_dir} now holds {len(new)} records")
    return "\n".join(lines)
