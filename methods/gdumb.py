"""GDumb: a greedy class-balanced sampler, and a network retrained from scratch on it alone.

Training batches only feed the greedy sampler; at the end of each experience (before the
experience's evaluation, the point where GDumb "is asked to predict") the network is reset to its
initial weights and fitted on the memory alone: SGD with a one-epoch warm start at ``0.1 * max_lr``,
then cosine annealing with warm restarts (SGDR, T_0 = 1, T_mult = 2) down to ``min_lr``, and
optional cutmix, as mammoth's ``fit_buffer`` does.

References:
    Prabhu, Torr & Dokania. "GDumb: a simple approach that questions our progress in continual
        learning". ECCV 2020 (Alg. 1 greedy sampler; SGDR and cutmix recipe).
    Official-code reimplementation: github.com/aimagelab/mammoth ``models/gdumb.py`` (``--maxlr 5e-2``,
        ``--minlr 5e-4``, ``--fitting_epochs 256``, ``--cutmix_alpha 1.0``, warm start and SGDR).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import ClassBalancedBuffer, require_per_class_room
from cl_bench.components.buffer import replay_inputs
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class GDumbConfig(TrainConfig):
    """GDumb hyper-parameters (mammoth ``models/gdumb.py`` defaults).

    ``lr``/``optimizer`` of the shared fields are not used: fitting has its own SGD (mammoth sets
    ``lr=0`` for the streaming pass). ``momentum`` and ``weight_decay`` do reach the fitting SGD.

    Attributes:
        buffer_size: Memory capacity in examples (200: mammoth's smallest buffer).
        max_lr: Peak learning rate of the fit (5e-2).
        min_lr: Floor of the cosine schedule (5e-4).
        fit_epochs: Passes over the memory per fit (256).
        fit_batch_size: Mini-batch of the fit (0 = the run's training batch size, as mammoth).
        fit_schedule: "sgdr" (warm start + cosine warm restarts) or "constant" (``max_lr`` throughout,
            as Avalanche 0.6's GDumb, which trains on its memory with the run's optimiser).
        cutmix_alpha: Beta(alpha, alpha) of cutmix (1.0; 0 = off). Needs image inputs (C, H, W).
    """

    buffer_size: int = 200
    max_lr: float = 5e-2
    min_lr: float = 5e-4
    fit_epochs: int = 256
    fit_batch_size: int = 0
    fit_schedule: Literal["sgdr", "constant"] = "sgdr"
    cutmix_alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.fit_epochs < 0 or self.fit_batch_size < 0 or self.cutmix_alpha < 0:
            raise ValueError("buffer_size, fit_epochs, fit_batch_size and cutmix_alpha must be >= 0")
        if self.max_lr <= 0 or not 0 <= self.min_lr <= self.max_lr:
            raise ValueError("need 0 <= min_lr <= max_lr and max_lr > 0")


def cutmix(x: torch.Tensor, alpha: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a random box of a shuffled batch into ``x``; returns ``x, perm, lam`` (Yun et al. 2019).

    ``lam`` is the kept area fraction, recomputed after clipping the box to the image, as mammoth's
    ``utils/augmentations.py`` ``cutmix_data`` does.
    """
    lam = _beta(alpha, gen)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    h, w = x.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = (int(torch.randint(n, (1,), generator=gen)) for n in (h, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, perm, lam


def _beta(alpha: float, gen: torch.Generator) -> float:
    # A Beta(a, a) draw from our own generator (torch.distributions takes none): Johnk's method.
    u = torch.rand(2, generator=gen, dtype=torch.float64)
    if alpha == 1.0:  # Beta(1, 1) is uniform
        return float(u[0])
    while True:
        a, b = u[0] ** (1 / alpha), u[1] ** (1 / alpha)
        if a + b <= 1 and a + b > 0:
            return float(a / (a + b))
        u = torch.rand(2, generator=gen, dtype=torch.float64)


@METHODS.register(
    "gdumb",
    reference="Prabhu et al., 'GDumb: a simple approach that questions our progress in continual learning' "
    "(ECCV 2020)",
)
class GDumb(SupervisedMethod):
    """Greedy class-balanced memory; the network is refitted from its initial weights on the memory only."""

    Config: ClassVar[type] = GDumbConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")
    # The fit dominates the suite's time; 8 epochs already fit the toy memory.
    conformance_config: ClassVar[dict[str, Any]] = {"fit_epochs": 8}

    def setup(self, info: StreamInfo, seed: int) -> None:
        require_per_class_room("gdumb", self.config.buffer_size, info.n_classes)
        if self.config.cutmix_alpha > 0 and len(info.input_shape) != 3:
            raise ConfigError(
                f"gdumb's cutmix needs image inputs (channels, height, width), but this stream's inputs have "
                f"shape {tuple(info.input_shape)}. Turn it off with --set cutmix_alpha=0."
            )
        super().setup(info, seed)
        self.buffer = ClassBalancedBuffer(self.config.buffer_size, seed)
        self.init_state = copy.deepcopy(self.net.state_dict())
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.batch_size = 0
        self.view: Any = None  # raw memory -> training inputs (the stream's augmentation + transform)

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.batch_size = max(self.batch_size, len(batch.x))
        self.view = batch.view if batch.raw is not None else None
        self.buffer.add_greedy(batch.stored, batch.y, batch.task_ids)
        return {"loss": 0.0}  # no gradient step while streaming

    def _lr(self, epoch: int) -> float:
        """mammoth's ``fit_buffer`` schedule: warm start, then SGDR restarts at epochs 2, 4, 8, ... (T_0 1, x2)."""
        cfg = self.config
        if cfg.fit_schedule == "constant":
            return cfg.max_lr
        if epoch == 0:
            return 0.1 * cfg.max_lr
        k = epoch - 1  # scheduler steps taken (mammoth steps it from the third epoch on)
        t_i, t_cur = 1, k
        while t_cur >= t_i:
            t_cur, t_i = t_cur - t_i, t_i * 2
        return cfg.min_lr + (cfg.max_lr - cfg.min_lr) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if not len(self.buffer):
            return
        cfg = self.config
        self.net.load_state_dict(self.init_state)
        opt = torch.optim.SGD(self.net.parameters(), lr=cfg.max_lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)  # fmt: skip
        assert self.buffer.x is not None and self.buffer.y is not None and self.buffer.t is not None
        x, y, t = self.buffer.x, self.buffer.y, self.buffer.t
        bs = cfg.fit_batch_size or self.batch_size or 32
        self.net.train()
        for epoch in range(cfg.fit_epochs):
            for group in opt.param_groups:
                group["lr"] = self._lr(epoch)
            perm = torch.randperm(len(y), generator=self.gen).to(y.device)
            for i in range(0, len(y), bs):
                idx = perm[i : i + bs]
                bx, by, bt = replay_inputs(self.view, x[idx], self.gen), y[idx], t[idx]  # freshly augmented
                task_il = bool((bt >= 0).all())  # task ids were stored only in task-IL runs
                if cfg.cutmix_alpha > 0:
                    bx, perm_b, lam = cutmix(bx, cfg.cutmix_alpha, self.gen)
                    out = self.net(bx)
                    if task_il:  # a mixed image may show two tasks: both tasks' classes compete
                        allowed = self.task_classes[bt] | self.task_classes[bt[perm_b]]
                        out = out.masked_fill(~allowed, torch.finfo(out.dtype).min)
                    loss = lam * F.cross_entropy(out, by) + (1 - lam) * F.cross_entropy(out, by[perm_b])
                else:
                    loss = F.cross_entropy(self.mask_logits(self.net(bx), bt if task_il else None), by)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def memory_size(self) -> int:
        return len(self.buffer)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.buffer.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict(), "init": self.init_state,
                "gen": self.gen.get_state(), "batch_size": self.batch_size, "view": self.view}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.init_state = state["init"]
        self.gen.set_state(state["gen"])
        self.batch_size = state["batch_size"]
        self.view = state.get("view")
