"""The public conformance kit: ``check_method`` for methods (scikit-learn's ``check_estimator`` is the model).

Third-party packages run the same suite on their own methods (registered or not)::

    from cl_bench.testing import check_method
    check_method(MyMethod)          # raises ConformanceError naming each failed check

or, in a pytest suite, one test per (method, check) with ``parametrize_with_checks``; scenarios
have ``check_scenario``.
"""

from cl_bench.testing.check_method import CHECKS, check_method, toy_scenario
from cl_bench.testing.check_scenario import SCENARIO_CHECKS, check_scenario
from cl_bench.testing.parametrize import Check, parametrize_with_checks
from cl_bench.testing.results import CheckResult, ConformanceError, ConformanceReport, ConformanceViolation

__all__ = ["CHECKS", "SCENARIO_CHECKS", "Check", "CheckResult", "ConformanceError", "ConformanceReport",
           "ConformanceViolation",
           "check_method", "check_scenario", "parametrize_with_checks", "toy_scenario"]  # fmt: skip
