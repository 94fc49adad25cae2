"""Source: the source model, unchanged, on every test batch (the no-adaptation baseline of TTA).

References:
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022), "Source" rows.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext
from cl_bench.families.tta import FrozenSourceMethod


@METHODS.register(
    "source",
    reference="no adaptation: the source model as evaluated by Wang et al., 'Continual Test-Time Domain "
    "Adaptation' (CVPR 2022) and Döbler et al., 'Robust Mean Teacher ...' (CVPR 2023)",
)
class Source(FrozenSourceMethod):
    """The source model in eval mode (source BatchNorm statistics); ``adapt`` only predicts."""

    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self.net(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x, PredictContext())
