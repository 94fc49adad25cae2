"""Class-balanced memory banks of test samples for test-time adaptation (RoTTA's CSTU, NOTE's PBRS).

Both keep at most ``capacity`` unlabelled test images, grouped by the model's predicted class, so
that a temporally correlated stream (a few classes at a time) still yields balanced update batches.

* :class:`CSTUMemory` (category-balanced sampling with timeliness and uncertainty, RoTTA): a new
  sample enters if its class has room, or if it can replace the stored sample (of its own class, or
  of the majority classes when its class is under-represented) with the highest score
  ``lambda_t / (1 + exp(-age / capacity)) + lambda_u * H / ln C`` (old and uncertain samples go first),
  and only if that score exceeds the new sample's. Every insertion ages all stored samples by one.
* :class:`PBRSMemory` (prediction-balanced reservoir sampling, NOTE): while not full a sample is
  stored; then a sample of a non-majority class replaces a random sample of a random majority class,
  and a sample of a majority class replaces a random sample of its own class with probability
  ``stored_c / seen_c`` (reservoir sampling within the class).

References:
    Yuan, Xie & Li. "Robust Test-Time Adaptation in Dynamic Scenarios" (RoTTA). CVPR 2023, Sec. 3.2.
    Gong et al. "NOTE: Robust Continual Test-time Adaptation Against Temporal Correlation". NeurIPS
    2022, Sec. 3.2 (Algorithm 1). Facts read from github.com/mariodoebler/test-time-adaptation
    (methods/rotta.py ``CSTU``) and github.com/TaesikGong/NOTE (utils/memory.py ``PBRS``).
"""

from __future__ import annotations

import math
from typing import Any

import torch


class _ClassMemory:
    """Per-class lists of stored samples (image tensor plus bookkeeping) and their (de)serialisation."""

    def __init__(self, capacity: int, n_classes: int) -> None:
        if capacity < 1:
            raise ValueError(f"memory capacity must be >= 1, got {capacity}")
        self.capacity, self.n_classes = capacity, n_classes
        self.items: list[list[dict[str, Any]]] = [[] for _ in range(n_classes)]

    def __len__(self) -> int:
        return sum(len(c) for c in self.items)

    def nbytes(self) -> int:
        """Bytes of the stored images (the record's ``cost.buffer_bytes``)."""
        return sum(it["x"].numel() * it["x"].element_size() for c in self.items for it in c)

    def _majority(self) -> list[int]:
        sizes = [len(c) for c in self.items]
        return [i for i, s in enumerate(sizes) if s == max(sizes)]

    def images(self) -> torch.Tensor | None:
        """All stored images as one batch (class order), or None when empty."""
        xs = [it["x"] for c in self.items for it in c]
        return torch.stack(xs) if xs else None

    def state_dict(self) -> dict[str, Any]:
        """The stored samples."""
        return {"items": [[dict(it) for it in c] for c in self.items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.items = [[{**it, "x": it["x"].clone()} for it in c] for c in state["items"]]


class CSTUMemory(_ClassMemory):
    """RoTTA's category-balanced memory with timeliness and uncertainty (see the module docstring).

    Args:
        capacity: Samples kept (RoTTA: 64).
        n_classes: Number of classes C.
        lambda_t: Weight of the age term (1).
        lambda_u: Weight of the uncertainty term (1).
    """

    def __init__(self, capacity: int, n_classes: int, lambda_t: float = 1.0, lambda_u: float = 1.0) -> None:
        super().__init__(capacity, n_classes)
        self.lambda_t, self.lambda_u = lambda_t, lambda_u

    def _score(self, age: int, uncertainty: float) -> float:
        return self.lambda_t / (1 + math.exp(-age / self.capacity)) + self.lambda_u * uncertainty / math.log(
            self.n_classes
        )

    def add(self, x: torch.Tensor, label: int, uncertainty: float) -> None:
        """Offer one sample with its predicted class and prediction entropy."""
        if self._make_room(label, self._score(0, uncertainty)):
            self.items[label].append({"x": x.detach(), "uncertainty": uncertainty, "age": 0})
        for c in self.items:  # the reference ages every sample once per insertion attempt, new one included
            for it in c:
                it["age"] += 1

    def _make_room(self, label: int, new_score: float) -> bool:
        if len(self.items[label]) < self.capacity / self.n_classes:
            if len(self) < self.capacity:
                return True
            classes = self._majority()
        else:
            classes = [label]
        best: tuple[float, int, int] | None = None
        for c in classes:
            for i, it in enumerate(self.items[c]):
                s = self._score(it["age"], it["uncertainty"])
                if best is None or s >= best[0]:
                    best = (s, c, i)
        if best is None:
            return True
        if best[0] > new_score:
            self.items[best[1]].pop(best[2])
            return True
        return False

    def ages(self) -> torch.Tensor:
        """Ages of the stored samples divided by the capacity (same order as :meth:`images`)."""
        return torch.tensor([it["age"] / self.capacity for c in self.items for it in c], dtype=torch.float32)


class PBRSMemory(_ClassMemory):
    """NOTE's prediction-balanced reservoir sampling (see the module docstring).

    Args:
        capacity: Samples kept (NOTE: 64).
        n_classes: Number of classes C.
    """

    def __init__(self, capacity: int, n_classes: int) -> None:
        super().__init__(capacity, n_classes)
        self.seen = [0] * n_classes

    def add(self, x: torch.Tensor, label: int, g: torch.Generator) -> None:
        """Offer one sample with its predicted class; random choices draw from ``g``."""
        self.seen[label] += 1
        if len(self) < self.capacity or self._make_room(label, g):
            self.items[label].append({"x": x.detach()})

    def _make_room(self, label: int, g: torch.Generator) -> bool:
        majority = self._majority()
        if label not in majority:
            c = majority[int(torch.randint(len(majority), (), generator=g))]
        else:
            if float(torch.rand((), generator=g)) > len(self.items[label]) / self.seen[label]:
                return False
            c = label
        self.items[c].pop(int(torch.randint(len(self.items[c]), (), generator=g)))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": list(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = list(state["seen"])
