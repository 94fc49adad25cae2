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

from dataclasses import dataclass
from typing import ClassVar

from cl_bench.components import use_test_batch_stats
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.methods.source import Source


@dataclass(frozen=True)
class BNAdaptConfig:
    """BN adaptation hyper-parameters.

    Attributes:
        prior_strength: N, the source statistics' weight in pseudo-samples; 0 = test-batch statistics only
            (Nado et al.; BN-1 of the RMT benchmark). Schneider et al. tune N per test batch size (their
            Eq. 2); large N approaches the source model.
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
class BNAdapt(Source):
    """The source model with test-batch BatchNorm statistics; nothing is learned, so ``adapt`` = ``predict``."""

    Config: ClassVar[type] = BNAdaptConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.net = use_test_batch_stats(self.net, self.config.prior_strength).eval()
