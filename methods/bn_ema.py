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

from cl_bench.components import EMABatchNorm, replace_batch_norms, require_bn, set_ema_mode
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
        # the layer (cl_bench.components.EMABatchNorm) is shared with RoTTA's robust batch norm
        self.layers = replace_batch_norms(self.net, lambda bn: EMABatchNorm(bn, self.config.momentum))

    def _forward(self, x: torch.Tensor, update: bool) -> torch.Tensor:
        set_ema_mode(self.layers, "update" if update else "peek")
        try:
            with torch.no_grad():
                return self.net(x)
        finally:
            set_ema_mode(self.layers, "peek")

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self._forward(x, update=False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, update=True)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
