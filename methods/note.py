"""NOTE: instance-aware batch norm and a prediction-balanced memory that the model adapts on.

Every BatchNorm layer of the source model becomes an :class:`~cl_bench.components.InstanceAwareBatchNorm`
(IABN, k = 4). A test batch is predicted in eval mode (IABN on the running statistics, corrected per
instance); that prediction is returned. Each sample then enters the prediction-balanced reservoir memory
(:class:`~cl_bench.components.PBRSMemory`, 64 samples) under its predicted class, and after every
``update_every`` (64) samples the model takes one step on the memory: IABN in train mode (batch
statistics of the memory, running statistics updated with momentum 0.01) and the mean entropy of the
memory's predictions minimised over the IABN affine parameters (Adam, lr 1e-4). Adapting on a class-
balanced memory instead of the incoming batch is what makes NOTE robust to label-correlated streams.

Difference from the paper: NOTE trains its source model with IABN layers; here IABN replaces the batch
norm of a source model trained with ordinary batch norm (the harness's source models are shared by all
methods). With k = 4 the correction is zero unless an instance is clearly shifted, so on clean data the
converted model predicts as the source model does.

References:
    Gong, Jeong, Kim, Kim, Shin & Lee. "NOTE: Robust Continual Test-time Adaptation Against Temporal
    Correlation". NeurIPS 2022. Code: github.com/TaesikGong/NOTE (commit a714a2a): learner/note.py
    (``train_online``: eval-mode prediction, memory update, one epoch on the memory), tta.sh lines
    41-42 (update_every_x 64, memory_size 64) and 126-133 (NOTE: lr 0.0001, PBRS, iabn_k 4,
    bn_momentum 0.01, weight decay 0 at line 45), learner/dnn.py line 100 (Adam), utils/loss_functions.py
    ``HLoss`` (entropy averaged over samples and classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import InstanceAwareBatchNorm, PBRSMemory, iabn_layers, replace_batch_norms, require_bn
from cl_bench.components.tta_losses import softmax_entropy
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import TTAOptimConfig, clone_source, generator, make_optimizer


@dataclass(frozen=True)
class NOTEConfig(TTAOptimConfig):
    """NOTE hyper-parameters (official tta.sh, NOTE branch; Adam with PyTorch's default betas).

    Attributes:
        lr: Adam learning rate (1e-4, tta.sh ``lr="0.0001"`` for NOTE).
        memory_size: Samples in the prediction-balanced memory (64).
        update_every: Adapt on the memory after this many test samples (64, ``update_every_x``).
        iabn_k: IABN threshold in standard errors (4).
        bn_momentum: Momentum of the IABN running statistics during memory updates (0.01).
        temperature: Softmax temperature of the entropy loss (1, main.py ``--temperature``).
    """

    lr: float = 1e-4
    memory_size: int = 64
    update_every: int = 64
    iabn_k: float = 4.0
    bn_momentum: float = 0.01
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_size < 1 or self.update_every < 1:
            raise ConfigError("note memory_size and update_every must be >= 1")
        if self.iabn_k < 0 or not 0 <= self.bn_momentum <= 1 or self.temperature <= 0:
            raise ConfigError("note needs iabn_k >= 0, bn_momentum in [0, 1] and temperature > 0")


@METHODS.register(
    "note",
    reference="Gong et al., 'NOTE: Robust Continual Test-time Adaptation Against Temporal Correlation' "
    "(NeurIPS 2022)",
)
class NOTE(Method):
    """NOTE: IABN + prediction-balanced reservoir memory; entropy minimisation on the memory."""

    Config: ClassVar[type] = NOTEConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model = clone_source(info, self.name).eval()
        require_bn(self.model, self.name)
        replace_batch_norms(self.model, lambda bn: InstanceAwareBatchNorm(bn, cfg.iabn_k, cfg.bn_momentum))
        self.model.eval()  # new layers start in train mode; IABN enters it only for memory updates
        self.layers = iabn_layers(self.model)
        self.model.requires_grad_(False)
        params = [p for layer in self.layers for p in layer.parameters()]
        for p in params:
            p.requires_grad_(True)
        self.opt = make_optimizer(params, cfg)
        self.memory = PBRSMemory(cfg.memory_size, info.n_classes)
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
            return self.model(x)

    def _update(self) -> None:
        feats = self.memory.images()
        if feats is None:
            return
        # Only the IABN layers switch to train mode (batch statistics of the memory, running-statistics
        # update); the rest of the network stays in eval mode (no dropout noise). A single stored sample
        # keeps eval mode, as the reference does ("avoid BN error").
        for layer in self.layers:
            layer.train(len(feats) > 1)
        try:
            with torch.enable_grad():
                out = self.model(feats) / self.config.temperature
                loss = softmax_entropy(out).mean() / out.shape[1]  # HLoss: mean over samples and classes
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        finally:
            for layer in self.layers:
                layer.eval()

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        out = self.predict(x, PredictContext())
        labels = out.argmax(1).tolist()
        for xi, label in zip(x, labels, strict=True):
            self.memory.add(xi, label, self.gen)
            self.seen += 1
            if self.seen % self.config.update_every == 0:
                self._update()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "memory": self.memory.state_dict(),
                "gen": self.gen.get_state(), "seen": self.seen}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.memory.load_state_dict(state["memory"])
        self.gen.set_state(state["gen"])
        self.seen = int(state["seen"])
