"""Sweep specs: a grid of methods x scenarios x seeds x overrides, validated up front.

A spec is a YAML mapping::

    methods: [finetune, er]
    scenarios: [split_digits]
    seeds: [0, 1]
    overrides: {er: {buffer_size: [50, 200]}}   # lists expand into the grid
    protocol: {eval_every: 10}
    out: results/runs

``overrides`` is keyed by a method or scenario name of the sweep. A list value
expands into the grid; a parameter that itself takes a list is written as a
list of lists (``class_order: [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]``). Every name,
key and value is checked against the registries' config dataclasses before
anything runs, and all problems are reported at once.

Running a sweep (:func:`run_sweep`) hands one job per run to an executor
(:mod:`cl_bench.ops.executors`). Run ids are deterministic, so a restarted sweep
finds its own records: completed runs are skipped, interrupted ones resume from
their checkpoints.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_bench.core.config import read_yaml_file
from cl_bench.core.errors import UserError

SPEC_KEYS = ("methods", "scenarios", "seeds", "overrides", "protocol", "out", "checkpoint_every", "device", "log")


@dataclass(frozen=True)
class SweepSpec:
    """A validated-on-expansion sweep request.

    Attributes:
        methods: Registered method names.
        scenarios: Registered scenario names.
        seeds: Run seeds.
        overrides: Method or scenario name -> parameter -> value or list of values.
        protocol: Protocol fields shared by every run (``eval_every``, ``epochs``, ...).
        out: Directory receiving one run directory per run.
        checkpoint_every: Checkpoint interval of every run, so interrupted runs resume.
        device: Device of every run.
        log: Experiment trackers every run writes to (``--log``; :mod:`cl_bench.report.trackers`).
    """

    methods: tuple[str, ...]
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)
    out: str = "results/runs"
    checkpoint_every: int = 50
    device: str = "cpu"
    log: tuple[str, ...] = ()


def _grid(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All combinations of ``params`` where list values expand."""
    keys = list(params)
    choices = [v if isinstance(v, list) else [v] for v in params.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def _names(value: Any, key: str, errors: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        errors.append(f"{key}: must be a non-empty list of names, got {value!r}")
        return ()
    return tuple(dict.fromkeys(value))


def parse_sweep_spec(data: Any, source: str = "the sweep spec") -> SweepSpec:
    """Build a :class:`SweepSpec` from a parsed YAML mapping and validate it completely.

    Raises:
        UserError: Listing every problem found (unknown keys, names, parameters, types).
    """
    from cl_bench.engine.spec import SCALAR_FIELDS, check_scalar, check_seeds

    if not isinstance(data, dict):
        raise UserError(f"{source} must be a YAML mapping with methods:, scenarios:, seeds:, ... keys")
    errors: list[str] = []
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        errors.append(f"unknown top-level keys {unknown} (allowed: {', '.join(SPEC_KEYS)})")
    methods = _names(data.get("methods"), "methods", errors)
    scenarios = _names(data.get("scenarios"), "scenarios", errors)
    try:
        seeds_raw = check_seeds(data.get("seeds", [0]), "seeds", source)
    except UserError as err:
        errors.append(str(err))
        seeds_raw = [0]
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        errors.append("overrides: must map a method or scenario name to {parameter: value or [values]}")
        overrides = {}
    protocol = data.get("protocol") or {}
    if not isinstance(protocol, dict):
        errors.append("protocol: must be a mapping (eval_every:, eval_subset:, epochs:, batch_size:)")
        protocol = {}
    checkpoint_every, out, device = data.get("checkpoint_every", 50), data.get("out", "results/runs"), data.get(
        "device", "cpu")
    for key, value in (("checkpoint_every", checkpoint_every), ("out", out), ("device", device)):
        try:  # the same check (and message) as a run's own --config file
            check_scalar(key, value, *SCALAR_FIELDS[key], source)
        except UserError as err:
            errors.append(str(err))
    checkpoint_every = checkpoint_every if isinstance(checkpoint_every, int) else 50
    trackers: tuple[str, ...] = ()
    try:
        from cl_bench.report.trackers import check_names

        trackers = check_names(data.get("log") or [], f"log: in {source}")
    except UserError as err:
        errors.append(str(err))
    spec = SweepSpec(methods, scenarios, tuple(dict.fromkeys(seeds_raw)), overrides, protocol, str(out),
                     checkpoint_every, str(device), trackers)  # fmt: skip
    errors.extend(validate(spec))
    if errors:
        raise UserError(
            f"{source} has {len(errors)} problem{'s' if len(errors) > 1 else ''}; nothing was run: "
            + " ".join(f"({i}) {e}" for i, e in enumerate(dict.fromkeys(errors), 1))
        )
    return spec


def validate(spec: SweepSpec, build_scenarios: bool = True) -> list[str]:
    """Every problem of ``spec`` as a message (empty when the sweep can run).

    Args:
        spec: The sweep.
        build_scenarios: Once names and types pass, also build each scenario
            configuration once, which catches values the builder rejects (e.g.
            too many experiences) and missing or corrupt data before any run starts.
    """
    from cl_bench.core.registry import METHODS, SCENARIOS
    from cl_bench.engine.spec import RunSpec

    errors: list[str] = []
    known: dict[str, Any] = {}
    for registry, names in ((METHODS, spec.methods), (SCENARIOS, spec.scenarios)):
        for name in names:
            try:
                registry.get(name)
                known[name] = registry
            except UserError as err:
                errors.append(str(err))
    for name in spec.overrides:
        if name not in spec.methods and name not in spec.scenarios:
            errors.append(
                f"overrides: {name!r} is neither a method nor a scenario of this sweep "
                f"(methods: {', '.join(spec.methods)}; scenarios: {', '.join(spec.scenarios)})"
            )
    for name, registry in known.items():
        params = dict(spec.overrides.get(name) or {})
        for key, value in params.items():  # each key alone first: one message per bad key or value
            for v in value if isinstance(value, list) else [value]:
                try:
                    registry.config(name, {key: v})
                except UserError as err:
                    errors.append(str(err))
        for combo in _grid(params):  # then whole combinations (cross-field checks)
            try:
                registry.config(name, combo)
            except UserError as err:
                errors.append(str(err))
    try:  # the protocol and device every run shares, checked as a run's own mapping is
        RunSpec.from_mapping({"protocol": dict(spec.protocol), "device": spec.device}, "the sweep spec")
    except UserError as err:
        errors.append(str(err))
    if build_scenarios and not errors:  # values the types allow but the builder rejects; missing data
        for name in spec.scenarios:
            for combo in _grid(dict(spec.overrides.get(name) or {})):
                try:
                    SCENARIOS.create(name, **combo)
                except UserError as err:
                    errors.append(f"scenario {name!r} with {combo}: {err}" if combo else str(err))
    return list(dict.fromkeys(errors))


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec YAML file."""
    path = Path(path)
    data = read_yaml_file(path, "sweep spec")
    return parse_sweep_spec(data, f"sweep spec {path}")


def expand(spec: SweepSpec) -> list[Any]:
    """The runs of ``spec`` as :class:`~cl_bench.engine.spec.RunSpec` objects, without duplicates.

    Order: scenario, method, method overrides, scenario overrides, seed.
    """
    from cl_bench.engine.spec import RunSpec, run_id_for

    runs: dict[str, Any] = {}
    for scenario in spec.scenarios:
        for method in spec.methods:
            for mc in _grid(spec.overrides.get(method) or {}):
                for sc in _grid(spec.overrides.get(scenario) or {}):
                    for seed in spec.seeds:
                        rs = RunSpec.from_mapping({
                            "method": {"name": method, **mc}, "scenario": {"name": scenario, **sc},
                            "protocol": dict(spec.protocol), "seed": seed, "device": spec.device,
                        }, "the sweep spec")  # fmt: skip
                        runs.setdefault(run_id_for(rs), rs)
    return list(runs.values())


@dataclass(frozen=True)
class SweepResult:
    """Outcome of :func:`run_sweep`.

    Attributes:
        out: The directory holding the run directories.
        outcomes: run_id -> "completed", "resumed", "skipped" (completed earlier),
            "failed" or "busy" (another live process holds the run).
        errors: run_id -> error message for failed or busy runs.
    """

    out: Path
    outcomes: dict[str, str]
    errors: dict[str, str]

    @property
    def ok(self) -> bool:
        """True when every run of the sweep has a completed record."""
        return all(o in ("completed", "resumed", "skipped") for o in self.outcomes.values())


def run_sweep(
    spec: SweepSpec,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 1,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run every run of ``spec`` that has no completed record yet.

    Args:
        spec: A validated sweep spec.
        executor: "local" (a process pool) or "ray" (a local Ray cluster, or
            the cluster at ``address``).
        workers: Runs in parallel (default: the number of CPU cores).
        address: Address of an existing Ray cluster (ray executor only).
        max_retries: How often runs whose worker died are retried (resuming
            from their checkpoints) within this invocation.
        log: Receives progress lines (default: print to stderr).

    Returns:
        The outcome of every run.
    """
    return run_specs(expand(spec), spec.out, checkpoint_every=spec.checkpoint_every, executor=executor,
                     workers=workers, address=address, max_retries=max_retries, log=log,
                     trackers=spec.log)  # fmt: skip


def run_specs(
    runs: Sequence[Any],
    out: str | Path,
    *,
    checkpoint_every: int = 50,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 1,
    log: Callable[[str], None] | None = None,
    trackers: Sequence[str] = (),
) -> SweepResult:
    """Run the given :class:`~cl_bench.engine.spec.RunSpec` list like a sweep (see :func:`run_sweep`);
    ``trackers`` are the experiment trackers each run writes to."""
    from cl_bench.engine.spec import run_id_for
    from cl_bench.ops import executors

    log = log or executors.stderr_log
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    outcomes: dict[str, str] = {}
    jobs = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    for rs in runs:
        if executors.is_completed(out / run_id_for(rs)):
            outcomes[run_id_for(rs)] = "skipped"
        else:
            every = checkpoint_every if resumable(rs.method) else 0
            jobs.append(executors.Job(rs, str(out), every, threads, os.getcwd(), tuple(trackers)))
    progress = executors.Progress(len(runs), len(outcomes), min(workers, len(jobs)), log)
    log(f"[sweep] {len(runs)} runs in {out}: {len(outcomes)} already completed, {len(jobs)} to run "
        f"on {workers} {executor} worker{'s' if workers > 1 else ''}")  # fmt: skip
    if not jobs:
        results = []
    elif executor == "local":
        results = executors.run_local(jobs, workers, max_retries, progress)
    elif executor == "ray":
        results = executors.run_ray(jobs, workers, address, max_retries, progress)
    else:
        raise UserError(f"unknown executor {executor!r}; use local or ray")
    errors = {}
    for r in results:
        outcomes[r.run_id] = r.outcome
        if r.error:
            errors[r.run_id] = r.error
    return SweepResult(out, outcomes, errors)


def resumable(method: str) -> bool:
    """Whether runs of ``method`` can be checkpointed; a sweep does not checkpoint the others (e.g. ``avalanche:``
    methods, whose state lives in the other library's strategy), so they run instead of failing on the sweep's
    ``checkpoint_every``, and a killed one starts again."""
    from cl_bench.core.registry import METHODS

    try:
        return bool(METHODS.get(method).obj.caps.resumable)
    except Exception:  # an unknown name: validate() reports it
        return True


def summarize(result: SweepResult) -> str:
    """A short text summary of a sweep's outcomes, naming failed runs."""
    counts: dict[str, int] = {}
    for o in result.outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    lines = [f"sweep: {len(result.outcomes)} runs in {result.out}: "
             + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))]  # fmt: skip
    for run_id, err in sorted(result.errors.items()):
        lines.append(f"  {result.outcomes[run_id]}: {run_id}: {err.strip().splitlines()[-1] if err.strip() else err}")
    return "\n".join(lines)


def plan(spec: SweepSpec) -> list[tuple[str, str, str]]:
    """``(run_id, state, overrides)`` for every run; state is "completed", "resumable", "failed" or "new".

    ``overrides`` spells the grid values that tell the run apart (``er: buffer_size=50``), since run ids
    differ from one another only by a hash when the overrides are all that differs.
    """
    from cl_bench.engine.spec import run_id_for
    from cl_bench.ops import executors

    out = Path(spec.out)

    def spelled(rs: Any) -> str:
        pairs = ((rs.method, rs.method_config), (rs.scenario, rs.scenario_config))
        parts = [f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())) for name, cfg in pairs if cfg]
        if spec.checkpoint_every and not resumable(rs.method):
            parts.append(f"not checkpointed ({rs.method} cannot be resumed; a killed run starts again)")
        return "; ".join(parts)

    return [(run_id_for(rs), executors.state_of(out / run_id_for(rs)), spelled(rs)) for rs in expand(spec)]


__all__: Sequence[str] = ["SweepSpec", "SweepResult", "load_sweep_spec", "parse_sweep_spec", "expand",
                          "validate", "run_sweep", "run_specs", "summarize", "plan"]  # fmt: skip
