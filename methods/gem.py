"""Gradient Episodic Memory: project each gradient so no earlier experience's memory loss increases.

An episodic memory keeps the first ``patterns_per_exp`` examples of a shuffled pass over every
finished experience. Before each step the gradient ``g_k`` of the loss on each experience's memory
is computed; if the incoming gradient ``g`` conflicts with any (``g_k . g < 0``), it is replaced by
the closest ``g~`` with ``G g~ >= 0``, through the dual quadratic programme of Lopez-Paz & Ranzato
(Eq. 13): ``min_v 1/2 v^T G G^T v + g^T G^T v`` s.t. ``v >= memory_strength``, ``g~ = G^T v + g``,
solved with ``quadprog`` (the optional extra ``gem``).

References:
    Lopez-Paz, Ranzato. "Gradient Episodic Memory for Continual Learning". NeurIPS 2017.
    Official code github.com/facebookresearch/GradientEpisodicMemory ``model/gem.py`` (``project2cone2``:
        the 1e-3 ridge on ``G G^T``, the margin); Avalanche 0.6 ``training/plugins/gem.py`` (the same QP,
        ``memory_strength`` 0.5, memory filled from a shuffled pass); cross-checked against
        ``avalanche:GEM`` in ``benchmarks/crosscheck_regularization.py`` (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.components.buffer import replay_inputs, stored_examples
from cl_bench.core.errors import UserError
from cl_bench.core.method import Caps, held_bytes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


def _quadprog() -> Any:
    try:
        import quadprog
    except ImportError:
        raise UserError(
            "gem solves a quadratic programme at every conflicting step with the 'quadprog' package, which is "
            "not installed here. Install it with `pip install quadprog` (or `pip install 'cl_bench[gem]'`), "
            "or choose agem, which needs no solver."
        ) from None
    return quadprog


def project_to_cone(g: torch.Tensor, memories: torch.Tensor, margin: float, ridge: float = 1e-3) -> torch.Tensor:
    """The gradient closest to ``g`` whose dot product with every row of ``memories`` is >= 0 (GEM Eq. 13).

    Args:
        g: Flat incoming gradient ``[P]``.
        memories: Flat memory gradients ``[K, P]``.
        margin: Lower bound of the dual variables (``memory_strength``, gamma in the official code).
        ridge: Added to the diagonal of ``G G^T`` for a positive-definite QP (official code: 1e-3).
    """
    quadprog = _quadprog()
    mem = memories.detach().cpu().double().numpy()
    grad = g.detach().cpu().double().numpy()
    k = mem.shape[0]
    p = mem @ mem.T
    p = 0.5 * (p + p.T) + ridge * np.eye(k)
    # quadprog: min 1/2 v^T P v - a^T v  s.t.  C^T v >= b.
    v = quadprog.solve_qp(p, -(mem @ grad), np.eye(k), np.full(k, margin))[0]
    return torch.from_numpy(v @ mem + grad).to(g.dtype).to(g.device)


@dataclass(frozen=True)
class GEMConfig(TrainConfig):
    """GEM hyper-parameters.

    Attributes:
        patterns_per_exp: Memory examples kept per finished experience (256: Lopez-Paz & Ranzato, Sec. 5;
            the bridge's ``avalanche:GEM`` default).
        memory_strength: Margin gamma of the dual variables (0.5: Avalanche 0.6 ``GEM`` default and the
            official code's ``--memory_strength`` in its MNIST scripts).
    """

    patterns_per_exp: int = 256
    memory_strength: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patterns_per_exp < 0 or self.memory_strength < 0:
            raise ValueError("patterns_per_exp and memory_strength must be >= 0")


@METHODS.register(
    "gem", reference="Lopez-Paz & Ranzato, 'Gradient Episodic Memory for Continual Learning' (NeurIPS 2017)"
)
class GEM(SupervisedMethod):
    """GEM: keeps the loss on each earlier experience's memory from increasing, through a QP per step."""

    Config: ClassVar[type] = GEMConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        _quadprog()  # a missing solver is reported before training starts
        super().setup(info, seed)
        self.memory: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # raw x, y, t per experience
        self.views: list[Any] = []  # per memory: raw -> training inputs (augmentation + transform)
        self.gen = torch.Generator().manual_seed(seed)

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def _flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self._params(), allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                          for g, p in zip(grads, self._params(), strict=True)])  # fmt: skip

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.net.train()
        refs = []
        for (mx, my, mt), view in zip(self.memory, self.views, strict=True):
            t = None if batch.task_ids is None else mt
            mx = replay_inputs(view, mx, self.gen)  # raw memory, freshly augmented
            refs.append(self._flat_grad(F.cross_entropy(self.mask_logits(self.net(mx), t), my)))
        loss = F.cross_entropy(self.mask_logits(self.net(batch.x), batch.task_ids), batch.y)
        g = self._flat_grad(loss)
        if refs:
            memories = torch.stack(refs)
            if (memories @ g < 0).any():
                g = project_to_cone(g, memories, self.config.memory_strength)
        offset = 0
        for p in self._params():
            p.grad = g[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.lr_schedule.apply()
        self.opt.step()
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        if exp.train is None or self.config.patterns_per_exp == 0 or len(exp.train) == 0:
            return
        idx = torch.randperm(len(exp.train), generator=self.gen)[: self.config.patterns_per_exp]
        x, y, view = stored_examples(exp.train, idx, self.device)
        t = torch.full_like(y, exp.task_id if exp.task_id is not None else -1)
        self.memory.append((x, y, t))
        self.views.append(view)

    def memory_size(self) -> int:
        return sum(len(x) for x, _, _ in self.memory)

    def memory_budget(self) -> int | None:
        return self.config.patterns_per_exp * len(self.memory)

    def memory_bytes(self) -> int | None:
        return sum(held_bytes(len(x), x, y, t) for x, y, t in self.memory)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory, "gen": self.gen.get_state(), "views": self.views}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory = list(state["memory"])
        self.views = list(state.get("views", [None] * len(self.memory)))
        self.gen.set_state(state["gen"])
