"""Batch-norm handling shared by the test-time adaptation methods.

Test-time adaptation methods in the Tent family normalise every test batch with
its own statistics and adapt only the normalisation layers' affine parameters.
These helpers find the layers by type, so they work on any architecture that
contains batch norm.

References:
    Wang et al. "Tent: Fully Test-Time Adaptation by Entropy Minimization". ICLR 2021.
    Schneider et al. "Improving robustness against common corruptions by covariate
    shift adaptation". NeurIPS 2020.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cl_bench.errors import ConfigError


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The batch-norm layers of ``model`` (1d, 2d, 3d, sync) with their names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def require_bn(model: nn.Module, method: str) -> None:
    """Raise :class:`ConfigError` if ``model`` has no batch norm to adapt.

    Args:
        model: The source model.
        method: Method name, for the message.
    """
    if not bn_layers(model):
        raise ConfigError(
            f"Method {method!r} adapts batch-norm layers, but the source model "
            f"({type(model).__name__}) has none. Use a source model with BatchNorm layers "
            "(e.g. the protocol's default CNN), or choose a method that does not rely on them "
            "(e.g. 'source')."
        )


def use_batch_stats(model: nn.Module) -> nn.Module:
    """Make every batch-norm layer normalise with the statistics of the current batch.

    Dropping the running statistics (as Tent's reference code does) makes the layer use
    batch statistics in both train and eval mode, so ``predict`` and ``adapt`` normalise
    alike and no forward pass changes a buffer.
    """
    for _, m in bn_layers(model):
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
    return model


def bn_affine_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Names and tensors of the batch-norm scale and shift parameters of ``model``."""
    out = []
    for name, m in bn_layers(model):
        for pname, p in m.named_parameters(recurse=False):
            if pname in ("weight", "bias"):
                out.append((f"{name}.{pname}", p))
    return out


def adapt_only(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` except ``params``; returns ``params``."""
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params
