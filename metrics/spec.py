"""Registration of metric functions, kept on the ground floor.

The core's ``METRICS`` registry is a view of :data:`METRIC_SPECS`, so this
package never imports the core (nor torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cl_bench.metrics.matrix import AccuracyMatrix
from cl_bench.metrics.tta_matrix import TTAMatrix

Matrix = AccuracyMatrix | TTAMatrix
"""What a run record's ``accuracy_matrix`` holds: a continual-learning or a test-time adaptation matrix."""
MATRIX_TYPES: dict[str, type[AccuracyMatrix] | type[TTAMatrix]] = {"cl": AccuracyMatrix, "tta": TTAMatrix}
MetricFn = Callable[[Any], float]
"""A pure function of a matrix of its metric's ``kind`` (AccuracyMatrix for "cl", TTAMatrix for "tta")."""


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: Key in a run record's ``metrics``.
        fn: Pure function of a matrix of ``kind`` (:class:`AccuracyMatrix` or :class:`TTAMatrix`); NaN
            when undefined.
        higher_is_better: Direction used by leaderboards and regression checks.
        description: One line for ``cl-bench list metrics``.
        reference: The paper the definition comes from.
        kind: "cl" for continual-learning matrices (:class:`AccuracyMatrix`), "tta" for the online
            matrices of test-time adaptation runs (:class:`TTAMatrix`); a metric is undefined (None in
            :func:`compute_all`) on a matrix of the other kind.
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


def matrix_kind(data: dict[str, Any]) -> str:
    """The kind ("cl" | "tta") of a stored matrix, from its content: TTA matrices say ``online: true``."""
    return "tta" if isinstance(data, dict) and data.get("online") else "cl"


def matrix_from_dict(data: dict[str, Any], n_experiences: int | None = None, kind: str | None = None) -> Matrix:
    """Rebuild the matrix a record stores, of the right type.

    Args:
        data: A record's ``accuracy_matrix`` (``to_dict`` output of either type).
        n_experiences: Column count; inferred when omitted.
        kind: The record's ``kind`` ("cl" | "tta"); inferred from ``data`` when None (records written
            before records carried a kind).

    Raises:
        ValueError: Unknown kind, a kind that disagrees with the content, or a malformed matrix.
    """
    found = matrix_kind(data)
    kind = found if kind is None else kind
    if kind not in MATRIX_TYPES:
        raise ValueError(f"matrix kind must be one of {', '.join(MATRIX_TYPES)}, got {kind!r}")
    if kind != found:
        raise ValueError(f"the record says kind {kind!r} but its accuracy_matrix is a {found!r} matrix")
    return MATRIX_TYPES[kind].from_dict(data, n_experiences)


def compute_all(matrix: Matrix, names: list[str] | None = None) -> dict[str, float | None]:
    """Evaluate metrics on ``matrix``; undefined values (NaN) become ``None``.

    Args:
        matrix: The matrix of a run (:class:`AccuracyMatrix` or :class:`TTAMatrix`).
        names: Metrics to compute (default: every registered metric).
    """
    out: dict[str, float | None] = {}
    for name in names if names is not None else list(METRIC_SPECS):
        spec = METRIC_SPECS[name]
        # A metric reads only matrices of its kind; on the other it is undefined, not some number.
        value = float(spec.fn(matrix)) if spec.kind == matrix.kind else math.nan
        out[name] = None if math.isnan(value) else value
    return out
