"""LR schedules: traces against the milestones papers state, warm-up, cosine, reset per experience or global."""

from __future__ import annotations

import math

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.schedules import Schedule, lr_trace


def test_mammoth_seq_cifar10_multistep_trace() -> None:
    # mammoth seq-cifar10: MultiStepLR(milestones=[35, 45], gamma=0.1) stepped once per epoch over 50 epochs.
    trace = lr_trace(50, 0.03, Schedule("multistep", (35, 45), 0.1))
    assert trace[:35] == [0.03] * 35
    assert all(math.isclose(v, 0.003) for v in trace[35:45])
    assert all(math.isclose(v, 0.0003) for v in trace[45:])


def test_pycil_icarl_first_task_multistep_trace() -> None:
    # PyCIL iCaRL, first task: lr 0.1, milestones [60, 120, 170], decay 0.1, 200 epochs.
    trace = lr_trace(200, 0.1, Schedule("multistep", (60, 120, 170), 0.1))
    changes = [i for i in range(1, 200) if not math.isclose(trace[i], trace[i - 1])]
    assert changes == [60, 120, 170]
    assert math.isclose(trace[-1], 1e-4)


def test_warmup_then_cosine() -> None:
    trace = lr_trace(20, 1.0, Schedule("cosine", total_steps=10, min_lr=0.1, warmup_steps=4))
    assert trace[:4] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(trace[4], 1.0)  # the decay starts at the peak
    assert math.isclose(trace[9], 0.1 + 0.45 * (1 + math.cos(math.pi / 2)))  # half way
    assert all(math.isclose(v, 0.1) for v in trace[14:])  # held at the floor after the decay


def test_constant_is_the_default_and_invalid_schedules_are_config_errors() -> None:
    assert lr_trace(5, 0.01, Schedule()) == [0.01] * 5
    with pytest.raises(ConfigError, match="needs lr_milestones"):
        METHODS.create("er", lr_schedule="multistep")
    with pytest.raises(ConfigError, match="increasing"):
        METHODS.create("er", lr_schedule="multistep", lr_milestones=[5, 3])
    with pytest.raises(ConfigError, match="nesterov"):
        METHODS.create("er", nesterov=True)


def _lrs(reset: str) -> list[float]:
    method = METHODS.create("er", lr=0.1, lr_schedule="multistep", lr_milestones=[2], lr_gamma=0.5, lr_reset=reset,
                            optimizer="sgd", momentum=0.9, nesterov=True)  # fmt: skip
    method.setup(StreamInfo((4,), 2, 2, "class_il"), seed=0)
    seen = []
    for e in range(2):
        method.begin_experience(Experience(e, None, None, (0, 1)))  # type: ignore[arg-type]
        for _ in range(3):
            method.observe(Batch(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]), None, e))
            seen.append(method.opt.param_groups[0]["lr"])
    return seen


def test_method_follows_the_schedule_reset_per_experience_or_global() -> None:
    assert _lrs("experience") == [0.1, 0.1, 0.05, 0.1, 0.1, 0.05]
    assert _lrs("global") == [0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
