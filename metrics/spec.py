"""Registration of metric functions, kept on the ground floor.

The core's ``METRICS`` registry is a view of :data:`METRIC_SPECS`, so this
package never imports the core (nor torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from cl_bench.metrics.matrix import AccuracyMatrix

MetricFn = Callable[[AccuracyMatrix], float]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: Key in a run record's ``metrics``.
        fn: Pure function of an :class:`AccuracyMatrix`; NaN when undefined.
        higher_is_better: Direction used by leaderboards and regression checks.
        description: One line for ``cl-bench list metrics``.
        reference: The paper the definition comes from.
        kind: "cl" for continual-learning matrices, "tta" for the online matrices of test-time
            adaptation runs; a metric is NaN on a matrix of the other kind.
    """

    name: str
    fn: MetricFn
    higher_is_better: bool
    description: str
    reference: str
    kind: str = "cl"


METRIC_SPECS: dict[str, MetricSpec] = {}


def metric(
    name: str, *, higher_is_better: bool, description: str, reference: str, kind: str = "cl"
) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn`` as metric ``name`` for matrices of ``kind``; duplicate names raise ``ValueError``."""

    def wrap(fn: MetricFn) -> MetricFn:
        if name in METRIC_SPECS:
            raise ValueError(f"metric {name!r} is registered twice")
        if kind not in ("cl", "tta"):
            raise ValueError(f"metric kind must be 'cl' or 'tta', got {kind!r}")
        METRIC_SPECS[name] = MetricSpec(name, fn, higher_is_better, description, reference, kind)
        return fn

    return wrap


def compute_all(matrix: AccuracyMatrix, names: list[str] | None = None) -> dict[str, float | None]:
    """Evaluate metrics on ``matrix``; undefined values (NaN) become ``None``.

    Args:
        matrix: The accuracy matrix of a run.
        names: Metrics to compute (default: every registered metric).
    """
    out: dict[str, float | None] = {}
    kind = "tta" if matrix.online else "cl"
    for name in names if names is not None else list(METRIC_SPECS):
        spec = METRIC_SPECS[name]
        # e.g. windowed forgetting of an online matrix would read 0 (one point per experience), not "undefined"
        value = float(spec.fn(matrix)) if spec.kind == kind else math.nan
        out[name] = None if math.isnan(value) else value
    return out
