"""Experience replay with a reservoir-sampled memory.

Each incoming mini-batch is concatenated with an equally large batch drawn
from memory, then the incoming examples are offered to the reservoir.

``adab2n`` (below) is ER on a network whose BatchNorm2d layers are AdaB2N (the layer is a component,
:mod:`cl_bench.components.adab2n`; ``--set norm=adab2n`` gives it to any supervised method). ER suits it:
one forward over the incoming batch concatenated with the memory batch, so every AdaB2N layer sees old
and new experiences together (official ``models/derpp_ada.py`` lines 78-82).

References:
    Chaudhry et al. "On tiny episodic memories in continual learning". arXiv:1902.10486, 2019.
    Rolnick et al. "Experience replay for continual learning". NeurIPS 2019.
    Lyu, Wang, Zhang, Sun, Su, Zhu & Jing, "Overcoming Recency Bias of Normalization Statistics in
        Continual Learning: Balance and Adaptation" (NeurIPS 2023), AdaB2N; official code
        github.com/lvyilin/AdaB2N (commit 9aaba7e).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from cl_bench.components import ReservoirBuffer
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class ERConfig(TrainConfig):
    """ER hyper-parameters.

    Attributes:
        buffer_size: Memory capacity in examples.
        replay_batch_size: Memory examples per step (0 = as many as the incoming batch,
            as in Chaudhry et al.).
    """

    buffer_size: int = 200
    replay_batch_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.replay_batch_size < 0:
            raise ValueError("buffer_size and replay_batch_size must be >= 0")


@METHODS.register(
    "er",
    reference="Chaudhry et al., 'On tiny episodic memories in continual learning' (arXiv 2019); "
    "Rolnick et al., 'Experience replay for continual learning' (NeurIPS 2019)",
)
class ER(SupervisedMethod):
    """Experience replay: mixes a reservoir-sampled memory batch into every step."""

    Config: ClassVar[type] = ERConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.buffer = ReservoirBuffer(self.config.buffer_size, seed)

    def observe(self, batch: Batch) -> dict[str, Any]:
        x, y, t = batch.x, batch.y, batch.task_ids
        if len(self.buffer):
            mx, my, mt = self.buffer.sample(self.config.replay_batch_size or len(x))
            mx = batch.replay(mx, self.buffer.gen)  # raw memory, freshly augmented (mammoth's not_aug_inputs)
            x, y = torch.cat([x, mx]), torch.cat([y, my])
            t = None if t is None else torch.cat([t, mt])
        loss = self.step(x, y, t)
        self.buffer.add(batch.stored, batch.y, batch.task_ids)
        return {"loss": loss}

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


@dataclass(frozen=True)
class AdaB2NConfig(ERConfig):
    """ER's hyper-parameters with AdaB2N normalisation (``norm=bn`` gives plain ER on the same network).

    Attributes:
        model: A network with BatchNorm2d layers (the MLP has none): the BN CNN.
        norm: "adab2n". Its fields (TrainConfig): adab2n_kappa 0.4 and adab2n_lambda 1.0 are points of the
            official grid (run.py lines 86-91; the code has no single default; not tuned), adab2n_t0 0
            (official utils/args.py line 61).
    """

    model: str = "cnn"
    norm: Literal["bn", "adab2n"] = "adab2n"


@METHODS.register(
    "adab2n",
    reference="Lyu et al., 'Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance "
    "and Adaptation' (NeurIPS 2023), on ER",
)
class AdaB2NER(ER):
    """ER with AdaB2N normalisation (balanced, adaptively weighted BN statistics; modified momentum)."""

    Config: ClassVar[type] = AdaB2NConfig
    # The toy stream gives 3 steps per experience: too few at lr 0.01 for the CNN (with BN or AdaB2N alike:
    # 0.53 / 0.55 on experience 1) to beat chance by 0.1.
    conformance_config: ClassVar[dict[str, Any]] = {"lr": 0.1}
