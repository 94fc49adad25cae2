"""BN-EMA: batch norm whose statistics are an exponential moving average of the test-batch statistics.

Every BatchNorm layer of the source model starts from the source running statistics; on each test batch
they move towards that batch's statistics by ``momentum`` (PyTorch's BatchNorm update, unbiased batch
variance), and the batch is normalised with the updated average. Nothing is learned. Compared with pure
test-batch normalisation (``bn_adapt``, BN-1) the average smooths the statistics over batches, so small
or label-correlated batches do less harm; momentum 1 is BN-1, momentum 0 the source model.

References:
    Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation"
        (NeurIPS 2020): the EMA batch norm of their code (``EMABatchNorm``), which the RMT benchmark
        (github.com/mariodoebler/test-time-adaptation, methods/bn.py, adaptation ``norm_ema``) reuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cl_bench.components import require_bn
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import clone_source


@dataclass(frozen=True)
class BNEMAConfig:
    """BN-EMA hyper-parameters.

    Attributes:
        momentum: Weight of each new test batch in the moving average; 0.1 is PyTorch's BatchNorm default,
            which the EMA batch norm of Schneider et al. and the RMT benchmark keep.
    """

    momentum: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.momentum <= 1:
            raise ConfigError(f"bn_ema momentum must be in (0, 1], got {self.momentum}")


class EMABatchNorm(nn.Module):
    """A BatchNorm layer normalising with a moving average of test-batch statistics (source-initialised).

    ``forward`` normalises with the average updated by the current batch; it stores the update only
    when ``update`` is set (``adapt``), so a prediction changes no state.
    """

    def __init__(self, bn: _BatchNorm, momentum: float) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone(), requires_grad=False)
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone(), requires_grad=False)
        c = bn.num_features
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        var = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        self.update = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        n = x.numel() // x.shape[1]
        var_b = x.var(dims, unbiased=n > 1)  # PyTorch's running update uses the unbiased batch variance
        mean = (1 - self.momentum) * self.running_mean + self.momentum * x.mean(dims)
        var = (1 - self.momentum) * self.running_var + self.momentum * var_b
        if self.update:
            self.running_mean.copy_(mean.detach())
            self.running_var.copy_(var.detach())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


@METHODS.register(
    "bn_ema",
    reference="Schneider et al., 'Improving robustness against common corruptions by covariate shift "
    "adaptation' (NeurIPS 2020), EMA batch norm as in the RMT benchmark (norm_ema)",
)
class BNEMA(Method):
    """The source model with BatchNorm statistics averaged (EMA) over the test stream; nothing is learned."""

    Config: ClassVar[type] = BNEMAConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, updates_parameters=False)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.net = clone_source(info, self.name).eval()
        require_bn(self.net, self.name)
        self.layers: list[EMABatchNorm] = []
        for name, bn in [(n, m) for n, m in self.net.named_modules() if isinstance(m, _BatchNorm)]:
            parent_name, _, child = name.rpartition(".")
            parent = self.net.get_submodule(parent_name) if parent_name else self.net
            layer = EMABatchNorm(bn, self.config.momentum).to(bn.running_mean.device)
            setattr(parent, child, layer)
            self.layers.append(layer)

    def _forward(self, x: torch.Tensor, update: bool) -> torch.Tensor:
        for layer in self.layers:
            layer.update = update
        try:
            with torch.no_grad():
                return self.net(x)
        finally:
            for layer in self.layers:
                layer.update = False

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self._forward(x, update=False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, update=True)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
