"""MIR: experience replay that retrieves the memory examples a step on the incoming batch would hurt most.

For each incoming batch: draw ``subsample`` candidates from a reservoir memory, take a virtual SGD step
``theta' = theta - lr * grad L(batch)`` on the incoming batch alone, score each candidate by how much
its loss grows, ``l(theta'; x) - l(theta; x)``, and replay the ``replay_batch_size`` highest-scoring
ones: the real step then minimises ``CE(batch) + CE(retrieved)`` (the sum of both means, as the official
code accumulates the two gradients). The incoming batch is then offered to the reservoir (as ``er``).

References:
    Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin & Tuytelaars. "Online continual learning with
        maximal interfered retrieval". NeurIPS 2019 (Alg. 1, ER-MIR).
    Official code: github.com/optimass/Maximally_Interfered_Retrieval ``Scripts/ER_experiments.sh``
        (``--subsample 50`` on Split-MNIST, CIFAR-10) and ``er_main.py`` (``--buffer_batch_size 10``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call

from cl_bench.components import ClassBalancedBuffer, ReservoirBuffer
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class MIRConfig(TrainConfig):
    """MIR hyper-parameters.

    Attributes:
        buffer_size: Memory capacity in examples (200, as ``er``).
        subsample: Candidates drawn from memory per step, C (50: official ``Scripts/ER_experiments.sh``).
        replay_batch_size: Retrieved examples replayed per step (10: official ``--buffer_batch_size``).
        virtual_lr: Learning rate of the virtual step (0 = the optimiser's ``lr``, as the official code).
        memory: "reservoir" (the paper's: updated at every step) or "balanced_at_end" (Avalanche 0.6's
            ``MIRPlugin``: a class-balanced memory rebuilt at each experience's end, so replay starts with the
            second experience), for the cross-check in ``benchmarks/crosscheck.py``.
        exclude_last_classes: With ``balanced_at_end``, leave out of the candidates, during each
            experience, the classes of the previous experience's last mini-batch (Avalanche 0.6's
            ``MIRPlugin.after_training_exp``: ``int(key) not in torch.unique(strategy.mb_y)``); no replay
            while fewer than ``replay_batch_size`` + 1 candidates remain, as Avalanche.
    """

    buffer_size: int = 200
    subsample: int = 50
    replay_batch_size: int = 10
    virtual_lr: float = 0.0
    memory: Literal["reservoir", "balanced_at_end"] = "reservoir"
    exclude_last_classes: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.virtual_lr < 0:
            raise ValueError("buffer_size and virtual_lr must be >= 0")
        if self.replay_batch_size < 1 or self.subsample < self.replay_batch_size:
            raise ValueError("need 1 <= replay_batch_size <= subsample")
        if self.memory not in ("reservoir", "balanced_at_end"):
            raise ValueError(f"memory must be 'reservoir' or 'balanced_at_end', got {self.memory!r}")
        if self.exclude_last_classes and self.memory != "balanced_at_end":
            raise ValueError("exclude_last_classes needs memory=balanced_at_end (it is Avalanche's MIR policy)")


@METHODS.register(
    "mir",
    reference="Aljundi et al., 'Online continual learning with maximal interfered retrieval' (NeurIPS 2019)",
)
class MIR(SupervisedMethod):
    """Reservoir replay of the candidates whose loss a virtual step on the incoming batch increases most."""

    Config: ClassVar[type] = MIRConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.buffer: ReservoirBuffer | ClassBalancedBuffer
        if self.config.memory == "reservoir":
            self.buffer = ReservoirBuffer(self.config.buffer_size, seed)
        else:
            self.buffer = ClassBalancedBuffer(self.config.buffer_size, seed)
        self.last_classes = torch.zeros(0, dtype=torch.long, device=self.device)  # of the latest batch
        self.excluded = torch.zeros(0, dtype=torch.long, device=self.device)  # not candidates this experience

    def retrieve(self, loss: torch.Tensor, task_il: bool) -> tuple[torch.Tensor, ...] | None:
        """The ``replay_batch_size`` memory examples ``(x, y, t)`` a step on ``loss`` would hurt most.

        None while the memory is empty. Candidates are scored in eval mode, so the two extra forward passes
        leave BatchNorm statistics alone.
        """
        if not len(self.buffer):
            return None
        if len(self.excluded):
            assert isinstance(self.buffer, ClassBalancedBuffer) and self.buffer.y is not None
            assert self.buffer.x is not None and self.buffer.t is not None
            rows = torch.nonzero(~torch.isin(self.buffer.y, self.excluded)).flatten()
            if len(rows) <= self.config.replay_batch_size:
                return None
            rows = rows[torch.randperm(len(rows), generator=self.buffer.gen)[: self.config.subsample].to(rows.device)]
            cx, cy, ct = self.buffer.x[rows], self.buffer.y[rows], self.buffer.t[rows]
        else:
            cx, cy, ct = self.buffer.sample(self.config.subsample)
        k = min(self.config.replay_batch_size, len(cy))
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
        lr = self.config.virtual_lr or self.opt.param_groups[0]["lr"]
        mt = ct if task_il else None
        self.net.eval()
        try:
            with torch.no_grad():
                virtual = {n: p if g is None else p - lr * g for (n, p), g in zip(named, grads, strict=True)}
                before = F.cross_entropy(self.mask_logits(self.net(cx), mt), cy, reduction="none")
                after = F.cross_entropy(self.mask_logits(functional_call(self.net, virtual, (cx,)), mt), cy,
                                        reduction="none")  # fmt: skip
                top = torch.topk(after - before, k).indices
        finally:
            self.net.train()
        return cx[top], cy[top], ct[top]

    def observe(self, batch: Batch) -> dict[str, Any]:
        x, y, t = batch.x, batch.y, batch.task_ids
        self.net.train()
        loss = F.cross_entropy(self.mask_logits(self.net(x), t), y)
        picked = self.retrieve(loss, t is not None)  # the virtual step's gradient is this loss's
        if picked is not None:
            mx, my, mt = picked
            loss = loss + F.cross_entropy(self.mask_logits(self.net(mx), None if t is None else mt), my)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        if isinstance(self.buffer, ReservoirBuffer):
            self.buffer.add(batch.x, batch.y, batch.task_ids)
        self.last_classes = batch.y.unique()
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if isinstance(self.buffer, ClassBalancedBuffer) and exp.train is not None and len(exp.train):
            x, y = exp.train.batch(slice(None), device=self.device)
            task = -1 if exp.task_id is None else exp.task_id
            t = exp.train.t if exp.train.t is not None else torch.full_like(y, task)
            self.buffer.rebuild(x, y, t.to(self.device))
            if self.config.exclude_last_classes:
                self.excluded = self.last_classes.clone()

    def memory_size(self) -> int:
        return len(self.buffer)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.buffer.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict(), "last_classes": self.last_classes,
                "excluded": self.excluded}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.last_classes = state.get("last_classes", self.last_classes)
        self.excluded = state.get("excluded", self.excluded)
