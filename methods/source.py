"""Source: the source model, unchanged, on every test batch (the no-adaptation baseline of TTA).

References:
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022), "Source" rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import clone_source


@METHODS.register(
    "source",
    reference="no adaptation: the source model as evaluated by Wang et al., 'Continual Test-Time Domain "
    "Adaptation' (CVPR 2022) and Döbler et al., 'Robust Mean Teacher ...' (CVPR 2023)",
)
class Source(Method):
    """The source model in eval mode (source BatchNorm statistics); ``adapt`` only predicts."""

    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.net = clone_source(info, self.name or type(self).__name__).eval()

    @torch.no_grad()
    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self.net(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x, PredictContext())

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
