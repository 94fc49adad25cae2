"""Avalanche benchmarks as cl_bench scenarios (``avalanche:<Benchmark>``)."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import torch

from cl_bench.bridges.avalanche.params import (
    AVALANCHE_VERSION,
    PREFIX,
    avalanche_module,
    close_matches,
    config_class,
    parameters_of,
)
from cl_bench.core.config import config_to_dict
from cl_bench.core.errors import DataError, UserError
from cl_bench.core.registry import SCENARIOS, Entry
from cl_bench.core.types import Experience, Scenario, TensorData

# -- benchmarks as scenarios --------------------------------------------------------------------------------


def _tensors(dataset: Any, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, labels and task labels of an Avalanche dataset, with its evaluation transforms."""
    if hasattr(dataset, "eval"):
        dataset = dataset.eval()  # a one-off random crop would be frozen into the stored tensors
    loader = torch.utils.data.DataLoader(dataset, batch_size=1024, shuffle=False,
                                         collate_fn=getattr(dataset, "collate_fn", None))  # fmt: skip
    xs, ys, ts = [], [], []
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise DataError(f"{what} yields {type(batch).__name__} batches; cl_bench needs (x, y[, task]) tuples")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]).long())
        ts.append(torch.as_tensor(batch[2]).long() if len(batch) > 2 else torch.zeros(len(batch[1]), dtype=torch.long))
    if not xs:
        raise DataError(f"{what} is empty")
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def scenario_from_benchmark(
    benchmark: Any,
    name: str = f"{PREFIX}:benchmark",
    spec: Mapping[str, Any] | None = None,
    protocol_defaults: Mapping[str, Any] | None = None,
) -> Scenario:
    """A cl_bench :class:`~cl_bench.core.types.Scenario` holding an Avalanche benchmark's streams as tensors.

    Experience i pairs ``train_stream[i]`` with ``test_stream[i]``. The setting is ``task_il``
    when the experiences carry different task labels, ``domain_il`` when every experience has
    the same classes (e.g. PermutedMNIST), else ``class_il``. Avalanche's evaluation transforms
    are applied once to both streams (its training augmentations are not).

    Args:
        benchmark: An Avalanche benchmark with ``train_stream`` and ``test_stream``.
        name: The scenario name written into records.
        spec: What defines the stream; default: a digest of all its tensors.
        protocol_defaults: Training protocol values for this stream (e.g. ``{"batch_size": 32}``).

    Raises:
        DataError: If the streams are missing, of different lengths, or not (x, y[, task]) data.
    """
    try:
        train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    except AttributeError:
        raise DataError(
            f"{type(benchmark).__name__} is not an Avalanche benchmark (it needs train_stream and test_stream); "
            f"build one with e.g. avalanche.benchmarks.scenarios.deprecated.generators.nc_benchmark"
        ) from None
    if not train_stream or len(train_stream) != len(test_stream):
        raise DataError(
            f"the benchmark's train and test streams have {len(train_stream)} and {len(test_stream)} experiences; "
            f"cl_bench pairs them one to one, so they must be equally long and not empty"
        )
    parts = []
    for i, (tr, te) in enumerate(zip(train_stream, test_stream, strict=True)):
        parts.append((_tensors(tr.dataset, f"train experience {i}"), _tensors(te.dataset, f"test experience {i}")))
    task_sets = [set(p[0][2].tolist()) for p in parts]
    class_sets = [tuple(sorted(set(p[0][1].tolist()))) for p in parts]
    n_classes = int(getattr(benchmark, "n_classes", 0) or 1 + max(int(p[k][1].max()) for p in parts for k in (0, 1)))
    if len({frozenset(s) for s in task_sets}) > 1:
        setting = "task_il"
        if any(len(s) != 1 or max(s) >= len(parts) for s in task_sets):
            raise DataError(
                f"the benchmark's experiences carry task labels {[sorted(s) for s in task_sets]}; cl_bench needs one "
                f"task label per experience, below the number of experiences ({len(parts)})"
            )
    elif len(parts) > 1 and len(set(class_sets)) == 1:
        setting = "domain_il"
    else:
        setting = "class_il"
    experiences = []
    for i, ((xtr, ytr, ttr), (xte, yte, _)) in enumerate(parts):
        task_id = int(ttr[0]) if setting == "task_il" else None
        experiences.append(Experience(i, TensorData(xtr, ytr), TensorData(xte, yte), class_sets[i], task_id,
                                      {"source": "avalanche"}))  # fmt: skip
    if spec is None:
        spec = {"dataset": name, "content_digest": _digest([t for p in parts for s in p for t in s[:2]])}
    spec = {**spec, "n_experiences": len(parts), "classes": [list(c) for c in class_sets]}
    return Scenario(name, experiences, dict(spec), n_classes, setting, dict(protocol_defaults or {}))


