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
        if self.x is None:
            self.x = torch.empty((self.capacity, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.y = torch.empty(self.capacity, dtype=y.dtype, device=y.device)
            self.t = torch.full((self.capacity,), -1, dtype=torch.long, device=y.device)
        n = len(x)
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
        if slots:
            dst = torch.tensor(list(slots), device=x.device)
            src = torch.tensor(list(slots.values()), device=x.device)
            self.x[dst] = x[src]
            self.y[dst] = y[src]
            self.t[dst] = t[src] if t is not None else -1

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to ``n`` stored examples drawn without replacement: inputs, labels, task ids (-1 = none)."""
        assert self.x is not None and self.y is not None and self.t is not None, "sample() on an empty buffer"
        idx = torch.randperm(self.size, generator=self.gen)[: min(n, self.size)].to(self.x.device)
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
