"""BN adaptation: normalise each test batch with its own statistics (optionally mixed with the source's).

No parameter is learned: every BatchNorm layer of the source model uses the statistics of the current
test batch, mixed with the source statistics by the prior strength N (Schneider et al. 2020). With N = 0
(the default) this is prediction-time BatchNorm (Nado et al. 2020), "BN-1" in the RMT benchmark tables.

References:
    Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation"
        (NeurIPS 2020).
    Nado et al., "Evaluating Prediction-Time Batch Normalization for Robustness under Covariate Shift"
        (arXiv:2006.10963, 2020).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import use_test_batch_stats
from cl_bench.errors import ConfigError
from cl_bench.method import Caps, Method
from cl_bench.registry import METHODS
from cl_bench.types import PredictContext, StreamInfo


@dataclass(frozen=True)
class BNAdaptConfig:
    """BN adaptation hyper-parameters.

    Attributes:
        prior_strength: N, the source statistics' weight in pseudo-samples; 0 = test-batch statistics only
            (Nado et al.; BN-1 of the RMT benchmark). Schneider et al. (Sec. 4) find N between 8 and 32 best
            for small test batches on ImageNet-C.
    """

    prior_strength: float = 0.0

    def __post_init__(self) -> None:
        if self.prior_strength < 0:
            raise ConfigError(f"prior_strength must be >= 0, got {self.prior_strength}")


@METHODS.register(
    "bn_adapt",
    reference="Schneider et al., 'Improving robustness against common corruptions by covariate shift "
    "adaptation' (NeurIPS 2020); Nado et al., 'Evaluating Prediction-Time Batch Normalization for Robustness "
    "under Covariate Shift' (arXiv 2020)",
)
class BNAdapt(Method):
    """Test-batch BatchNorm statistics; nothing is learned, so ``adapt`` and ``predict`` coincide."""

    Config: ClassVar[type] = BNAdaptConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        if info.source_model is None:
            raise ValueError("bn_adapt needs StreamInfo.source_model (run it on a test-time adaptation stream)")
        self.net = use_test_batch_stats(copy.deepcopy(info.source_model), self.config.prior_strength).eval()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self.net(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x, PredictContext())

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
