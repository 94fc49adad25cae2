"""L2 anchoring: a uniform quadratic pull towards the parameters learnt so far.

EWC with every parameter equally important; the baseline Kirkpatrick et al.
compare EWC against. The anchor is the solution after the latest experience
(which already summarises the earlier ones), so the pull does not grow with the
number of experiences.

References:
    Kirkpatrick et al. "Overcoming catastrophic forgetting in neural networks". PNAS 2017 (L2 baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import FisherPenalty
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class L2Config(TrainConfig):
    """L2 anchoring hyper-parameters.

    Attributes:
        lambda_: Penalty strength (``--set lambda=...``).
    """

    lambda_: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_ < 0:
            raise ValueError("lambda must be >= 0")


@METHODS.register(
    "l2",
    reference="Kirkpatrick et al., 'Overcoming catastrophic forgetting in neural networks' (PNAS 2017), "
    "L2 baseline",
)
class L2(SupervisedMethod):
    """Uniform quadratic anchoring of all parameters to their values after the latest experience."""

    Config: ClassVar[type] = L2Config

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.penalty = FisherPenalty(self.config.lambda_, mode="online", decay=0.0)

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        return self.penalty(self.net)

    def end_experience(self, exp: Experience) -> None:
        ones = {k: torch.ones_like(p) for k, p in self.net.named_parameters() if p.requires_grad}
        self.penalty.consolidate(self.net, ones)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "penalty": self.penalty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.penalty.load_state_dict(state["penalty"])
