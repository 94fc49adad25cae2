"""Class-structured replay memories: a class-balanced buffer and a herding exemplar memory.

* :class:`ClassBalancedBuffer` keeps at most ``capacity`` examples split evenly over the classes
  seen so far: GDumb fills it greedily example by example; the stability-gap ER of De Lange et al.
  (and Avalanche's ``ClassBalancedBuffer``) rebuild it from memory + experience at each boundary.
* :class:`HerdingMemory` is iCaRL's fixed total memory: ``capacity // n_seen_classes`` exemplars per
  class, chosen by herding on L2-normalised features, kept in priority order so that shrinking a
  class drops its last-chosen exemplars (iCaRL, BiC, WA, PyCIL's ``build_rehearsal_memory``).

Both store examples as given (the stored form of :class:`~cl_bench.core.types.TensorData` for the
herding memory, model inputs for the balanced buffer) and draw only from generators they are handed
or own, so their state travels in checkpoints.

References:
    Prabhu et al. "GDumb: a simple approach that questions our progress in continual learning". ECCV 2020.
    Rebuffi et al. "iCaRL: Incremental classifier and representation learning". CVPR 2017 (Alg. 4, herding).
    De Lange et al. "Continual evaluation for lifelong learning: identifying the stability gap". ICLR 2023.
"""

from __future__ import annotations

from typing import Any

import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.method import held_bytes
from cl_bench.core.types import TensorData


def require_per_class_room(method: str, capacity: int, n_classes: int) -> None:
    """Refuse a class-balanced memory that cannot hold one example of every class of the stream."""
    if capacity < n_classes:
        raise ConfigError(
            f"{method} keeps a class-balanced memory, but buffer_size={capacity} is smaller than the "
            f"{n_classes} classes of this stream, so some class would get no slot at all. Set "
            f"--set buffer_size=N with N >= {n_classes} (the papers use 20 or more per class)."
        )


