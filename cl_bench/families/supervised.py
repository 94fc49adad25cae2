"""The supervised family: a network trained by gradient steps on cross-entropy.

Hooks a subclass fills in (do not override the rest unless the method changes what a step is):

* ``regularizer(x, y, out)``: extra loss added to the step's cross-entropy (EWC, L2, LwF).
* ``observe(batch)``: override only to change what a step sees (replay adds memory samples),
  calling :meth:`SupervisedMethod.step` for the update.
* ``begin_experience`` / ``end_experience``: call ``super()`` first (task-class bookkeeping).

The family's config, :class:`TrainConfig`, holds the network and optimiser fields every
supervised method shares; a method's ``Config`` inherits from it.

Two options every supervised method gains (off by default):

* ``norm=adab2n``: the network's BatchNorm2d layers become AdaB2N
  (:mod:`cl_bench.components.adab2n`); :meth:`SupervisedMethod.step` tags each sample of its forward
  with its class's experience (balanced statistics) and adds the layers' adaptation loss. Forwards
  outside ``step`` (e.g. DER's separate memory pass) use plain batch statistics and AdaB2N's momentum.
* ``refresh=true``: refresh learning (:mod:`cl_bench.components.refresh`) unlearns each incoming batch
  before the method's ``observe`` and accumulates the Fisher after its ``end_experience``.

References:
    De Lange et al., "Continual evaluation for lifelong learning: identifying the stability gap"
        (ICLR 2023): the MLP 2x400 / SGD 0.01 defaults on MNIST-scale streams.
    Lyu et al., "Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance and
        Adaptation" (NeurIPS 2023): AdaB2N.
    Wang, Li, Shen & Huang, "A Unified and General Framework for Continual Learning" (ICLR 2024): refresh
        learning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components.adab2n import AdaB2N, adab2n_layers, use_adab2n
from cl_bench.components.refresh import Refresh
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
    # Normalisation (cl_bench.components.adab2n): "bn" keeps the network's layers; "adab2n" replaces every
    # BatchNorm2d by AdaB2N (Lyu et al., NeurIPS 2023). The official code has no single default for kappa and
    # lambda: run.py lines 86-92 grid-search kappa in {0.1, 0.4, 0.7, 1.0}, lambda in {0.01, 0.1, 1, 10} and
    # ada_t0 in {0, 1}; ours are points of that grid (not tuned), t0 = 0 is utils/args.py line 61's default.
    norm: Literal["bn", "adab2n"] = "bn"
    adab2n_kappa: float = 0.4
    adab2n_lambda: float = 1.0
    adab2n_t0: int = 0
    # Refresh learning (cl_bench.components.refresh; Wang et al., ICLR 2024): before every refresh_every-th
    # batch, a Fisher-scaled, noisy gradient-ascent step on that batch. Defaults: official
    # github.com/joey-wang123/CL-refresh-learning models/derpp.py lines 50-51 (delta, tau) and 108
    # (fisher scale 0.001, noise 0.001); the official code unlearns before every batch (line 63).
    refresh: bool = False
    refresh_every: int = 1
    refresh_delta: float = 1e-5
    refresh_fisher_scale: float = 1e-3
    refresh_noise: float = 1e-3
    refresh_tau: float = 1e-5

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.adab2n_kappa <= 1.0:
            raise ValueError(f"adab2n_kappa must be in [0, 1], got {self.adab2n_kappa}")
        if self.adab2n_lambda < 0 or self.adab2n_t0 < 0:
            raise ValueError("adab2n_lambda and adab2n_t0 must be >= 0")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if min(self.refresh_delta, self.refresh_fisher_scale, self.refresh_noise, self.refresh_tau) < 0:
            raise ValueError("refresh_delta, refresh_fisher_scale, refresh_noise and refresh_tau must be >= 0")
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
    if cfg.norm == "adab2n":
        try:  # before the optimiser, which must also train AdaB2N's task weights
            use_adab2n(net, info.n_experiences, cfg.adab2n_kappa)
        except ValueError:
            raise ConfigError(
                f"norm=adab2n replaces the BatchNorm2d layers of the network, but model={cfg.model!r} has none. "
                "Use a network with batch norm (--set model=cnn, resnet18, reduced_resnet18 or resnet32), or "
                "keep norm=bn."
            ) from None
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
        if self.config.refresh and self.caps.drives_loop:  # refused before any state is set
            raise ConfigError(
                f"refresh=true unlearns before every batch the loop hands to observe, but {type(self).__name__} "
                "drives its own training loop and never receives them. Use refresh with a method that trains "
                "batch by batch (er, derpp, ewc, ...)."
            )
        net, opt = build_network(self.config, info)  # first: a network norm=adab2n cannot use is refused here
        super().setup(info, seed)
        self.device = torch.device(info.device)
        self.net: nn.Module = net
        self.opt: torch.optim.Optimizer = opt
        self.lr_schedule = LRSchedule(self.opt, self.config.schedule())
        self.task_classes = torch.zeros(info.n_experiences, info.n_classes, dtype=torch.bool, device=self.device)
        # The experience each class first appeared in: AdaB2N's per-sample tags (the official code's
        # labels // classes_per_task, derpp_ada.py line 55, for any class order).
        self.class_experience = torch.zeros(info.n_classes, dtype=torch.long, device=self.device)
        self._seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.norm_layers: list[AdaB2N] = adab2n_layers(self.net)
        self.experience_index = 0
        self.refresher: Refresh | None = None
        if self.config.refresh:
            self._wrap_for_refresh(seed)

    def _wrap_for_refresh(self, seed: int) -> None:
        """Refresh learning around any supervised method: unlearn each incoming batch before the method's own
        ``observe`` (as the official code does before its update), and add each experience to the Fisher
        after the method's own ``end_experience``. Instance attributes, so no method file changes."""
        c = self.config
        self.refresher = Refresh(c.refresh_delta, c.refresh_fisher_scale, c.refresh_noise, c.refresh_tau,
                                 c.refresh_every, seed)  # fmt: skip
        observe, end_experience = self.observe, self.end_experience

        def refreshing_observe(batch: Batch) -> dict[str, Any]:
            assert self.refresher is not None
            task_ids = batch.task_ids
            self.refresher.unlearn(self.net, batch.x, batch.y, lambda out: self.mask_logits(out, task_ids))
            return observe(batch)

        def refreshing_end_experience(exp: Experience) -> None:
            end_experience(exp)
            data = exp.train
            if self.refresher is not None and data is not None and len(data):
                idx = torch.arange(len(data))
                self.refresher.consolidate(self.net, (data.batch(idx[s : s + 256], self.device)
                                                      for s in range(0, len(data), 256)))  # fmt: skip

        self.observe = refreshing_observe  # type: ignore[method-assign]
        self.end_experience = refreshing_end_experience  # type: ignore[method-assign]

    def begin_experience(self, exp: Experience) -> None:
        if exp.task_id is not None:
            self.task_classes[exp.task_id, list(exp.classes)] = True
        new = [c for c in exp.classes if not self._seen_classes[c]]
        self.class_experience[new] = exp.index
        self._seen_classes[list(exp.classes)] = True
        self.experience_index = exp.index
        for layer in self.norm_layers:
            layer.experience.fill_(exp.index)
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

    def norm_loss(self) -> torch.Tensor | float:
        """AdaB2N's adaptation loss of the last forward, ``lambda * sum_layers loss``, from experience ``t0`` on
        (official derpp_ada.py lines 87-94); 0 without AdaB2N layers."""
        if not self.norm_layers or self.experience_index < self.config.adab2n_t0:
            return 0.0
        losses = [layer.loss for layer in self.norm_layers if layer.loss is not None]
        return self.config.adab2n_lambda * torch.stack(losses).sum() if losses else 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        """One optimiser step on ``x, y``; returns the (detached) loss."""
        self.net.train()
        for layer in self.norm_layers:  # this forward's samples, tagged by experience (AdaB2N)
            layer.groups = self.class_experience[y]
        try:
            out = self.net(x)
        finally:
            for layer in self.norm_layers:  # other forwards (e.g. DER's memory pass) are not tagged
                layer.groups = None
        loss = F.cross_entropy(self.mask_logits(out, task_ids), y)
        if self.norm_layers:  # only then, so runs without AdaB2N keep their exact graph
            loss = loss + self.norm_loss()
        loss = loss + self.regularizer(x, y, out)
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
                "lr_step": self.lr_schedule.step_count, "class_experience": self.class_experience,
                "seen_classes": self._seen_classes, "experience_index": self.experience_index,
                **({"refresh": self.refresher.state_dict()} if self.refresher is not None else {})}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.task_classes.copy_(state["task_classes"])
        self.lr_schedule.step_count = int(state.get("lr_step", 0))  # checkpoints before schedules had none
        if "class_experience" in state:  # checkpoints before AdaB2N / refresh had none
            self.class_experience.copy_(state["class_experience"])
            self._seen_classes.copy_(state["seen_classes"])
            self.experience_index = int(state["experience_index"])
        if self.refresher is not None and "refresh" in state:
            self.refresher.load_state_dict(state["refresh"])