def register_benchmark(name: str, benchmark: Any, *, reference: str, description: str | None = None) -> None:
    """Register an Avalanche benchmark (or a zero-argument function making one) as scenario ``name``.

    The benchmark is converted on first use and cached, so ``run(RunSpec(scenario=name, ...))``
    and ``cl-bench`` commands in the same process can use it like a built-in scenario.
    """
    made: list[Scenario] = []

    def build() -> Scenario:
        if not made:
            bm = benchmark() if callable(benchmark) and not hasattr(benchmark, "train_stream") else benchmark
            made.append(scenario_from_benchmark(bm, name))
        return made[0]

    build.__doc__ = description or f"Avalanche benchmark {type(benchmark).__name__} registered as {name!r}."
    SCENARIOS.add(name, build, reference=reference, description=description)


@cache
def benchmarks() -> dict[str, Callable[..., Any]]:
    """The benchmark builders of ``avalanche.benchmarks.classic`` by name (imports Avalanche)."""
    avalanche_module()
    import avalanche.benchmarks.classic as classic

    return {n: f for n, f in vars(classic).items() if n[:1].isupper() and callable(f) and not n.endswith("Metric")
            and (inspect.isfunction(f) or inspect.isclass(f))}  # fmt: skip


def _benchmark_entry(name: str) -> Entry[Any]:
    found = benchmarks()
    if name not in found:
        raise UserError(
            f"Avalanche {avalanche_module().__version__} has no classic benchmark {name!r}."
            f"{close_matches(name, list(found))} "
            f"The benchmarks are: {', '.join(sorted(found))}."
        )
    fn = found[name]
    owner = f"scenario '{PREFIX}:{name}'"
    params = parameters_of(fn, set(), {}, set(), owner)
    config = config_class(f"Avalanche{name}Config", params, None, owner)

    def build(**kwargs: Any) -> Scenario:
        args = {p.target: kwargs[p.name] for p in params}
        try:
            bm = fn(**{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()})
        except (RuntimeError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(
                f"Avalanche's {name} could not load its dataset ({first}). It downloads on first use, which "
                f"needs internet; otherwise put the files where it looks (--set scenario.dataset_root=DIR, in "
                f"the layout torchvision/Avalanche expect) and run again."
            ) from None
        # Where the files live does not change the stream: roots stay out of the spec (and its hash).
        given = {k: v for k, v in config_to_dict(config(**kwargs)).items() if "root" not in k}
        spec = {"dataset": f"{PREFIX}:{name}", "params": given, "avalanche": avalanche_module().__version__}
        return scenario_from_benchmark(bm, f"{PREFIX}:{name}", spec)

    build.__doc__ = f"Avalanche's classic benchmark {name}, as tensors."
    reference = f"Avalanche {AVALANCHE_VERSION} benchmark avalanche.benchmarks.classic.{name} (Carta et al., JMLR 2023)"
    return Entry(f"{PREFIX}:{name}", build, config, f"Avalanche {name} (bridge)", reference)


SCENARIOS.add_bridge(PREFIX, _benchmark_entry)

__all__ = ["benchmarks", "register_benchmark", "scenario_from_benchmark"]
