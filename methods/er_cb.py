"""Class-balanced ER of the stability-gap study: memory rebuilt at each experience's end, weighted losses.

The memory holds at most ``buffer_size`` examples split evenly over the classes seen so far and is
rebuilt from memory + the finished experience when the experience ends (so there is no replay during
the first experience). Each step's loss is ``new_weight * CE(incoming) + replay_weight * CE(memory)``.

References:
    De Lange et al. "Continual evaluation for lifelong learning: identifying the stability gap". ICLR 2023.
    Official code: github.com/Mattdl/ContinualEvaluation ``reproduce/configs/splitmnist_ER.yaml``
        (class-balanced buffer updated after each experience, memory 2,000, loss weights 0.3 new /
        0.7 replay; /work/shared/REFERENCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import ClassBalancedBuffer, require_per_class_room
from cl_bench.components.buffer import replay_inputs, stored_examples
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class ERCBConfig(TrainConfig):
    """Stability-gap ER hyper-parameters (ContinualEvaluation ``splitmnist_ER.yaml``).

    Attributes:
        buffer_size: Memory capacity in examples, all classes together (2,000).
        new_weight: Weight of the incoming batch's cross-entropy (0.3).
        replay_weight: Weight of the memory batch's cross-entropy (0.7).
        replay_batch_size: Memory examples per step (0 = as many as the incoming batch).
    """

    buffer_size: int = 2000
    new_weight: float = 0.3
    replay_weight: float = 0.7
    replay_batch_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.replay_batch_size < 0 or self.new_weight < 0 or self.replay_weight < 0:
            raise ValueError("buffer_size, replay_batch_size, new_weight and replay_weight must be >= 0")


@METHODS.register(
    "er_cb",
    reference="De Lange et al., 'Continual evaluation for lifelong learning: identifying the stability gap' "
    "(ICLR 2023), class-balanced ER with 0.3/0.7 loss weights",
)
class ERClassBalanced(SupervisedMethod):
    """ER with a class-balanced memory updated at experience ends and weighted new/replay losses."""

    Config: ClassVar[type] = ERCBConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")
    # The toy stream gives 3 steps per experience: too few at lr 0.01 with 0.3 weight on the new data.
    conformance_config: ClassVar[dict[str, Any]] = {"lr": 0.1}

    def setup(self, info: StreamInfo, seed: int) -> None:
        require_per_class_room("er_cb", self.config.buffer_size, info.n_classes)
        super().setup(info, seed)
        self.buffer = ClassBalancedBuffer(self.config.buffer_size, seed)
        self.view: Any = None  # raw memory -> training inputs (the stream's augmentation + transform)

    def observe(self, batch: Batch) -> dict[str, Any]:
        x, y, t = batch.x, batch.y, batch.task_ids
        if not len(self.buffer):
            return {"loss": self.step(x, y, t)}
        self.net.train()
        mx, my, mt = self.buffer.sample(self.config.replay_batch_size or len(x))
        mx = replay_inputs(self.view, mx, self.buffer.gen)  # raw memory, freshly augmented
        out = self.mask_logits(self.net(torch.cat([x, mx])), None if t is None else torch.cat([t, mt]))
        loss = (self.config.new_weight * F.cross_entropy(out[: len(x)], y)
                + self.config.replay_weight * F.cross_entropy(out[len(x):], my))  # fmt: skip
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if exp.train is None or len(exp.train) == 0:
            return
        x, y, self.view = stored_examples(exp.train, slice(None), self.device)
        t = exp.train.t if exp.train.t is not None else torch.full_like(y, -1 if exp.task_id is None else exp.task_id)
        self.buffer.rebuild(x, y, t.to(self.device))

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
