"""Synaptic Intelligence: an online, path-integral importance for a quadratic penalty.

While an experience trains, every parameter accumulates how much its movement lowered the
loss (gradient times step); at the experience's end that sum, divided by the squared total
movement, is its importance, and later training pays ``lambda/2 * importance * (theta - theta*)^2``.
The penalty is the same :class:`~cl_bench.components.FisherPenalty` EWC uses (one running
anchor whose importance is replaced, not decayed, at each consolidation, because SI's importance
is already cumulative).

References:
    Zenke, Poole, Ganguli. "Continual Learning Through Synaptic Intelligence". ICML 2017.
    Avalanche 0.6 ``training/plugins/synaptic_intelligence.py`` (damping ``eps`` 1e-7, importance
        clipped at 0.001, batch-norm parameters excluded); cross-checked against ``avalanche:SI`` in
        ``benchmarks/crosscheck_regularization.py`` (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import FisherPenalty, PathIntegral, parameters_outside_norm_layers
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class SIConfig(TrainConfig):
    """SI hyper-parameters.

    Attributes:
        si_lambda: Penalty strength c (1.0: Zenke et al. 2017, Sec. 5.1, Split MNIST; also the bridge's
            ``avalanche:SI`` default).
        damping: xi of Zenke et al., Eq. 5 (1e-7: Avalanche 0.6 ``SynapticIntelligencePlugin(eps=...)``).
        clip: Upper bound of the importance (0.001: Avalanche 0.6 ``update_ewc_data(clip_to=0.001)``;
            0 disables it).
    """

    si_lambda: float = 1.0
    damping: float = 1e-7
    clip: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.si_lambda < 0 or self.damping <= 0 or self.clip < 0:
            raise ValueError("si_lambda and clip must be >= 0 and damping > 0")


@METHODS.register(
    "si", reference="Zenke, Poole & Ganguli, 'Continual Learning Through Synaptic Intelligence' (ICML 2017)"
)
class SI(SupervisedMethod):
    """Synaptic Intelligence: a quadratic pull weighted by each parameter's path-integral contribution."""

    Config: ClassVar[type] = SIConfig

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        # decay 0: each consolidation replaces the importance by PathIntegral's cumulative total.
        self.penalty = FisherPenalty(self.config.si_lambda, "online", decay=0.0)
        self.path = PathIntegral(self.config.damping, self.config.clip or None)
        self.params = parameters_outside_norm_layers(self.net)

    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        self.path.begin_experience(self.params)

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        return self.penalty(self.net)

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.path.before_step(self.params)
        loss = self.step(batch.x, batch.y, batch.task_ids)
        # The gradient of the step (penalty included, as in Avalanche) is still in .grad here.
        self.path.after_step(self.params)
        return {"loss": loss}

    def end_experience(self, exp: Experience) -> None:
        self.penalty.consolidate(self.net, self.path.end_experience(self.params))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "penalty": self.penalty.state_dict(), "path": self.path.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.penalty.load_state_dict(state["penalty"])
        self.path.load_state_dict(state["path"])
