"""Which batch-norm parameters the test-time adaptation methods train.

Tent-family methods normalise every test batch with its own statistics
(:func:`cl_bench.components.batchnorm.use_test_batch_stats`) and adapt only the normalisation
layers' affine parameters. Layers are found by type, so any architecture with batch norm works.

References:
    Wang et al. "Tent: Fully Test-Time Adaptation by Entropy Minimization". ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cl_bench.components.batchnorm import batch_norm_layers
from cl_bench.components.window_bn import WindowBatchNorm
from cl_bench.core.errors import ConfigError


def require_bn(model: nn.Module, method: str) -> None:
    """Raise :class:`ConfigError` if ``model`` has no batch norm to adapt.

    Args:
        model: The source model.
        method: Method name, for the message.
    """
    if not batch_norm_layers(model):
        raise ConfigError(
            f"Method {method!r} adapts batch-norm layers, but the source model "
            f"({type(model).__name__}) has none. Use a source model with BatchNorm layers "
            "(e.g. the protocol's default CNN), or choose a method that does not rely on them "
            "(e.g. 'source')."
        )


def bn_affine_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Names and tensors of the batch-norm scale and shift parameters of ``model``."""
    out = []
    for name, m in batch_norm_layers(model):
        for pname, p in m.named_parameters(recurse=False):
            if pname in ("weight", "bias"):
                out.append((f"{name}.{pname}", p))
    return out


def norm_affine_params(
    model: nn.Module, skip: Callable[[str], bool] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """Names and tensors of the scale and shift of every normalisation layer (batch norm of any kind, the
    sliding-window one included, ``GroupNorm``, ``LayerNorm``) of ``model`` whose module name ``skip`` does
    not reject."""
    norms = dict(batch_norm_layers(model))
    norms.update((n, m) for n, m in model.named_modules()
                 if isinstance(m, (nn.GroupNorm, nn.LayerNorm, WindowBatchNorm)))  # fmt: skip
    out = []
    for name, m in model.named_modules():  # module order, not the dict's insertion order
        if name not in norms or (skip is not None and skip(name)):
            continue
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
