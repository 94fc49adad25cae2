"""BN adaptation: normalise each test batch with its own statistics (optionally mixed with the source's).

No parameter is learned: every BatchNorm layer of the source model uses the statistics of the current
test batch, mixed with the source statistics by the prior strength N (Schneider et al. 2020). With N = 0
(the default) this is prediction-time BatchNorm (Nado et al. 2020), "BN-1" in the RMT benchmark tables.

For small test batches (down to single samples) ``window = W`` normalises instead with the statistics of
the last W test samples, the current batch included (:class:`~cl_bench.components.window_bn.WindowBatchNorm`;
the RMT benchmark's ``TEST.WINDOW_LENGTH``); ``adapt`` then stores the batch in the window, ``predict`` does
not.

References:
    Schneider et al., "Improving robustness against common corruptions by covariate shift adaptation"
        (NeurIPS 2020).
    Nado et al., "Evaluating Prediction-Time Batch Normalization for Robustness under Covariate Shift"
        (arXiv:2006.10963, 2020).
    Döbler, Marsden & Yang, RMT benchmark (mariodoebler/test-time-adaptation): ``TEST.WINDOW_LENGTH``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from cl_bench.components import replace_batch_norms, use_test_batch_stats
from cl_bench.components.window_bn import WindowBatchNorm, forward_into_window, set_window_mode
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.methods.source import Source


@dataclass(frozen=True)
class BNAdaptConfig:
    """BN adaptation hyper-parameters.

    Attributes:
        prior_strength: N, the source statistics' weight in pseudo-samples; 0 = test-batch statistics only
            (Nado et al.; BN-1 of the RMT benchmark). Schneider et al. tune N per test batch size (their
            Eq. 2); large N approaches the source model.
        window: 0 = off; W >= 1 normalises with the statistics of the last W test samples (current batch
            included), for small batches (RMT benchmark ``TEST.WINDOW_LENGTH``, default 1 = off there).
    """

    prior_strength: float = 0.0
    window: int = 0

    def __post_init__(self) -> None:
        if self.prior_strength < 0:
            raise ConfigError(f"prior_strength must be >= 0, got {self.prior_strength}")
        if self.window < 0:
            raise ConfigError(f"window must be >= 0 (0 = off), got {self.window}")
        if self.window and self.prior_strength:
            raise ConfigError("bn_adapt takes either prior_strength (mix with the source statistics) or window "
                              "(pool recent test samples), not both; set one of them to 0")  # fmt: skip


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
        if self.config.window:
            replace_batch_norms(self.net, lambda bn: WindowBatchNorm(bn, self.config.window))
            self.net.eval()
        else:
            self.net = use_test_batch_stats(self.net, self.config.prior_strength).eval()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        set_window_mode(self.net, "peek")
        with torch.no_grad():
            return self.net(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return forward_into_window(self.net, x)  # nothing is learned: the prediction's pass stores the batch
