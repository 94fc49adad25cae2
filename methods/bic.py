"""BiC: distillation while training, then a two-parameter bias correction of the new classes' logits.

From the second experience on, a balanced validation split is held out of the training data: ``m``
examples of every new class and ``m`` exemplars of every old class, ``m = int(val_fraction *
buffer_size / n_old)`` (PyCIL ``models/bic.py`` l. 47-55). Stage 1 trains the network on the rest
(new data plus the remaining exemplars) on ``lambda * KD + (1 - lambda) * CE``, ``lambda = n_old /
n_seen``, KD at temperature ``T`` against the previous model's (corrected) logits of the old classes.
Stage 2 freezes the network and fits the experience's bias layer, ``q_k = alpha * o_k + beta`` on the
logits of the classes that experience introduced, by cross-entropy on the validation split (Wu et al.,
Eq. 4-5); the bias layers of earlier experiences stay fixed. The herding memory of fixed total size
(as iCaRL) is then updated from the experience's whole training set.

References:
    Wu, Chen, Wang, Ye, Liu, Guo & Fu. "Large scale incremental learning". CVPR 2019 (Sec. 4, Eq. 1-5).
    Official-code reimplementation: github.com/G-U-N/PyCIL ``models/bic.py`` (``split_ratio = 0.1``,
        ``T = 2``; bias stage SGD lr 0.1, momentum 0.9, batch 128, as many epochs as stage 1 (170);
        ``utils/inc_net.py`` ``BiasLayer_BIC``: alpha = 1, beta = 0 at start), ``exps/bic.json``
        (``memory_size`` 2000). PyCIL's bias stage applies softmax before ``F.cross_entropy``; here the
        stage uses the plain cross-entropy of the paper's Eq. 5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import HerdingMemory, embed, frozen_copy, kd_loss, require_per_class_room
from cl_bench.components.prototypes import rank_unseen_last
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo, TensorData
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class BiCConfig(TrainConfig):
    """BiC hyper-parameters.

    Attributes:
        buffer_size: Total exemplars over all classes (2000: PyCIL ``exps/bic.json`` ``memory_size``).
        temperature: Distillation temperature (2: PyCIL ``T``).
        val_fraction: Share of the memory held out per old class for the bias stage, and the same count per
            new class (0.1: PyCIL ``split_ratio``; Wu et al. hold out a balanced validation set).
        bias_epochs: Passes of the bias stage over the validation split (170: PyCIL, as stage 1).
        bias_lr: Learning rate of the bias stage (0.1, momentum 0.9: PyCIL).
        bias_batch_size: Mini-batch of the bias stage (128: PyCIL ``batch_size``).
    """

    buffer_size: int = 2000
    temperature: float = 2.0
    val_fraction: float = 0.1
    bias_epochs: int = 170
    bias_lr: float = 0.1
    bias_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.temperature <= 0 or self.bias_epochs < 0 or self.bias_lr <= 0:
            raise ValueError("need buffer_size >= 0, temperature > 0, bias_epochs >= 0 and bias_lr > 0")
        if self.bias_batch_size < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("need bias_batch_size >= 1 and 0 <= val_fraction < 1")


@METHODS.register("bic", reference="Wu et al., 'Large scale incremental learning' (CVPR 2019)")
class BiC(SupervisedMethod):
    """Herding exemplars, KD, and a per-experience bias layer on new-class logits fitted on a held-out split."""

    Config: ClassVar[type] = BiCConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")
    # The bias stage dominates the suite's time on the toy stream; 20 passes already fit two parameters.
    conformance_config: ClassVar[dict[str, Any]] = {"buffer_size": 60, "val_fraction": 0.2, "bias_epochs": 20}

    def setup(self, info: StreamInfo, seed: int) -> None:
        cfg = self.config
        require_per_class_room("bic", cfg.buffer_size, info.n_classes)
        if cfg.val_fraction <= 0:
            raise ConfigError(
                "bic fits its bias correction layer on a validation split held out of the exemplar memory, but "
                "val_fraction=0 holds out nothing. Set --set val_fraction=F with 0 < F < 1 (0.1 in PyCIL)."
            )
        worst = int(cfg.val_fraction * cfg.buffer_size / max(info.n_classes - 1, 1))
        if worst < 1 or worst >= cfg.buffer_size // info.n_classes:
            raise ConfigError(
                f"bic holds out int(val_fraction * buffer_size / old classes) exemplars of every old class for its "
                f"bias correction; with buffer_size={cfg.buffer_size}, val_fraction={cfg.val_fraction} and "
                f"{info.n_classes} classes that is {worst} by the last experience, while each class keeps only "
                f"{cfg.buffer_size // info.n_classes} exemplars. Raise buffer_size or val_fraction (at least one "
                f"held-out and one training exemplar per class)."
            )
        super().setup(info, seed)
        self.memory = HerdingMemory(cfg.buffer_size)
        self.teacher: torch.nn.Module | None = None
        self.teacher_bias: tuple[torch.Tensor, torch.Tensor] | None = None
        self.old_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.class_exp = torch.full((info.n_classes,), -1, dtype=torch.long, device=self.device)
        self.alpha = torch.ones(info.n_experiences + 1, device=self.device)  # slot -1: unseen classes (identity)
        self.beta = torch.zeros(info.n_experiences + 1, device=self.device)
        self.val: TensorData | None = None
        self.exp_index = 0

    # -- the bias layers -------------------------------------------------------------------------------------
    def correct(self, out: torch.Tensor, alpha: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                ) -> torch.Tensor:  # fmt: skip
        """``out`` with every class's logit passed through the bias layer of the experience that introduced it."""
        a = self.alpha if alpha is None else alpha
        b = self.beta if beta is None else beta
        return out * a[self.class_exp] + b[self.class_exp]

    # -- training --------------------------------------------------------------------------------------------
    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        if self.seen_classes.any():
            self.teacher = frozen_copy(self.net)
            self.teacher_bias = (self.alpha.clone(), self.beta.clone())
        self.old_classes = self.seen_classes.clone()
        new = [c for c in exp.classes if not bool(self.seen_classes[c])]
        self.class_exp[new] = exp.index
        self.seen_classes[list(exp.classes)] = True
        self.exp_index = exp.index

    def _per_class_split(self, y: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
        """Boolean mask of ``m`` random examples of every class in ``y`` (the held-out part)."""
        held = torch.zeros(len(y), dtype=torch.bool)
        yc = y.cpu()
        for c in torch.unique(yc).tolist():
            idx = torch.nonzero(yc == c).flatten()
            held[idx[torch.randperm(len(idx), generator=gen)[:m]]] = True
        return held

    def train_data(self, exp: Experience) -> TensorData | None:
        self.val = None
        data = exp.train
        if data is None:
            return None
        n_old = int(self.old_classes.sum())
        mem = self.memory.tensors()
        if n_old == 0 or mem is None:
            return self.memory.extend(data, exp.task_id)
        m = int(self.config.val_fraction * self.config.buffer_size / n_old)
        # Seeded by run and experience, so a resumed run holds out the same examples.
        gen = torch.Generator().manual_seed(self.seed * 1000 + exp.index)
        t = data.t if data.t is not None else torch.full_like(data.y, -1 if exp.task_id is None else exp.task_id)
        mx, my, mt = mem
        held_new = self._per_class_split(data.y, m, gen).to(data.y.device)
        held_mem = self._per_class_split(my, m, gen).to(my.device)
        mx, my, mt = mx.to(data.x.device), my.to(data.y.device), mt.to(data.y.device)
        self.val = TensorData(torch.cat([data.x[held_new], mx[held_mem.to(mx.device)]]),
                              torch.cat([data.y[held_new], my[held_mem]]), data.transform,
                              torch.cat([t[held_new], mt[held_mem]]))  # fmt: skip
        keep_new, keep_mem = ~held_new, ~held_mem
        return TensorData(torch.cat([data.x[keep_new], mx[keep_mem.to(mx.device)]]),
                          torch.cat([data.y[keep_new], my[keep_mem]]), data.transform,
                          torch.cat([t[keep_new], mt[keep_mem]]), data.augment)  # fmt: skip

    def _seen_only(self, out: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        if task_ids is not None:
            return self.mask_logits(out, task_ids)
        return out.masked_fill(~self.seen_classes, torch.finfo(out.dtype).min)

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.net.train()
        out = self.correct(self.net(batch.x))
        loss = F.cross_entropy(self._seen_only(out, batch.task_ids), batch.y)
        n_old, n_seen = int(self.old_classes.sum()), int(self.seen_classes.sum())
        if self.teacher is not None and self.teacher_bias is not None and n_old:
            lam = n_old / n_seen
            with torch.no_grad():
                target = self.correct(self.teacher(batch.x), *self.teacher_bias)[:, self.old_classes]
            loss = lam * kd_loss(out[:, self.old_classes], target, self.config.temperature) + (1 - lam) * loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        return {"loss": loss.detach()}

    def fit_bias(self, val: TensorData) -> None:
        """Stage 2: fit this experience's ``alpha, beta`` on the validation split, the network frozen."""
        cfg = self.config
        x, y = val.batch(slice(None), device=self.device)
        t = None if val.t is None or bool((val.t < 0).any()) else val.t.to(self.device)
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            logits = self.net(x)  # the frozen network's outputs, computed once
        self.net.train(was_training)
        e = self.exp_index
        ab = torch.tensor([1.0, 0.0], device=self.device, requires_grad=True)
        opt = torch.optim.SGD([ab], lr=cfg.bias_lr, momentum=0.9)
        gen = torch.Generator().manual_seed(self.seed * 1000 + e + 1)
        for _ in range(cfg.bias_epochs):
            perm = torch.randperm(len(y), generator=gen).to(self.device)
            for i in range(0, len(y), cfg.bias_batch_size):
                idx = perm[i : i + cfg.bias_batch_size]
                alpha, beta = self.alpha.clone(), self.beta.clone()
                alpha[e], beta[e] = ab[0], ab[1]
                out = self.correct(logits[idx], alpha, beta)
                loss = F.cross_entropy(self._seen_only(out, None if t is None else t[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.alpha[e], self.beta[e] = float(ab[0].detach()), float(ab[1].detach())

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if self.val is not None and len(self.val) and self.config.bias_epochs:
            self.fit_bias(self.val)
        self.val = None
        if exp.train is None or len(exp.train) == 0:
            return
        data = exp.train
        t = data.t if data.t is not None else torch.full_like(data.y, -1 if exp.task_id is None else exp.task_id)
        self.memory.update(data.x, data.y, t, embed(self.net, data, self.device))

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return rank_unseen_last(self.correct(super().predict(x, ctx)), self.seen_classes)

    # -- memory and state ------------------------------------------------------------------------------------
    def memory_size(self) -> int:
        return len(self.memory)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.memory.nbytes()

    def record_bias(self) -> list[tuple[float, float]]:
        """``(alpha, beta)`` of each experience's bias layer so far."""
        return [(float(a), float(b)) for a, b in zip(self.alpha[:-1], self.beta[:-1], strict=True)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.state_dict(),
                "teacher": None if self.teacher is None else self.teacher.state_dict(),
                "teacher_bias": self.teacher_bias, "old_classes": self.old_classes,
                "seen_classes": self.seen_classes, "class_exp": self.class_exp, "alpha": self.alpha,
                "beta": self.beta, "exp_index": self.exp_index}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        for k in ("old_classes", "seen_classes", "class_exp", "alpha", "beta"):
            setattr(self, k, state[k].clone())
        self.teacher_bias = state["teacher_bias"]
        self.exp_index = state["exp_index"]
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = frozen_copy(self.net, state["teacher"])
