"""The public conformance suite every method passes, modelled on scikit-learn's ``check_estimator``.

``check_method(cls_or_name)`` runs a method on a tiny synthetic stream (the
registered ``toy`` scenario: Gaussian blobs, three experiences of two classes)
through the real runner and checks the contract of :class:`~cl_bench.core.method.Method`:

========================  =================================================================
check                     what must hold
========================  =================================================================
check_config_roundtrip    the config survives ``config_to_dict`` -> JSON -> ``build_config``
check_protocol            the whole protocol runs; ``predict`` gives finite ``[N, n_classes]``
check_no_peeking          no test data, no experience before its ``begin_experience``, no
                          task ids unless ``caps.task_id_at_test``; each prediction depends
                          on its own input only (not on the rest of the batch)
check_deterministic       the same seed gives the same accuracy matrix
check_resume              a run interrupted twice and resumed from its checkpoints gives the
                          matrix of an uninterrupted run
check_predict_pure        ``predict`` changes no state (unless ``caps.adapts_at_test``)
check_memory_budget       ``memory_size()`` is 0 for ``caps.memory == "none"`` and within
                          ``memory_budget()`` for ``"bounded"``, after every step; a bounded
                          memory reports its size in bytes (``memory_bytes()``, 0 when empty)
check_beats_chance        after each experience, accuracy on it beats 1/#classes + 0.1
check_pre_update          TTA only: ``adapt(x)`` returns what ``predict(x)`` gave just before
                          it (the prediction made before updating on x)
check_parameters_frozen   TTA with ``caps.updates_parameters=False`` only: no ``nn.Parameter``
                          of the method's networks changes during ``adapt`` (LAME, T3A)
========================  =================================================================

Methods with ``caps.adapts_at_test`` run the test-time adaptation path instead: the registered
``toy_tta`` stream (shifted Gaussian blobs, three domains, a tiny BatchNorm CNN as source model)
through the runner's TTA protocol. There ``check_protocol`` also checks the shape of every ``adapt``
output and that the shared ``info.source_model`` is never changed (methods deep-copy it);
``check_predict_pure`` checks that ``predict`` changes no state; ``check_beats_chance`` asks the
online accuracy of each domain to beat chance + 0.1; ``check_resume`` interrupts the stream mid-domain;
``check_no_peeking`` does not apply (a TTA method only ever sees unlabelled test batches).

The method runs through the real runner (:func:`cl_bench.engine.runner.run` / :func:`~cl_bench.engine.runner.resume`
with ``method_cls``) with per-iteration evaluation, class-incrementally unless it needs task ids at
test time (or ``setting=`` says otherwise). One run uses a monitored subclass: its hooks see guarded
views of each experience (touching test data, or training data before ``begin_experience``, raises),
every ``predict`` call is checked, and so is the memory after every step. The other runs are plain.
Everything runs on one intra-op thread; the toy networks are tiny.

A method exempt from a check says so, with a reason, in its caps::

    caps = Caps(exceptions=(("check_beats_chance", "trains only at test time"),))

A declared exception skips the check; one without a reason, or naming no
check, is an error. Third-party packages run the same suite on their own
methods (registered or not)::

    from cl_bench.testing import check_method
    check_method(MyMethod)          # raises ConformanceError naming each failed check
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cl_bench.core.config import build_config, config_to_dict
from cl_bench.core.method import Method
from cl_bench.core.record import matrix_of
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Scenario
from cl_bench.engine.runner import RunInterrupted, resume, run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.metrics import TTAMatrix
from cl_bench.testing.monitor import Monitor, difference, instrument
from cl_bench.testing.results import CheckResult, ConformanceError, ConformanceReport, ConformanceViolation

#: The protocol every check runs with: per-iteration evaluation on the full toy test sets.
PROTOCOL = Protocol(eval_every=1, eval_subset=0)
#: Margin over chance (1 / classes of the experience) that ``check_beats_chance`` asks for.
CHANCE_MARGIN = 0.1
#: Interruptions of ``check_resume``: checkpoint every 5 iterations, stop after 22 (the last
#: checkpoint then falls on the last batch of experience 0) and after 33 (mid experience 1).
RESUME_EVERY, RESUME_STOPS = 5, (22, 33)
#: The same for the TTA path (9 adapt batches on toy_tta): stops mid-domain 1 and right after a
#: checkpoint taken on the last batch of domain 1.
TTA_RESUME_EVERY, TTA_RESUME_STOPS = 2, (4, 7)


def toy_scenario(setting: str = "class_il", seed: int = 0) -> Scenario:
    """The conformance stream: 3 experiences x 2 classes of Gaussian blobs in 1x4x4 inputs.

    It is the registered ``toy`` scenario, so runs on it can be resumed by name.
    """
    return SCENARIOS.create("toy", setting=setting, seed=seed)


# -- the checks -----------------------------------------------------------------------------------------


class _Context:
    """What the checks of one method share: the method, a scratch directory, cached runs."""

    def __init__(self, cls: type[Method], name: str, config: Mapping[str, Any], device: str, setting: str,
                 enabled: set[str], out: Path) -> None:  # fmt: skip
        self.cls, self.name, self.config, self.device = cls, name, dict(config), device
        self.enabled = enabled
        self.out = out
        self.setting = setting
        self.tta = bool(cls.caps.adapts_at_test)
        self.scenario = SCENARIOS.create("toy_tta") if self.tta else toy_scenario(self.setting)
        self._cache: dict[str, Any] = {}

    def spec(self, seed: int = 0) -> RunSpec:
        if self.tta:
            return RunSpec(method=self.name, method_config=self.config, scenario="toy_tta", protocol=PROTOCOL,
                           seed=seed, device=self.device)  # fmt: skip
        return RunSpec(method=self.name, method_config=self.config, scenario="toy",
                       scenario_config={"setting": self.setting}, protocol=PROTOCOL, seed=seed,
                       device=self.device)  # fmt: skip

    def _cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = (True, fn())
            except Exception as err:
                self._cache[key] = (False, err)
        ok, value = self._cache[key]
        if not ok:
            raise value
        return value

    def plain_run(self, seed: int = 0, tag: str = "") -> dict[str, Any]:
        """The completed record of an uninstrumented run (cached per seed and tag)."""
        out = self.out / f"plain-{seed}{tag}"
        return self._cached(f"plain-{seed}{tag}", lambda: run(self.spec(seed), out, method_cls=self.cls))

    def monitored(self) -> tuple[Monitor, dict[str, Any] | None, BaseException | None]:
        """The monitor of one instrumented run, its record, and what stopped it (if anything)."""

        def go() -> tuple[Monitor, dict[str, Any] | None, BaseException | None]:
            mon = Monitor(self.cls.caps, self.enabled, self.scenario)
            try:
                record = run(self.spec(), self.out / "monitored", method_cls=instrument(self.cls, mon))
            except Exception as err:
                return mon, None, err
            return mon, record, None

        return self._cached("monitored", go)

    def monitored_check(self, check: str) -> str:
        mon, _, err = self.monitored()
        found = mon.violations.get(check)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise AssertionError(found[0] + more)
        if err is not None:
            if isinstance(err, ConformanceViolation):
                raise _NotEvaluated(f"the monitored run was stopped by {err.check}")
            if check == "check_protocol":
                raise AssertionError(f"the protocol failed: {_short_error(err)}")
            raise _NotEvaluated("the monitored run failed (see check_protocol)")
        return ""


class _NotEvaluated(Exception):
    """A check could not be evaluated because a shared run failed for another reason."""


def _short_error(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}{where}"


def check_config_roundtrip(ctx: _Context) -> str:
    """The config is a frozen dataclass with defaults and survives config_to_dict -> JSON -> build_config."""
    cfg_cls = ctx.cls.Config
    assert dataclasses.is_dataclass(cfg_cls), f"{ctx.cls.__name__}.Config is not a dataclass"
    params = getattr(cfg_cls, "__dataclass_params__", None)
    assert params is not None and params.frozen, f"{cfg_cls.__name__} must be a frozen dataclass"
    owner = f"method {ctx.name!r}"
    config = build_config(cfg_cls, ctx.config, owner)
    try:
        text = json.dumps(config_to_dict(config))
    except TypeError as err:
        raise AssertionError(f"config_to_dict of {cfg_cls.__name__} is not JSON-serialisable: {err}") from None
    back = build_config(cfg_cls, json.loads(text), owner)
    assert back == config, f"config changed through JSON: {config!r} -> {back!r}"
    if ctx.name in METHODS and METHODS.get(ctx.name).obj is ctx.cls:
        via_registry = METHODS.config(ctx.name, json.loads(text))
        assert via_registry == config, f"METHODS.config gives {via_registry!r}, expected {config!r}"
    method = ctx.cls(config)
    assert method.config == config, "__init__ must store the config it is given (as self.config)"
    return ""


def check_protocol(ctx: _Context) -> str:
    """The full protocol runs and predict returns finite logits of shape [N, n_classes]."""
    msg = ctx.monitored_check("check_protocol")
    mon = ctx.monitored()[0]
    if ctx.tta:
        n_batches = sum(-(-len(e.test) // 16) for e in ctx.scenario)  # toy_tta's TTA batch size is 16
        assert mon.adapt_calls == n_batches, f"adapt was called {mon.adapt_calls} times, expected {n_batches}"
        assert mon.source_ref is not None, "setup never received a source model"
        diff = difference(mon.source_snapshot, mon.source_ref.state_dict())
        assert diff is None, (f"the shared info.source_model changed ({diff}): setup must deep-copy it "
                              f"before adapting")  # fmt: skip
        return msg
    assert mon.predict_calls > 0, "predict was never called"
    return msg


def check_no_peeking(ctx: _Context) -> str:
    """No test data, no future experience, no task ids without caps; predictions depend on x only."""
    if ctx.tta:
        return "not applicable: a test-time adaptation method only sees unlabelled test batches"
    return ctx.monitored_check("check_no_peeking")


def check_predict_pure(ctx: _Context) -> str:
    """predict changes no state (TTA methods too: only adapt may)."""
    return ctx.monitored_check("check_predict_pure")


def check_pre_update(ctx: _Context) -> str:
    """TTA: adapt(x) returns the logits predict(x) gave just before it (the pre-update prediction)."""
    if not ctx.tta:
        return "not applicable: the method does not adapt at test time"
    return ctx.monitored_check("check_pre_update")


def check_parameters_frozen(ctx: _Context) -> str:
    """TTA, caps.updates_parameters=False: adapt changes no network parameter (output-only methods)."""
    if not ctx.tta or ctx.cls.caps.updates_parameters:
        return "not applicable: the method may update its parameters"
    return ctx.monitored_check("check_parameters_frozen")


def check_memory_budget(ctx: _Context) -> str:
    """memory_size() respects caps.memory after every step and experience."""
    return ctx.monitored_check("check_memory_budget")


def check_deterministic(ctx: _Context) -> str:
    """Two runs with the same seed give the same accuracy matrix."""
    a = ctx.plain_run(0)["accuracy_matrix"]
    b = ctx.plain_run(0, tag="-again")["accuracy_matrix"]
    _assert_same_matrix(a, b, "a second run with the same seed")
    return ""


def check_resume(ctx: _Context) -> str:
    """A run interrupted twice and resumed from its checkpoints ends with the uninterrupted run's matrix."""
    expected = ctx.plain_run(0)["accuracy_matrix"]
    out = ctx.out / "resume"
    stops = 0
    every, points = (TTA_RESUME_EVERY, TTA_RESUME_STOPS) if ctx.tta else (RESUME_EVERY, RESUME_STOPS)
    try:
        record = run(ctx.spec(), out, checkpoint_every=every, method_cls=ctx.cls, stop_after=points[0])
    except RunInterrupted:
        stops += 1
        run_dir = next(p for p in out.iterdir() if not p.name.startswith("."))  # skip the .locks folder
        try:
            record = resume(run_dir, method_cls=ctx.cls, stop_after=points[1])
        except RunInterrupted:
            stops += 1
            record = resume(run_dir, method_cls=ctx.cls)
    assert record["status"] == "completed", f"the resumed run ended {record['status']}"
    _assert_same_matrix(expected, record["accuracy_matrix"], f"a run resumed {stops} time(s)")
    return "" if stops else "not interrupted: the run has fewer training iterations than the stop points"


