"""ER-ACE: experience replay with the asymmetric cross-entropy.

Incoming examples are scored only against the classes present in the incoming batch, so
learning new classes does not push down the logits of the old ones; memory examples (a
reservoir sample) get the plain cross-entropy over every class. The two terms are summed,
as in mammoth's ``models/er_ace.py``.

References:
    Caccia et al. "New insights on reducing abrupt representation change in online continual
        learning". ICLR 2022 (Eq. 4, ER-ACE).
    Official-code reimplementation: github.com/aimagelab/mammoth ``models/er_ace.py`` (mask, summed
        terms, ``minibatch_size`` memory examples per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import ReservoirBuffer
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class ERACEConfig(TrainConfig):
    """ER-ACE hyper-parameters.

    Attributes:
        buffer_size: Memory capacity in examples (200: mammoth ``models/config/er_ace.yaml``, seq-cifar10).
        replay_batch_size: Memory examples per step (0 = as many as the incoming batch: mammoth sets
            ``minibatch_size`` to ``batch_size`` unless told otherwise).
        mean_of_terms: Average the incoming and memory terms instead of summing them (Avalanche 0.6's
            ``ACECriterion`` divides their sum by 2; mammoth and the paper sum).
    """

    buffer_size: int = 200
    replay_batch_size: int = 0
    mean_of_terms: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.replay_batch_size < 0:
            raise ValueError("buffer_size and replay_batch_size must be >= 0")


@METHODS.register(
    "er_ace",
    reference="Caccia et al., 'New insights on reducing abrupt representation change in online continual "
    "learning' (ICLR 2022), ER-ACE",
)
class ERACE(SupervisedMethod):
    """Experience replay whose incoming-batch cross-entropy sees only the classes of that batch."""

    Config: ClassVar[type] = ERACEConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")
    # The toy stream gives 3 steps per experience: too few at lr 0.01 for the new classes to overtake
    # the old ones under the asymmetric loss.
    conformance_config: ClassVar[dict[str, Any]] = {"lr": 0.1}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.buffer = ReservoirBuffer(self.config.buffer_size, seed)

    def observe(self, batch: Batch) -> dict[str, Any]:
        x, y, t = batch.x, batch.y, batch.task_ids
        self.net.train()
        out = self.mask_logits(self.net(x), t)
        if len(self.buffer):
            # Asymmetric term: only the incoming batch's own classes compete (Caccia et al., Eq. 4). Before
            # any memory exists there is nothing to protect, and mammoth leaves the first task unmasked too.
            present = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
            present[y.unique()] = True
            out = out.masked_fill(~present, torch.finfo(out.dtype).min)
        loss = F.cross_entropy(out, y)
        if len(self.buffer):
            mx, my, mt = self.buffer.sample(self.config.replay_batch_size or len(x))
            mout = self.net(batch.replay(mx, self.buffer.gen))  # raw memory, freshly augmented
            if t is not None:
                mout = self.mask_logits(mout, mt)
            loss_mem = F.cross_entropy(mout, my)
            loss = (loss + loss_mem) / 2 if self.config.mean_of_terms else loss + loss_mem
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        self.buffer.add(batch.stored, batch.y, batch.task_ids)
        return {"loss": loss.detach()}

    def memory_size(self) -> int:
        return len(self.buffer)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.buffer.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
