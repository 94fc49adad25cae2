"""Learning-rate schedules of the supervised family: constant, multistep, cosine, each with a linear warm-up.

A schedule is a pure function of the step count (:func:`lr_at`), so a trace can be checked against the
milestones a paper states, and :class:`LRSchedule` applies it to an optimiser before each step. The clock
counts optimiser steps; it restarts at every experience (``reset="experience"``, as PyCIL and mammoth build a
new scheduler per task) or runs across the stream (``reset="global"``). Papers state milestones in epochs:
multiply by the iterations per epoch of the stream (e.g. 50,000 / 5 tasks / batch 32 = 313 on Seq-CIFAR-10).

References:
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (ICLR 2017): cosine annealing.
    Goyal et al., "Accurate, Large Minibatch SGD" (2017): linear warm-up.
    Buzzega et al., mammoth ``datasets/seq_cifar10.py`` ``get_scheduler``: MultiStepLR([35, 45], gamma=0.1).
    Zhou et al., PyCIL ``models/icarl.py``: milestones [60, 120, 170] (first task), [80, 120], gamma 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

SCHEDULES = ("constant", "multistep", "cosine")


@dataclass(frozen=True)
class Schedule:
    """One learning-rate schedule.

    Attributes:
        kind: "constant", "multistep" (lr x gamma at every milestone passed) or "cosine" (to ``min_lr``
            over ``total_steps``, then held).
        milestones: Steps (after warm-up) at which multistep multiplies the lr by ``gamma``; increasing.
        gamma: Multistep decay factor (0.1 in mammoth and PyCIL).
        total_steps: Length of the cosine decay, after warm-up.
        min_lr: Floor of the cosine decay.
        warmup_steps: Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first steps (0: none).
        reset: "experience" restarts the clock at every experience; "global" runs it across the stream.
    """

    kind: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    total_steps: int = 0
    min_lr: float = 0.0
    warmup_steps: int = 0
    reset: Literal["experience", "global"] = "experience"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if list(self.milestones) != sorted(set(self.milestones)) or any(m <= 0 for m in self.milestones):
            raise ValueError(f"lr_milestones must be increasing positive step counts, got {list(self.milestones)}")
        if self.kind == "multistep" and not self.milestones:
            raise ValueError("lr_schedule=multistep needs lr_milestones (e.g. --set lr_milestones=[35,45])")
        if self.kind == "cosine" and self.total_steps <= 0:
            raise ValueError("lr_schedule=cosine needs lr_total_steps > 0 (steps of the decay)")
        if not 0 < self.gamma <= 1 or self.warmup_steps < 0 or self.min_lr < 0:
            raise ValueError("lr_gamma must be in (0, 1], lr_warmup_steps and lr_min >= 0")
        if self.reset not in ("experience", "global"):
            raise ValueError(f"lr_reset must be 'experience' or 'global', got {self.reset!r}")


def lr_at(step: int, base_lr: float, schedule: Schedule) -> float:
    """The learning rate of optimiser step ``step`` (0-based, counted since the last reset)."""
    if step < schedule.warmup_steps:
        return base_lr * (step + 1) / schedule.warmup_steps
    t = step - schedule.warmup_steps
    if schedule.kind == "multistep":
        return base_lr * schedule.gamma ** sum(t >= m for m in schedule.milestones)
    if schedule.kind == "cosine":
        frac = min(t, schedule.total_steps) / schedule.total_steps
        return schedule.min_lr + 0.5 * (base_lr - schedule.min_lr) * (1 + math.cos(math.pi * frac))
    return base_lr


def lr_trace(n_steps: int, base_lr: float, schedule: Schedule) -> list[float]:
    """Learning rates of the first ``n_steps`` steps after a reset."""
    return [lr_at(i, base_lr, schedule) for i in range(n_steps)]


class LRSchedule:
    """Applies a :class:`Schedule` to an optimiser: call :meth:`apply` before every ``optimizer.step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.base_lrs: Sequence[float] = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0

    def begin_experience(self) -> None:
        """Restart the clock if the schedule resets per experience."""
        if self.schedule.reset == "experience":
            self.step_count = 0

    def apply(self) -> None:
        """Set the lr of the coming step and advance the clock."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = lr_at(self.step_count, base, self.schedule)
        self.step_count += 1
