"""The ``Method`` interface users plug in, and the supervised base most methods use.

The runner owns the loop; a method owns its network, optimiser and memory.
Like scikit-learn estimators, ``__init__`` only stores the (validated) config;
everything with state is built in :meth:`Method.setup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .models import build_model
from .types import Batch, Experience, PredictContext, StreamInfo, TensorData


@dataclass(frozen=True)
class Caps:
    """What a method needs or does, checked by the runner and the conformance suite.

    Attributes:
        task_id_at_test: Needs task ids at prediction time (task-incremental only).
        adapts_at_test: ``adapt`` updates the model on unlabelled test batches.
        memory: "none" (stores no examples), "bounded" (``memory_size()`` stays
            within ``memory_budget()``) or "unbounded" (e.g. joint training).
        pretrained_backbone: Starts from pretrained weights.
        exceptions: Conformance checks the method is exempt from, each with a reason.
    """

    task_id_at_test: bool = False
    adapts_at_test: bool = False
    memory: Literal["none", "bounded", "unbounded"] = "none"
    pretrained_backbone: bool = False
    exceptions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NoConfig:
    """Config of a method without hyper-parameters."""


class Method:
    """Base class of continual-learning and test-time-adaptation methods.

    Subclasses set ``Config`` (a frozen dataclass whose defaults come from the
    method's paper) and ``caps``, and implement :meth:`predict` plus whichever
    hooks they need. ``name`` is set by the registry.
    """

    Config: ClassVar[type] = NoConfig
    caps: ClassVar[Caps] = Caps()
    name: ClassVar[str] = ""
    #: Config overrides the conformance suite starts from (e.g. a tiny randomly
    #: initialised backbone, so the suite stays fast and never needs weight files).
    conformance_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def setup(self, info: StreamInfo, seed: int) -> None:
        """Build networks and optimisers for a stream described by ``info``."""
        self.info = info
        self.seed = seed

    def train_data(self, exp: Experience) -> TensorData | None:
        """The data the runner iterates over for ``exp`` (default: its training set)."""
        return exp.train

    def begin_experience(self, exp: Experience) -> None:
        """Called before the first batch of ``exp``."""

    def observe(self, batch: Batch) -> dict[str, Any]:
        """Learn from one labelled batch; return scalars to log (``loss`` at least)."""
        raise NotImplementedError(f"{type(self).__name__} does not train on labelled batches")

    def end_experience(self, exp: Experience) -> None:
        """Called after the last batch of ``exp`` (consolidation, memory update)."""

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        """Logits for inputs ``x`` without changing any state."""
        raise NotImplementedError

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time adaptation: predict an unlabelled batch, then update on it."""
        raise NotImplementedError(f"{type(self).__name__} does not adapt at test time")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (weights, optimiser, memory, RNG)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def memory_size(self) -> int:
        """Number of stored training examples."""
        return 0

    def memory_budget(self) -> int | None:
        """Maximum of :meth:`memory_size` allowed now (None = no bound)."""
        return None

    def record_extras(self) -> dict[str, Any]:
        """Facts the run record adds to ``record["method"]`` beside name and config (default none).

        Methods on pretrained backbones return ``{"backbone": {"backbone": NAME, "weights_sha256": HASH}}``,
        so a record names the exact weights it used. Must work before :meth:`setup` too.
        """
        return {}


@dataclass(frozen=True)
class TrainConfig:
    """Network and optimiser fields shared by the supervised methods.

    Defaults follow De Lange et al. (ICLR 2023) for MNIST-scale streams: an MLP
    with two hidden layers of 400 units trained by SGD at lr 0.01.
    """

    model: str = "mlp"
    hidden_size: int = 400
    hidden_layers: int = 2
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class SupervisedMethod(Method):
    """A network trained by gradient steps on cross-entropy, plus a regulariser hook.

    Subclasses usually override only :meth:`regularizer`, or :meth:`observe` to
    change what a step sees (e.g. replay adds memory samples). In task-incremental
    streams, training logits are masked to the classes of each example's task
    (a multi-head network sharing one output layer).
    """

    Config: ClassVar[type] = TrainConfig

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.device = torch.device(info.device)
        self.net: nn.Module = build_model(
            cfg.model, info.input_shape, info.n_classes, cfg.hidden_size, cfg.hidden_layers
        ).to(self.device)
        params = [p for p in self.net.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.task_classes = torch.zeros(info.n_experiences, info.n_classes, dtype=torch.bool, device=self.device)

    def begin_experience(self, exp: Experience) -> None:
        if exp.task_id is not None:
            self.task_classes[exp.task_id, list(exp.classes)] = True

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
        loss.backward()
        self.opt.step()
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
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "task_classes": self.task_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.task_classes.copy_(state["task_classes"])
