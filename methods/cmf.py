"""CMF: continual momentum filtering — ROID's objective with a Kalman-filtered source/target ensemble.

The loss and output are ROID's (certainty/diversity-weighted soft likelihood ratio + consistency on
the batch-norm affine parameters, prior-corrected output). Instead of ROID's fixed blend with the
source, after each step a hidden model h (starting at the source) is filtered:

    predict: h <- alpha h + (1 - alpha) theta_src,   P <- alpha^2 P + q
    update:  beta = clip((1 - q) / (P + 1 - q)),      P <- beta P,   h <- beta h + (1 - beta) theta
    ensemble: theta <- gamma theta + (1 - gamma) h

(``beta`` below 0.89 becomes 0.89, above 0.9999 becomes 1), so the target model is pulled towards a
smoothed estimate that itself relaxes to the source.

References:
    Lee & Chang. "Continual Momentum Filtering on Parameter Space for Online Test-time Adaptation".
    ICLR 2024. Facts read from github.com/mariodoebler/test-time-adaptation (methods/cmf.py; conf.py
    ``CMF.ALPHA`` 0.99, ``CMF.GAMMA`` 0.99, ``CMF.Q`` 0.005 scaled by trainable parameters / 38,400,
    ``CMF.TYPE`` "lp"; ROID options for the loss; cfgs/cifar10_c/cmf.yaml Adam lr 1e-3).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import (
    CertaintyDiversityWeights,
    blend_parameters_,
    prior_correction,
    stream_augment,
    weighted_slr_consistency,
)
from cl_bench.components.window_bn import store_in_window
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, generator, make_optimizer

#: The reference scales q by the trainable-parameter count relative to 38,400 (WideResNet-28's BN affine).
#: On small networks q is then tiny (cnn_bn, 96 parameters: 1.25e-5), beta is set to 1 for the first
#: batches and CMF's ensembling is ROID's (issue 17; tests/test_cmf.py).
Q_REFERENCE_PARAMS = 38400


@dataclass(frozen=True)
class CMFConfig(WindowTTAConfig):
    """CMF hyper-parameters (RMT benchmark conf.py ``CMF.*`` and ``ROID.*``, cmf.yaml optimiser).

    Attributes:
        alpha: Relaxation of the hidden model towards the source per step (0.99).
        gamma: Weight kept on the target model in the ensemble step (0.99).
        q: Process noise, scaled by trainable parameters / 38,400 (0.005).
        momentum_probs: EMA momentum of the mean prediction for the diversity weight (0.9).
        temperature: Temperature of ROID's weights (1/3).
        flip: Horizontal flips in the consistency augmentation (reference: p = 0.5); None = the stream's
            ``flip_invariant``.
    """

    alpha: float = 0.99
    gamma: float = 0.99
    q: float = 0.005
    momentum_probs: float = 0.9
    temperature: float = 1 / 3
    flip: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 1 or not 0 <= self.gamma <= 1 or not 0 <= self.momentum_probs <= 1:
            raise ConfigError("cmf alpha, gamma and momentum_probs must be in [0, 1]")
        if self.q < 0 or self.temperature <= 0:
            raise ConfigError("cmf needs q >= 0 and temperature > 0")


@METHODS.register(
    "cmf",
    reference="Lee & Chang, 'Continual Momentum Filtering on Parameter Space for Online Test-time "
    "Adaptation' (ICLR 2024)",
)
class CMF(Method):
    """CMF: ROID's loss, with the target model ensembled with a Kalman-filtered hidden model."""

    Config: ClassVar[type] = CMFConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)
    conformance_config: ClassVar[dict[str, Any]] = {"flip": False}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model, named = adaptable_copy(info, self.name, "norm", cfg.window)
        self.source = copy.deepcopy(self.model).requires_grad_(False)
        self.hidden = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = make_optimizer(named.values(), cfg)
        self.q = cfg.q * sum(p.numel() for p in named.values()) / Q_REFERENCE_PARAMS
        self.hidden_var = 0.0
        self.weighting = CertaintyDiversityWeights(info.n_classes, cfg.temperature, cfg.momentum_probs)
        # the reference's get_tta_transforms(img_size, padding_mode="reflect", cotta_augs=False) (cmf.py l. 59)
        self.augment = stream_augment(info, cfg.flip, padding_mode="reflect", cotta_augs=False)
        self.gen = generator(seed)

    @torch.no_grad()
    def filter_step(self) -> None:
        """CMF's predict / update / ensemble steps (the "lp" variant)."""
        cfg = self.config
        blend_parameters_(self.hidden, self.source, cfg.alpha, trainable_only=False)
        self.hidden_var = cfg.alpha**2 * self.hidden_var + self.q
        r = 1 - self.q
        beta = r / (self.hidden_var + r)
        beta = 1.0 if beta >= 0.9999 else max(beta, 0.89)
        self.hidden_var *= beta
        blend_parameters_(self.hidden, self.model, beta, trainable_only=False)
        blend_parameters_(self.model, self.hidden, cfg.gamma)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.model(x)
            weights, keep = self.weighting.weights(out)
            loss = weighted_slr_consistency(self.model, x, out, weights, keep, lambda b: self.augment(b, self.gen))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.filter_step()
        store_in_window(x, self.model)  # the source and hidden models are only blended, never forwarded
        return prior_correction(out.detach())

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return prior_correction(self.model(x))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "hidden": self.hidden.state_dict(), "opt": self.opt.state_dict(),
                "hidden_var": self.hidden_var, "weighting": self.weighting.state_dict(),
                "gen": self.gen.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.hidden.load_state_dict(state["hidden"])
        self.opt.load_state_dict(state["opt"])
        self.hidden_var = state["hidden_var"]
        self.weighting.load_state_dict(state["weighting"])
        self.gen.set_state(state["gen"])
