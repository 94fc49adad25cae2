"""What the conformance suite reports: one result per check, a report per method, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field

# -- results --------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """Outcome of one check: ``status`` is "passed", "failed", "skipped" or "error"."""

    name: str
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    """All check results of one method."""

    method: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed or errored."""
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        """Results with status "failed" or "error"."""
        return [r for r in self.results if r.status in ("failed", "error")]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [f"conformance of method {self.method!r}:"]
        for r in self.results:
            note = f" — {r.message}" if r.message else ""
            lines.append(f"  {r.status.upper():7} {r.name} ({r.seconds:.2f}s){note}")
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A method failed the suite; ``report`` holds every result."""

    def __init__(self, report: ConformanceReport) -> None:
        failed = "\n".join(f"  {r.name}: {r.message}" for r in report.failures)
        super().__init__(
            f"method {report.method!r} fails {len(report.failures)} cl_bench conformance check(s):\n{failed}\n"
            f"Fix the method, or declare an exception with a reason: "
            f"caps = Caps(exceptions=(('check_name', 'why'),)).\n{report}"
        )
        self.report = report


class ConformanceViolation(AssertionError):
    """Raised (and recorded) inside a monitored run when a method breaks the contract."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


__all__ = ["CheckResult", "ConformanceError", "ConformanceReport", "ConformanceViolation"]
