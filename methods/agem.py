"""Averaged Gradient Episodic Memory.

An episodic memory keeps ``patterns_per_exp`` random examples of every finished
experience. At each step the gradient ``g`` on the incoming batch is compared
with the gradient ``g_ref`` on a random memory batch; if they conflict
(``g . g_ref < 0``), ``g`` is projected to ``g - (g . g_ref / g_ref . g_ref) g_ref``
so that the memory loss does not increase, to first order.

References:
    Chaudhry, Ranzato, Rohrbach, Elhoseiny. "Efficient Lifelong Learning with A-GEM". ICLR 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components.buffer import replay_inputs, stored_examples
from cl_bench.core.method import Caps, held_bytes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class AGEMConfig(TrainConfig):
    """A-GEM hyper-parameters (Chaudhry et al. use a reference batch of 256).

    Attributes:
        patterns_per_exp: Memory examples kept per finished experience.
        sample_size: Memory examples in each reference-gradient batch.
    """

    patterns_per_exp: int = 256
    sample_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patterns_per_exp < 0 or self.sample_size < 1:
            raise ValueError("patterns_per_exp must be >= 0 and sample_size >= 1")


@METHODS.register(
    "agem", reference="Chaudhry et al., 'Efficient Lifelong Learning with A-GEM' (ICLR 2019)"
)
class AGEM(SupervisedMethod):
    """A-GEM: projects each gradient so the loss on an episodic memory does not increase."""

    Config: ClassVar[type] = AGEMConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.mem_x: torch.Tensor | None = None
        self.mem_y: torch.Tensor | None = None
        self.mem_t: torch.Tensor | None = None
        self.n_stored_exps = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.view: Any = None  # raw memory -> training inputs (the stream's augmentation + transform)

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def _grad(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.cross_entropy(self.mask_logits(self.net(x), t), y)
        grads = torch.autograd.grad(loss, self._params(), allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                          for g, p in zip(grads, self._params(), strict=True)])  # fmt: skip
        return flat, loss.detach()

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.net.train()
        g, loss = self._grad(batch.x, batch.y, batch.task_ids)
        if self.mem_x is not None and len(self.mem_x):
            idx = torch.randperm(len(self.mem_x), generator=self.gen)[: self.config.sample_size].to(self.mem_x.device)
            t = None if batch.task_ids is None else self.mem_t[idx]
            mx = replay_inputs(self.view, self.mem_x[idx], self.gen)  # raw memory, freshly augmented
            g_ref, _ = self._grad(mx, self.mem_y[idx], t)
            dot = torch.dot(g, g_ref)
            if dot < 0:
                g = g - dot / torch.dot(g_ref, g_ref).clamp_min(1e-12) * g_ref
        offset = 0
        for p in self._params():
            n = p.numel()
            p.grad = g[offset : offset + n].view_as(p).clone()
            offset += n
        self.opt.step()
        return {"loss": loss}

    def end_experience(self, exp: Experience) -> None:
        if exp.train is None or self.config.patterns_per_exp == 0:
            return
        k = min(self.config.patterns_per_exp, len(exp.train))
        idx = torch.randperm(len(exp.train), generator=self.gen)[:k]
        x, y, self.view = stored_examples(exp.train, idx, self.device)
        t = torch.full_like(y, exp.task_id if exp.task_id is not None else -1)
        if self.mem_x is None:
            self.mem_x, self.mem_y, self.mem_t = x, y, t
        else:
            self.mem_x, self.mem_y = torch.cat([self.mem_x, x]), torch.cat([self.mem_y, y])
            self.mem_t = torch.cat([self.mem_t, t])
        self.n_stored_exps += 1

    def memory_size(self) -> int:
        return 0 if self.mem_x is None else len(self.mem_x)

    def memory_budget(self) -> int | None:
        return self.config.patterns_per_exp * self.n_stored_exps

    def memory_bytes(self) -> int | None:
        return 0 if self.mem_x is None else held_bytes(len(self.mem_x), self.mem_x, self.mem_y, self.mem_t)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mem": (self.mem_x, self.mem_y, self.mem_t),
                "n_stored_exps": self.n_stored_exps, "gen": self.gen.get_state(), "view": self.view}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mem_x, self.mem_y, self.mem_t = state["mem"]
        self.n_stored_exps = state["n_stored_exps"]
        self.gen.set_state(state["gen"])
        self.view = state.get("view")
