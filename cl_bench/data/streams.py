"""Helpers scenario builders share: class orders, stratified splits, class-split streams.

These are core utilities, not scenarios: builders in ``cl_bench.scenarios``
call them so that every class-split stream orders, splits and records its
classes the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.types import Experience, Scenario, TensorData


def _numpy_legacy_permutation(seed: int) -> Callable[[int], list[int]]:
    # ``np.random.seed(seed); np.random.permutation(n)`` without touching numpy's global state.
    return lambda n: np.random.RandomState(seed).permutation(n).tolist()


NAMED_CLASS_ORDERS: dict[str, Callable[[int], list[int]]] = {
    # PyCIL (Zhou et al., 2023; utils/data_manager.py) and PILOT shuffle with
    # np.random.seed(1993); np.random.permutation(n_classes) — the order of most
    # recent class-incremental CIFAR-100 / ImageNet-R tables.
    "pycil1993": _numpy_legacy_permutation(1993),
}
"""Fixed class orders from papers' code, by name: each maps a class count to a permutation."""


def resolve_class_order(order: str | tuple[int, ...], n_classes: int, seed: int) -> list[int]:
    """Turn a class-order request into a permutation of ``range(n_classes)``.

    Args:
        order: "seeded" (a permutation drawn from ``seed``), "identity", a name
            in :data:`NAMED_CLASS_ORDERS` (fixed orders that do not depend on
            ``seed``, e.g. "pycil1993"), or an explicit sequence of every class once.
        n_classes: Number of classes in the dataset.
        seed: Seed of the "seeded" permutation.

    Raises:
        ConfigError: For an unknown name or a sequence that is not a permutation.
    """
    if order == "identity":
        return list(range(n_classes))
    if order == "seeded":
        return torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    if isinstance(order, str) and order in NAMED_CLASS_ORDERS:
        return NAMED_CLASS_ORDERS[order](n_classes)
    if isinstance(order, str) and "," in order:
        try:
            order = tuple(int(c) for c in order.split(","))
        except ValueError:
            pass
    if isinstance(order, str):
        names = ", ".join(repr(n) for n in ("seeded", "identity", *NAMED_CLASS_ORDERS))
        raise ConfigError(f"class_order must be one of {names} or a list of all {n_classes} classes, got {order!r}")
    if sorted(order) != list(range(n_classes)):
        raise ConfigError(f"class_order must list each of the {n_classes} classes exactly once, got {list(order)}")
    return list(order)


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split example indices per class into train and test parts, deterministically.

    Returns:
        Sorted train indices and sorted test indices.

    Raises:
        ConfigError: If ``test_fraction`` is not strictly between 0 and 1.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(len(idx) * test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def split_by_class(
    name: str,
    train: TensorData,
    test: TensorData,
    *,
    n_experiences: int,
    class_order: str | tuple[int, ...],
    seed: int,
    setting: str,
    spec: dict[str, Any],
    protocol_defaults: dict[str, Any] | None = None,
    flip_invariant: bool = True,
) -> Scenario:
    """A class-incremental (or task-incremental) stream: disjoint class groups per experience.

    Classes are ordered by ``class_order`` and dealt into ``n_experiences``
    groups of (nearly) equal size; labels keep their dataset values. ``flip_invariant`` is the
    data's :attr:`Scenario.flip_invariant`.

    Raises:
        ConfigError: If the classes cannot be split into that many experiences,
            or the setting is not class_il / task_il.
    """
    n_classes = int(max(train.y.max(), test.y.max())) + 1
    if setting not in ("class_il", "task_il"):
        raise ConfigError(f"{name} supports setting class_il or task_il, got {setting!r}")
    if not 1 <= n_experiences <= n_classes:
        raise ConfigError(
            f"{name} has {n_classes} classes, so n_experiences must be 1..{n_classes}, got {n_experiences}"
        )
    order = resolve_class_order(class_order, n_classes, seed)
    cuts = [i * n_classes // n_experiences for i in range(n_experiences + 1)]
    groups = [order[cuts[i] : cuts[i + 1]] for i in range(n_experiences)]
    experiences = []
    for i, classes in enumerate(groups):
        cls = torch.tensor(classes)
        tr = torch.nonzero(torch.isin(train.y, cls)).flatten()
        te = torch.nonzero(torch.isin(test.y, cls)).flatten()
        if len(te) == 0:
            raise DataError(f"{name}: experience {i} (classes {sorted(classes)}) has no test examples, so it cannot "
                            f"be evaluated; every class needs test data (give each class test examples, or fewer "
                            f"experiences)")  # fmt: skip
        experiences.append(
            Experience(i, train.subset(tr), test.subset(te), tuple(sorted(classes)),
                       task_id=i if setting == "task_il" else None)
        )  # fmt: skip
    full_spec = {**spec, "n_experiences": n_experiences, "class_order": order, "seed": seed,
                 "classes_per_experience": [sorted(g) for g in groups]}  # fmt: skip
    return Scenario(name, experiences, full_spec, n_classes, setting, protocol_defaults,
                    flip_invariant=flip_invariant)


def with_data(scenario: Scenario, data: object) -> Scenario:
    """Attach which files ``scenario`` was read from (``Scenario.data``, e.g. "mnist test set (10000, IDX) at
    ROOT"): recorded as ``record["scenario"]["data"]`` and printed after a run, but kept out of the hashed spec,
    since the same files at another path are the same stream."""
    scenario.data = None if data is None else str(data)
    return scenario
