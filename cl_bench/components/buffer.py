"""Reservoir-sampling replay memory.

References:
    Vitter. "Random sampling with a reservoir". ACM TOMS 1985.
    Chaudhry et al. "On tiny episodic memories in continual learning". arXiv:1902.10486, 2019.
"""

from __future__ import annotations

from typing import Any

import torch


class ReservoirBuffer:
    """A fixed-capacity memory holding a uniform sample of every example offered so far.

    Examples are stored as given (model inputs on the run's device). Sampling
    and replacement draw from the buffer's own generator, so the memory is
    reproducible and its state travels in checkpoints.

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
        if self.x is None:
            self.x = x.new_empty((0, *x.shape[1:]))
            self.y = y.new_empty(0)
            self.t = torch.full((0,), -1, dtype=torch.long, device=y.device)
        needed = min(self.capacity, self.size + n)
        if len(self.x) < needed:
            self.grow(min(self.capacity, max(needed, 2 * len(self.x))))
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

    def grow(self, rows: int) -> None:
        """Enlarge the storage to ``rows`` slots, keeping the stored examples.

        Storage grows as examples arrive (doubling, up to the capacity) instead of being allocated at full
        capacity up front, so a capacity far above the stream's length (``buffer_size=10**9``) costs only
        the memory of the examples actually stored.
        """
        assert self.x is not None and self.y is not None and self.t is not None
        extra = rows - len(self.x)
        self.x = torch.cat([self.x, self.x.new_empty((extra, *self.x.shape[1:]))])
        self.y = torch.cat([self.y, self.y.new_empty(extra)])
        self.t = torch.cat([self.t, self.t.new_full((extra,), -1)])

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
        if self.logits is None:
            self.logits = logits.new_empty((0 if self.x is None else len(self.x), *logits.shape[1:]))
        dst, src = self.place(x, y, t)
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

    def state_dict(self) -> dict[str, Any]:
        """Contents (logits included), counters and generator state."""
        return {**super().state_dict(), "logits": self.logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        super().load_state_dict(state)
        self.logits = state["logits"]
