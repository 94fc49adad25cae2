"""Two-phase hyper-parameter protocol: tune on one scenario, evaluate unchanged on another.

Phase 1 searches each method's hyper-parameters (grid or random, within a
budget of configurations per method) on a *tuning* scenario and picks the best
by one metric, averaged over the tuning seeds. Phase 2 runs the chosen
configuration, unchanged, on a separate *evaluation* scenario with the same
structure (number of experiences, classes per experience, setting) but other
data — e.g. Split-Digits for tuning and Split-MNIST for evaluation. The score
reported for a method is its phase-2 score, which measures how well its
hyper-parameters generalise rather than how well they were fitted.

A tune spec is a YAML mapping::

    methods: [er, ewc]
    tune_scenario: {name: split_digits}
    eval_scenario: {name: split_mnist, root: ../shared/data/mnist}
    search:
      er: {lr: [0.01, 0.1], buffer_size: [50, 200]}         # lists: grid axes / random choices
      ewc: {lambda: {log_uniform: [1, 1000]}, lr: [0.01, 0.1]}
    strategy: random        # or grid
    budget: 4               # configurations per method
    seeds: [0]              # tuning seeds
    eval_seeds: [0, 1]
    metric: final_acc
    protocol: {eval_every: 20}
    out: results/tune

References:
    Cha & Cho, "Hyperparameters in Continual Learning: A Reality Check",
    arXiv:2403.09066 (TMLR 2025): the Generalizable Two-phase Evaluation Protocol.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_bench.core.config import read_yaml_file
from cl_bench.core.errors import UserError
from cl_bench.report.leaderboard import TUNE_FILE, Cell, higher_is_better

TUNE_KEYS = ("methods", "tune_scenario", "eval_scenario", "search", "strategy", "budget", "seeds", "eval_seeds",
             "metric", "protocol", "out", "search_seed", "checkpoint_every", "device")  # fmt: skip
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")


@dataclass(frozen=True)
class TuneSpec:
    """A two-phase tuning request (see the module docstring for the YAML form)."""

    methods: tuple[str, ...]
    tune_scenario: Mapping[str, Any]
    eval_scenario: Mapping[str, Any]
    search: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    strategy: str = "grid"
    budget: int = 8
    seeds: tuple[int, ...] = (0,)
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    metric: str = "final_acc"
    protocol: Mapping[str, Any] = field(default_factory=dict)
    out: str = "results/tune"
    search_seed: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"


def _is_dist(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and next(iter(v)) in DISTRIBUTIONS


def candidates(space: Mapping[str, Any], strategy: str, budget: int, seed: int) -> list[dict[str, Any]]:
    """Configurations to try for one method.

    Grid: every combination of the list values; if there are more than
    ``budget``, a seeded random subset of ``budget`` of them. Random: ``budget``
    draws, each parameter from its list (uniformly) or distribution
    (``{uniform: [a, b]}``, ``{log_uniform: [a, b]}``, ``{int_uniform: [a, b]}``).
    Scalars are fixed values. With an empty space: the defaults, once.
    """
    rng = random.Random(seed)
    if not space:
        return [{}]
    if strategy == "grid":
        keys = list(space)
        axes = [v if isinstance(v, list) else [v] for v in space.values()]
        grid = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]
        return grid if len(grid) <= budget else [grid[i] for i in sorted(rng.sample(range(len(grid)), budget))]
    out: list[dict[str, Any]] = []
    for _ in range(budget * 20):
        if len(out) == budget:
            break
        cfg = {k: _draw(v, rng) for k, v in space.items()}
        if cfg not in out:
            out.append(cfg)
    return out


def _draw(v: Any, rng: random.Random) -> Any:
    if isinstance(v, list):
        return rng.choice(v)
    if _is_dist(v):
        kind, (lo, hi) = next(iter(v.items()))
        if kind == "uniform":
            return round(rng.uniform(lo, hi), 6)
        if kind == "log_uniform":
            return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
        return rng.randint(int(lo), int(hi))
    return v


def _scenario(value: Any, key: str, errors: list[str]) -> dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        errors.append(f"{key}: must be a scenario name or a mapping with name: and parameters")
        return {}
    return dict(value)


def parse_tune_spec(data: Any, source: str = "the tune spec") -> TuneSpec:
    """Build and fully validate a :class:`TuneSpec`; every problem is reported at once.

    Raises:
        UserError: Listing all problems.
    """
    from cl_bench.core.registry import METHODS, SCENARIOS
    from cl_bench.engine.spec import SCALAR_FIELDS, RunSpec, check_scalar, check_seeds
    from cl_bench.metrics import METRIC_SPECS

    if not isinstance(data, dict):
        raise UserError(f"{source} must be a YAML mapping (methods:, tune_scenario:, eval_scenario:, search:, ...)")
    errors: list[str] = []
    unknown = sorted(set(data) - set(TUNE_KEYS))
    if unknown:
        errors.append(f"unknown top-level keys {unknown} (allowed: {', '.join(TUNE_KEYS)})")
    methods = data.get("methods")
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        errors.append(f"methods: must be a non-empty list of names, got {methods!r}")
        methods = []
    tune_sc = _scenario(data.get("tune_scenario"), "tune_scenario", errors)
    eval_sc = _scenario(data.get("eval_scenario"), "eval_scenario", errors)
    search = data.get("search") or {}
    if not isinstance(search, dict) or not all(isinstance(v, dict) for v in search.values()):
        errors.append("search: must map method names to {parameter: [values] or {distribution: [low, high]}}")
        search = {}
    strategy = data.get("strategy", "grid")
    if strategy not in ("grid", "random"):
        errors.append(f"strategy: must be grid or random, got {strategy!r}")
    budget = data.get("budget", 8)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        errors.append(f"budget: must be an integer >= 1 (configurations per method), got {budget!r}")
        budget = 1
    seeds_lists = {}
    for key, default in (("seeds", [0]), ("eval_seeds", [0, 1, 2])):
        try:
            seeds_lists[key] = tuple(dict.fromkeys(check_seeds(data.get(key, default), key, source)))
        except UserError as err:
            errors.append(str(err))
            seeds_lists[key] = tuple(default)
    scalars = {"out": data.get("out", "results/tune"), "search_seed": data.get("search_seed", 0),
               "checkpoint_every": data.get("checkpoint_every", 50), "device": data.get("device", "cpu")}  # fmt: skip
    for key, value in scalars.items():
        try:  # the same checks (and messages) as a run's own --config file
            check_scalar(key, value, *SCALAR_FIELDS.get(key, (int, None)), source)
        except UserError as err:
            errors.append(str(err))
    metric = data.get("metric", "final_acc")
    if metric not in METRIC_SPECS:
        errors.append(f"metric: unknown metric {metric!r}; see `cl-bench list metrics`")
    protocol = data.get("protocol") or {}
    try:  # the protocol every run shares, checked as a run's own mapping is
        RunSpec.from_mapping({"protocol": protocol}, source)
    except UserError as err:
        errors.append(str(err))
    for name in methods:
        try:
            METHODS.get(name)
        except UserError as err:
            errors.append(str(err))
            continue
        for key, value in (search.get(name) or {}).items():
            if strategy == "grid" and _is_dist(value):
                errors.append(f"search: {name}.{key} is a distribution, which only strategy: random can sample")
            if _is_dist(value):
                lo_hi = next(iter(value.values()))
                if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(x, (int, float)) for x in lo_hi)
                        and lo_hi[0] < lo_hi[1] and (next(iter(value)) != "log_uniform" or lo_hi[0] > 0)):
                    errors.append(f"search: {name}.{key}: a distribution takes [low, high] with low < high "
                                  f"(and low > 0 for log_uniform), got {lo_hi!r}")  # fmt: skip
                    continue
                samples = lo_hi
            else:
                samples = value if isinstance(value, list) else [value]
            for v in samples:
                try:
                    METHODS.config(name, {key: v})
                except UserError as err:
                    errors.append(str(err))
    for name in search:
        if name not in methods:
            errors.append(f"search: {name!r} is not one of the methods {methods}")
    for key, sc in (("tune_scenario", tune_sc), ("eval_scenario", eval_sc)):
        if sc:
            try:
                SCENARIOS.config(sc["name"], {k: v for k, v in sc.items() if k != "name"})
            except UserError as err:
                errors.append(f"{key}: {err}")
    if not errors:
        errors += _structure_errors(tune_sc, eval_sc)
    if errors:
        raise UserError(f"{source} has {len(errors)} problem{'s' if len(errors) > 1 else ''}; nothing was run: "
                        + " ".join(f"({i}) {e}" for i, e in enumerate(dict.fromkeys(errors), 1)))  # fmt: skip
    return TuneSpec(tuple(dict.fromkeys(methods)), tune_sc, eval_sc, search, strategy, budget, seeds_lists["seeds"],
                    seeds_lists["eval_seeds"], metric, protocol, scalars["out"], scalars["search_seed"],
                    scalars["checkpoint_every"], scalars["device"])  # fmt: skip


def structure(scenario: Any) -> tuple[Any, ...]:
    """What two scenarios must share for the protocol: setting and classes per experience."""
    return scenario.setting, tuple(len(e.classes) for e in scenario)


def _structure_errors(tune_sc: Mapping[str, Any], eval_sc: Mapping[str, Any]) -> list[str]:
    from cl_bench.core.registry import SCENARIOS

    built = []
    for key, sc in (("tune_scenario", tune_sc), ("eval_scenario", eval_sc)):
        try:
            built.append(SCENARIOS.create(sc["name"], **{k: v for k, v in sc.items() if k != "name"}))
        except UserError as err:
            return [f"{key}: {err}"]
    a, b = (structure(s) for s in built)
    if a != b:
        return [f"the tuning and evaluation scenarios must have the same structure (setting, classes per "
                f"experience): {tune_sc['name']} has {a[0]} with {list(a[1])}, {eval_sc['name']} has {b[0]} "
                f"with {list(b[1])}"]  # fmt: skip
    if built[0].spec_hash == built[1].spec_hash:
        return ["the tuning and evaluation scenarios are the same stream; phase 2 must use other data"]
    return []


def load_tune_spec(path: str | Path) -> TuneSpec:
    """Read and validate a tune spec YAML file."""
    path = Path(path)
    data = read_yaml_file(path, "tune spec")
    return parse_tune_spec(data, f"tune spec {path}")


def _cell_json(c: Cell) -> dict[str, Any]:
    return {"mean": None if math.isnan(c.mean) else c.mean, "std": None if math.isnan(c.std) else c.std, "n": c.n}


def _score(out: Path, specs: list[Any], metric: str) -> Cell:
    from cl_bench.core.record import RecordError, load_record
    from cl_bench.engine.spec import run_id_for

    values = []
    for s in specs:
        try:
            record = load_record(out / run_id_for(s))
        except RecordError:
            continue
        if record["status"] == "completed":
            values.append(record["metrics"].get(metric))
    return Cell.of(values)


def run_tune(
    spec: TuneSpec,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both phases and write ``<out>/tune.json``; returns that summary.

    Phase-1 runs go to ``<out>/phase1``, phase-2 runs to ``<out>/phase2``; like
    a sweep, a restarted tune skips completed runs and resumes interrupted ones.
    """
    from cl_bench.core import atomic
    from cl_bench.engine.spec import RunSpec, run_id_for
    from cl_bench.ops.sweep import run_specs

    out = Path(spec.out)

    def run_spec(method: str, config: Mapping[str, Any], scenario: Mapping[str, Any], seed: int) -> RunSpec:
        return RunSpec.from_mapping({"method": {"name": method, **config}, "scenario": dict(scenario),
                                     "protocol": dict(spec.protocol), "seed": seed, "device": spec.device},
                                    "the tune spec")  # fmt: skip

    plans: dict[str, list[tuple[dict[str, Any], list[Any]]]] = {}
    for i, method in enumerate(spec.methods):
        cands = candidates(spec.search.get(method) or {}, spec.strategy, spec.budget, spec.search_seed + i)
        plans[method] = [(c, [run_spec(method, c, spec.tune_scenario, s) for s in spec.seeds]) for c in cands]
    phase1 = [rs for runs in plans.values() for _, group in runs for rs in group]
    opts = {"checkpoint_every": spec.checkpoint_every, "executor": executor, "workers": workers, "address": address,
            "log": log}  # fmt: skip
    r1 = run_specs(phase1, out / "phase1", **opts)
    sign = 1.0 if higher_is_better(spec.metric) else -1.0
    chosen: dict[str, tuple[dict[str, Any], Cell, list[dict[str, Any]]]] = {}
    for method, runs in plans.items():
        scored = [(c, _score(r1.out, group, spec.metric), group) for c, group in runs]
        table = [{"config": c, "score": _cell_json(s), "run_ids": [run_id_for(g) for g in group]}
                 for c, s, group in scored]  # fmt: skip
        valid = [(c, s) for c, s, _ in scored if s.n]
        if not valid:
            raise UserError(f"no tuning run of {method} completed, so nothing can be chosen; see the failures above")
        best = max(valid, key=lambda cs: sign * cs[1].mean)
        chosen[method] = (best[0], best[1], table)
    phase2 = {m: [run_spec(m, c, spec.eval_scenario, s) for s in spec.eval_seeds] for m, (c, _, _) in chosen.items()}
    r2 = run_specs([rs for g in phase2.values() for rs in g], out / "phase2", **opts)
    summary = {
        "protocol": "two-phase (Cha & Cho, arXiv:2403.09066)", "metric": spec.metric, "strategy": spec.strategy,
        "budget": spec.budget, "tune_scenario": dict(spec.tune_scenario), "eval_scenario": dict(spec.eval_scenario),
        "seeds": list(spec.seeds), "eval_seeds": list(spec.eval_seeds),
        "methods": [{"method": m, "chosen": c, "tune_score": _cell_json(s),
                     "eval_score": _cell_json(_score(r2.out, phase2[m], spec.metric)),
                     "eval_run_ids": [run_id_for(g) for g in phase2[m]], "candidates": table}
                    for m, (c, s, table) in chosen.items()],
        "failed_runs": {**r1.errors, **r2.errors},
    }  # fmt: skip
    atomic.write_bytes(out / TUNE_FILE, (json.dumps(summary, indent=1) + "\n").encode())
    return summary
