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

    With several anchors the sum is evaluated as one quadratic,
    ``sum_k F_k (theta - theta*_k)^2 = A (theta - mu)^2 + c`` with ``A = sum_k F_k``,
    ``mu = sum_k F_k theta*_k / A`` and a constant ``c`` (float64, set at consolidation): the same
    value and gradient up to float rounding at the cost of one anchor, where the term-by-term sum
    made each step of EWC on Split-MNIST's last experience cost ~5 network steps (docs/methods.md,
    "EWC's cost"). One anchor is evaluated term by term as before.
    """

    def __init__(self, strength: float, mode: Literal["separate", "online"] = "separate", decay: float = 1.0) -> None:
        self.strength = strength
        self.mode = mode
        self.decay = decay
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self._merged: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float] | None = None

    def consolidate(self, net: nn.Module, importance: dict[str, torch.Tensor]) -> None:
        """Anchor the current parameters of ``net`` with the given per-parameter importance."""
        params = {k: v.detach().clone() for k, v in net.named_parameters() if k in importance}
        if self.mode == "online" and self.anchors:
            old = self.anchors[0][1]
            importance = {k: self.decay * old[k] + importance[k] for k in importance}
            self.anchors = []
        self.anchors.append((params, {k: v.detach().clone() for k, v in importance.items()}))
        self._merged = None

    def _merge(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]:
        """``(mu, A, c)`` of the anchors as one quadratic (see the class docstring)."""
        if self._merged is None:
            mu, total, const = {}, {}, 0.0
            for k in self.anchors[0][1]:
                imp = torch.stack([a[1][k] for a in self.anchors]).double()
                ref = torch.stack([a[0][k] for a in self.anchors]).double()
                a = imp.sum(0)
                m = torch.where(a > 0, (imp * ref).sum(0) / a.clamp_min(torch.finfo(a.dtype).tiny), ref[0])
                const += float((imp * (ref - m).pow(2)).sum())
                mu[k], total[k] = m.to(self.anchors[0][0][k].dtype), a.to(self.anchors[0][1][k].dtype)
            self._merged = (mu, total, const)
        return self._merged

    def __call__(self, net: nn.Module) -> torch.Tensor | float:
        """The penalty for the current parameters of ``net`` (0.0 before the first anchor)."""
        if not self.anchors:
            return 0.0
        named = dict(net.named_parameters())
        first = self.anchors[0][1]
        same = all(imp.keys() == first.keys() and all(imp[k].shape == first[k].shape for k in imp)
                   for _, imp in self.anchors[1:])  # fmt: skip
        if len(self.anchors) == 1 or not same:  # anchors over other parameters or shapes: term by term
            return 0.5 * self.strength * sum(
                (imp[k] * (named[k] - ref[k]).pow(2)).sum() for ref, imp in self.anchors for k in imp
            )
        mu, a, const = self._merge()
        return 0.5 * self.strength * (sum((a[k] * (named[k] - mu[k]).pow(2)).sum() for k in a) + const)

    def state_dict(self) -> dict[str, Any]:
        """The stored anchors."""
        return {"anchors": self.anchors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.anchors = state["anchors"]
        self._merged = None