def check_beats_chance(ctx: _Context) -> str:
    """At each experience boundary, accuracy on that experience beats 1/#classes + CHANCE_MARGIN."""
    matrix = matrix_of(ctx.plain_run(0))
    accs = []
    if isinstance(matrix, TTAMatrix):
        for exp in ctx.scenario:
            acc = matrix.acc(exp.index)
            bar = 1 / ctx.scenario.n_classes + CHANCE_MARGIN
            assert acc > bar, (f"online accuracy on domain {exp.index} is {acc:.3f}, not above chance + "
                               f"{CHANCE_MARGIN} = {bar:.3f}")  # fmt: skip
            accs.append(f"{acc:.2f}")
        return f"online accuracies {', '.join(accs)}"
    for exp in ctx.scenario:
        acc = matrix.acc(matrix.boundary[exp.index], exp.index)
        bar = 1 / len(exp.classes) + CHANCE_MARGIN
        assert acc > bar, (
            f"accuracy on experience {exp.index} right after training on it is {acc:.3f}, not above "
            f"chance + {CHANCE_MARGIN} = {bar:.3f}"
        )
        accs.append(f"{acc:.2f}")
    return f"accuracies {', '.join(accs)}"


def _assert_same_matrix(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    if a == b:
        return
    for key in ("iteration", "boundary"):
        assert a[key] == b[key], f"{what} gives different {key}: {a[key]} vs {b[key]}"
    for p, (ra, rb) in enumerate(zip(a["n_correct"], b["n_correct"], strict=False)):
        if ra != rb:
            raise AssertionError(
                f"{what} gives a different accuracy matrix: first at eval point {p} (iteration "
                f"{a['iteration'][p]}): correct counts {ra} vs {rb}"
            )
    raise AssertionError(f"{what} gives a different accuracy matrix")


_ALL = (check_config_roundtrip, check_protocol, check_no_peeking, check_deterministic, check_resume,
        check_predict_pure, check_memory_budget, check_beats_chance, check_pre_update,
        check_parameters_frozen)  # fmt: skip
#: Every check, by name, in the order the suite runs them.
CHECKS: dict[str, Callable[[_Context], str]] = {f.__name__: f for f in _ALL}


# -- the suite ------------------------------------------------------------------------------------------


def _resolve(cls_or_name: type[Method] | str) -> tuple[type[Method], str]:
    if isinstance(cls_or_name, str):
        return METHODS.get(cls_or_name).obj, cls_or_name
    cls = cls_or_name
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"check_method takes a Method subclass or a registered name, got {cls!r}")
    return cls, cls.__dict__.get("name") or cls.__name__.lower()


