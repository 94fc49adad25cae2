"""Elastic weight consolidation.

After each experience the diagonal Fisher information of the parameters is
estimated on that experience's training data, and later training pays
``lambda/2 * F * (theta - theta*)^2`` for moving important weights. ``F`` is the
mean over examples of squared per-example gradients of log p(y|x), with ``y`` the
data's labels (``fisher=empirical``, the default) or drawn from the model's
predictive distribution (``fisher=true``, the Fisher information Kirkpatrick et
al. define).

Avalanche's ``EWCPlugin`` squares batch-mean gradients (minibatches of its
``train_mb_size``) and has no 1/2, so its ``ewc_lambda`` is on another scale:
see docs/avalanche.md ("EWC's lambda and Avalanche's ewc_lambda") for the measured
conversion, which the Avalanche bridge's default applies.

References:
    Kirkpatrick et al. "Overcoming catastrophic forgetting in neural networks". PNAS 2017.
    Schwarz et al. "Progress & compress: a scalable framework for continual learning". ICML 2018 (online EWC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from cl_bench.components import FisherPenalty, diagonal_fisher
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class EWCConfig(TrainConfig):
    """EWC hyper-parameters.

    Attributes:
        lambda_: Penalty strength (``--set lambda=...``). Kirkpatrick et al. tune it
            per stream; 100 suits the per-example-mean Fisher used here on MNIST-scale MLPs.
        mode: "separate" (one penalty per experience, the original) or "online".
        decay: Importance decay gamma of online EWC.
        fisher_samples: Training examples used to estimate the Fisher (0 = all).
        fisher: "empirical" (labels of the data) or "true" (labels sampled from the
            model, Kirkpatrick et al. 2017, Methods: "the Fisher information matrix").
    """

    lambda_: float = 100.0
    mode: Literal["separate", "online"] = "separate"
    decay: float = 1.0
    fisher_samples: int = 1024
    fisher: Literal["empirical", "true"] = "empirical"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_ < 0 or self.fisher_samples < 0:
            raise ValueError("lambda and fisher_samples must be >= 0")


@METHODS.register(
    "ewc",
    reference="Kirkpatrick et al., 'Overcoming catastrophic forgetting in neural networks' (PNAS 2017)",
)
class EWC(SupervisedMethod):
    """Elastic weight consolidation: a Fisher-weighted quadratic pull towards earlier solutions."""

    Config: ClassVar[type] = EWCConfig

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.penalty = FisherPenalty(self.config.lambda_, self.config.mode, self.config.decay)

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        return self.penalty(self.net)

    def end_experience(self, exp: Experience) -> None:
        data = exp.train
        if data is None or len(data) == 0:
            return
        n = len(data) if self.config.fisher_samples == 0 else min(self.config.fisher_samples, len(data))
        gen = torch.Generator().manual_seed(self.seed * 7919 + exp.index)
        idx = torch.randperm(len(data), generator=gen)[:n]
        batches = (data.batch(idx[s : s + 256], self.device) for s in range(0, n, 256))
        mask = None
        if exp.task_id is not None:
            row = self.task_classes[exp.task_id]
            mask = lambda x: row.expand(len(x), -1)  # noqa: E731
        # The sampled labels draw from their own stream, so "true" leaves the data order untouched.
        label_gen = torch.Generator().manual_seed(self.seed * 7919 + exp.index + 1)
        fisher = diagonal_fisher(self.net, batches, mask, labels=self.config.fisher, generator=label_gen)
        self.penalty.consolidate(self.net, fisher)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "penalty": self.penalty.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.penalty.load_state_dict(state["penalty"])
