"""Quadratic anchoring of parameters, weighted by their importance (EWC, L2).

References:
    Kirkpatrick et al. "Overcoming catastrophic forgetting in neural networks". PNAS 2017.
    Schwarz et al. "Progress & compress: a scalable framework for continual learning". ICML 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def diagonal_fisher(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    mask: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher: mean over examples of the squared per-example gradient of log p(y|x).

    Per-example gradients (not squared batch-mean gradients) are what the Fisher
    information is made of; ``torch.func.vmap`` computes them in one pass.

    Args:
        net: The network (evaluated in eval mode, so batch norm uses its running statistics).
        batches: ``(x, y)`` pairs.
        mask: Optional ``x -> bool mask [B, C]`` of allowed classes (task-incremental heads).

    Returns:
        Parameter name -> Fisher diagonal, for parameters that require gradients.
    """
    was_training = net.training
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def nll(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        out = functional_call(net, (p, buffers), (x.unsqueeze(0),))
        if m is not None:
            out = out.masked_fill(~m.unsqueeze(0), torch.finfo(out.dtype).min)
        return F.cross_entropy(out, y.unsqueeze(0))

    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    count = 0
    try:
        for x, y in batches:
            m = mask(x) if mask is not None else None
            grads = vmap(grad(nll), in_dims=(None, 0, 0, 0 if m is not None else None))(params, x, y, m)
            for k, g in grads.items():
                fisher[k] += g.pow(2).sum(0)
            count += len(x)
    finally:
        net.train(was_training)
    return {k: v / max(count, 1) for k, v in fisher.items()}


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