@contextmanager
def _one_thread() -> Iterator[None]:
    # The toy networks are tiny: intra-op threads only add overhead (and, on a busy machine, stalls).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def check_method(
    cls_or_name: type[Method] | str,
    *,
    device: str = "cpu",
    config: Mapping[str, Any] | None = None,
    setting: str | None = None,
    checks: Iterable[str] | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the conformance suite on a method class (registered or not) or a registered name.

    Args:
        cls_or_name: The method class, or its name in ``METHODS``.
        device: Where the runs happen.
        config: Overrides of the method's config, on top of ``cls.conformance_config``.
        setting: "class_il" or "task_il" (default: task_il if ``caps.task_id_at_test``, else class_il).
        checks: Names of the checks to run (default: all of :data:`CHECKS`).
        raise_on_failure: Raise :class:`ConformanceError` if any check fails.

    Returns:
        The report (every check passed or was skipped, unless ``raise_on_failure`` is False).

    Raises:
        ConformanceError: Naming the method and each failed check, with its message.
    """
    cls, name = _resolve(cls_or_name)
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; the checks are {list(CHECKS)}")
    report = ConformanceReport(name)
    exempt: dict[str, str] = {}
    for check, reason in cls.caps.exceptions:
        if check not in CHECKS:
            report.results.append(CheckResult(check, "error", f"caps.exceptions names no check {check!r}; "
                                              f"the checks are {', '.join(CHECKS)}"))  # fmt: skip
        elif not str(reason).strip():
            report.results.append(CheckResult(check, "error", "declared exception without a reason; say why "
                                              "the method is exempt"))  # fmt: skip
            exempt[check] = ""
        else:
            exempt[check] = str(reason)
    enabled = {c for c in selected if c not in exempt}
    with tempfile.TemporaryDirectory(prefix="cl_bench_check_") as tmp, _one_thread():
        setting = setting or ("task_il" if cls.caps.task_id_at_test else "class_il")
        merged = {**cls.conformance_config, **(config or {})}
        ctx = _Context(cls, name, merged, device, setting, enabled, Path(tmp))
        for check in selected:
            if check in exempt:
                if exempt[check]:
                    report.results.append(CheckResult(check, "skipped", f"declared exception: {exempt[check]}"))
                continue
            t0 = time.perf_counter()
            try:
                result = CheckResult(check, "passed", CHECKS[check](ctx))
            except _NotEvaluated as err:
                result = CheckResult(check, "error", f"not evaluated: {err}")
            except AssertionError as err:
                result = CheckResult(check, "failed", str(err))
            except Exception as err:
                result = CheckResult(check, "error", _short_error(err))
            result.seconds = time.perf_counter() - t0
            report.results.append(result)
    if raise_on_failure and not report.ok:
        raise ConformanceError(report)
    return report


__all__ = [
    "CHECKS", "CheckResult", "ConformanceError", "ConformanceReport", "ConformanceViolation", "check_method",
    "toy_scenario",
]  # fmt: skip
