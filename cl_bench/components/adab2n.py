"""AdaB2N: batch norm whose training statistics are balanced over experiences and whose population
statistics follow a modified momentum, against the recency bias of BN in continual learning.

Training mode. Each sample of a batch is tagged with the experience it belongs to (its class's first
experience; replayed samples keep theirs). With ``n_k`` samples of experience ``k`` in the batch and a
learnable prior ``w_k`` (``task_weight``), the experience weights are the mean of a Dirichlet posterior,

    pi_k = (exp(w_k) + n_k) / sum_j (exp(w_j) + n_j),      k = 0 .. current experience,

and each sample of experience ``k`` weighs ``pi_k / n_k``: the batch mean is ``sum_k pi_k mean_k`` and the
batch variance the same weighting of the squared deviations from that mean (biased). Without tags, or in
the first experience, these are the plain batch statistics.

Population statistics. ``running = (1 - eta_t) running + eta_t batch`` with

    eta_1 = m ** kappa,    eta_t = eta_{t-1} / (eta_{t-1} + (1 - m) ** kappa),

``m`` the layer's momentum: ``kappa = 1`` is BN's EMA (``eta = m``), ``kappa = 0`` the cumulative average
(``eta_t = 1 / t``), in between a slower-forgetting average. Eval mode normalises with the running
statistics, as BN does.

Adaptation loss. ``loss = MSE(batch_mean, running_mean) + MSE(batch_var, running_var)`` after the update
(running statistics detached), which the method adds to its objective (times ``lambda``); its gradient
reaches ``task_weight`` and the network.

References:
    Lyu, Wang, Zhang, Sun, Su, Zhu & Jing, "Overcoming Recency Bias of Normalization Statistics in
        Continual Learning: Balance and Adaptation" (NeurIPS 2023).
    Official code github.com/lvyilin/AdaB2N (commit 9aaba7e), ``models/utils/adab2n.py``: the Dirichlet
        weights (lines 75-92), the momentum ``get_eta`` (lines 59-69), the running update (lines 104-107),
        the loss (lines 108-110); ``models/derpp_ada.py`` lines 53-66 (per-sample task tags) and 87-94
        (``lambd`` times the summed loss from experience ``ada_t0`` on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaB2N(nn.Module):
    """A drop-in replacement of one ``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys, plus
    ``task_weight``, ``eta`` and ``experience``).

    Args:
        bn: The BatchNorm2d layer to replace (its affine parameters and running statistics are copied).
        n_experiences: Length of the stream (size of ``task_weight``).
        kappa: Momentum exponent in [0, 1] (1 = plain BN's EMA).
        init_weight: Initial value of every ``task_weight`` entry (official default 0.0, adab2n.py line 17).

    Raises:
        ValueError: For a layer without running statistics or momentum, or kappa outside [0, 1].
    """

    def __init__(self, bn: nn.BatchNorm2d, n_experiences: int, kappa: float, init_weight: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= kappa <= 1.0:
            raise ValueError(f"adab2n kappa must be in [0, 1], got {kappa}")
        if bn.running_mean is None or bn.momentum is None:
            raise ValueError("AdaB2N replaces a BatchNorm2d that tracks running statistics with a momentum")
        self.num_features, self.eps, self.momentum, self.kappa = bn.num_features, bn.eps, float(bn.momentum), kappa
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        # The last eta is state (the recursion continues across a checkpoint); -1 = not started.
        self.register_buffer("eta", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("experience", torch.tensor(0, dtype=torch.long))
        self.task_weight = nn.Parameter(torch.full((n_experiences,), float(init_weight)))
        self.groups: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    def next_eta(self) -> float:
        """Advance and return the modified momentum ``eta_t`` (official ``get_eta``)."""
        m, k = self.momentum, self.kappa
        if k == 0.0:  # eta_t = 1 / t exactly (the recursion's closed form)
            eta = 1.0 / float(self.num_batches_tracked)
        elif k == 1.0:
            eta = m
        elif self.eta < 0:
            eta = m**k
        else:
            prev = float(self.eta)
            eta = prev / (prev + (1.0 - m) ** k)
        self.eta.fill_(eta)
        return eta

    def sample_weights(self, groups: torch.Tensor) -> torch.Tensor:
        """Weight of each sample in the balanced statistics (they sum to 1).

        Args:
            groups: Experience index of each sample (long, <= the current experience).
        """
        cur = int(self.experience)
        counts = torch.bincount(groups, minlength=cur + 1)[: cur + 1].to(self.task_weight.dtype)
        concentration = self.task_weight[: cur + 1].exp() + counts
        pi = concentration / concentration.sum()
        return pi[groups] / counts[groups]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"AdaB2N expects 4D input (N, C, H, W), got {x.dim()}D")
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        eta = self.next_eta()
        groups = self.groups
        if groups is not None and len(groups) == len(x) and int(self.experience) > 0:
            w = self.sample_weights(groups)
            mean = x.mean((2, 3)).t().matmul(w)
            var = (x - mean.view(1, -1, 1, 1)).square().mean((2, 3)).t().matmul(w)
        else:  # plain (biased) batch statistics, as the official layer before any replay
            var, mean = torch.var_mean(x, (0, 2, 3), correction=0)
        out = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        with torch.no_grad():
            self.running_mean.add_(mean.detach() - self.running_mean, alpha=eta)
            self.running_var.mul_(1 - eta).add_(var.detach(), alpha=eta)
        self.loss = F.mse_loss(mean, self.running_mean) + F.mse_loss(var, self.running_var)
        return out


def adab2n_layers(net: nn.Module) -> list[AdaB2N]:
    """Every :class:`AdaB2N` layer of ``net``, in module order."""
    return [m for m in net.modules() if isinstance(m, AdaB2N)]


def use_adab2n(net: nn.Module, n_experiences: int, kappa: float, init_weight: float = 0.0) -> list[AdaB2N]:
    """Replace, in place, every ``nn.BatchNorm2d`` of ``net`` by :class:`AdaB2N` (the official code replaces
    BatchNorm2d only, continual_model.py lines 132-137); returns the new layers.

    Raises:
        ValueError: If ``net`` has no BatchNorm2d.
    """
    targets = [(n, m) for n, m in net.named_modules() if type(m) is nn.BatchNorm2d]
    if not targets:
        raise ValueError(f"{type(net).__name__} has no BatchNorm2d layer for AdaB2N to replace")
    layers = []
    for name, bn in targets:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        layer = AdaB2N(bn, n_experiences, kappa, init_weight).to(bn.running_mean.device)
        setattr(parent, child, layer)
        layers.append(layer)
    return layers


__all__ = ["AdaB2N", "adab2n_layers", "use_adab2n"]
