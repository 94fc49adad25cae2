"""RoTTA: robust batch norm, a category-balanced memory with timeliness, and a time-reweighted mean teacher.

Every BatchNorm layer becomes a robust batch norm (:class:`~cl_bench.components.EMABatchNorm`, biased
variance, momentum ``alpha`` 0.05): in eval mode it normalises with its stored moving average of test
statistics, in train mode it first moves the average towards the batch's statistics. The teacher (an
EMA of the student's parameters, ``nu`` 0.001) predicts each test batch in eval mode; that prediction is
returned. Each sample enters the CSTU memory (:class:`~cl_bench.components.CSTUMemory`, 64 samples,
category-balanced by the teacher's pseudo-label, replacing old and uncertain samples first). After every
``update_every`` (64) samples the student (batch-norm affine parameters only) takes one Adam step on the
memory: cross-entropy of its prediction on a strongly augmented copy to the teacher's prediction on the
clean copy, each sample weighted by its timeliness ``exp(-age) / (1 + exp(-age))`` (newer samples
count more); both networks run in train mode, so both robust batch norms absorb the memory's statistics.
Then the teacher's parameters move towards the student's.

References:
    Yuan, Xie & Li. "Robust Test-Time Adaptation in Dynamic Scenarios". CVPR 2023, Sec. 3.
    Implementation facts and defaults from the RMT benchmark, github.com/mariodoebler/test-time-adaptation
    (commit 8b2ed63): classification/methods/rotta.py (``forward_and_adapt``, ``loss_calculation``,
    ``timeliness_reweighting``, ``RobustBN2d``; EMA with ``update_all=True`` over parameters only),
    classification/conf.py lines 249-254 (MEMORY_SIZE 64, UPDATE_FREQUENCY 64, NU 0.001, ALPHA 0.05,
    LAMBDA_T 1, LAMBDA_U 1) and cfgs/cifar10_c/rotta.yaml (Adam, lr 1e-3, beta 0.9, wd 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import (
    CSTUMemory,
    EMABatchNorm,
    blend_parameters_,
    cross_entropy_to,
    replace_batch_norms,
    require_bn,
    set_ema_mode,
    softmax_entropy,
    stream_augment,
)
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import TTAOptimConfig, clone_source, generator, make_optimizer


@dataclass(frozen=True)
class RoTTAConfig(TTAOptimConfig):
    """RoTTA hyper-parameters (RMT benchmark conf.py ``ROTTA.*``; optimiser from cfgs/cifar10_c/rotta.yaml).

    Attributes:
        memory_size: Samples in the CSTU memory (64).
        update_every: Adapt on the memory after this many test samples (64).
        nu: Weight of the student in each teacher EMA step (0.001).
        alpha: Momentum of the robust batch norm's moving average (0.05).
        lambda_t: Weight of the age in the memory's eviction score (1).
        lambda_u: Weight of the uncertainty in the eviction score (1).
        flip: Horizontal flips in the strong augmentation (reference: p = 0.5); None = the stream's
            ``flip_invariant``.
    """

    memory_size: int = 64
    update_every: int = 64
    nu: float = 0.001
    alpha: float = 0.05
    lambda_t: float = 1.0
    lambda_u: float = 1.0
    flip: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_size < 1 or self.update_every < 1:
            raise ConfigError("rotta memory_size and update_every must be >= 1")
        if not 0 <= self.nu <= 1 or not 0 < self.alpha <= 1:
            raise ConfigError("rotta needs nu in [0, 1] and alpha in (0, 1]")


@METHODS.register("rotta", reference="Yuan et al., 'Robust Test-Time Adaptation in Dynamic Scenarios' (CVPR 2023)")
class RoTTA(Method):
    """RoTTA: robust BN, CSTU memory, timeliness-weighted teacher-student training on the memory."""

    Config: ClassVar[type] = RoTTAConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, memory="bounded")
    # toy_tta's Gaussian-blob classes are not mirror-symmetric
    conformance_config: ClassVar[dict[str, Any]] = {"flip": False}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model = clone_source(info, self.name).eval()
        require_bn(self.model, self.name)
        self.model.requires_grad_(False)
        layers = replace_batch_norms(
            self.model, lambda bn: EMABatchNorm(bn, cfg.alpha, unbiased=False, trainable=True)
        )
        set_ema_mode(layers, "stored")
        params = [p for layer in layers for p in layer.parameters()]
        self.opt = make_optimizer(params, cfg)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.layers = layers
        self.teacher_layers = [m for m in self.teacher.modules() if isinstance(m, EMABatchNorm)]
        self.memory = CSTUMemory(cfg.memory_size, info.n_classes, cfg.lambda_t, cfg.lambda_u)
        self.augment = stream_augment(info, cfg.flip)  # CoTTA's get_tta_transforms(img_size) (rotta.py l. 41)
        self.gen = generator(seed)
        self.seen = 0

    def memory_size(self) -> int:
        return len(self.memory)

    def memory_budget(self) -> int | None:
        return self.config.memory_size

    def memory_bytes(self) -> int | None:
        return self.memory.nbytes()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(x)

    def _update(self) -> None:
        feats = self.memory.images()
        if feats is None:
            return
        weights = torch.exp(-self.memory.ages()).div(1 + torch.exp(-self.memory.ages())).to(feats.device)
        set_ema_mode(self.layers + self.teacher_layers, "update")  # train mode of RobustBN
        try:
            with torch.no_grad():
                target = self.teacher(feats)
            with torch.enable_grad():
                out = self.model(self.augment(feats, self.gen))
                loss = (cross_entropy_to(out, target) * weights).mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        finally:
            set_ema_mode(self.layers + self.teacher_layers, "stored")
        # teacher <- (1 - nu) teacher + nu student, over all parameters (buffers stay the teacher's own)
        blend_parameters_(self.teacher, self.model, 1 - self.config.nu, trainable_only=False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        out = self.predict(x, PredictContext())
        labels = out.argmax(1).tolist()
        # the reference's entropy uses log(p + 1e-6); the exact log-softmax differs by < 1e-5 nats
        entropies = softmax_entropy(out).tolist()
        for xi, label, h in zip(x, labels, entropies, strict=True):
            self.memory.add(xi, label, h)
            self.seen += 1
            if self.seen % self.config.update_every == 0:
                self._update()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "teacher": self.teacher.state_dict(),
                "opt": self.opt.state_dict(), "memory": self.memory.state_dict(),
                "gen": self.gen.get_state(), "seen": self.seen}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.teacher.load_state_dict(state["teacher"])
        self.opt.load_state_dict(state["opt"])
        self.memory.load_state_dict(state["memory"])
        self.gen.set_state(state["gen"])
        self.seen = int(state["seen"])
