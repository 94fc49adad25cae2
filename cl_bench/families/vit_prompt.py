"""The ViT-prompt family: methods on a frozen (prompted) Vision Transformer.

:class:`ViTPromptMethod` is the shared base of the prompt methods (l2p, dualprompt, coda_prompt,
one_prompt) and of l2_vit: it builds the backbone from the config, adapts stream inputs to it, owns
the linear classifier, the optimiser over the trainable parameters, the class masking of the
CODA-Prompt reference code and the checkpoint state.

Hooks a subclass fills in:

* ``features(x, train)`` (required): pooled features for the classifier and an auxiliary loss.
* ``build(info)``: create the method's prompt modules (called in ``setup``, before the optimiser).
* ``trainable()``: modules whose parameters the optimiser updates (default: the head only).
* ``new_task(exp)``: called when an experience begins, after ``self.task`` is updated.
* ``param_groups()``: the optimiser's parameter groups, each with an lr factor on ``config.lr``
  (default: one group of every trainable parameter at factor 1).

Do not override ``setup``, ``begin_experience``, ``observe``, ``predict``, ``state_dict`` or
``load_state_dict``: the family owns the protocol.

References:
    Wang et al. "Learning to Prompt for Continual Learning". CVPR 2022 (L2P).
    Smith et al. "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
    Continual Learning". CVPR 2023 (reference code GT-RIPL/CODA-Prompt: L2P++, DualPrompt, CODA-P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components.backbone_input import BackboneInput
from cl_bench.components.prompts import PromptedViT, require_vit, require_vit_name
from cl_bench.core.method import Caps, Method
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.nets.backbones import backbone_tag, check_backbone_name, create_backbone
from cl_bench.nets.weights import RANDOM, require_weights

# A timm ViT small enough for the conformance suite and unit tests: 4 patches of the 8x8 adapted
# toy images, 2 blocks of width 32 (random weights, no file needed).
TINY_VIT: dict[str, Any] = {"backbone": "vit_tiny_patch16_224", "weights": RANDOM, "image_size": 8,
                            "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}  # fmt: skip



@dataclass(frozen=True)
class ViTConfig:
    """Backbone, input and optimiser fields shared by the methods on a (prompted) ViT.

    Defaults follow the CODA-Prompt reference code for 10-task Split CIFAR-100 with ViT-B/16:
    Adam (betas 0.9, 0.999) at lr 1e-3, no weight decay; the CE "heuristic" masks the classes of
    earlier experiences while training on a new one.

    Attributes:
        backbone: timm architecture (a VisionTransformer), built without classifier.
        weights: Local weight file of the backbone; None (the default) is refused when the run starts, and
            ``"random"`` gives randomly initialised weights (tests and smoke runs only).
        image_size: Input side the backbone gets (None = the architecture's own, 224 for ViT-B/16).
        patch_size: Patch size override (None = the architecture's; for small test ViTs).
        depth: Number of blocks override (None = the architecture's).
        embed_dim: Width override (None = the architecture's).
        num_heads: Attention heads override (None = the architecture's).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        mask_old_classes: While training, exclude classes of earlier experiences from the softmax.
        lr_schedule: "constant"; "cosine": the CODA-Prompt reference code's ``CosineSchedule``
            (``utils/schedulers.py``, ``schedule_type: cosine`` in every prompt config), stepped per epoch
            and restarted per experience: lr_e = lr * cos(99 pi e / (200 (K - 1))) in epoch e of K, so the
            last epoch runs at ~1.6% of lr; or "step": timm's ``StepLRScheduler`` as the
            l2p/dualprompt/HiDe-Prompt PyTorch code builds it (``--sched step``): lr times
            ``lr_decay_rate`` every ``lr_decay_epochs`` epochs, stepped with the finished epoch's index,
            so the first decay comes one epoch after ``lr_decay_epochs``.
        lr_epochs: K, the epochs per experience of the run (20 in CODA-Prompt's CIFAR-100 config, 50 for
            ImageNet-R); required by the cosine schedule.
        lr_decay_epochs: Epochs between decays of the step schedule (timm ``--decay-epochs``, 30 in the
            l2p-pytorch / HiDe-Prompt configs).
        lr_decay_rate: Factor of each step decay (timm ``--decay-rate``, 0.1 in those configs).
        warmup_epochs: Epochs of linear warm-up at the start of every experience, timm's rule: in epoch
            e < W the lr is ``warmup_lr + e (lr - warmup_lr) / W``; then the schedule above (the cosine
            and step schedules count epochs from the experience's start, warm-up included, as timm's do).
            0 for every prompt method: none of the official codes warms up (CODA-Prompt's
            ``CosineSchedule`` has no warm-up; l2p-pytorch and dualprompt-pytorch declare
            ``--warmup-epochs 5`` but run ``--sched constant``, for which ``main.py`` builds no scheduler,
            so it is never applied; HiDe-Prompt's configs set ``--warmup-epochs 0``).
        warmup_lr: The lr warm-up starts from (timm ``--warmup-lr``, 1e-6 in those configs).
        clip_grad: Clip the gradient norm of each step to this value (0 = no clipping). The
            l2p/dualprompt/HiDe-Prompt PyTorch configs clip at 1.0 (``--clip-grad``); CODA-Prompt does not.
    """

    backbone: str = "vit_base_patch16_224"
    weights: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    mask_old_classes: bool = True
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_epochs: int = 0
    lr_decay_epochs: int = 30
    lr_decay_rate: float = 0.1
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    clip_grad: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine", "step"):
            raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'step', got {self.lr_schedule!r}")
        if self.lr_decay_epochs < 1 or not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_epochs must be >= 1 and lr_decay_rate in (0, 1], got "
                             f"{self.lr_decay_epochs} and {self.lr_decay_rate}")  # fmt: skip
        if self.warmup_epochs < 0 or self.warmup_lr < 0 or self.clip_grad < 0:
            raise ValueError("warmup_epochs, warmup_lr and clip_grad must be >= 0")
        if self.lr_schedule == "cosine" and self.lr_epochs < 1:
            raise ValueError("lr_schedule=cosine needs lr_epochs, the run's epochs per experience (e.g. --set "
                             "lr_epochs=20 with --epochs 20, CODA-Prompt's CIFAR-100 recipe)")
        for name in ("image_size", "patch_size", "depth", "embed_dim", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the architecture's own), got {value}")
        check_backbone_name(self.backbone)  # unknown names fail before any run starts
        require_vit_name(self.backbone)  # and so do non-ViT architectures

    def lr_factor(self, epoch: int) -> float:
        """The factor on every learning rate in ``epoch`` (0-based, within an experience)."""
        if epoch < self.warmup_epochs:  # timm's linear warm-up from warmup_lr (relative to lr)
            start = min(self.warmup_lr / self.lr, 1.0)
            return start + epoch * (1.0 - start) / self.warmup_epochs
        if self.lr_schedule == "step":
            # timm StepLRScheduler.step(epoch) runs after epoch `epoch`, so epoch e trains at the value of e - 1.
            return self.lr_decay_rate ** (max(epoch - 1, 0) // self.lr_decay_epochs)
        if self.lr_schedule == "constant" or self.lr_epochs == 1:
            return 1.0
        return math.cos(99 * math.pi * min(epoch, self.lr_epochs - 1) / (200 * (self.lr_epochs - 1)))

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model`` from the set overrides."""
        names = {"img_size": self.image_size, "patch_size": self.patch_size, "depth": self.depth,
                 "embed_dim": self.embed_dim, "num_heads": self.num_heads}  # fmt: skip
        return {k: v for k, v in names.items() if v is not None}


class ViTPromptMethod(Method):
    """Shared base of the methods on a (prompted) ViT: the method supplies :meth:`features`.

    Training: cross-entropy on the seen classes (with ``mask_old_classes``: on the current
    experience's classes only, the CODA-Prompt reference code's heuristic) plus the auxiliary loss
    :meth:`features` returns. Prediction: logits of classes not yet seen are set to the lowest
    float, so a class-incremental prediction never names a future class.
    """

    Config: ClassVar[type] = ViTConfig
    caps: ClassVar[Caps] = Caps(pretrained_backbone=True, exceptions=((
        "check_beats_chance",
        "the conformance backbone is a randomly initialised tiny ViT whose [CLS] features barely depend on "
        "the input, so ~20 steps cannot separate the toy classes; tests/test_prompts.py runs the same check "
        "with the tiny ViT briefly pretrained (a weight file), where every method must beat chance",
    ),))  # fmt: skip
    conformance_config: ClassVar[dict[str, Any]] = dict(TINY_VIT)
    #: Whether the backbone stays frozen (l2_vit unfreezes part of it).
    frozen_backbone: ClassVar[bool] = True

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.device = torch.device(info.device)
        require_weights(cfg.weights, self.name or type(self).__name__, cfg.backbone)
        vit = create_backbone(cfg.backbone, cfg.weights, **cfg.backbone_kwargs())
        require_vit(vit, self.name or type(self).__name__, cfg.backbone)
        # Stream batches -> the backbone's input size, channels and normalisation.
        self.adapt_input = BackboneInput.for_backbone(vit, cfg.image_size).for_stream(info.input_transform)
        self.vit = PromptedViT(vit, frozen=self.frozen_backbone).to(self.device)
        self.head = nn.Linear(self.vit.embed_dim, info.n_classes).to(self.device)
        self.build(info)
        groups = [{"params": params, "lr": cfg.lr * factor} for params, factor in self.param_groups()]
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        self.seen = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.current = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.task = -1
        self.n_train = self.trained = 0  # examples per epoch of the experience, examples trained on so far

    def record_extras(self) -> dict[str, Any]:
        require_weights(self.config.weights, self.name, self.config.backbone)  # also checked before a run starts
        return {"backbone": backbone_tag(self.config.backbone, self.config.weights)}

    # -- hooks for the methods --------------------------------------------------------------------------
    def build(self, info: StreamInfo) -> None:
        """Create the method's prompt modules (called in setup, before the optimiser)."""

    def trainable(self) -> list[nn.Module]:
        """Modules the method learns: saved in checkpoints, and (by default) optimised."""
        return [self.head]

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The optimiser's groups: (parameters, lr factor on ``config.lr``); default every trainable one at 1."""
        return [([p for m in self.trainable() for p in m.parameters() if p.requires_grad], 1.0)]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Features of adapted inputs ``x`` and an auxiliary loss (0 at test time)."""
        raise NotImplementedError

    def new_task(self, exp: Experience) -> None:
        """Called when an experience begins, after ``self.task`` is updated."""

    # -- the protocol -----------------------------------------------------------------------------------
    def begin_experience(self, exp: Experience) -> None:
        self.task = exp.index
        self.current.zero_()
        self.current[list(exp.classes)] = True
        self.seen[list(exp.classes)] = True
        self.n_train, self.trained = (len(exp.train) if exp.train is not None else 0), 0
        self.new_task(exp)

    def logits(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        feats, aux = self.features(self.adapt_input(x), train)
        return self.head(feats), aux

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.vit.train()
        out, aux = self.logits(batch.x, train=True)
        allowed = self.current if self.config.mask_old_classes else self.seen
        loss = F.cross_entropy(out.masked_fill(~allowed, float("-inf")), batch.y) + aux
        # Epochs are counted in examples: every epoch passes the experience's whole training set once.
        factor = self.config.lr_factor(self.trained // max(1, self.n_train))
        for group in self.opt.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
        self.trained += len(batch.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                           self.config.clip_grad)  # fmt: skip
        self.opt.step()
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        self.vit.eval()
        out, _ = self.logits(x, train=False)
        if bool(self.seen.any()):
            out = out.masked_fill(~self.seen, torch.finfo(out.dtype).min)
        return out

    def state_dict(self) -> dict[str, Any]:
        modules = {f"m{i}": m.state_dict() for i, m in enumerate(self.trainable())}
        return {"modules": modules, "opt": self.opt.state_dict(), "seen": self.seen.clone(),
                "current": self.current.clone(), "task": self.task, "n_train": self.n_train,
                "trained": self.trained}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, m in enumerate(self.trainable()):
            m.load_state_dict(state["modules"][f"m{i}"])
        self.opt.load_state_dict(state["opt"])
        self.seen.copy_(state["seen"])
        self.current.copy_(state["current"])
        self.task = state["task"]
        self.n_train, self.trained = state.get("n_train", 0), state.get("trained", 0)


__all__ = ["TINY_VIT", "ViTConfig", "ViTPromptMethod"]
