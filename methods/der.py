"""Dark experience replay (DER and DER++): replay of the network's own past logits (and, DER++, labels).

A reservoir memory keeps un-augmented inputs (``Batch.stored``) with the logits the network gave
them when they were seen, and re-augments them at each replay (mammoth's ``not_aug_inputs``); each
step adds ``alpha * MSE(net(x_mem), logits_mem)`` to the cross-entropy of the incoming batch; DER++
adds ``beta * CE`` on the stored labels of a second, independent memory sample. One paper, one file.

``memory=balanced_at_end`` switches to Avalanche 0.6's memory policy instead (as ``mir`` has it): a
class-balanced memory rebuilt at each experience's end, the new examples stored with the logits of the
network trained on the whole experience (eval mode, un-augmented inputs), so replay starts with the
second experience. It exists for the cross-check in ``benchmarks/crosscheck.py``.

``refresh`` (below) is DER++ with refresh learning on (``--set refresh=true`` gives it to any supervised
method; the unlearning step is :mod:`cl_bench.components.refresh`), the official code's main setting.

References:
    Buzzega et al. "Dark experience for general continual learning: a strong, simple baseline". NeurIPS 2020.
    Wang, Li, Shen & Huang, "A Unified and General Framework for Continual Learning" (ICLR 2024), refresh
        learning; official code github.com/joey-wang123/CL-refresh-learning (commit 7c90da5) models/derpp.py.
    Official code: github.com/aimagelab/mammoth, ``models/der.py`` (loss) and ``utils/best_args.py``
        (defaults, seq-mnist, buffer 200).
    Avalanche 0.6 ``avalanche/training/supervised/der.py`` (``ClassBalancedBufferWithLogits``, the
        ``balanced_at_end`` memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import LogitClassBalancedBuffer, LogitReservoirBuffer, require_per_class_room
from cl_bench.components.buffer import replay_inputs, stored_examples
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class DERConfig(TrainConfig):
    """DER hyper-parameters.

    Attributes:
        buffer_size: Memory capacity in examples (200: the smallest budget of Buzzega et al., Table 2).
        alpha: Weight of the logit-replay MSE (0.2: mammoth ``utils/best_args.py``, seq-mnist, buffer 200).
        replay_batch_size: Memory examples per step (0 = as many as the incoming batch; mammoth's
            ``minibatch_size``).
        memory: "reservoir" (the paper's and mammoth's: written at every step with the logits the
            example got when seen) or "balanced_at_end" (Avalanche 0.6's ``DER``: class-balanced, rebuilt
            at experience ends with the trained network's logits; replay from the second experience).
    """

    buffer_size: int = 200
    alpha: float = 0.2
    replay_batch_size: int = 0
    memory: Literal["reservoir", "balanced_at_end"] = "reservoir"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.replay_batch_size < 0 or self.alpha < 0:
            raise ValueError("buffer_size, replay_batch_size and alpha must be >= 0")
        if self.memory not in ("reservoir", "balanced_at_end"):
            raise ValueError(f"memory must be 'reservoir' or 'balanced_at_end', got {self.memory!r}")


@METHODS.register(
    "der",
    reference="Buzzega et al., 'Dark experience for general continual learning: a strong, simple baseline' "
    "(NeurIPS 2020)",
)
class DER(SupervisedMethod):
    """Dark experience replay: CE on incoming data plus MSE between current and stored logits on memory."""

    Config: ClassVar[type] = DERConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        self.balanced = self.config.memory == "balanced_at_end"
        if self.balanced:
            require_per_class_room(type(self).__name__.lower(), self.config.buffer_size, info.n_classes)
        super().setup(info, seed)
        self.buffer: LogitReservoirBuffer | LogitClassBalancedBuffer
        if self.balanced:
            self.buffer = LogitClassBalancedBuffer(self.config.buffer_size, seed)
        else:
            self.buffer = LogitReservoirBuffer(self.config.buffer_size, seed)
        self.view: Any = None  # balanced memory: raw examples -> training inputs (filled at experience ends)
        self._incoming_logits: torch.Tensor | None = None

    def replay_view(self, stored: torch.Tensor) -> torch.Tensor:
        """Training inputs for stored memory examples, freshly augmented."""
        if self.balanced:
            return replay_inputs(self.view, stored, self.buffer.gen)
        return self._batch.replay(stored, self.buffer.gen)

    def replay_n(self, batch: Batch) -> int:
        """How many memory examples each replay term draws."""
        return self.config.replay_batch_size or len(batch.x)

    def replay_loss(self) -> torch.Tensor | float:
        """``alpha * MSE`` between the network's logits on a memory sample and the stored logits."""
        if not len(self.buffer) or self.config.alpha == 0:
            return 0.0
        mx, _, _, ml = self.buffer.sample_with_logits(self._n)
        mx = self.replay_view(mx)  # fresh augmentation; the stored logits stay as stored
        return self.config.alpha * F.mse_loss(self.net(mx), ml)

    def regularizer(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor | float:
        # The incoming batch's logits (before the update) are what the memory keeps, as in mammoth.
        self._incoming_logits = out.detach()
        return self.replay_loss()

    def observe(self, batch: Batch) -> dict[str, Any]:
        self._n, self._batch = self.replay_n(batch), batch
        loss = self.step(batch.x, batch.y, batch.task_ids)
        assert self._incoming_logits is not None
        if isinstance(self.buffer, LogitReservoirBuffer):
            self.buffer.add_with_logits(batch.stored, batch.y, self._incoming_logits, batch.task_ids)
        return {"loss": loss}

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if not isinstance(self.buffer, LogitClassBalancedBuffer) or exp.train is None or not len(exp.train):
            return
        x, y, self.view = stored_examples(exp.train, slice(None), self.device)
        t = exp.train.t if exp.train.t is not None else torch.full_like(y, -1 if exp.task_id is None else exp.task_id)
        # Avalanche's compute_dataset_logits: the trained network in eval mode on un-augmented inputs.
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            logits = torch.cat([self.net(replay_inputs(self.view, x[i : i + 256], None))
                                for i in range(0, len(x), 256)])  # fmt: skip
        self.net.train(was_training)
        self.buffer.rebuild_with_logits(x, y, logits, t.to(self.device))

    def memory_size(self) -> int:
        return len(self.buffer)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.buffer.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict(), "view": self.view}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.view = state.get("view")

@dataclass(frozen=True)
class DERPPConfig(DERConfig):
    """DER++ hyper-parameters (DER's, plus the label-replay weight).

    Attributes:
        alpha: Weight of the logit-replay MSE (0.2: mammoth ``utils/best_args.py``, seq-mnist, buffer 200).
        beta: Weight of the label-replay CE (1.0: mammoth ``utils/best_args.py``, seq-mnist, buffer 200).
    """

    alpha: float = 0.2
    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError("beta must be >= 0")


@METHODS.register(
    "derpp",
    reference="Buzzega et al., 'Dark experience for general continual learning: a strong, simple baseline' "
    "(NeurIPS 2020), DER++",
)
class DERPP(DER):
    """DER++: DER's logit replay plus cross-entropy on a second memory sample's stored labels."""

    Config: ClassVar[type] = DERPPConfig

    def replay_loss(self) -> torch.Tensor | float:
        loss = super().replay_loss()
        if not len(self.buffer) or self.config.beta == 0:
            return loss
        # A second draw, independent of the logit term's, as mammoth's derpp.py does.
        mx, my, mt = self.buffer.sample(self._n)
        out = self.net(self.replay_view(mx))
        if (mt >= 0).all():
            out = self.mask_logits(out, mt)
        return loss + self.config.beta * F.cross_entropy(out, my)


@dataclass(frozen=True)
class RefreshConfig(DERPPConfig):
    """DER++'s hyper-parameters with refresh learning on (``refresh=false`` gives plain DER++).

    Attributes:
        refresh: On. Its fields (TrainConfig), from the official models/derpp.py: refresh_every 1 (unlearning
            before every batch, line 63), refresh_delta 1e-5 (line 50), refresh_tau 1e-5 (line 51),
            refresh_fisher_scale 1e-3 and refresh_noise 1e-3 (line 108).
    """

    refresh: bool = True


@METHODS.register(
    "refresh",
    reference="Wang et al., 'A Unified and General Framework for Continual Learning' (ICLR 2024), refresh "
    "learning on DER++",
)
class RefreshDERPP(DERPP):
    """DER++ with refresh learning (Fisher-scaled noisy gradient-ascent unlearning before every batch)."""

    Config: ClassVar[type] = RefreshConfig
