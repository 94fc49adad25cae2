"""ROID: certainty- and diversity-weighted soft-likelihood-ratio self-training with weight ensembling.

Per test batch (normalised with its own statistics) the batch-norm affine parameters take one step on
ROID's weighted loss (:func:`cl_bench.components.weighted_slr_consistency`): the soft likelihood
ratio of the samples whose prediction differs enough from the recent average, weighted by certainty x
diversity, plus a weighted consistency term to an augmented view. After the step the parameters are
blended with the source model's (``theta <- 0.99 theta + 0.01 theta_src``: weight ensembling against
forgetting), and the returned prediction is prior-corrected with the batch's smoothed mean prediction
(against label-correlated batches).

References:
    Marsden, Döbler & Yang. "Universal Test-time Adaptation through Weight Ensembling, Diversity
    Weighting, and Prior Correction". WACV 2024. Code: github.com/mariodoebler/test-time-adaptation
    (methods/roid.py; defaults in conf.py ``ROID.*`` and cfgs/cifar10_c/roid.yaml).
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


@dataclass(frozen=True)
class ROIDConfig(WindowTTAConfig):
    """ROID hyper-parameters (RMT benchmark conf.py ``ROID.*``; Adam lr 1e-3, beta 0.9 from roid.yaml).

    Attributes:
        momentum_src: Weight kept on the adapted parameters when blending with the source (0.99).
        momentum_probs: EMA momentum of the mean prediction for the diversity weight (0.9).
        temperature: Temperature of the weights ``exp(div * cert / T)`` (1/3).
        use_weighting: Certainty/diversity weighting and filtering (on).
        use_consistency: Consistency loss to an augmented view (on).
        use_prior_correction: Prior-correct the output (on).
        flip: Horizontal flips in the augmentation (reference: p = 0.5); None = the stream's ``flip_invariant``.
    """

    momentum_src: float = 0.99
    momentum_probs: float = 0.9
    temperature: float = 1 / 3
    use_weighting: bool = True
    use_consistency: bool = True
    use_prior_correction: bool = True
    flip: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.momentum_src <= 1 or not 0 <= self.momentum_probs <= 1:
            raise ConfigError("roid momentum_src and momentum_probs must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"roid temperature must be > 0, got {self.temperature}")


@METHODS.register(
    "roid",
    reference="Marsden et al., 'Universal Test-time Adaptation through Weight Ensembling, Diversity "
    "Weighting, and Prior Correction' (WACV 2024)",
)
class ROID(Method):
    """ROID: weighted SLR + consistency on BN affine parameters, source weight ensembling, prior correction."""

    Config: ClassVar[type] = ROIDConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)
    # toy_tta's Gaussian-blob classes are not mirror-symmetric
    conformance_config: ClassVar[dict[str, Any]] = {"flip": False}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model, named = adaptable_copy(info, self.name, "norm", cfg.window)
        self.source = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = make_optimizer(named.values(), cfg)
        self.weighting = CertaintyDiversityWeights(info.n_classes, cfg.temperature, cfg.momentum_probs)
        # the reference's get_tta_transforms(img_size, padding_mode="reflect", cotta_augs=False) (roid.py l. 33)
        self.augment = stream_augment(info, cfg.flip, padding_mode="reflect", cotta_augs=False)
        self.gen = generator(seed)

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        return prior_correction(out) if self.config.use_prior_correction else out

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        with torch.enable_grad():
            out = self.model(x)
            if cfg.use_weighting:
                weights, keep = self.weighting.weights(out)
            else:
                weights = torch.ones(len(x), device=x.device)
                keep = weights.bool()
            augment = (lambda b: self.augment(b, self.gen)) if cfg.use_consistency else None
            loss = weighted_slr_consistency(self.model, x, out, weights, keep, augment)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        blend_parameters_(self.model, self.source, cfg.momentum_src)
        store_in_window(x, self.model)  # self.source is only blended in, never forwarded
        return self._output(out.detach())

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self._output(self.model(x))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "weighting": self.weighting.state_dict(), "gen": self.gen.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.weighting.load_state_dict(state["weighting"])
        self.gen.set_state(state["gen"])
