"""The conformance suite over every registered method, and proof that each of its checks can fail."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext
from cl_bench.families.supervised import SupervisedMethod
from cl_bench.testing import (
    CHECKS,
    Check,
    ConformanceError,
    ConformanceViolation,
    check_method,
    parametrize_with_checks,
    toy_scenario,
)

METHODS_UNDER_TEST = METHODS.names()
#: The inner loop (``-m "not slow"``) checks one method per family (cl_bench/families: supervised, tta,
#: vit_prompt, pretrained); the full suite checks every method. All methods x 10 checks take minutes on 2 cores.
FAST_CORE = {"er", "tent", "l2p", "ncm"}


def _slow_unless_core(name: str) -> list[pytest.MarkDecorator]:
    return [] if name in FAST_CORE else [pytest.mark.slow]


@parametrize_with_checks(METHODS_UNDER_TEST, marks=_slow_unless_core)
def test_registered_method_conforms(method: str, check: Check) -> None:
    check(method)


def test_parametrize_with_checks_gives_every_method_every_check() -> None:
    mark = parametrize_with_checks(["er", "finetune"], checks=["check_protocol", "check_resume"])
    assert [p.id for p in mark.args[1]] == ["er-check_protocol", "er-check_resume", "finetune-check_protocol",
                                            "finetune-check_resume"]  # fmt: skip
    full = parametrize_with_checks()
    assert len(full.args[1]) == len(METHODS_UNDER_TEST) * len(CHECKS)
    assert FAST_CORE <= set(METHODS_UNDER_TEST)  # a renamed method must not silently leave the inner loop
    with pytest.raises(ValueError, match="unknown check"):
        parametrize_with_checks(["er"], checks=["check_typo"])


def test_a_failing_check_fails_its_own_test() -> None:
    # MutatingPredict (below) breaks check_predict_pure only: that test fails, its other checks pass.
    Check("check_protocol")(MutatingPredict)
    with pytest.raises(ConformanceViolation, match="check_predict_pure: failed"):
        Check("check_predict_pure")(MutatingPredict)


# Task-incremental runs: in the inner loop, the two families that train on labels (supervised, pretrained).
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in {"er", "ncm"} else [pytest.mark.slow])
                                  for n in METHODS_UNDER_TEST])  # fmt: skip
def test_registered_method_runs_task_incremental(name: str) -> None:
    check_method(name, setting="task_il", checks=["check_protocol", "check_no_peeking", "check_beats_chance"])


def test_toy_scenario_is_a_small_learnable_stream() -> None:
    s = toy_scenario()
    assert (len(s), s.n_classes, s.setting, s.input_shape) == (3, 6, "class_il", (1, 4, 4))
    assert [len(e.classes) for e in s] == [2, 2, 2]
    assert sorted(c for e in s for c in e.classes) == list(range(6))
    assert [len(e.train) for e in s] == [80, 80, 80] and [len(e.test) for e in s] == [40, 40, 40]
    assert toy_scenario("task_il")[2].task_id == 2
    assert toy_scenario(seed=1).spec_hash != s.spec_hash
    assert torch.equal(toy_scenario()[0].train.x, s[0].train.x)  # same seed, same data


# -- deliberately broken methods: each must fail the check named beside it --------------------------------


class MutatingPredict(SupervisedMethod):
    """predict nudges the weights (by too little to change any prediction)."""

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        self.net.head.bias.add_(1e-6)
        return super().predict(x, ctx)


class OverBudget(SupervisedMethod):
    """Claims a bounded memory of 10 examples but keeps every training example."""

    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: Any, seed: int) -> None:
        super().setup(info, seed)
        self.kept = 0

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.kept += len(batch.x)
        return super().observe(batch)

    def memory_size(self) -> int:
        return self.kept

    def memory_budget(self) -> int | None:
        return 10


class Hoarder(OverBudget):
    """Stores examples while declaring caps.memory 'none'."""

    caps: ClassVar[Caps] = Caps(memory="none")


class TestPeeker(SupervisedMethod):
    """Trains on the test set of each experience."""

    __test__ = False  # not a pytest class

    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        x, y = exp.test.batch(slice(None))
        self.step(x, y, None)


class TaskIdReader(SupervisedMethod):
    """Uses task ids at test time without declaring caps.task_id_at_test."""

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        out = super().predict(x, ctx)
        return out if ctx.task_ids is None else out + ctx.task_ids[:, None].float()


class BatchDependent(SupervisedMethod):
    """Normalises logits with statistics of the whole test batch (transductive)."""

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        out = super().predict(x, ctx)
        return out - out.mean(0, keepdim=True)


class ForgetsBuffer(SupervisedMethod):
    """Replays a memory that its state_dict leaves out, so a resumed run differs."""

    def setup(self, info: Any, seed: int) -> None:
        super().setup(info, seed)
        self.mem: tuple[torch.Tensor, torch.Tensor] | None = None

    def observe(self, batch: Batch) -> dict[str, Any]:
        x, y = batch.x, batch.y
        if self.mem is not None:
            x, y = torch.cat([x, self.mem[0]]), torch.cat([y, self.mem[1]])
        self.mem = (batch.x[:4].clone(), batch.y[:4].clone())
        return {"loss": self.step(x, y, None)}


class Nondeterministic(SupervisedMethod):
    """Draws noise from an unseeded generator."""

    def observe(self, batch: Batch) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(time.perf_counter_ns())
        noise = 0.5 * torch.randn(batch.x.shape, generator=gen)
        return {"loss": self.step(batch.x + noise, batch.y, None)}


class Lazy(SupervisedMethod):
    """Never learns."""

    def observe(self, batch: Batch) -> dict[str, Any]:
        return {"loss": torch.tensor(1.0)}


class WrongShape(SupervisedMethod):
    """Returns one logit too few."""

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return super().predict(x, ctx)[:, :-1]


@dataclass  # not frozen
class MutableConfig:
    lr: float = 0.01


class MutableConfigMethod(SupervisedMethod):
    """Its Config is a plain (mutable) dataclass."""

    Config: ClassVar[type] = MutableConfig


BROKEN = [
    (MutatingPredict, "check_predict_pure"),
    (OverBudget, "check_memory_budget"),
    (Hoarder, "check_memory_budget"),
    (TestPeeker, "check_no_peeking"),
    (TaskIdReader, "check_no_peeking"),
    (BatchDependent, "check_no_peeking"),
    (ForgetsBuffer, "check_resume"),
    (Nondeterministic, "check_deterministic"),
    (Lazy, "check_beats_chance"),
    (WrongShape, "check_protocol"),
    (MutableConfigMethod, "check_config_roundtrip"),
]


@pytest.mark.parametrize(("cls", "check"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_broken_method_fails_its_check(cls: type, check: str) -> None:
    with pytest.raises(ConformanceError) as info:
        check_method(cls, checks=[check])
    assert info.value.report[check].status == "failed"
    message = str(info.value)
    assert cls.__name__.lower() in message and check in message


def test_failure_is_specific_to_the_broken_check() -> None:
    report = check_method(MutatingPredict, raise_on_failure=False)
    assert [r.name for r in report.failures] == ["check_predict_pure"]
    assert "predict changed state.net.head.bias" in report["check_predict_pure"].message


def test_peeking_is_stopped_by_the_guard() -> None:
    report = check_method(TestPeeker, raise_on_failure=False, checks=["check_no_peeking", "check_protocol"])
    assert "touched the test data of experience 0 (in begin_experience" in report["check_no_peeking"].message
    assert report["check_protocol"].status == "error"  # not evaluated: the run was stopped


def test_declared_exception_skips_the_check() -> None:
    class ExemptPredict(MutatingPredict):
        caps: ClassVar[Caps] = Caps(exceptions=(("check_predict_pure", "nudges weights on purpose"),))

    report = check_method(ExemptPredict, checks=["check_predict_pure", "check_protocol"])
    assert report["check_predict_pure"].status == "skipped"
    assert "nudges weights on purpose" in report["check_predict_pure"].message


@pytest.mark.parametrize(
    ("exceptions", "needle"),
    [((("check_predict_pure", ""),), "without a reason"), ((("check_typo", "because"),), "names no check")],
)
def test_bad_exception_declarations_are_errors(exceptions: tuple[tuple[str, str], ...], needle: str) -> None:
    class Declares(SupervisedMethod):
        caps: ClassVar[Caps] = Caps(exceptions=exceptions)

    with pytest.raises(ConformanceError, match=needle):
        check_method(Declares, checks=["check_config_roundtrip"])


def test_unknown_check_or_object_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        check_method("finetune", checks=["check_nothing"])
    with pytest.raises(TypeError, match="Method subclass"):
        check_method(dict)  # type: ignore[arg-type]


class NeedsTinySetting(SupervisedMethod):
    """Only runs with a hidden size its ``conformance_config`` supplies (like a tiny test backbone)."""

    conformance_config: ClassVar[dict[str, Any]] = {"hidden_size": 13}

    def setup(self, info: Any, seed: int) -> None:
        if self.config.hidden_size != 13:
            raise RuntimeError(f"expected the conformance hidden size, got {self.config.hidden_size}")
        super().setup(info, seed)


def test_conformance_config_is_the_suites_starting_point() -> None:
    assert check_method(NeedsTinySetting, checks=["check_protocol"]).ok
    report = check_method(NeedsTinySetting, config={"hidden_size": 12}, checks=["check_protocol"],
                          raise_on_failure=False)  # fmt: skip
    assert report["check_protocol"].status == "failed"
    assert "expected the conformance hidden size" in report["check_protocol"].message