class ClassBalancedBuffer:
    """At most ``capacity`` examples, balanced over the classes seen so far.

    Args:
        capacity: Maximum number of stored examples (all classes together).
        seed: Seeds the buffer's own generator (evictions, sampling).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.t: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def nbytes(self) -> int:
        """Bytes of the filled slots (the record's ``cost.buffer_bytes``): inputs, labels, task ids."""
        return held_bytes(len(self), self.x, self.y, self.t)

    def _cat(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        t = torch.full_like(y, -1) if t is None else t.to(y.device)
        if self.x is None or self.y is None or self.t is None:
            return x, y, t
        return torch.cat([self.x, x]), torch.cat([self.y, y]), torch.cat([self.t, t])

    def add_greedy(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> None:
        """GDumb's greedy sampler, example by example.

        An example is stored while there is room; once full, it is stored only if its class holds
        fewer than ``capacity / n_seen_classes`` examples, replacing a random example of the
        currently largest class (Prabhu et al., Alg. 1).
        """
        if self.capacity == 0:
            return
        for i in range(len(y)):
            xs, ys, ts = self._cat(x[i : i + 1], y[i : i + 1], None if t is None else t[i : i + 1])
            if len(ys) <= self.capacity:
                self.x, self.y, self.t = xs, ys, ts
                continue
            classes, counts = torch.unique(ys[:-1], return_counts=True)
            n_seen = len(classes) + int(not (classes == y[i]).any())
            own = int(counts[classes == y[i]].sum())
            if own >= self.capacity / n_seen:
                continue
            largest = classes[counts.argmax()]
            candidates = torch.nonzero(ys[:-1] == largest).flatten()
            drop = candidates[torch.randint(len(candidates), (1,), generator=self.gen)].to(ys.device)
            keep = torch.ones(len(ys), dtype=torch.bool, device=ys.device)
            keep[drop] = False
            self.x, self.y, self.t = xs[keep], ys[keep], ts[keep]

    def rebuild(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> None:
        """Merge memory with new data and keep a uniform random subset of each class.

        Each seen class gets ``capacity // n_classes`` slots, the remainder going one each to the
        first classes in label order (Avalanche 0.6 ``ClassBalancedBuffer(adaptive_size=True)``).
        """
        xs, ys, ts = self._cat(x, y, t)
        sel = self.balanced_selection(ys)
        if sel is not None:
            self.x, self.y, self.t = xs[sel], ys[sel], ts[sel]

    def balanced_selection(self, ys: torch.Tensor) -> torch.Tensor | None:
        """Rows of ``ys`` (memory + new labels) that :meth:`rebuild` keeps; None when nothing is kept."""
        classes = torch.unique(ys)
        if self.capacity == 0 or len(classes) == 0:
            return None
        quota = [self.capacity // len(classes) + int(i < self.capacity % len(classes)) for i in range(len(classes))]
        keep = []
        for c, q in zip(classes.tolist(), quota, strict=True):
            idx = torch.nonzero(ys == c).flatten()
            order = torch.randperm(len(idx), generator=self.gen).to(idx.device)
            keep.append(idx[order[:q]])
        return torch.cat(keep)

    def sample_indices(self, n: int) -> torch.Tensor:
        """Rows of up to ``n`` stored examples drawn without replacement."""
        assert self.y is not None, "sample() on an empty buffer"
        return torch.randperm(len(self.y), generator=self.gen)[: min(n, len(self.y))].to(self.y.device)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``n`` stored examples drawn without replacement: inputs, labels, task ids (-1 = none)."""
        assert self.x is not None and self.y is not None and self.t is not None, "sample() on an empty buffer"
        idx = self.sample_indices(n)
        return self.x[idx], self.y[idx], self.t[idx]

    def state_dict(self) -> dict[str, Any]:
        """Contents and generator state."""
        return {"x": self.x, "y": self.y, "t": self.t, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.x, self.y, self.t = state["x"], state["y"], state["t"]
        self.gen.set_state(state["gen"])


class LogitClassBalancedBuffer(ClassBalancedBuffer):
    """A :class:`ClassBalancedBuffer` that also keeps each stored example's logits.

    Avalanche 0.6's DER memory (``ClassBalancedBufferWithLogits``): rebuilt at an experience's end
    from memory + the experience, the new examples carrying the logits of the network trained on that
    experience; examples already in memory keep the logits they were stored with.

    References:
        Buzzega et al. "Dark experience for general continual learning: a strong, simple baseline". NeurIPS 2020.
        Avalanche 0.6 ``avalanche/training/supervised/der.py`` (``ClassBalancedBufferWithLogits.update``).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        super().__init__(capacity, seed)
        self.logits: torch.Tensor | None = None

    def rebuild_with_logits(
        self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, t: torch.Tensor | None = None
    ) -> None:
        """:meth:`rebuild` with the new examples' (detached) logits kept beside them."""
        xs, ys, ts = self._cat(x, y, t)
        ls = logits.detach() if self.logits is None else torch.cat([self.logits, logits.detach()])
        sel = self.balanced_selection(ys)
        if sel is not None:
            self.x, self.y, self.t, self.logits = xs[sel], ys[sel], ts[sel], ls[sel]

    def sample_with_logits(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``n`` stored examples without replacement: inputs, labels, task ids, logits."""
        assert self.x is not None and self.y is not None and self.t is not None and self.logits is not None
        idx = self.sample_indices(n)
        return self.x[idx], self.y[idx], self.t[idx], self.logits[idx]

    def nbytes(self) -> int:
        """Bytes of the filled slots (the record's ``cost.buffer_bytes``): inputs, labels, task ids, logits."""
        return held_bytes(len(self), self.x, self.y, self.t, self.logits)

    def state_dict(self) -> dict[str, Any]:
        """Contents (logits included) and generator state."""
        return {**super().state_dict(), "logits": self.logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        self.logits = state["logits"]


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of ``m`` examples whose running mean best tracks the class mean, in selection order.

    Features are L2-normalised first; each step picks the example that brings the mean of the
    chosen ones closest to the class mean, never the same example twice (Rebuffi et al., Alg. 4).
    """
    f = torch.nn.functional.normalize(features.double(), dim=1)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(f), dtype=torch.bool, device=f.device)
    for k in range(1, min(m, len(f)) + 1):
        dist = ((mu - (running + f) / k) ** 2).sum(1).masked_fill(~available, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running = running + f[i]
    return torch.tensor(chosen, dtype=torch.long, device=features.device)


class HerdingMemory:
    """iCaRL's exemplar memory with a fixed total size, ``capacity // n_seen_classes`` per class.

    Args:
        capacity: Total number of exemplars over all classes.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.per_class: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # class -> (stored x, task ids), ordered

    def __len__(self) -> int:
        return sum(len(x) for x, _ in self.per_class.values())

    def nbytes(self) -> int:
        """Bytes held (the record's ``cost.buffer_bytes``): inputs and task ids; labels are the store's keys."""
        return sum(held_bytes(len(x), x, t) for x, t in self.per_class.values())

    def classes(self) -> list[int]:
        """Classes with exemplars, in label order."""
        return sorted(self.per_class)

    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> None:
        """Shrink old classes and add herding-chosen exemplars of the classes in ``y``.

        Args:
            x: Stored-form inputs of the new data.
            y: Their labels.
            t: Their task ids (-1 = none).
            features: Their embeddings under the current network (one row per example).
        """
        new = sorted(set(y.tolist()) - set(self.per_class))
        n_seen = len(self.per_class) + len(new)
        if n_seen == 0:
            return
        m = self.capacity // n_seen
        for c in list(self.per_class):  # herding order is priority order: keep the first m
            cx, ct = self.per_class[c]
            self.per_class[c] = (cx[:m], ct[:m])
        for c in new:
            idx = torch.nonzero(y == c).flatten()
            pick = idx[herding(features[idx], m)] if m else idx[:0]
            self.per_class[c] = (x[pick.to(x.device)], t[pick.to(t.device)])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """All exemplars as ``(x, y, t)``, class by class, or None when empty."""
        if not len(self):
            return None
        xs, ys, ts = [], [], []
        for c in self.classes():
            cx, ct = self.per_class[c]
            xs.append(cx)
            ts.append(ct)
            ys.append(torch.full((len(cx),), c, dtype=torch.long, device=ct.device))
        return torch.cat(xs), torch.cat(ys), torch.cat(ts)

    def state_dict(self) -> dict[str, Any]:
        """The exemplars of each class, in priority order."""
        return {"per_class": dict(self.per_class)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.per_class = dict(state["per_class"])

    def extend(self, data: TensorData, task_id: int | None) -> TensorData:
        """``data`` followed by every exemplar, one shared transform (the training set of iCaRL, BiC, WA)."""
        mem = self.tensors()
        t = torch.full((len(data),), -1 if task_id is None else task_id, dtype=torch.long, device=data.y.device)
        if data.t is not None:
            t = data.t
        if mem is None:
            return TensorData(data.x, data.y, data.transform, t, data.augment)
        mx, my, mt = (v.to(data.y.device) for v in mem)
        return TensorData(torch.cat([data.x, mx.to(data.x.device)]), torch.cat([data.y, my]), data.transform,
                          torch.cat([t, mt]), data.augment)  # fmt: skip


@torch.no_grad()
def embed(net: torch.nn.Module, data: TensorData, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """``net.features`` of every example of ``data`` (un-augmented, eval mode), on ``device``."""
    was_training = net.training
    net.eval()
    try:
        out = [net.features(data.batch(slice(i, i + batch_size), device=device)[0])
               for i in range(0, len(data), batch_size)]  # fmt: skip
    finally:
        net.train(was_training)
    return torch.cat(out)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft-target cross-entropy ``-sum softmax(teacher/T) * log_softmax(student/T)``, batch mean.

    The distillation of BiC and WA as PyCIL writes it (``models/wa.py`` ``_KD_loss``; Hinton et al. 2015).
    """
    soft = torch.softmax(teacher / temperature, dim=1)
    return -(soft * torch.log_softmax(student / temperature, dim=1)).sum(1).mean()
