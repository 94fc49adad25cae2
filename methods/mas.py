"""Memory Aware Synapses: importance from the sensitivity of the output norm, no labels needed.

After each experience, the importance of a parameter is the mean absolute gradient of the squared
L2 norm of the network's outputs on that experience's inputs; it is blended with the previous
importance (``alpha * old + (1 - alpha) * new``, as Avalanche and FACIL do) and later training pays
``lambda * importance * (theta - theta*)^2``. The penalty is EWC's
:class:`~cl_bench.components.FisherPenalty` with one running anchor.

References:
    Aljundi, Babiloni, Elhoseiny, Rohrbach, Tuytelaars. "Memory Aware Synapses: Learning what (not)
        to forget". ECCV 2018.
    Avalanche 0.6 ``training/plugins/mas.py`` (after FACIL ``src/approach/mas.py``): ``lambda_reg`` 1,
        ``alpha`` 0.5, batch-level importance; cross-checked against ``avalanche:MAS`` in
        ``benchmarks/crosscheck_regularization.py`` (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import FisherPenalty, output_norm_importance
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class MASConfig(TrainConfig):
    """MAS hyper-parameters.

    Attributes:
        lambda_reg: Penalty weight (1.0: Aljundi et al. 2018, Sec. 5; Avalanche 0.6 ``MASPlugin`` default).
        alpha: Weight of the previous importance in the running blend (0.5: Avalanche 0.6 / FACIL default).
        importance_batch_size: Inputs per gradient of the importance pass (0 = the run's training batch
            size, as Avalanche's ``train_mb_size``).
    """

    lambda_reg: float = 1.0
    alpha: float = 0.5
    importance_batch_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_reg < 0 or not 0 <= self.alpha <= 1 or self.importance_batch_size < 0:
            raise ValueError("lambda_reg must be >= 0, alpha in [0, 1] and importance_batch_size >= 0")


@METHODS.register(
    "mas", reference="Aljundi et al., 'Memory Aware Synapses: Learning what (not) to forget' (ECCV 2018)"
)
class MAS(SupervisedMethod):
    """Memory Aware Synapses: a quadratic pull weighted by the output norm's sensitivity to each weight."""

    Config: ClassVar[type] = MASConfig

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        # FisherPenalty is lambda/2 * sum; MAS (Avalanche) is lambda * sum. decay 0: the blend is done here.
        self.penalty = FisherPenalty(2 * self.config.lambda_reg, "online", decay=0.0)
        self.importance: dict[str, torch.Tensor] | None = None
        self._batch_size = 32

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        self._batch_size = len(x)
        return self.penalty(self.net)

    def end_experience(self, exp: Experience) -> None:
        data = exp.train
        if data is None or len(data) == 0:
            return
        bs = self.config.importance_batch_size or self._batch_size
        batches = (data.batch(slice(s, s + bs), self.device)[0] for s in range(0, len(data), bs))
        self.net.train()  # as Avalanche's importance pass
        new = output_norm_importance(self.net, batches)
        if self.importance is None:
            self.importance = new
        else:
            a = self.config.alpha
            self.importance = {k: a * self.importance[k] + (1 - a) * new[k] for k in new}
        self.penalty.consolidate(self.net, self.importance)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "penalty": self.penalty.state_dict(), "importance": self.importance,
                "batch_size": self._batch_size}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.penalty.load_state_dict(state["penalty"])
        self.importance = state["importance"]
        self._batch_size = state["batch_size"]
