"""``parametrize_with_checks``: one pytest test per (method, conformance check), as scikit-learn's.

::

    from cl_bench.testing import parametrize_with_checks

    @parametrize_with_checks(["er", MyMethod])
    def test_conformance(method, check):
        check(method)

Test ids read ``er-check_resume``, so a failing check is named by the test run itself and ``-k`` picks
one check of one method. The checks of one method share the runs they need (a plain run, a rerun, a
resumed run), as in :func:`~cl_bench.testing.check_method`: the first test of a method runs its whole
suite once, in this process, and every test of that method reports its own check's outcome; a check
the method declares exempt (``caps.exceptions``) is a skipped test with the declared reason.

References:
    scikit-learn, ``sklearn.utils.estimator_checks.parametrize_with_checks`` (the model for this API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cl_bench.core.method import Method
from cl_bench.testing.check_method import CHECKS, _resolve, check_method
from cl_bench.testing.results import ConformanceReport, ConformanceViolation

_REPORTS: dict[tuple[Any, str], ConformanceReport] = {}


class Check:
    """One conformance check, callable on a method (class or registered name) as a test body.

    Args:
        name: A key of :data:`~cl_bench.testing.check_method.CHECKS`.
        config: Method config overrides passed to :func:`check_method`.
    """

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; the checks are {list(CHECKS)}")
        self.name = name
        self.config = dict(config or {})

    def __repr__(self) -> str:
        return self.name

    def __call__(self, method: type[Method] | str) -> None:
        """Run (or reuse) ``method``'s suite and raise unless this check passed; skip if it is exempt.

        Raises:
            ConformanceViolation: The check failed or raised, with its message.
        """
        import pytest

        key = (method, repr(sorted(self.config.items())))
        if key not in _REPORTS:
            _REPORTS[key] = check_method(method, config=self.config, raise_on_failure=False)
        report = _REPORTS[key]
        found = [r for r in report.results if r.name == self.name]
        if not found:  # exempt without a reason: check_method reported that as an error of its own
            problems = [r.message for r in report.results if r.status == "error" and r.name == self.name]
            raise ConformanceViolation(self.name, "; ".join(problems) or "the check did not run")
        errors = [r for r in found if r.status in ("failed", "error")]
        if errors:
            raise ConformanceViolation(self.name, f"{errors[0].status}: {errors[0].message}")
        if found[0].status == "skipped":
            pytest.skip(found[0].message)


def parametrize_with_checks(
    methods: Iterable[type[Method] | str] | None = None,
    *,
    checks: Iterable[str] | None = None,
    config: Mapping[str, Any] | None = None,
    marks: Callable[[str], Sequence[Any]] | None = None,
) -> Any:
    """A ``pytest.mark.parametrize("method, check", ...)`` over every method and check.

    Args:
        methods: Method classes or registered names (default: every registered method).
        checks: Names of the checks (default: all of :data:`~cl_bench.testing.check_method.CHECKS`).
        config: Method config overrides for every run.
        marks: Method name -> pytest marks for its tests (e.g. ``pytest.mark.slow`` outside a fast core set).

    Returns:
        The pytest mark; the decorated test takes ``method`` and ``check`` and calls ``check(method)``.
    """
    import pytest

    from cl_bench.core.registry import METHODS

    chosen = list(METHODS.names() if methods is None else methods)
    names = list(CHECKS if checks is None else checks)
    params = []
    for m in chosen:
        label = m if isinstance(m, str) else _resolve(m)[1]
        extra = list(marks(label)) if marks is not None else []
        params += [pytest.param(m, Check(c, config), marks=extra, id=f"{label}-{c}") for c in names]
    return pytest.mark.parametrize(("method", "check"), params)


__all__ = ["Check", "parametrize_with_checks"]
