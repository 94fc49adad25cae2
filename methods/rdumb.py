"""RDumb: ETA (EATA without the Fisher penalty) reset to the source model at a fixed period.

Every ``reset_every`` adapted batches, the model, the optimiser and ETA's running class
distribution go back to their initial state; in between, each batch is adapted as by ETA
(reliable, non-redundant, confidence-weighted entropy minimisation of batch-norm affine parameters).
The paper shows this simple periodic reset matches or beats elaborate continual-TTA methods on
long streams (CCC), because every adaptation method eventually collapses.

References:
    Press, Schneider, Kümmerer & Bethge. "RDumb: A simple approach that questions our progress in
    continual test-time adaptation". NeurIPS 2023. Code: github.com/oripress/CCC.
    Niu et al. "Efficient Test-Time Model Adaptation without Forgetting" (EATA/ETA). ICML 2022.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import ReliableEntropy
from cl_bench.components.window_bn import store_in_window, window_buffers
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, make_optimizer


@dataclass(frozen=True)
class RDumbConfig(WindowTTAConfig):
    """RDumb hyper-parameters.

    Defaults: reset every 1000 updates (RDumb, Sec. 4); ETA's ``e_margin`` 0.4 ln C and
    ``d_margin`` 0.4 with Adam lr 1e-3 (RMT benchmark's CIFAR-10-C rdumb.yaml).

    Attributes:
        reset_every: Number of adapted batches between resets to the source model.
        e_margin: Entropy threshold as a fraction of ln(n_classes).
        d_margin: Cosine-similarity threshold of the redundancy filter.
    """

    reset_every: int = 1000
    e_margin: float = 0.4
    d_margin: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reset_every < 1 or self.e_margin <= 0 or self.d_margin <= 0:
            raise ValueError("reset_every must be >= 1, e_margin and d_margin > 0")


@METHODS.register(
    "rdumb",
    reference="Press et al., 'RDumb: A simple approach that questions our progress in continual test-time "
    "adaptation' (NeurIPS 2023)",
)
class RDumb(Method):
    """RDumb: ETA entropy minimisation with a full reset to the source model every ``reset_every`` batches."""

    Config: ClassVar[type] = RDumbConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model, params = adaptable_copy(info, self.name, "norm", cfg.window)
        self.opt = make_optimizer(params.values(), cfg)
        self.selector = ReliableEntropy(info.n_classes, cfg.e_margin, cfg.d_margin)
        self.initial = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()))
        self.n_updates = 0
        self.n_resets = 0

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.model(x)
            loss, _, n_used = self.selector(out)
            if n_used:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        store_in_window(x, self.model)
        self.n_updates += 1
        if self.n_updates % self.config.reset_every == 0:
            self.reset()
        return out.detach()

    def reset(self) -> None:
        """Back to the source model, a fresh optimiser and no class-distribution history; a window stays."""
        self.model.load_state_dict({**self.initial[0], **window_buffers(self.model)})
        self.opt.load_state_dict(self.initial[1])
        self.selector.mean_probs = None
        self.n_resets += 1

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "selector": self.selector.state_dict(),
                "n_updates": self.n_updates, "n_resets": self.n_resets}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.selector.load_state_dict(state["selector"])
        self.n_updates = state["n_updates"]
        self.n_resets = state["n_resets"]
