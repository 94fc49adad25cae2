"""Joint training as an upper bound, run cumulatively so it never sees the future.

At each experience the network trains on the union of all training data seen
so far (Avalanche's "Cumulative"); after the last experience that is joint
training on the whole stream, the usual upper bound, without ever touching an
experience before the stream reaches it.

References:
    Lomonaco et al. "Avalanche: an end-to-end library for continual learning". CVPR-W 2021 (Cumulative).
    De Lange et al. "A continual learning survey: defying forgetting in classification tasks".
    TPAMI 2021 (joint upper bound).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from cl_bench.core.method import Caps, held_bytes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, TensorData
from cl_bench.families.supervised import SupervisedMethod


@METHODS.register(
    "joint",
    reference="De Lange et al., 'A continual learning survey: defying forgetting in classification tasks' "
    "(TPAMI 2021), joint-training upper bound; cumulative form as in Avalanche (CVPR-W 2021)",
)
class Joint(SupervisedMethod):
    """Upper bound: trains on all data seen so far at every experience (unbounded memory)."""

    caps: ClassVar[Caps] = Caps(memory="unbounded")

    def setup(self, info: Any, seed: int) -> None:
        super().setup(info, seed)
        self.seen: list[TensorData] = []

    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        if exp.train is not None:
            t = torch.full((len(exp.train),), exp.task_id if exp.task_id is not None else -1, dtype=torch.long)
            self.seen.append(TensorData(exp.train.x, exp.train.y, exp.train.transform, t, exp.train.augment))

    def train_data(self, exp: Experience) -> TensorData | None:
        # One shared batch transform (and augmentation) is assumed: every built-in stream stores its
        # experience-specific views (permutations, rotations) in the data itself.
        if not self.seen:
            return None
        x, y, t = (torch.cat([getattr(d, k) for d in self.seen]) for k in ("x", "y", "t"))
        return TensorData(x, y, self.seen[-1].transform, t, self.seen[-1].augment)

    def memory_size(self) -> int:
        return sum(len(d) for d in self.seen[:-1])

    def memory_bytes(self) -> int | None:
        return sum(held_bytes(len(d), d.x, d.y, d.t) for d in self.seen[:-1])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": list(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = list(state["seen"])
