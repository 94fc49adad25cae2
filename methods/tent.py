"""Tent: test-time entropy minimisation over the batch-norm affine parameters.

Each test batch is normalised with its own statistics; the prediction on it is returned, then one
optimiser step lowers the mean softmax entropy of that prediction, updating only the batch-norm
scale and shift.

References:
    Wang, Shelhamer, Liu, Olshausen & Darrell. "Tent: Fully Test-Time Adaptation by Entropy
    Minimization". ICLR 2021. Code: github.com/DequanWang/tent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import softmax_entropy
from cl_bench.components.window_bn import store_in_window
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, make_optimizer


@dataclass(frozen=True)
class TentConfig(WindowTTAConfig):
    """Tent hyper-parameters: Adam, lr 1e-3, beta 0.9 (Tent's CIFAR-10-C setting; RMT benchmark's tent.yaml)."""


@METHODS.register(
    "tent", reference="Wang et al., 'Tent: Fully Test-Time Adaptation by Entropy Minimization' (ICLR 2021)"
)
class Tent(Method):
    """Tent: minimise prediction entropy on each test batch, adapting batch-norm affine parameters only."""

    Config: ClassVar[type] = TentConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.model, params = adaptable_copy(info, self.name, "norm", self.config.window)
        self.opt = make_optimizer(params.values(), self.config)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.model(x)
            loss = softmax_entropy(out).mean()
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
