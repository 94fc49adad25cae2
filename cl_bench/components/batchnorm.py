"""BatchNorm with test-batch statistics, for test-time adaptation methods.

:func:`use_test_batch_stats` replaces every BatchNorm layer of a network by :class:`PriorBatchNorm`, which
normalises with statistics of the current test batch, optionally mixed with the source statistics:

    mu = N / (N + n) * mu_source + n / (N + n) * mu_batch   (the same for the variance),

with n the batch size and N the prior strength (Schneider et al. 2020, Eq. 2). N = 0 is pure test-batch
normalisation (Nado et al. 2020; "BN-1" in the RMT benchmark tables). The layer keeps the source
statistics as buffers (same state-dict keys as the BatchNorm it replaces) and never updates them, so a
forward pass changes no state.

:class:`EMABatchNorm` instead normalises with an exponential moving average of test-batch statistics,
initialised with the source statistics (BN-EMA; RoTTA's robust batch norm).

References:
    Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation"
        (NeurIPS 2020).
    Nado et al., "Evaluating Prediction-Time Batch Normalization for Robustness under Covariate Shift"
        (arXiv:2006.10963, 2020).
    Yuan, Xie & Li, "Robust Test-Time Adaptation in Dynamic Scenarios" (RoTTA, CVPR 2023), RobustBN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

EMAMode = Literal["peek", "update", "stored"]


class PriorBatchNorm(nn.Module):
    """A BatchNorm layer normalising with (prior-weighted) statistics of each input batch.

    Args:
        bn: The source BatchNorm layer (its affine parameters and running statistics are copied).
        prior_strength: N, the weight of the source statistics in pseudo-samples (0 = batch only).
    """

    def __init__(self, bn: _BatchNorm, prior_strength: float = 0.0) -> None:
        super().__init__()
        if prior_strength < 0:
            raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
        self.prior_strength = float(prior_strength)
        self.eps = bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone())
        c = bn.num_features
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        var = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        if self.prior_strength > 0:
            a = self.prior_strength / (self.prior_strength + len(x))
            mean = a * self.running_mean + (1 - a) * mean
            var = a * self.running_var + (1 - a) * var
        # Written out (not F.batch_norm) so gradients flow through the batch statistics, as in training mode.
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


class EMABatchNorm(nn.Module):
    """A BatchNorm layer normalising with a moving average of test-batch statistics (source-initialised).

    ``mode`` decides what a forward pass does: "peek" normalises with the average updated by the
    current batch without storing it (a prediction that changes no state); "update" does the same and
    stores the update; "stored" normalises with the stored average and ignores the batch statistics.
    Gradients flow through the batch statistics in "peek"/"update" (as in RoTTA's RobustBN).

    Args:
        bn: The source BatchNorm layer (affine parameters and running statistics are copied).
        momentum: Weight of each new batch in the average.
        unbiased: Use the unbiased batch variance (PyTorch's BatchNorm update, BN-EMA) or the biased
            one (RoTTA's RobustBN).
        trainable: Whether the affine parameters require gradients.
    """

    def __init__(self, bn: nn.Module, momentum: float, *, unbiased: bool = True, trainable: bool = False) -> None:
        super().__init__()
        self.momentum, self.eps, self.unbiased = momentum, bn.eps, unbiased
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone(), requires_grad=trainable)
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone(), requires_grad=trainable)
        c = len(bn.running_mean) if bn.running_mean is not None else bn.num_features
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        var = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        self.mode: EMAMode = "peek"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "stored":
            mean, var = self.running_mean, self.running_var
        else:
            dims = [0, *range(2, x.dim())]
            n = x.numel() // x.shape[1]
            var_b = x.var(dims, unbiased=self.unbiased and n > 1)
            mean = (1 - self.momentum) * self.running_mean + self.momentum * x.mean(dims)
            var = (1 - self.momentum) * self.running_var + self.momentum * var_b
            if self.mode == "update":
                self.running_mean.copy_(mean.detach())
                self.running_var.copy_(var.detach())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every BatchNorm layer (``_BatchNorm``, :class:`PriorBatchNorm`, :class:`EMABatchNorm`)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (_BatchNorm, PriorBatchNorm, EMABatchNorm))]


def replace_batch_norms(model: nn.Module, make: Callable[[_BatchNorm], nn.Module]) -> list[nn.Module]:
    """Replace, in place, every ``_BatchNorm`` of ``model`` by ``make(bn)`` (on the layer's device).

    Returns:
        The new layers, in module order.

    Raises:
        ValueError: If ``model`` has no BatchNorm layer.
    """
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to adapt")
    new = []
    for name, bn in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        device = bn.weight.device if bn.weight is not None else bn.running_mean.device
        layer = make(bn).to(device)
        setattr(parent, child, layer)
        new.append(layer)
    return new


def set_ema_mode(layers: list[nn.Module], mode: EMAMode) -> None:
    """Set the ``mode`` of every :class:`EMABatchNorm` among ``layers``."""
    for layer in layers:
        if isinstance(layer, EMABatchNorm):
            layer.mode = mode


def use_test_batch_stats(model: nn.Module, prior_strength: float = 0.0) -> nn.Module:
    """Replace, in place, every BatchNorm layer of ``model`` by :class:`PriorBatchNorm`; returns ``model``.

    Raises:
        ValueError: If ``model`` has no BatchNorm layer (test-batch normalisation would do nothing).
    """
    replace_batch_norms(model, lambda bn: PriorBatchNorm(bn, prior_strength))
    return model
