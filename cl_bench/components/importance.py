"""Per-parameter importance estimates for quadratic penalties (SI's path integral, MAS's output norm).

Both feed :class:`cl_bench.components.penalty.FisherPenalty`, so SI, MAS and EWC share one
quadratic-penalty code path and differ only in how the importance is estimated.

References:
    Zenke, Poole, Ganguli. "Continual Learning Through Synaptic Intelligence". ICML 2017.
    Aljundi et al. "Memory Aware Synapses: Learning what (not) to forget". ECCV 2018.
    Avalanche 0.6 ``training/plugins/synaptic_intelligence.py`` and ``training/plugins/mas.py``
        (the forms reproduced here, cross-checked in ``benchmarks/crosscheck_regularization.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase


def parameters_outside_norm_layers(net: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``net`` except those of batch-norm layers (which Avalanche's SI skips)."""
    skip = {f"{m_name}.{p_name}" if m_name else p_name
            for m_name, m in net.named_modules() if isinstance(m, _NormBase)
            for p_name, _ in m.named_parameters(recurse=False)}  # fmt: skip
    return {k: p for k, p in net.named_parameters() if p.requires_grad and k not in skip}


class PathIntegral:
    """Synaptic Intelligence's online importance: the path integral of gradient times parameter change.

    During an experience, each optimiser step adds ``-g * (theta_after - theta_before)`` to a
    per-parameter trajectory ``w`` (``g`` is the gradient the step used). At the experience's end,
    ``w / ((theta_end - theta_start)^2 + damping)`` is added to a cumulative importance, which is
    returned clipped from above at ``clip`` (Avalanche clips at 0.001; ``None`` disables it).

    Args:
        damping: The xi of Zenke et al., Eq. 5, keeping the ratio finite (Avalanche's ``eps`` = 1e-7).
        clip: Upper bound of the returned importance (Avalanche ``update_ewc_data(clip_to=0.001)``).
    """

    def __init__(self, damping: float = 1e-7, clip: float | None = 1e-3) -> None:
        self.damping = damping
        self.clip = clip
        self.start: dict[str, torch.Tensor] = {}
        self.before: dict[str, torch.Tensor] = {}
        self.trajectory: dict[str, torch.Tensor] = {}
        self.cumulative: dict[str, torch.Tensor] = {}

    def begin_experience(self, params: dict[str, nn.Parameter]) -> None:
        """Remember the experience's starting point and reset the trajectory."""
        self.start = {k: p.detach().clone() for k, p in params.items()}
        self.trajectory = {k: torch.zeros_like(p) for k, p in params.items()}

    def before_step(self, params: dict[str, nn.Parameter]) -> None:
        """Remember the parameters before an optimiser step."""
        self.before = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def after_step(self, params: dict[str, nn.Parameter]) -> None:
        """Accumulate ``-grad * delta`` of the step just taken (the gradients must still be in ``.grad``)."""
        for k, p in params.items():
            if p.grad is not None:
                self.trajectory[k] -= p.grad * (p - self.before[k])

    @torch.no_grad()
    def end_experience(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        """Fold this experience's trajectory into the cumulative importance; return the (clipped) total."""
        for k, p in params.items():
            omega = self.trajectory[k] / ((p - self.start[k]).pow(2) + self.damping)
            self.cumulative[k] = self.cumulative[k] + omega if k in self.cumulative else omega
        total = {k: v.clone() for k, v in self.cumulative.items()}
        if self.clip is not None:
            total = {k: v.clamp(max=self.clip) for k, v in total.items()}
        return total

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the estimate after a checkpoint."""
        return {"start": self.start, "before": self.before, "trajectory": self.trajectory,
                "cumulative": self.cumulative}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.start, self.before = state["start"], state["before"]
        self.trajectory, self.cumulative = state["trajectory"], state["cumulative"]


def output_norm_importance(net: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """MAS importance: mean over batches of ``|d mean_i ||f(x_i)||^2 / d theta|``.

    This is the batch form Avalanche 0.6 (after FACIL) computes: the absolute gradient of the
    batch-mean squared L2 norm of the outputs, averaged over batches; the network stays in
    training mode, as there. Aljundi et al. (Eq. 4) average per-example gradients of the
    (unsquared) norm instead; the two differ by a per-batch constant and the order of ``abs``
    and the mean, and rank parameters alike.

    Args:
        net: The network.
        batches: Input batches (no labels: MAS is unsupervised).

    Returns:
        Parameter name -> importance, for parameters that require gradients.
    """
    params = {k: p for k, p in net.named_parameters() if p.requires_grad}
    importance = {k: torch.zeros_like(p) for k, p in params.items()}
    n = 0
    for x in batches:
        loss = net(x).pow(2).sum(1).mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for k, g in zip(params, grads, strict=True):
            if g is not None:
                importance[k] += g.abs()
        n += 1
    return {k: v / max(n, 1) for k, v in importance.items()}
