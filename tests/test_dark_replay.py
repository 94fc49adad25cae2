"""DER with Avalanche's memory policy, X-DER's logit updates and ER-AML's metric loss (issue 16).

Runs use the registered ``toy`` stream (3 experiences x 2 classes of Gaussian blobs, 80 training examples
each); hand examples pin the update rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Scenario, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.testing import toy_scenario


def _info(scenario: Scenario) -> StreamInfo:
    return StreamInfo(input_shape=tuple(scenario.input_shape), n_classes=scenario.n_classes,
                      n_experiences=len(scenario), setting=scenario.setting)  # fmt: skip


def _train(method: object, experiences: list, upto: int, batch: int = 20) -> None:
    for exp in list(experiences)[:upto]:
        method.begin_experience(exp)
        assert exp.train is not None
        for i in range(0, len(exp.train), batch):
            x, y = exp.train.batch(slice(i, i + batch))
            method.observe(Batch(x, y, None, exp.index))
        method.end_experience(exp)


# -- DER with memory=balanced_at_end (Avalanche 0.6's DER memory) ------------------------------------------------


def test_der_balanced_memory_is_filled_at_experience_end_with_trained_logits() -> None:
    scenario = toy_scenario()
    method = METHODS.create("der", buffer_size=30, memory="balanced_at_end")
    method.setup(_info(scenario), 0)
    exp = scenario[0]
    method.begin_experience(exp)
    x, y = exp.train.batch(slice(0, 20))
    method.observe(Batch(x, y, None, 0))
    assert len(method.buffer) == 0  # nothing stored while the experience runs, so no replay in the first one
    method.end_experience(exp)
    assert len(method.buffer) == 30
    assert sorted(torch.unique(method.buffer.y, return_counts=True)[1].tolist()) == [15, 15]
    method.net.eval()
    with torch.no_grad():
        expected = method.net(method.buffer.x)
    assert torch.allclose(method.buffer.logits, expected)  # the trained network's logits, eval mode
    kept = {tuple(r.flatten().tolist()): lg for r, lg in zip(method.buffer.x, method.buffer.logits, strict=True)}
    _train(method, [scenario[1]], 1)
    counts = torch.unique(method.buffer.y, return_counts=True)[1]
    assert len(method.buffer) == 30 and sorted(counts.tolist()) == [7, 7, 8, 8]
    old = [(kept[k], lg) for r, lg in zip(method.buffer.x, method.buffer.logits, strict=True)
           if (k := tuple(r.flatten().tolist())) in kept]  # fmt: skip
    assert len(old) == sum(int(c) in scenario[0].classes for c in method.buffer.y)  # the first experience's
    assert all(torch.equal(a, b) for a, b in old)  # old examples keep the logits they were stored with


def test_der_balanced_memory_refuses_budget_below_classes(tmp_path: Path) -> None:
    spec = RunSpec(method="derpp", method_config={"buffer_size": 4, "memory": "balanced_at_end"}, scenario="toy",
                   protocol=Protocol(eval_every=0, epochs=1), seed=0)  # fmt: skip
    with pytest.raises(ConfigError, match="buffer_size=4"):
        run(spec, tmp_path)


def test_der_rejects_unknown_memory() -> None:
    with pytest.raises(ValueError, match="memory"):
        METHODS.create("der", memory="fifo")
