"""Quadratic anchoring of parameters, weighted by their importance (EWC, L2).

References:
    Kirkpatrick et al. "Overcoming catastrophic forgetting in neural networks". PNAS 2017.
    Schwarz et al. "Progress & compress: a scalable framework for continual learning". ICML 2018.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn


class FisherPenalty:
    """``lambda/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` over stored anchors.

    With importance ``F`` = the diagonal Fisher this is EWC; with ``F`` = 1 it is
    plain L2 anchoring to earlier solutions.

    Args:
        strength: The penalty weight lambda.
        mode: "separate" keeps one anchor per experience (Kirkpatrick et al.);
            "online" keeps one running anchor whose importance decays by
            ``decay`` at every consolidation (Schwarz et al.).
        decay: Importance decay of the online mode (gamma).
    """

    def __init__(self, strength: float, mode: Literal["separate", "online"] = "separate", decay: float = 1.0) -> None:
        self.strength = strength
        self.mode = mode
        self.decay = decay
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def consolidate(self, net: nn.Module, importance: dict[str, torch.Tensor]) -> None:
        """Anchor the current parameters of ``net`` with the given per-parameter importance."""
        params = {k: v.detach().clone() for k, v in net.named_parameters() if k in importance}
        if self.mode == "online" and self.anchors:
            old = self.anchors[0][1]
            importance = {k: self.decay * old[k] + importance[k] for k in importance}
            self.anchors = []
        self.anchors.append((params, {k: v.detach().clone() for k, v in importance.items()}))

    def __call__(self, net: nn.Module) -> torch.Tensor | float:
        """The penalty for the current parameters of ``net`` (0.0 before the first anchor)."""
        if not self.anchors:
            return 0.0
        named = dict(net.named_parameters())
        total = sum(
            (imp[k] * (named[k] - ref[k]).pow(2)).sum() for ref, imp in self.anchors for k in imp
        )
        return 0.5 * self.strength * total

    def state_dict(self) -> dict[str, Any]:
        """The stored anchors."""
        return {"anchors": self.anchors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.anchors = state["anchors"]
