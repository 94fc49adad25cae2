"""SHOT-IM: test-time information maximisation, adapting the feature extractor with the head frozen.

On each test batch (normalised with its own batch-norm statistics) the prediction is returned, then
one optimiser step over every parameter of the feature extractor lowers

    L_IM = mean_i H(p_i) - H(mean_i p_i)

(confident individual predictions, diverse predictions over the batch: SHOT's L_ent + L_div).
The classifier head, the source hypothesis, stays frozen. SHOT's pseudo-label term is left out
(``SHOT-IM`` of the paper's ablation; ``clf_coeff`` 0).

References:
    Liang, Hu & Feng. "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
    Unsupervised Domain Adaptation". ICML 2020 (Eq. 2-3, Table 6 "SHOT-IM"). Code: github.com/tim-learn/SHOT.
    Optimiser defaults: the RMT benchmark's CIFAR-10-C configs (Adam, lr 1e-3, beta 0.9), as Tent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import marginal_entropy, softmax_entropy
from cl_bench.components.tta_output import features_and_head
from cl_bench.components.window_bn import store_in_window
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, make_optimizer


@dataclass(frozen=True)
class SHOTIMConfig(WindowTTAConfig):
    """SHOT-IM hyper-parameters.

    Attributes:
        diversity_weight: Weight of the diversity term H(mean p) (SHOT: 1).
    """

    diversity_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.diversity_weight < 0:
            raise ConfigError(f"shot_im diversity_weight must be >= 0, got {self.diversity_weight}")


def information_maximisation(logits: torch.Tensor, diversity_weight: float = 1.0) -> torch.Tensor:
    """SHOT's L_IM: mean per-sample entropy minus ``diversity_weight`` x entropy of the mean prediction."""
    return softmax_entropy(logits).mean() - diversity_weight * marginal_entropy(logits)


@METHODS.register(
    "shot_im",
    reference="Liang et al., 'Do We Really Need to Access the Source Data? Source Hypothesis Transfer for "
    "Unsupervised Domain Adaptation' (ICML 2020), information-maximisation objective",
)
class SHOTIM(Method):
    """SHOT-IM: maximise the mutual information of inputs and predictions; only the feature extractor learns."""

    Config: ClassVar[type] = SHOTIMConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.model, named = adaptable_copy(info, self.name, "all", self.config.window)
        _, head = features_and_head(self.model, self.name)
        head.requires_grad_(False)  # the source hypothesis stays fixed (SHOT, Sec. 3.2)
        frozen = {id(p) for p in head.parameters()}
        self.opt = make_optimizer([p for p in named.values() if id(p) not in frozen], self.config)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.model(x)
            loss = information_maximisation(out, self.config.diversity_weight)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        store_in_window(x, self.model)
        return out.detach()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
