"""Reservoir-sampling replay memory.

References:
    Vitter. "Random sampling with a reservoir". ACM TOMS 1985.
    Chaudhry et al. "On tiny episodic memories in continual learning". arXiv:1902.10486, 2019.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cl_bench.core.method import held_bytes


def grow(store: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
    """``store`` copied into a new tensor of ``rows`` rows (dtype, device, row shape of ``like`` when empty)."""
    ref = like if store is None else store
    out = torch.empty((rows, *ref.shape[1:]), dtype=ref.dtype, device=ref.device)
    if store is not None:
        out[: len(store)] = store
    return out


class ReservoirBuffer:
    """A fixed-capacity memory holding a uniform sample of every example offered so far.

    Examples are stored as given, on their device: methods give it :attr:`Batch.stored
    <cl_bench.core.types.Batch.stored>` (the raw, un-augmented inputs) and replay through
    :meth:`Batch.replay <cl_bench.core.types.Batch.replay>`, so each replay draws a fresh augmentation.
    Sampling and replacement draw from the buffer's own generator, so the memory is reproducible and its
    state travels in checkpoints. Storage grows by doubling as examples arrive, up to ``capacity``, so a
    budget larger than the stream (e.g. ``10**9``) costs only what the stream holds.

    Args:
        capacity: Maximum number of stored examples.
        seed: Seeds the buffer's generator.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.t: torch.Tensor | None = None
        self.size = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def nbytes(self) -> int:
        """Bytes of the filled slots (the record's ``cost.buffer_bytes``): inputs, labels, task ids."""
        return held_bytes(len(self), self.x, self.y, self.t)

    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> None:
        """Offer a batch; each example ends up stored with probability capacity / seen."""
        if self.capacity == 0 or len(x) == 0:
            self.seen += len(x)
            return
        self.place(x, y, t)

    def place(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reservoir step for a batch: writes the kept examples and returns ``(slots, batch indices)``.

        Subclasses storing extra per-example data (e.g. logits) write it at the same slots.
        """
        n = len(x)
        self.reserve(min(self.capacity, self.size + n), x, y)
        ranks = torch.arange(self.seen + 1, self.seen + n + 1, dtype=torch.float64)
        draws = (torch.rand(n, generator=self.gen, dtype=torch.float64) * ranks).long()
        slots: dict[int, int] = {}  # slot -> example; later examples overwrite earlier ones, as sequentially
        for i in range(n):
            if self.size < self.capacity:
                slots[self.size] = i
                self.size += 1
            elif draws[i] < self.capacity:
                slots[int(draws[i])] = i
        self.seen += n
        dst = torch.tensor(list(slots), dtype=torch.long, device=x.device)
        src = torch.tensor(list(slots.values()), dtype=torch.long, device=x.device)
        if slots:
            self.x[dst] = x[src]
            self.y[dst] = y[src]
            self.t[dst] = t[src] if t is not None else -1
        return dst, src

    def reserve(self, rows: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Make room for ``rows`` stored examples shaped like ``x``/``y``, doubling the storage when it grows."""
        have = 0 if self.x is None else len(self.x)
        if rows <= have:
            return
        new = min(self.capacity, max(rows, 2 * have))
        self.x = grow(self.x, new, x)
        self.y = grow(self.y, new, y)
        self.t = grow(self.t, new, torch.empty(0, dtype=torch.long, device=y.device))

    def sample_indices(self, n: int) -> torch.Tensor:
        """Slots of up to ``n`` stored examples drawn without replacement."""
        assert self.x is not None, "sample() on an empty buffer"
        return torch.randperm(self.size, generator=self.gen)[: min(n, self.size)].to(self.x.device)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``n`` stored examples drawn without replacement: inputs, labels, task ids (-1 = none)."""
        assert self.x is not None and self.y is not None and self.t is not None, "sample() on an empty buffer"
        idx = self.sample_indices(n)
        return self.x[idx], self.y[idx], self.t[idx]

    def state_dict(self) -> dict[str, Any]:
        """Contents, counters and generator state."""
        return {"x": self.x, "y": self.y, "t": self.t, "size": self.size, "seen": self.seen,
                "gen": self.gen.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.x, self.y, self.t = state["x"], state["y"], state["t"]
        self.size, self.seen = state["size"], state["seen"]
        self.gen.set_state(state["gen"])


class LogitReservoirBuffer(ReservoirBuffer):
    """A :class:`ReservoirBuffer` that also keeps each stored example's logits (DER, DER++, X-DER).

    References:
        Buzzega et al. "Dark experience for general continual learning: a strong, simple baseline". NeurIPS 2020.
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        super().__init__(capacity, seed)
        self.logits: torch.Tensor | None = None

    def add_with_logits(
        self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, t: torch.Tensor | None = None
    ) -> None:
        """Offer a batch with its (detached) logits; logits are stored at the slots the examples take."""
        if self.capacity == 0 or len(x) == 0:
            self.seen += len(x)
            return
        dst, src = self.place(x, y, t)
        assert self.x is not None
        if self.logits is None or len(self.logits) < len(self.x):  # grows with the inputs' storage
            self.logits = grow(self.logits, len(self.x), logits)
        if len(dst):
            self.logits[dst] = logits[src].detach()

    def grow(self, rows: int) -> None:
        """Enlarge the storage (logits included) to ``rows`` slots."""
        super().grow(rows)
        if self.logits is not None:
            extra = rows - len(self.logits)
            self.logits = torch.cat([self.logits, self.logits.new_empty((extra, *self.logits.shape[1:]))])

    def sample_with_logits(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``n`` stored examples without replacement: inputs, labels, task ids, logits."""
        assert self.x is not None and self.y is not None and self.t is not None and self.logits is not None
        idx = self.sample_indices(n)
        return self.x[idx], self.y[idx], self.t[idx], self.logits[idx]

    def nbytes(self) -> int:
        """Bytes of the filled slots (the record's ``cost.buffer_bytes``): inputs, labels, task ids, logits."""
        return held_bytes(len(self), self.x, self.y, self.t, self.logits)

    def state_dict(self) -> dict[str, Any]:
        """Contents (logits included), counters and generator state."""
        return {**super().state_dict(), "logits": self.logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        self.logits = state["logits"]


def stored_examples(data: Any, idx: torch.Tensor | slice, device: torch.device | str) -> tuple[
        torch.Tensor, torch.Tensor, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None]:  # fmt: skip
    """What a memory filled from a dataset keeps: ``(raw inputs, labels, view)`` of the examples at ``idx``.

    ``raw`` is the stored, un-augmented form and ``view(raw, generator)`` the training inputs (a
    :class:`~cl_bench.core.types.TrainView`), so replay re-augments; data without a raw form (a method's
    own type with only ``batch``) gives its model inputs and ``view`` None.
    """
    if hasattr(data, "raw_batch"):
        return data.raw_batch(idx, device), data.y[idx].to(device), data.view
    x, y = data.batch(idx, device)
    return x, y, None


def replay_inputs(view: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None,
                  stored: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Model inputs for memory examples: ``view(stored, generator)`` (a fresh augmentation), or as stored."""
    return stored if view is None else view(stored, generator)
