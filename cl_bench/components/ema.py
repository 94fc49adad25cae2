"""An exponential-moving-average (mean) teacher of a student network.

References:
    Tarvainen & Valpola. "Mean teachers are better role models: Weight-averaged
    consistency targets improve semi-supervised deep learning results". NeurIPS 2017.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from cl_bench.components.window_bn import WindowBatchNorm


def frozen_copy(net: nn.Module, state: dict[str, Any] | None = None) -> nn.Module:
    """An eval-mode deep copy of ``net`` with no trainable parameter (a distillation teacher, e.g. the network
    as it left the previous experience); ``state`` (a saved teacher's ``state_dict``) is loaded into it."""
    teacher = copy.deepcopy(net).eval()
    if state is not None:
        teacher.load_state_dict(state)
    return teacher.requires_grad_(False)


class EMATeacher:
    """``teacher <- m * teacher + (1 - m) * student`` over all parameters after each student step.

    Buffers (e.g. batch-norm running statistics, if any) are copied from the student,
    as the test-time-adaptation reference implementations do implicitly (their
    batch norms keep no running statistics); a sliding window of test statistics
    (:class:`~cl_bench.components.window_bn.WindowBatchNorm`) is not: it holds the moments
    of the teacher's own features.

    Args:
        student: The network to average; the teacher starts as a deep copy of it.
        momentum: m, the weight kept on the old teacher.
    """

    def __init__(self, student: nn.Module, momentum: float) -> None:
        self.momentum = momentum
        self.model = copy.deepcopy(student)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, hold: list[torch.Tensor] | None = None) -> None:
        """One EMA step towards ``student``.

        Args:
            student: The network whose current parameters are averaged in.
            hold: Optional per-parameter boolean masks (same order as ``parameters()``): where a
                mask is true the teacher keeps its value (PSMT's masked EMA update).
        """
        m = self.momentum
        params = zip(self.model.parameters(), student.parameters(), strict=True)
        for i, (t, s) in enumerate(params):
            avg = t.mul(m).add(s.detach(), alpha=1.0 - m)
            t.copy_(avg if hold is None else torch.where(hold[i], t, avg))
        for tm, sm in zip(self.model.modules(), student.modules(), strict=True):
            if isinstance(tm, WindowBatchNorm):  # a sliding window holds this network's own features
                continue
            for tb, sb in zip(tm.buffers(recurse=False), sm.buffers(recurse=False), strict=True):
                tb.copy_(sb)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits for ``x`` (no gradient)."""
        with torch.no_grad():
            return self.model(x)

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_dict(state["model"])


@torch.no_grad()
def blend_parameters_(target: nn.Module, other: nn.Module, momentum: float, *, trainable_only: bool = True) -> None:
    """``p_target <- momentum * p_target + (1 - momentum) * p_other`` over parameters, in place.

    Weight ensembling with the source model (ROID, ``momentum`` 0.99) and CMF's filtering steps use it.

    Args:
        target: The network changed in place.
        other: A network of the same architecture.
        momentum: The weight kept on ``target``.
        trainable_only: Blend only parameters that require gradients (the others are unchanged anyway).
    """
    if momentum >= 1.0:
        return
    for t, o in zip(target.parameters(), other.parameters(), strict=True):
        if t.requires_grad or not trainable_only:
            t.mul_(momentum).add_(o.detach().to(t.device), alpha=1.0 - momentum)
