"""The reproduction suite: one YAML recipe per published table cell, run as published and checked.

A recipe (``cl_bench/recipes/*.yaml``, shipped with the package) names the paper and table, the setting
(dataset, split, class order, network, epochs, batch, schedule, augmentation, buffer), the run it takes
(method, scenario and protocol as ``cl-bench run`` takes them, plus seeds), the reported value with its
metric and the tolerance that counts as reproduced, the data files needed and the compute estimate.
:func:`run_recipes` turns a recipe into runs (``Protocol.recipe`` names it in every record);
:mod:`cl_bench.ops.reproduce_board` compares the records with the reported values.

``--smoke`` runs the same recipe for ``SMOKE_ITERATIONS`` iterations per experience on whatever data it is
given (tests write tiny files in the real formats), with the recipe's own ``smoke:`` overrides for what a
test cannot supply (a 330 MB ViT-B/16 weight file, a RobustBench checkpoint): the method's tiny
conformance backbone, a source model trained for one epoch.

References:
    Buzzega et al., "Rethinking experience replay: a bag of tricks" (ICPR 2020): reproduction needs the
        full recipe (augmentation, schedule, buffer), not the method alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cl_bench.core.config import build_config, read_yaml_file
from cl_bench.core.errors import ConfigError, DataError, UserError
from cl_bench.core.registry import METHODS, METRICS, SCENARIOS
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.report.leaderboard import Reported

SMOKE_ITERATIONS = 2
_SECTIONS = ("method", "scenario", "protocol")
_WHEN = ("always", "full", "smoke")


@dataclass(frozen=True)
class DataFile:
    """Data a recipe needs: a folder parameter and the files in it, or a file parameter.

    Attributes:
        param: ``scenario.NAME`` or ``method.NAME`` whose value is the folder (or the file).
        what: What the data is (e.g. "CIFAR-10 python batches").
        published: Where it is published (URL or repository).
        files: Files inside the folder, relative to it, each ``{path, md5}`` (md5 None = not published).
        checksum: Checksum of the published archive (or the file), with its algorithm, or None.
        env_default: Folder under ``$CL_BENCH_DATA`` used when ``param`` is not set.
        when: "always", "full" (not in smoke runs) or "smoke" (only in smoke runs).
    """

    param: str
    what: str
    published: str
    files: tuple[dict[str, Any], ...] = ()
    checksum: str | None = None
    env_default: str | None = None
    when: str = "always"


@dataclass(frozen=True)
class Recipe:
    """One published table cell and the run that reproduces it.

    Attributes:
        name: Unique name (the YAML file's stem).
        paper: Authors, title, venue of the method's paper.
        reported_in: Where the number is published (paper table or official repository file).
        method: Registered method name (the recipe is listed as unavailable until it is registered).
        scenario: Registered scenario name.
        method_config: Method config overrides.
        scenario_config: Scenario builder overrides.
        protocol: Protocol fields.
        seeds: Seeds to run (the paper's number of runs where it says).
        setting: Human-readable setting (dataset, split, class order, network, epochs, batch, schedule,
            augmentation, buffer).
        metric: Registered metric the reported value is in (fractions, as cl_bench's metrics).
        reported: The reported value.
        reported_std: Its reported standard deviation over runs, or None.
        tolerance: Largest ``|measured mean - reported|`` that counts as reproduced.
        tolerance_source: Why that tolerance (the paper's std, or the rule used).
        data: Data files needed.
        compute: Compute estimate (``gpu_hours`` and a note).
        smoke: Overrides (``method:``, ``scenario:``) applied only by ``--smoke``; ``method: conformance``
            takes the method's ``conformance_config`` (its tiny test backbone).
        notes: Known differences from the published run.
    """

    name: str
    paper: str
    reported_in: str
    method: str
    scenario: str
    metric: str
    reported: float
    tolerance: float
    tolerance_source: str
    method_config: dict[str, Any] = field(default_factory=dict)
    scenario_config: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    setting: dict[str, Any] = field(default_factory=dict)
    reported_std: float | None = None
    data: tuple[DataFile, ...] = ()
    compute: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def available(self) -> bool:
        """Whether its method and scenario are registered here (methods other issues add light up later)."""
        return self.method in METHODS and self.scenario in SCENARIOS

    def row(self) -> dict[str, Any]:
        """The recipe as ``cl-bench reproduce list`` shows it."""
        return {"name": self.name, "paper": self.paper, "reported_in": self.reported_in,
                "scenario": self.scenario, "method": self.method, "metric": self.metric,
                "reported": self.reported, "reported_std": self.reported_std, "tolerance": self.tolerance,
                "seeds": len(self.seeds), "gpu_hours": self.compute.get("gpu_hours"),
                "available": self.available}  # fmt: skip


def recipe_dir() -> Path:
    """The folder of the shipped recipes."""
    return Path(str(resources.files("cl_bench") / "recipes"))


def _parse(path: Path) -> Recipe:
    raw = read_yaml_file(str(path), "recipe")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping (name:, paper:, method:, ...)")
    raw = {"name": path.stem, **raw}
    if raw["name"] != path.stem:
        raise ConfigError(f"recipe {path} is named {raw['name']!r}; a recipe's name is its file's stem")
    try:
        raw["data"] = tuple(DataFile(**{**d, "files": tuple(d.get("files") or ())}) for d in raw.get("data") or ())
        raw["seeds"] = tuple(raw.get("seeds") or (0,))
        recipe = Recipe(**raw)
    except TypeError as err:
        raise ConfigError(f"recipe {path} has a wrong field ({err}); see the fields of cl_bench.ops.reproduce."
                          f"Recipe") from None  # fmt: skip
    if recipe.metric not in METRICS:
        raise ConfigError(f"recipe {path}: unknown metric {recipe.metric!r}; see `cl-bench list metrics`")
    for d in recipe.data:
        if d.when not in _WHEN or d.param.partition(".")[0] not in ("method", "scenario"):
            raise ConfigError(f"recipe {path}: data entry {d.param!r} needs param method.NAME or scenario.NAME "
                              f"and when in {_WHEN}")  # fmt: skip
    return recipe


def load_recipes(folder: str | Path | None = None) -> dict[str, Recipe]:
    """Every recipe of ``folder`` (default: the shipped ones), by name."""
    base = Path(folder) if folder is not None else recipe_dir()
    return {r.name: r for r in (_parse(p) for p in sorted(base.glob("*.yaml")))}


def select(recipes: Mapping[str, Recipe], names: Sequence[str]) -> list[Recipe]:
    """The recipes named (``all`` = every available one); unknown names are a user error."""
    if list(names) == ["all"]:
        return [r for r in recipes.values() if r.available]
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise ConfigError(f"unknown recipe(s) {unknown}; `cl-bench reproduce list` shows the {len(recipes)} recipes")
    chosen = [recipes[n] for n in names]
    missing = [r for r in chosen if not r.available]
    if missing:
        raise ConfigError(
            "recipe(s) " + ", ".join(f"{r.name} (method {r.method!r})" for r in missing) + " need a method or "
            "scenario that is not registered in this installation yet; run the others, or install the plug-in "
            "that provides it (`cl-bench list methods`)."
        )
    return chosen


def _smoke_overrides(recipe: Recipe) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for section, values in recipe.smoke.items():
        if section == "method" and values == "conformance":
            values = dict(getattr(METHODS.get(recipe.method).obj, "conformance_config", {}))
        if section not in _SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"recipe {recipe.name}: smoke: takes method:, scenario:, protocol: mappings")
        out[section].update(values)
    return out


def specs_for(
    recipe: Recipe, sets: Mapping[str, Mapping[str, Any]] | None = None, *, smoke: bool = False,
    seeds: Sequence[int] | None = None, device: str = "cpu",
) -> list[RunSpec]:  # fmt: skip
    """The runs of ``recipe``: one :class:`RunSpec` per seed, with ``--set`` overrides (``sets``) on top."""
    layers = [{"method": recipe.method_config, "scenario": recipe.scenario_config, "protocol": recipe.protocol}]
    if smoke:
        layers.append(_smoke_overrides(recipe))
    layers.append({s: dict((sets or {}).get(s, {})) for s in _SECTIONS})
    merged: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    for layer in layers:
        for s in _SECTIONS:
            merged[s].update(layer.get(s) or {})
    proto = {**merged["protocol"], "recipe": recipe.name}
    if smoke:
        proto.update(max_iterations=SMOKE_ITERATIONS, epochs=1)
    protocol = build_config(Protocol, proto, f"recipe {recipe.name}'s protocol")
    return [RunSpec(recipe.method, dict(merged["method"]), recipe.scenario, dict(merged["scenario"]), protocol,
                    seed, device) for seed in (seeds if seeds is not None else recipe.seeds)]  # fmt: skip


def _located(root: Path, rel: str) -> bool:
    # Loaders accept the dataset folder or the folder holding it (e.g. cifar-10-batches-py/ or its parent).
    return (root / rel).exists() or (root / Path(rel).name).exists()


def check_data(recipe: Recipe, spec: RunSpec, *, smoke: bool = False) -> None:
    """Raise one :class:`DataError` paragraph naming every missing file, its checksum and where it is published.

    Fills folder parameters left unset from ``$CL_BENCH_DATA/<env_default>`` (in ``spec`` in place).
    """
    problems: list[str] = []
    for d in recipe.data:
        if d.when == ("full" if smoke else "smoke"):
            continue
        section, _, key = d.param.partition(".")
        config = spec.method_config if section == "method" else spec.scenario_config
        value = config.get(key)
        if value is None and d.env_default and os.environ.get("CL_BENCH_DATA"):
            value = str(Path(os.environ["CL_BENCH_DATA"]) / d.env_default)
            config[key] = value
        if value is None:
            missing = [f["path"] for f in d.files] or ["(a file)"]
        elif not d.files:
            missing = [] if Path(value).is_file() else [str(value)]
        else:
            missing = [f["path"] for f in d.files if not _located(Path(value), f["path"])]
        if missing:
            sums = "; ".join(f"{f['path']} md5 {f.get('md5') or 'not published'}" for f in d.files
                             if f["path"] in missing)  # fmt: skip
            where = f"--set {d.param}=" + ("DIR" if d.files else "FILE")
            problems.append(
                f"{d.what} ({where}{', now ' + repr(value) if value is not None else ', not set'}): missing "
                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
                f"{' (' + sums + ')' if sums else ''}; published at {d.published}"
                f"{'; archive checksum ' + d.checksum if d.checksum else ''}"
            )
    if problems:
        raise DataError(
            f"recipe {recipe.name} needs data that is not here. " + " | ".join(problems) + ". Download it from "
            "where it is published (cl_bench never downloads during a run), check the checksums, and pass "
            "the folder or file with the --set shown (or set CL_BENCH_DATA)."
        )


def run_recipes(
    names: Sequence[str], *, smoke: bool = False, sets: Mapping[str, Mapping[str, Any]] | None = None,
    out: str | Path = "runs/reproduce", seeds: Sequence[int] | None = None, device: str = "cpu",
    executor: str = "local", recipes: Mapping[str, Recipe] | None = None, workers: int | None = None,
    address: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run the named recipes (every seed); returns the records. Data is checked for all before any run starts.

    Args:
        names: Recipe names, or ``["all"]`` for every available one.
        smoke: ``SMOKE_ITERATIONS`` iterations per experience, with each recipe's ``smoke:`` overrides.
        sets: ``--set`` overrides by section (as :func:`cl_bench.cli.parse_sets` returns them).
        out: Directory receiving the run directories.
        seeds: Seeds to run instead of the recipe's.
        device: Device of every run.
        executor: "local" runs here one after another; "ray" hands every run to the sweep's Ray executor
            (a local cluster of ``workers`` CPUs, or the cluster at ``address``), with its checkpoints, retries
            and skipping of completed runs.
        recipes: Recipes to choose from (default: the shipped ones).
        workers: Runs in parallel on Ray (default: the CPU cores).
        address: Address of an existing Ray cluster.

    Raises:
        ConfigError: For an unknown executor. A run that fails on Ray is reported by its ``failed`` record and
            raised as a :class:`~cl_bench.core.errors.UserError` naming it, after the other runs finished.
    """
    from cl_bench.engine.runner import run

    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r} for reproduce run; use local or ray")
    chosen = select(recipes if recipes is not None else load_recipes(), names)
    planned = []
    for recipe in chosen:
        for spec in specs_for(recipe, sets, smoke=smoke, seeds=seeds, device=device):
            check_data(recipe, spec, smoke=smoke)
            planned.append(spec)
    if executor == "local":
        return [run(spec, out) for spec in planned]
    return _run_on_ray(planned, Path(out), workers, address)


def _run_on_ray(
    planned: Sequence[RunSpec], out: Path, workers: int | None, address: str | None
) -> list[dict[str, Any]]:
    """Every planned run as a sweep job on Ray (checkpointed, retried, completed runs skipped); their records."""
    from cl_bench.core.record import load_record
    from cl_bench.engine.spec import run_id_for
    from cl_bench.ops.sweep import run_specs

    result = run_specs(planned, out, executor="ray", workers=workers, address=address)
    failed = dict(result.errors)
    if failed:
        raise UserError(
            f"{len(failed)} of {len(planned)} reproduction run(s) failed on Ray: "
            + "; ".join(f"{rid}: {err}" for rid, err in sorted(failed.items()))
            + f". Each failed run's record in {out} holds its traceback; fix the cause and rerun the same command "
            "(completed runs are skipped, interrupted ones resume)."
        )
    return [load_record(out.resolve() / run_id_for(spec) / "run.json") for spec in planned]


def reported_values(recipes: Mapping[str, Recipe] | None = None) -> dict[str, Reported]:
    """The published value of every recipe (default: the shipped ones), by recipe name, for the leaderboard."""
    chosen = recipes if recipes is not None else load_recipes()
    return {name: Reported(name, r.reported_in, r.metric, r.reported, r.reported_std, r.tolerance)
            for name, r in chosen.items()}  # fmt: skip


def recipe_command(recipe: Recipe) -> str:
    """The one command that runs ``recipe`` for a user who has the data and the weights."""
    sets = " ".join(f"--set {d.param}={'DIR' if d.files else 'FILE'}" for d in recipe.data if d.when != "smoke")
    return f"cl-bench reproduce run {recipe.name} {sets}".strip()


__all__ = ["SMOKE_ITERATIONS", "DataFile", "Recipe", "check_data", "load_recipes", "recipe_command",
           "recipe_dir", "reported_values", "run_recipes", "select", "specs_for"]  # fmt: skip
