"""Methods that drive their own training loop (``Caps.drives_loop``), without any other library.

A method that replays the runner's own batch order in its own loop must produce exactly the
accuracy matrix of the same method trained by the runner: the eval schedule is the runner's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from cl_bench.core.errors import UserError
from cl_bench.core.method import Caps, IterationCallback
from cl_bench.core.types import Experience
from cl_bench.engine.rng import shuffle_seed
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.families.supervised import SupervisedMethod
from cl_bench.testing import ConformanceError, check_method

PROTOCOL = Protocol(eval_every=3, eval_subset=0)


class OwnLoop(SupervisedMethod):
    """Plain SGD in the method's own loop, drawing the runner's permutations (so batches are identical)."""

    caps: ClassVar[Caps] = Caps(drives_loop=True, resumable=False,
                                exceptions=(("check_resume", "its loop position is not checkpointed"),))  # fmt: skip

    def train_experience(self, exp: Experience, callback: IterationCallback) -> None:
        data = exp.train
        n, bs = len(data), callback.batch_size
        n_batches = math.ceil(n / bs)
        for epoch in range(callback.epochs):
            gen = torch.Generator().manual_seed(shuffle_seed(callback.seed, exp.index, epoch))
            perm = torch.randperm(n, generator=gen)
            for b in range(n_batches):
                x, y = data.batch(perm[b * bs : (b + 1) * bs])
                loss = self.step(x, y, None)
                callback(float(loss), epoch == callback.epochs - 1 and b == n_batches - 1)


class PeekingLoop(OwnLoop):
    """Reads the test labels of the experience it trains on."""

    def train_experience(self, exp: Experience, callback: IterationCallback) -> None:
        _ = exp.test.y
        super().train_experience(exp, callback)


def test_own_loop_gives_the_runners_matrix(tmp_path: Path) -> None:
    spec = RunSpec(method="finetune", scenario="toy", protocol=PROTOCOL)
    native = run(spec, tmp_path / "native")
    driven = run(spec, tmp_path / "driven", method_cls=OwnLoop)
    assert driven["accuracy_matrix"] == native["accuracy_matrix"]
    iterations = native["accuracy_matrix"]["iteration"]
    assert iterations[:4] == [0, 3, 6, 9] and native["accuracy_matrix"]["boundary"] == [7, 15, 22]


def test_own_loop_passes_conformance_and_peeking_is_caught() -> None:
    assert check_method(OwnLoop).ok
    with pytest.raises(ConformanceError) as err:
        check_method(PeekingLoop, checks=["check_no_peeking"])
    assert "touched the test data of experience 0 (in train_experience" in str(err.value)


def test_unresumable_method_refuses_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot be checkpointed"):
        run(RunSpec(method="finetune", scenario="toy"), tmp_path, checkpoint_every=2, method_cls=OwnLoop)
