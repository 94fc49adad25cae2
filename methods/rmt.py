"""RMT: robust mean teacher for continual and gradual test-time adaptation.

A student (all parameters, batch norm on batch statistics) learns from an EMA teacher with the
symmetric cross-entropy on the clean and an augmented view of each test batch, plus a contrastive
loss that pulls each test feature (and its augmented view) towards its nearest source class
prototype through a small projector; optionally a cross-entropy on replayed labelled source
samples. Before the stream, a warm-up on source images (linearly rising learning rate) trains the
student/teacher pair. The prediction is the sum of student and teacher logits.

Two source-free variants:

* the reference's (``lambda_ce_src=0``; RMT benchmark ``conf.py`` l. 183, "Set to 0 for source-free
  variant"): no source replay while adapting; the warm-up and the class prototypes still come from the
  source data, before the stream (the reference caches both to files);
* the strict one (``source_free=True``, or automatically when the stream has no source data): no source
  data at all — no replay, no warm-up, and the contrastive loss contrasts the two views of each test
  sample only (no prototypes). ``caps.source_data`` is "optional" because of it.

References:
    Döbler, Marsden & Yang. "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation".
    CVPR 2023. Code: github.com/mariodoebler/test-time-adaptation (methods/rmt.py).
    Khosla et al. "Supervised Contrastive Learning". NeurIPS 2020 (the contrastive loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components import EMATeacher, source_batches, stream_augment, symmetric_cross_entropy
from cl_bench.components.window_bn import store_in_window
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, generator, make_optimizer


@dataclass(frozen=True)
class RMTConfig(WindowTTAConfig):
    """RMT hyper-parameters (RMT paper Sec. 4 and the benchmark's CIFAR-10-C rmt.yaml / conf.py).

    Attributes:
        teacher_momentum: EMA momentum of the teacher (0.999).
        lambda_ce_trg: Weight of the student/teacher symmetric cross-entropy (1).
        lambda_cont: Weight of the contrastive loss (1).
        lambda_ce_src: Weight of the source-replay cross-entropy (1; 0 disables replay).
        temperature: Contrastive temperature (0.1).
        projection_dim: Output width of the projector (128).
        warmup_samples: Source samples seen in the warm-up (50,000; 0 disables it).
        source_batch_size: Batch size of warm-up, replay and prototype extraction (200, the
            benchmark's CIFAR-10-C test batch size).
        prototype_samples: Source samples averaged into the class prototypes (all, capped at 100,000).
        flip: Horizontal flips in the augmentation (reference: p = 0.5); None = the stream's ``flip_invariant``.
        source_free: Run the strict source-free variant (no source data at all) even when source data is
            available; ``lambda_ce_src=0`` is the reference's source-free variant (no replay only).
    """

    teacher_momentum: float = 0.999
    lambda_ce_trg: float = 1.0
    lambda_cont: float = 1.0
    lambda_ce_src: float = 1.0
    temperature: float = 0.1
    projection_dim: int = 128
    warmup_samples: int = 50_000
    source_batch_size: int = 200
    prototype_samples: int = 100_000
    flip: bool | None = None
    source_free: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.teacher_momentum <= 1 or self.temperature <= 0 or self.projection_dim < 1:
            raise ValueError("teacher_momentum must be in [0, 1], temperature > 0, projection_dim >= 1")
        if min(self.lambda_ce_trg, self.lambda_cont, self.lambda_ce_src, self.warmup_samples) < 0:
            raise ValueError("loss weights and warmup_samples must be >= 0")
        if self.source_batch_size < 1 or self.prototype_samples < 1:
            raise ValueError("source_batch_size and prototype_samples must be >= 1")


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            "RMT needs the features that enter the classifier, found as the input of the model's last "
            "nn.Linear layer, but the source model has no nn.Linear. Use a model with a linear classifier "
            "head, or set method.lambda_cont=0 to drop the contrastive loss."
        )
    return linears[-1]


@METHODS.register(
    "rmt", reference="Döbler et al., 'Robust Mean Teacher for Continual and Gradual Test-Time Adaptation' (CVPR 2023)"
)
class RMT(Method):
    """RMT: mean teacher with symmetric cross-entropy, contrastive source prototypes, source replay, warm-up."""

    Config: ClassVar[type] = RMTConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, source_data="optional")  # strict source-free variant: none
    # toy_tta's Gaussian-blob classes are not mirror-symmetric, so flips would change the class
    conformance_config: ClassVar[dict[str, Any]] = {"warmup_samples": 64, "source_batch_size": 32, "flip": False}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.device = torch.device(info.device)
        self.source_free = cfg.source_free or info.source_data is None
        self.model, _ = adaptable_copy(info, self.name, "all", cfg.window)
        self.teacher = EMATeacher(self.model, cfg.teacher_momentum)  # before the hook: the teacher has none
        self.gen = generator(seed)
        self._features: torch.Tensor | None = None
        self.projector: nn.Module | None = None
        self.prototypes: torch.Tensor | None = None
        if cfg.lambda_cont > 0:
            _last_linear(self.model).register_forward_hook(self._keep_features)
            if not self.source_free:
                self.prototypes = self._source_prototypes()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                width = self._feature_width(info)
                self.projector = nn.Sequential(nn.Linear(width, cfg.projection_dim), nn.ReLU(),
                                               nn.Linear(cfg.projection_dim, cfg.projection_dim)).to(self.device)
        params = list(self.model.parameters()) + (list(self.projector.parameters()) if self.projector else [])
        self.opt = make_optimizer(params, cfg)
        self.augment = stream_augment(info, cfg.flip)
        self.n_steps = 0
        self.last_losses: dict[str, float] = {}
        if not self.source_free and cfg.warmup_samples > 0:
            self._warmup()

    def _keep_features(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._features = inputs[0].flatten(1)

    def _feature_width(self, info: StreamInfo) -> int:
        if self.prototypes is not None:
            return self.prototypes.shape[1]
        return _last_linear(self.model).in_features

    @torch.no_grad()
    def _source_prototypes(self) -> torch.Tensor:
        """Mean feature of each class over the source data (the model as configured for adaptation)."""
        data = self.info.source_data
        assert data is not None
        feats, labels = [], []
        for x, y in source_batches(data, self.config.prototype_samples, self.config.source_batch_size,
                                   self.device, generator(self.seed + 1)):  # fmt: skip
            self.model(x)
            assert self._features is not None
            feats.append(self._features)
            labels.append(y)
        f, y = torch.cat(feats), torch.cat(labels)
        protos = torch.zeros(self.info.n_classes, f.shape[1], device=f.device)
        protos.index_add_(0, y, f)
        counts = torch.bincount(y, minlength=self.info.n_classes).clamp_min(1).unsqueeze(1)
        return protos / counts

    def _source_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.info.source_data
        assert data is not None
        idx = torch.randint(len(data), (min(self.config.source_batch_size, len(data)),), generator=self.gen)
        return data.batch(idx, self.device)

    def _warmup(self) -> None:
        """Self-training on source images with a linearly increasing learning rate (RMT, Sec. 3.4)."""
        steps = self.config.warmup_samples // self.config.source_batch_size
        for i in range(steps):
            for group in self.opt.param_groups:
                group["lr"] = self.config.lr * (i + 1) / steps
            x, _ = self._source_batch()
            with torch.enable_grad():
                loss = symmetric_cross_entropy(self.model(x), self.teacher(x)).mean()
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            self.teacher.update(self.model)
        for group in self.opt.param_groups:
            group["lr"] = self.config.lr

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor:
        """SupCon loss without labels over ``views`` [B, V, D]: each view's positives are the other views of it."""
        assert self.projector is not None
        b, v, _ = views.shape
        z = F.normalize(self.projector(torch.cat(torch.unbind(views, 1))), dim=1)  # [V*B, P], view-major
        logits = z @ z.T / self.config.temperature
        logits = logits - logits.max(1, keepdim=True).values.detach()
        ids = torch.arange(b, device=z.device).repeat(v)
        self_mask = torch.eye(v * b, dtype=torch.bool, device=z.device)
        positive = (ids.unsqueeze(0) == ids.unsqueeze(1)) & ~self_mask
        log_prob = logits - torch.log(torch.exp(logits).masked_fill(self_mask, 0).sum(1, keepdim=True))
        return -((log_prob * positive).sum(1) / positive.sum(1)).mean()

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        teacher_out = self.teacher(x)
        losses: dict[str, torch.Tensor] = {}
        with torch.enable_grad():
            out = self.model(x)
            feats = self._features
            out_aug = self.model(self.augment(x, self.gen))
            feats_aug = self._features
            sce = 0.5 * symmetric_cross_entropy(out, teacher_out) + 0.5 * symmetric_cross_entropy(out_aug, teacher_out)
            losses["sce"] = sce.mean()
            loss = cfg.lambda_ce_trg * losses["sce"]
            if self.projector is not None:
                assert feats is not None and feats_aug is not None
                views = [feats, feats_aug]
                if self.prototypes is not None:
                    with torch.no_grad():
                        sim = F.cosine_similarity(feats.unsqueeze(1), self.prototypes.unsqueeze(0), dim=2)
                    views.insert(0, self.prototypes[sim.argmax(1)])
                losses["contrastive"] = self.contrastive_loss(torch.stack(views, 1))
                loss = loss + cfg.lambda_cont * losses["contrastive"]
            if not self.source_free and cfg.lambda_ce_src > 0:
                xs, ys = self._source_batch()
                losses["ce_src"] = F.cross_entropy(self.model(xs), ys)
                loss = loss + cfg.lambda_ce_src * losses["ce_src"]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.teacher.update(self.model)
        store_in_window(x, self.model, self.teacher.model)  # each network keeps its own window
        self.n_steps += 1
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}
        return (out + teacher_out).detach()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x) + self.teacher(x)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "teacher": self.teacher.state_dict(),
                "projector": None if self.projector is None else self.projector.state_dict(),
                "prototypes": self.prototypes, "gen": self.gen.get_state(), "n_steps": self.n_steps}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.teacher.load_state_dict(state["teacher"])
        if self.projector is not None:
            self.projector.load_state_dict(state["projector"])
        self.prototypes = None if state["prototypes"] is None else state["prototypes"].clone()
        self.gen.set_state(state["gen"])
        self.n_steps = state["n_steps"]
