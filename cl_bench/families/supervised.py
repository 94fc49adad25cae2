"""The supervised family: a network trained by gradient steps on cross-entropy.

Hooks a subclass fills in (do not override the rest unless the method changes what a step is):

* ``regularizer(x, y, out)``: extra loss added to the step's cross-entropy (EWC, L2, LwF).
* ``observe(batch)``: override only to change what a step sees (replay adds memory samples),
  calling :meth:`SupervisedMethod.step` for the update.
* ``begin_experience`` / ``end_experience``: call ``super()`` first (task-class bookkeeping).

The family's config, :class:`TrainConfig`, holds the network and optimiser fields every
supervised method shares; a method's ``Config`` inherits from it.

References:
    De Lange et al., "Continual evaluation for lifelong learning: identifying the stability gap"
        (ICLR 2023): the MLP 2x400 / SGD 0.01 defaults on MNIST-scale streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Method
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.families.schedules import LRSchedule, Schedule
from cl_bench.nets.registry import create_model, list_models, model_entry


@dataclass(frozen=True)
class TrainConfig:
    """Network and optimiser fields shared by the supervised methods.

    Defaults follow De Lange et al. (ICLR 2023) for MNIST-scale streams: an MLP
    with two hidden layers of 400 units trained by SGD at lr 0.01.
    """

    model: str = "mlp"  # any name of cl_bench.nets.registry.list_models() (`cl-bench list models -v`)
    hidden_size: int = 400
    hidden_layers: int = 2
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    # LR schedule (cl_bench.families.schedules); the defaults keep the constant lr of the De Lange protocol.
    lr_schedule: Literal["constant", "multistep", "cosine"] = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1  # mammoth's and PyCIL's MultiStepLR gamma
    lr_total_steps: int = 0
    lr_min: float = 0.0
    lr_warmup_steps: int = 0
    lr_reset: Literal["experience", "global"] = "experience"
    # A local weight file for networks that take one (resnet50: torchvision's; vit_b_16: timm's); None = random
    # initialisation. Never downloaded; its SHA-256 goes into the record (method.model_weights).
    model_weights: str | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer=sgd and momentum > 0")
        self.schedule()  # validates the schedule fields

    def schedule(self) -> Schedule:
        """The learning-rate schedule these fields describe."""
        return Schedule(self.lr_schedule, tuple(self.lr_milestones), self.lr_gamma, self.lr_total_steps,
                        self.lr_min, self.lr_warmup_steps, self.lr_reset)  # fmt: skip


def build_network(cfg: TrainConfig, info: StreamInfo) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The network (on ``info.device``) and optimiser that ``cfg`` asks for, for the stream ``info`` describes.

    ``cfg.model`` names a network of the model registry; ``hidden_size`` / ``hidden_layers`` reach only the
    networks that take them (mlp, cnn), so ``--set model=resnet18`` needs no other change.
    """
    entry = model_entry(cfg.model)
    if cfg.model_weights is not None and "weights" not in entry.options:
        takes = ", ".join(n for n in list_models() if "weights" in model_entry(n).options)
        raise ConfigError(f"model {cfg.model!r} loads no weight file, so model_weights={cfg.model_weights!r} "
                          f"cannot be used; drop it, or pick a network that takes one ({takes})")  # fmt: skip
    sizes = {"hidden_size": cfg.hidden_size, "hidden_layers": cfg.hidden_layers, "weights": cfg.model_weights}
    options = {k: v for k, v in sizes.items() if k in entry.options}
    net = create_model(cfg.model, info.n_classes, info.input_shape, **options).to(info.device)
    return net, build_optimizer(cfg, net)


def build_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` asks for over the trainable parameters of ``net``.

    Methods that change the network after :func:`build_network` (LUCIR's and PODNet's cosine heads) call it
    again so the new parameters are optimised with the same settings.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)  # fmt: skip


class SupervisedMethod(Method):
    """A network trained by gradient steps on cross-entropy, plus a regulariser hook.

    Subclasses usually override only :meth:`regularizer`, or :meth:`observe` to
    change what a step sees (e.g. replay adds memory samples). In task-incremental
    streams, training logits are masked to the classes of each example's task
    (a multi-head network sharing one output layer).
    """

    Config: ClassVar[type] = TrainConfig

    def record_extras(self) -> dict[str, Any]:
        """``model_weights``: the network's weight file hash, when it was given one."""
        path = getattr(self.config, "model_weights", None)
        if path is None:
            return {}
        from cl_bench.nets.backbones import weights_sha256

        if not Path(path).is_file():
            raise ConfigError(f"model_weights {path} is not a file; pass a local weight file of {self.config.model} "
                              f"with --set model_weights=PATH (runs never download weights)")  # fmt: skip
        return {"model_weights": {"model": self.config.model, "weights_sha256": weights_sha256(path)}}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.device = torch.device(info.device)
        self.net: nn.Module
        self.opt: torch.optim.Optimizer
        self.net, self.opt = build_network(self.config, info)
        self.lr_schedule = LRSchedule(self.opt, self.config.schedule())
        self.task_classes = torch.zeros(info.n_experiences, info.n_classes, dtype=torch.bool, device=self.device)

    def begin_experience(self, exp: Experience) -> None:
        if exp.task_id is not None:
            self.task_classes[exp.task_id, list(exp.classes)] = True
        self.lr_schedule.begin_experience()

    def mask_logits(self, out: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        """``out`` restricted to each example's task classes when task ids are given."""
        if task_ids is None:
            return out
        return out.masked_fill(~self.task_classes[task_ids], torch.finfo(out.dtype).min)

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        """Extra loss added to the cross-entropy of a step (0 by default).

        Args:
            x: Inputs of the step.
            y: Labels of the step.
            out: Unmasked network outputs on ``x`` (all classes).
        """
        return 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        """One optimiser step on ``x, y``; returns the (detached) loss."""
        self.net.train()
        out = self.net(x)
        loss = F.cross_entropy(self.mask_logits(out, task_ids), y) + self.regularizer(x, y, out)
        self.opt.zero_grad(set_to_none=True)
        scaler = getattr(self, "grad_scaler", None)  # set by the loop for --precision fp16 (CUDA)
        if scaler is None:
            loss.backward()
            self.lr_schedule.apply()
            self.opt.step()
        else:  # scaled loss so float16 gradients do not underflow; skips steps whose gradients overflowed
            scaler.scale(loss).backward()
            self.lr_schedule.apply()
            scaler.step(self.opt)
            scaler.update()
        return loss.detach()

    def observe(self, batch: Batch) -> dict[str, Any]:
        return {"loss": self.step(batch.x, batch.y, batch.task_ids)}

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        was_training = self.net.training
        self.net.eval()
        try:
            return self.net(x)
        finally:
            self.net.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "task_classes": self.task_classes,
                "lr_step": self.lr_schedule.step_count}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.task_classes.copy_(state["task_classes"])
        self.lr_schedule.step_count = int(state.get("lr_step", 0))  # checkpoints before schedules had none
