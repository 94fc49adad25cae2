"""CoTTA: continual test-time adaptation with a weight-averaged, augmentation-averaged teacher.

Per test batch the EMA teacher predicts; when the source model's mean confidence on the batch is
below ``confidence_threshold`` the teacher's prediction is averaged over ``n_augmentations``
augmented copies. The student (all parameters, batch norm on batch statistics) takes one step on
the cross-entropy to that prediction, the teacher is updated as an EMA of the student, and each
student weight is restored to its source value with probability ``restore_prob`` (stochastic
restoration against forgetting). The teacher's prediction is the output; ``predict`` gives the same
(with the augmentations ``adapt`` would draw next, without consuming them).

References:
    Wang, Fink, Van Gool & Dai. "Continual Test-Time Domain Adaptation". CVPR 2022.
    Code: github.com/qinenergy/cotta.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import EMATeacher, cross_entropy_to, stream_augment
from cl_bench.components.window_bn import store_in_window, window_buffers
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, generator, generator_copy, make_optimizer


@dataclass(frozen=True)
class CoTTAConfig(WindowTTAConfig):
    """CoTTA hyper-parameters (CIFAR-10-C setting of the paper and of qinenergy/cotta's cifar10 config).

    Attributes:
        teacher_momentum: EMA momentum of the teacher (0.999).
        restore_prob: Probability of restoring each weight to its source value per step (0.01).
        confidence_threshold: Augment-average the teacher when the source model's mean
            confidence is below this (0.92 on CIFAR-10; 0.72 CIFAR-100, 0.1 ImageNet).
        n_augmentations: Augmented teacher passes averaged (32).
        flip: Horizontal flips in the augmentation (reference: p = 0.5); None = the stream's
            ``flip_invariant`` (off on digits/MNIST streams, where a flip changes the class).
    """

    teacher_momentum: float = 0.999
    restore_prob: float = 0.01
    confidence_threshold: float = 0.92
    n_augmentations: int = 32
    flip: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.teacher_momentum <= 1 or not 0 <= self.restore_prob <= 1:
            raise ValueError("teacher_momentum and restore_prob must be in [0, 1]")
        if self.n_augmentations < 1:
            raise ValueError("n_augmentations must be >= 1")


@METHODS.register("cotta", reference="Wang et al., 'Continual Test-Time Domain Adaptation' (CVPR 2022)")
class CoTTA(Method):
    """CoTTA: EMA teacher with augmentation averaging, student self-training, stochastic restore."""

    Config: ClassVar[type] = CoTTAConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)
    # toy_tta's Gaussian-blob classes are not mirror-symmetric, so flips would change the class
    conformance_config: ClassVar[dict[str, Any]] = {"n_augmentations": 2, "flip": False}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model, params = adaptable_copy(info, self.name, "all", cfg.window)
        self.opt = make_optimizer(params.values(), cfg)
        self.teacher = EMATeacher(self.model, cfg.teacher_momentum)
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.source = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.augment = stream_augment(info, cfg.flip)
        self.gen = generator(seed)
        self.n_averaged = 0

    def teacher_target(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, bool]:
        """The teacher's prediction, augmentation-averaged (drawing from ``gen``) when the source model
        is unsure; and whether it was averaged."""
        with torch.no_grad():
            confidence = self.anchor(x).softmax(1).amax(1).mean()
            if confidence >= self.config.confidence_threshold:
                return self.teacher(x), False
            outs = [self.teacher(self.augment(x, gen)) for _ in range(self.config.n_augmentations)]
            return torch.stack(outs).mean(0), True

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        target, averaged = self.teacher_target(x, self.gen)
        self.n_averaged += int(averaged)
        with torch.enable_grad():
            loss = cross_entropy_to(self.model(x), target).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.teacher.update(self.model)
        self.restore()
        store_in_window(x, self.model, self.teacher.model, self.anchor)  # each network keeps its own window
        return target

    @torch.no_grad()
    def restore(self) -> None:
        """Reset each weight to its source value with probability ``restore_prob``."""
        if self.config.restore_prob <= 0:
            return
        for name, p in self.model.named_parameters():
            mask = (torch.rand(p.shape, generator=self.gen) < self.config.restore_prob).to(p.device)
            p.copy_(torch.where(mask, self.source[name], p))

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self.teacher_target(x, generator_copy(self.gen))[0]

    def state_dict(self) -> dict[str, Any]:
        # the frozen anchor changes only its sliding window (nothing without one)
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "teacher": self.teacher.state_dict(),
                "gen": self.gen.get_state(), "n_averaged": self.n_averaged,
                "anchor": window_buffers(self.anchor)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.teacher.load_state_dict(state["teacher"])
        self.gen.set_state(state["gen"])
        self.n_averaged = state["n_averaged"]
        self.anchor.load_state_dict(state.get("anchor", {}), strict=False)
