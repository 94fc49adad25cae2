"""Instance-aware batch normalisation (IABN, NOTE): batch statistics corrected towards each instance's own.

For an input ``x`` [N, C, *spatial] with L spatial positions, the layer compares every instance's
per-channel statistics (mu_i, sigma2_i; instance normalisation) with the batch-norm statistics
(mu_b, sigma2_b: the running statistics in eval mode, the batch's in train mode) and moves the latter
only as far as the difference exceeds ``k`` standard errors of the instance estimate:

    mu_adj     = mu_b     + softshrink(mu_i     - mu_b,     k * sqrt(sigma2_b / L))
    sigma2_adj = sigma2_b + softshrink(sigma2_i - sigma2_b, k * sigma2_b * sqrt(2 / (L - 1)))

and normalises with (mu_adj, max(sigma2_adj, 0)). A test sample whose statistics differ only by sampling
noise is normalised as by batch norm; a strongly shifted one is normalised more like by instance norm.
Layers with ``L <= skip_threshold`` (e.g. fully connected batch norm, L = 1) are plain batch norm.

In train mode the layer updates its running statistics as PyTorch's BatchNorm does (momentum, unbiased
batch variance): NOTE adapts them on its memory with momentum 0.01. In eval mode a forward pass changes
no state.

References:
    Gong et al. "NOTE: Robust Continual Test-time Adaptation Against Temporal Correlation". NeurIPS 2022,
    Sec. 3.1, Eq. 3-5. Code: github.com/TaesikGong/NOTE (commit a714a2a), utils/iabn.py
    ``InstanceAwareBatchNorm2d`` (unbiased variances, ``skip_thres`` default 1 in main.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class InstanceAwareBatchNorm(nn.Module):
    """IABN replacing one BatchNorm layer (1d on [N, C, L] or [N, C], 2d, 3d); see the module docstring.

    Args:
        bn: The source BatchNorm layer (affine parameters and running statistics are copied; it is
            not changed).
        k: Threshold in standard errors (NOTE: ``iabn_k`` 4 in tta.sh).
        momentum: Running-statistics momentum in train mode (NOTE: ``bn_momentum`` 0.01 in tta.sh).
        skip_threshold: Plain batch norm when the number of spatial positions is at most this (1).
    """

    def __init__(self, bn: _BatchNorm, k: float = 4.0, momentum: float = 0.01, skip_threshold: int = 1) -> None:
        super().__init__()
        if k < 0 or not 0 <= momentum <= 1:
            raise ValueError(f"IABN needs k >= 0 and momentum in [0, 1], got k={k}, momentum={momentum}")
        self.k, self.momentum, self.skip_threshold, self.eps = float(k), float(momentum), int(skip_threshold), bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone())
        c = bn.num_features
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        var = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())

    @staticmethod
    def _softshrink(x: torch.Tensor, lbd: torch.Tensor) -> torch.Tensor:
        # F.softshrink takes a scalar lambda; here it is per channel
        return F.relu(x - lbd) - F.relu(-x - lbd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        shape = (1, c) + (1,) * (x.dim() - 2)
        spatial = list(range(2, x.dim()))
        n_pos = math.prod(x.shape[2:]) if spatial else 1
        if self.training:
            n = x.numel() // c
            var_b, mu_b = torch.var_mean(x, dim=[0, *spatial], unbiased=n > 1)
            with torch.no_grad():
                self.running_mean.lerp_(mu_b.detach(), self.momentum)
                self.running_var.lerp_(var_b.detach(), self.momentum)
            mu_b, var_b = mu_b.view(shape), var_b.view(shape)
        else:
            mu_b, var_b = self.running_mean.view(shape), self.running_var.view(shape)
        if n_pos <= self.skip_threshold:
            mu, var = mu_b, var_b
        else:
            var_i, mu_i = torch.var_mean(x, dim=spatial, keepdim=True, unbiased=True)
            s_mu = torch.sqrt((var_b + self.eps) / n_pos)
            s_var = (var_b + self.eps) * math.sqrt(2 / (n_pos - 1))
            mu = mu_b + self._softshrink(mu_i - mu_b, self.k * s_mu)
            var = F.relu(var_b + self._softshrink(var_i - var_b, self.k * s_var))
        out = (x - mu) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


def iabn_layers(model: nn.Module) -> list[InstanceAwareBatchNorm]:
    """The :class:`InstanceAwareBatchNorm` layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, InstanceAwareBatchNorm)]


__all__ = ["InstanceAwareBatchNorm", "iabn_layers"]
