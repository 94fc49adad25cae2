"""``check_scenario``: the conformance suite of a registered scenario (stream builder).

What every stream must satisfy, whatever its data, so that runs on it are reproducible and the metrics
mean what they say:

- ``check_config_roundtrip``: its config survives dict/JSON and back (sweeps, records and ``regress``
  rebuild it from there).
- ``check_spec``: its spec is JSON, ``spec_hash`` is stable across builds and equals the hash of the
  spec read back from JSON (the stream's identity in records and leaderboards).
- ``check_deterministic``: two builds give the same experiences, bit for bit.
- ``check_iteration``: two iterations over one scenario are independent and give the same sequence,
  with ``Experience.index`` equal to the position.
- ``check_classes``: declared classes are sorted, unique and within ``n_classes``; training labels are
  exactly the declared classes (class-/task-incremental) or within them (domain-incremental); test
  labels are within the declared classes.
- ``check_shapes``: labels int64, one per input, one input shape and stored dtype over the stream,
  batches come out as float tensors of ``Scenario.input_shape``.
- ``check_class_il_disjoint``: class-incremental streams evaluate each experience on its own classes:
  test label sets of different experiences are disjoint (training sets of task-free wrappers such as
  ``blurry`` blend neighbours by design and are not required to be).

File-backed data (:class:`cl_bench.data.filedata.FileData`: paths decoded per batch) is checked through the
same interface as stored tensors: its identity is its file list and labels, its stored form the decoded
uint8 batch (``raw_batch``). :mod:`cl_bench.testing.layouts` writes tiny trees in each released layout to
build such scenarios on.

References:
    scikit-learn, ``sklearn.utils.estimator_checks.check_estimator`` (the model for a conformance kit).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from cl_bench.core.config import config_to_dict
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, TensorData, spec_hash
from cl_bench.testing.results import CheckResult, ConformanceError, ConformanceReport

#: Examples decoded per file-backed dataset when comparing two builds (the file lists are compared in full).
_DECODED = 8


class _Ctx:
    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name, self.config = name, dict(config)
        self._built: list[Scenario] = []

    def build(self, k: int = 0) -> Scenario:
        """The k-th independent build of the scenario (built once, on demand)."""
        while len(self._built) <= k:
            self._built.append(SCENARIOS.create(self.name, **self.config))
        return self._built[k]


# TensorData or FileData (cl_bench.data.filedata, not imported: the testing kit reads the batch interface only).
Data = Any


def _labels(data: Data | None) -> set[int]:
    return set() if data is None else {int(v) for v in data.y.unique().tolist()}


def _stored_dtype(data: Data) -> torch.dtype | None:
    """The dtype of the stored inputs: the tensor's, or a decoded batch's for file-backed data (None if empty)."""
    x = getattr(data, "x", None)
    if isinstance(x, torch.Tensor):
        return x.dtype
    return data.raw_batch(slice(0, 1)).dtype if len(data) else None


def check_config_roundtrip(ctx: _Ctx) -> str:
    """The config goes to a JSON dict and back unchanged."""
    cfg = SCENARIOS.config(ctx.name, ctx.config)
    back = SCENARIOS.config(ctx.name, json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg, f"config changes through JSON: {cfg} -> {back}"
    return ""


def check_spec(ctx: _Ctx) -> str:
    """The spec is JSON; spec_hash is the same on a second build and on the spec read back from JSON."""
    a, b = ctx.build(0), ctx.build(1)
    blob = json.dumps(a.spec, sort_keys=True, default=str)
    assert spec_hash(json.loads(blob)) == a.spec_hash, "spec_hash changes when the spec goes through JSON"
    assert a.spec_hash == b.spec_hash, f"two builds give spec hashes {a.spec_hash} and {b.spec_hash}"
    assert a.spec.get("setting") == a.setting, "the spec does not carry the stream's setting"
    return a.spec_hash


def _same(x: Data | None, y: Data | None) -> bool:
    if x is None or y is None:
        return x is y
    if type(x) is not type(y) or len(x) != len(y) or not torch.equal(x.y, y.y):
        return False
    if isinstance(x, TensorData):
        return torch.equal(x.x, y.x)
    # File-backed: the same files in the same order, and they decode to the same bytes.
    head = slice(0, min(len(x), _DECODED))
    return bool(x.paths == y.paths and torch.equal(x.raw_batch(head), y.raw_batch(head)))


def check_deterministic(ctx: _Ctx) -> str:
    """Two builds hold the same experiences, bit for bit."""
    a, b = ctx.build(0), ctx.build(1)
    assert len(a) == len(b), f"two builds give {len(a)} and {len(b)} experiences"
    for ea, eb in zip(a, b, strict=True):
        where = f"experience {ea.index}"
        assert (ea.classes, ea.task_id, ea.shift) == (eb.classes, eb.task_id, eb.shift), f"{where}: metadata differs"
        assert _same(ea.train, eb.train), f"{where}: training data differs between two builds"
        assert _same(ea.test, eb.test), f"{where}: test data differs between two builds"
    return f"{len(a)} experiences"


def check_iteration(ctx: _Ctx) -> str:
    """Iterating twice gives the same sequence; one iteration does not disturb another."""
    s = ctx.build(0)
    first = iter(s)
    head = next(first)
    second = [e.index for e in s]  # a full pass while the first one is open
    rest = [head.index, *(e.index for e in first)]
    assert rest == second == list(range(len(s))), f"iterations disagree: {rest} vs {second}"
    assert all(s[i] is e for i, e in enumerate(s)), "iteration and indexing give different experiences"
    return ""


def check_classes(ctx: _Ctx) -> str:
    """Declared classes match the labels in the data."""
    s = ctx.build(0)
    for e in s:
        where = f"experience {e.index}"
        assert list(e.classes) == sorted(set(e.classes)), f"{where}: classes {e.classes} are not sorted and unique"
        assert all(0 <= c < s.n_classes for c in e.classes), (
            f"{where}: classes {e.classes} outside 0..{s.n_classes - 1}")  # fmt: skip
        declared, train, test = set(e.classes), _labels(e.train), _labels(e.test)
        if e.train is not None and s.setting != "domain_il":
            assert train == declared, f"{where}: declares classes {sorted(declared)}, trains on {sorted(train)}"
        assert train <= declared, f"{where}: training labels {sorted(train - declared)} are not declared"
        assert test <= declared, f"{where}: test labels {sorted(test - declared)} are not declared"
    return ""


def check_shapes(ctx: _Ctx) -> str:
    """Labels int64 and one per input; one input shape and dtype; batches are float of input_shape."""
    s = ctx.build(0)
    shape, dtypes = s.input_shape, set()
    for e in s:
        for part, data in (("train", e.train), ("test", e.test)):
            if data is None:
                continue
            where = f"experience {e.index} {part}"
            assert data.y.dtype == torch.int64 and len(data) == len(data.y), f"{where}: bad labels"
            assert data.t is None or len(data.t) == len(data.y), f"{where}: task ids and labels differ in length"
            dtypes.add(_stored_dtype(data))
            if len(data):
                x, y = data.batch(slice(0, 2))
                assert x.is_floating_point() and tuple(x.shape[1:]) == shape, (
                    f"{where}: batches are {x.dtype} {tuple(x.shape[1:])}, expected float {shape}")  # fmt: skip
                assert len(y) == len(x)
    dtypes.discard(None)
    assert len(dtypes) == 1, f"stored inputs mix dtypes {sorted(map(str, dtypes))}"
    return f"input {shape}, stored {next(iter(dtypes))}"


def check_class_il_disjoint(ctx: _Ctx) -> str:
    """Class-incremental streams: the test sets of different experiences share no class."""
    s = ctx.build(0)
    if s.setting != "class_il":
        return f"not class-incremental ({s.setting})"
    seen: dict[int, int] = {}
    for e in s:
        for c in _labels(e.test):
            assert c not in seen, f"class {c} is tested in experiences {seen[c]} and {e.index}"
            seen[c] = e.index
    return ""


SCENARIO_CHECKS: dict[str, Callable[[_Ctx], str]] = {f.__name__: f for f in (
    check_config_roundtrip, check_spec, check_deterministic, check_iteration, check_classes, check_shapes,
    check_class_il_disjoint)}  # fmt: skip
"""Every scenario check, by name, in the order :func:`check_scenario` runs them."""


def check_scenario(
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    checks: Iterable[str] | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the scenario conformance suite on registered scenario ``name`` built with ``config``.

    Args:
        name: A name in ``SCENARIOS``.
        config: Builder parameters (small ones keep the suite fast).
        checks: Names of the checks to run (default: all of :data:`SCENARIO_CHECKS`).
        raise_on_failure: Raise :class:`ConformanceError` if any check fails.

    Raises:
        ConformanceError: Naming the scenario and each failed check.
        UserError: Unknown scenario, bad config or missing data (raised by the first build, as a run would).
    """
    selected = list(SCENARIO_CHECKS if checks is None else checks)
    unknown = [c for c in selected if c not in SCENARIO_CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; the checks are {list(SCENARIO_CHECKS)}")
    ctx = _Ctx(name, config or {})
    ctx.build(0)  # a build failure (missing files, bad config) is the caller's problem, not a check's
    report = ConformanceReport(name)
    for check in selected:
        t0 = time.perf_counter()
        try:
            result = CheckResult(check, "passed", SCENARIO_CHECKS[check](ctx))
        except AssertionError as err:
            result = CheckResult(check, "failed", str(err))
        except Exception as err:
            result = CheckResult(check, "error", f"{type(err).__name__}: {err}")
        result.seconds = time.perf_counter() - t0
        report.results.append(result)
    if raise_on_failure and not report.ok:
        raise ConformanceError(report)
    return report


__all__ = ["SCENARIO_CHECKS", "check_scenario"]
