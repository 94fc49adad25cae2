"""The monitored method of the conformance suite: guarded data views and per-hook contract checks.

:func:`instrument` subclasses a method so that its hooks see guarded views of each experience
(touching test data, or training data before ``begin_experience``, raises), every ``predict`` call is
checked, and so is the memory after every step; violations are collected per check by :class:`Monitor`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from cl_bench.core.method import IterationCallback, Method
from cl_bench.core.types import Batch, Experience, PredictContext, Scenario, StreamInfo, TensorData
from cl_bench.testing.results import ConformanceViolation

# -- guarded data and the monitored method --------------------------------------------------------------


class _GuardedData(TensorData):
    """A view of a :class:`TensorData` that calls ``check`` before any access to its tensors."""

    def __init__(self, data: TensorData, check: Callable[[], None]) -> None:
        # No super().__init__: the tensors are reached only through the guarded properties.
        self._data = data
        self._check = check
        self.transform = data.transform
        self.augment = data.augment

    @property  # type: ignore[override]
    def x(self) -> torch.Tensor:
        self._check()
        return self._data.x

    @property  # type: ignore[override]
    def y(self) -> torch.Tensor:
        self._check()
        return self._data.y

    @property  # type: ignore[override]
    def t(self) -> torch.Tensor | None:
        self._check()
        return self._data.t


def _snapshot(obj: Any) -> Any:
    """A deep copy of a state dict (tensors cloned, containers rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, Mapping):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj) if type(obj) in (list, tuple) else copy.deepcopy(obj)
    return copy.deepcopy(obj)


def _network_parameters(method: Any) -> dict[str, torch.Tensor]:
    """A copy of every ``nn.Parameter`` of the networks the method holds as attributes, by attribute.name."""
    return {f"{attr}.{name}": p.detach().clone() for attr, value in vars(method).items()
            if isinstance(value, torch.nn.Module) for name, p in value.named_parameters()}  # fmt: skip


def difference(a: Any, b: Any, path: str = "state", depth: int = 0) -> str | None:
    """Where two state dicts differ (a readable path), or None if they are equal."""
    if depth > 64:  # a reference cycle, not a state dict: give up on this branch
        return None
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return path
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path} (shape/dtype)"
        same = torch.equal(a, b) or (a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, True).all()))
        return None if same else path
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path} (keys {sorted(map(str, set(a) ^ set(b)))})"
        for k in a:
            diff = difference(a[k], b[k], f"{path}.{k}", depth + 1)
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length)"
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            diff = difference(u, v, f"{path}[{i}]", depth + 1)
            if diff:
                return diff
        return None
    if type(a) is type(b) and hasattr(a, "__dict__") and not isinstance(a, type):
        return difference(vars(a), vars(b), path, depth + 1)  # e.g. TensorData objects kept in memory
    try:
        return None if bool(a == b) else path
    except Exception:  # objects without a usable ==
        return None


