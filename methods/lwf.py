"""Learning without Forgetting: distil the previous model's outputs on old classes.

At the start of each experience the current network is frozen as a teacher;
training then adds ``alpha * KL(softmax(teacher/T) || softmax(student/T))`` over
the classes seen before the experience, on the incoming batch. ``alpha`` may change
per experience, and the new-data cross-entropy may be weighted by 1 / (experiences
so far), the weighting of van de Ven et al. that Avalanche's Split-MNIST baseline uses.

References:
    Li & Hoiem. "Learning without Forgetting". ECCV 2016 / TPAMI 2017.
    van de Ven & Tolias. "Three scenarios for continual learning". arXiv:1904.07734, 2019
        (current-data loss weighted 1/t).
    ContinualAI/continual-learning-baselines ``experiments/split_mnist/lwf.py`` (``LwFCEPenalty``
        scales the loss by ``1/(train_exp_counter+1)`` before the distillation is added; ``lwf_alpha``
        is a list, one value per experience, read by Avalanche's ``LearningWithoutForgetting.__call__``
        as ``alpha[expcount]``, ``avalanche/training/regularization.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import frozen_copy
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class LwFConfig(TrainConfig):
    """LwF hyper-parameters (Li & Hoiem: lambda_o = 1, T = 2).

    Attributes:
        alpha: Weight of the distillation loss.
        temperature: Softmax temperature of the distillation.
        alpha_per_experience: Distillation weight of experience 0, 1, ... (the last value holds for later
            ones); empty = ``alpha`` throughout.
        ce_weight: "one", or "inverse_experiences": the new-data cross-entropy of experience t (0-based)
            is weighted 1 / (t + 1) (van de Ven & Tolias 2019; continual-learning-baselines' LwF).
    """

    alpha: float = 1.0
    temperature: float = 2.0
    alpha_per_experience: tuple[float, ...] = ()
    ce_weight: Literal["one", "inverse_experiences"] = "one"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.temperature <= 0 or any(a < 0 for a in self.alpha_per_experience):
            raise ValueError("alpha and alpha_per_experience must be >= 0 and temperature > 0")
        if self.ce_weight not in ("one", "inverse_experiences"):
            raise ValueError(f"ce_weight must be 'one' or 'inverse_experiences', got {self.ce_weight!r}")

    def alpha_at(self, experience: int) -> float:
        """The distillation weight of experience ``experience`` (0-based)."""
        if not self.alpha_per_experience:
            return self.alpha
        return self.alpha_per_experience[min(experience, len(self.alpha_per_experience) - 1)]


@METHODS.register("lwf", reference="Li & Hoiem, 'Learning without Forgetting' (ECCV 2016; TPAMI 2017)")
class LwF(SupervisedMethod):
    """Learning without Forgetting: knowledge distillation from the model of the previous experience."""

    Config: ClassVar[type] = LwFConfig

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.teacher: torch.nn.Module | None = None
        self.old_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self._task_ids: torch.Tensor | None = None

    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        if self.seen_classes.any():
            self.teacher = frozen_copy(self.net)
        self.old_classes = self.seen_classes.clone()
        self.seen_classes[list(exp.classes)] = True

    def observe(self, batch: Batch) -> dict[str, Any]:
        self._task_ids = batch.task_ids  # the regularizer re-weights this step's (masked) cross-entropy
        return super().observe(batch)

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        reg: torch.Tensor | float = 0.0
        if self.config.ce_weight == "inverse_experiences" and self.experience_index > 0:
            # step() adds the cross-entropy at weight 1; taking (1 - w) of the same term back leaves w * CE
            # without a second forward pass.
            w = 1.0 / (self.experience_index + 1)
            reg = -(1.0 - w) * F.cross_entropy(self.mask_logits(out, self._task_ids), y)
        alpha = self.config.alpha_at(self.experience_index)
        if self.teacher is None or not self.old_classes.any() or alpha == 0:
            return reg
        with torch.no_grad():
            target = self.teacher(x)[:, self.old_classes]
        t = self.config.temperature
        student = out[:, self.old_classes]
        kd = F.kl_div(F.log_softmax(student / t, 1), F.softmax(target / t, 1), reduction="batchmean")
        return reg + alpha * kd

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "teacher": None if self.teacher is None else self.teacher.state_dict(),
                "old_classes": self.old_classes, "seen_classes": self.seen_classes}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.old_classes = state["old_classes"].clone()
        self.seen_classes = state["seen_classes"].clone()
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = frozen_copy(self.net, state["teacher"])
