"""Learning without Forgetting: distil the previous model's outputs on old classes.

At the start of each experience the current network is frozen as a teacher;
training then adds ``alpha * KL(softmax(teacher/T) || softmax(student/T))`` over
the classes seen before the experience, on the incoming batch.

References:
    Li & Hoiem. "Learning without Forgetting". ECCV 2016 / TPAMI 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import frozen_copy
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class LwFConfig(TrainConfig):
    """LwF hyper-parameters (Li & Hoiem: lambda_o = 1, T = 2).

    Attributes:
        alpha: Weight of the distillation loss.
        temperature: Softmax temperature of the distillation.
    """

    alpha: float = 1.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0 or self.temperature <= 0:
            raise ValueError("alpha must be >= 0 and temperature > 0")


@METHODS.register("lwf", reference="Li & Hoiem, 'Learning without Forgetting' (ECCV 2016; TPAMI 2017)")
class LwF(SupervisedMethod):
    """Learning without Forgetting: knowledge distillation from the model of the previous experience."""

    Config: ClassVar[type] = LwFConfig

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.teacher: torch.nn.Module | None = None
        self.old_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)

    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        if self.seen_classes.any():
            self.teacher = frozen_copy(self.net)
        self.old_classes = self.seen_classes.clone()
        self.seen_classes[list(exp.classes)] = True

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        if self.teacher is None or not self.old_classes.any():
            return 0.0
        with torch.no_grad():
            target = self.teacher(x)[:, self.old_classes]
        t = self.config.temperature
        student = out[:, self.old_classes]
        kd = F.kl_div(F.log_softmax(student / t, 1), F.softmax(target / t, 1), reduction="batchmean")
        return self.config.alpha * kd

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