class Monitor:
    """Watches one run of an instrumented method and records contract violations per check."""

    def __init__(self, caps: Any, enabled: set[str], scenario: Scenario) -> None:
        self.caps = caps
        self.enabled = enabled
        self.n_classes = scenario.n_classes
        self.n_experiences = len(scenario)
        self.setting = scenario.setting
        self.violations: dict[str, list[str]] = {}
        self.method: Method | None = None
        self.current = -1  # index of the latest experience whose begin_experience ran
        self.hook = "outside the method's hooks"
        self.steps = 0
        self.predict_calls = 0
        self.adapt_calls = 0
        self.source_ref: torch.nn.Module | None = None  # the shared source model (TTA)
        self.source_snapshot: Any = None
        self._guarded: dict[int, Experience] = {}

    def fail(self, check: str, message: str, *, hook: str | None = None, raise_: bool = False) -> None:
        when = "before training" if self.current < 0 else (
            f"experience {self.current}, after {self.steps} training step(s)")  # fmt: skip
        where = f" ({hook or self.hook}, {when})"
        self.violations.setdefault(check, []).append(message + where)
        if raise_:
            raise ConformanceViolation(check, message + where)

    @contextmanager
    def inside(self, hook: str) -> Iterator[None]:
        outer, self.hook = self.hook, f"in {hook}"
        try:
            yield
        finally:
            self.hook = outer

    # -- data guards --------------------------------------------------------------------------------------
    def guarded(self, exp: Experience) -> Experience:
        """``exp`` as the method sees it: test data forbidden, train data only once begun."""
        if "check_no_peeking" not in self.enabled:
            return exp
        if exp.index not in self._guarded:
            i = exp.index

            def train_check() -> None:
                if self.current < i:
                    self.fail("check_no_peeking", f"touched the training data of experience {i} before its "
                              f"begin_experience", raise_=True)  # fmt: skip

            def test_check() -> None:
                self.fail("check_no_peeking", f"touched the test data of experience {i}", raise_=True)

            train = None if exp.train is None else _GuardedData(exp.train, train_check)
            self._guarded[i] = dataclasses.replace(exp, train=train, test=_GuardedData(exp.test, test_check))
        return self._guarded[exp.index]

    def begin(self, exp: Experience) -> None:
        if "check_no_peeking" in self.enabled and self.setting != "task_il" and exp.task_id is not None:
            self.fail("check_no_peeking", f"experience {exp.index} carries a task id in {self.setting}")
        self.current = max(self.current, exp.index)

    def observe(self, batch: Batch) -> None:
        self.steps += 1
        if "check_no_peeking" in self.enabled and self.setting != "task_il" and batch.task_ids is not None:
            self.fail("check_no_peeking", f"a training batch carries task ids in {self.setting}")

    # -- state checks -------------------------------------------------------------------------------------
    def memory(self, method: Method, hook: str) -> None:
        if "check_memory_budget" not in self.enabled:
            return
        size, budget, kind = method.memory_size(), method.memory_budget(), self.caps.memory
        nbytes = method.memory_bytes()
        problem = None
        if kind == "none" and size != 0:
            problem = f"caps.memory is 'none' but memory_size() is {size}"
        elif kind == "bounded" and budget is None:
            problem = "caps.memory is 'bounded' but memory_budget() is None"
        elif kind == "bounded" and budget is not None and size > budget:
            problem = f"memory_size() is {size}, over memory_budget() {budget}"
        elif kind == "bounded" and nbytes is None:
            problem = "caps.memory is 'bounded' but memory_bytes() is None (the record's cost.buffer_bytes)"
        elif nbytes is not None and (nbytes < 0 or (size == 0 and nbytes != 0)):
            problem = f"memory_bytes() is {nbytes} for memory_size() {size}"
        if problem:
            self.fail("check_memory_budget", problem, hook=f"after {hook}")

    def predict(self, method: Method, predict: Callable[..., torch.Tensor], x: torch.Tensor,
                ctx: PredictContext) -> torch.Tensor:  # fmt: skip
        self.predict_calls += 1
        with self.inside("predict"):
            return self._predict(method, predict, x, ctx)

    def _predict(self, method: Method, predict: Callable[..., torch.Tensor], x: torch.Tensor,
                 ctx: PredictContext) -> torch.Tensor:  # fmt: skip
        pure = "check_predict_pure" in self.enabled
        before = _snapshot(method.state_dict()) if pure else None
        out = predict(x, ctx)
        if pure:
            diff = difference(before, method.state_dict())
            if diff:
                self.fail("check_predict_pure", f"predict changed {diff}")
        if "check_protocol" in self.enabled:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                self.fail("check_protocol", f"predict returned {type(out).__name__}, not a float tensor")
                return out
            if tuple(out.shape) != (len(x), self.n_classes):
                self.fail("check_protocol", f"predict returned shape {tuple(out.shape)}, "
                          f"expected [N, n_classes] = {[len(x), self.n_classes]}")  # fmt: skip
            elif not bool(torch.isfinite(out).all()):
                self.fail("check_protocol", "predict returned non-finite logits")
        if "check_no_peeking" in self.enabled and not self.violations.get("check_no_peeking") and \
                not self.caps.adapts_at_test:  # fmt: skip
            self._independence(method, predict, x, ctx, out)
        return out

    def source(self, info: StreamInfo) -> None:
        """Remember the shared source model as first given to setup, to check nobody changes it."""
        if self.source_ref is None and info.source_model is not None:
            self.source_ref = info.source_model
            self.source_snapshot = _snapshot(info.source_model.state_dict())

    def adapt(self, method: Method, adapt: Callable[[torch.Tensor], torch.Tensor],
              predict: Callable[..., torch.Tensor], x: torch.Tensor) -> torch.Tensor:  # fmt: skip
        from cl_bench.engine.rng import rng_state as _rng_state
        from cl_bench.engine.rng import set_rng_state as _set_rng_state

        self.adapt_calls += 1
        expected = None
        if "check_pre_update" in self.enabled:
            rng = _rng_state()  # predict may draw random numbers (augmentations); adapt then draws the same
            with self.inside("predict before adapt"), torch.no_grad():
                expected = predict(x, PredictContext())
            _set_rng_state(rng)
        frozen = "check_parameters_frozen" in self.enabled and not getattr(self.caps, "updates_parameters", True)
        params_before = _network_parameters(method) if frozen else None
        with self.inside("adapt"):
            out = adapt(x)
        if params_before is not None:
            diff = difference(params_before, _network_parameters(method), path="parameters")
            if diff is not None:
                self.fail("check_parameters_frozen", f"adapt call {self.adapt_calls} changed {diff}, but the method "
                          "declares caps.updates_parameters=False", hook="adapt")  # fmt: skip
        if "check_protocol" in self.enabled:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                self.fail("check_protocol", f"adapt returned {type(out).__name__}, not a float tensor", hook="adapt")
                return out
            if tuple(out.shape) != (len(x), self.n_classes):
                self.fail("check_protocol", f"adapt returned shape {tuple(out.shape)}, expected [N, n_classes] = "
                          f"{[len(x), self.n_classes]}", hook="adapt")  # fmt: skip
            elif not bool(torch.isfinite(out).all()):
                self.fail("check_protocol", "adapt returned non-finite logits", hook="adapt")
        if expected is not None and isinstance(out, torch.Tensor):
            same = out.shape == expected.shape and bool(torch.allclose(out.detach(), expected, rtol=1e-4, atol=1e-5))
            if not same:
                self.fail("check_pre_update", f"adapt call {self.adapt_calls} returned logits that differ from "
                          f"predict(x) called just before it: adapt must return the prediction made before "
                          f"updating on x", hook="adapt")  # fmt: skip
        self.memory(method, "adapt")
        return out

    def _independence(self, method: Method, predict: Callable[..., torch.Tensor], x: torch.Tensor,
                      ctx: PredictContext, out: torch.Tensor) -> None:  # fmt: skip
        def close(other: torch.Tensor) -> bool:
            return other.shape == out.shape and bool(torch.allclose(other, out, rtol=1e-4, atol=1e-4))

        if self.setting != "task_il" and ctx.task_ids is not None:
            self.fail("check_no_peeking", f"predict was given task ids in {self.setting}")
        if not self.caps.task_id_at_test:
            # Swap the task ids for none (task_il) or for made-up ones (class_il): nothing may change.
            fake = torch.arange(len(x), device=x.device) % self.n_experiences  # every valid task id
            try:
                other = predict(x, PredictContext(task_ids=None if ctx.task_ids is not None else fake))
            except Exception as err:
                self.fail("check_no_peeking", f"predict reads ctx.task_ids without caps.task_id_at_test "
                          f"(it raised {type(err).__name__}: {err} when they changed)")  # fmt: skip
                return
            if not close(other):
                self.fail("check_no_peeking", "predict's output depends on ctx.task_ids, but "
                          "caps.task_id_at_test is False")  # fmt: skip
        if len(x) >= 2:
            # Each prediction must depend on its own input only: reverse the batch and split it unevenly.
            k = max(1, len(x) // 3)
            rev = x.flip(0)
            rev_ctx = PredictContext(None if ctx.task_ids is None else ctx.task_ids.flip(0))
            parts = []
            for sl in (slice(0, k), slice(k, None)):
                t = None if rev_ctx.task_ids is None else rev_ctx.task_ids[sl]
                parts.append(predict(rev[sl], PredictContext(task_ids=t)))
            if not close(torch.cat(parts).flip(0)):
                self.fail("check_no_peeking", "predictions depend on the rest of the batch (order or batch "
                          "composition), not only on each input")  # fmt: skip


def instrument(cls: type[Method], mon: Monitor) -> type[Method]:
    """A subclass of ``cls`` whose hooks report to ``mon`` and see guarded experiences."""

    class Monitored(cls):  # type: ignore[valid-type, misc]
        def setup(self, info: StreamInfo, seed: int) -> None:
            mon.method = self
            mon.source(info)
            with mon.inside("setup"):
                super().setup(info, seed)

        def begin_experience(self, exp: Experience) -> None:
            mon.begin(exp)
            with mon.inside("begin_experience"):
                super().begin_experience(mon.guarded(exp))

        def train_data(self, exp: Experience) -> TensorData | None:
            with mon.inside("train_data"):
                return super().train_data(mon.guarded(exp))

        def observe(self, batch: Batch) -> dict[str, Any]:
            mon.observe(batch)
            with mon.inside("observe"):
                out = super().observe(batch)
            mon.memory(self, "observe")
            return out

        def train_experience(self, exp: Experience, callback: IterationCallback) -> None:
            # A method driving its own loop (caps.drives_loop) reports each step through the callback.
            def report(loss: float, last: bool) -> None:
                mon.steps += 1
                mon.memory(self, "a training iteration")
                callback(loss, last)

            with mon.inside("train_experience"):
                super().train_experience(mon.guarded(exp), dataclasses.replace(callback, report=report))

        def end_experience(self, exp: Experience) -> None:
            with mon.inside("end_experience"):
                super().end_experience(mon.guarded(exp))
            mon.memory(self, "end_experience")

        def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
            return mon.predict(self, super().predict, x, ctx)

        def adapt(self, x: torch.Tensor) -> torch.Tensor:
            return mon.adapt(self, super().adapt, super().predict, x)

    Monitored.__name__ = Monitored.__qualname__ = f"Monitored{cls.__name__}"
    return Monitored
