"""Per-iteration curves derived from an accuracy matrix (for reports and overlay plots).

References:
    De Lange, van de Ven, Tuytelaars. "Continual evaluation for lifelong learning:
    identifying the stability gap". ICLR 2023 (per-iteration accuracy curves of
    the first experience expose the stability gap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cl_bench.metrics import AccuracyMatrix, TTAMatrix
from cl_bench.metrics.tta import online_errors


def current_experience(m: AccuracyMatrix, p: int) -> int:
    """Index of the experience being trained at eval point ``p`` (the one just finished at a boundary)."""
    return min(sum(1 for b in m.boundary if b < p), m.n_experiences - 1)


def seen_accuracy(m: AccuracyMatrix) -> tuple[list[int], list[float]]:
    """Mean accuracy over the experiences seen so far, at every eval point.

    Returns:
        Iterations and accuracies (NaN where nothing seen was evaluated).
    """
    ys = []
    for p in range(m.n_points):
        accs = [m.acc(p, e) for e in range(current_experience(m, p) + 1) if m.n_total[p][e]]
        ys.append(sum(accs) / len(accs) if accs else math.nan)
    return list(m.iteration), ys


def experience_accuracy(
    m: AccuracyMatrix, e: int, from_boundary: bool = False, gaps: bool = False
) -> tuple[list[int], list[float]]:
    """Accuracy on experience ``e`` at every eval point where it was evaluated.

    Args:
        m: The accuracy matrix.
        e: Experience index.
        from_boundary: Only points from the end of experience ``e``'s training on
            (the part of the curve where the stability gap shows).
        gaps: Also return the points where ``e`` was not evaluated, with NaN, so that a
            plot breaks the line there instead of drawing a straight segment across
            (e.g. a future experience evaluated only at boundaries).
    """
    start = m.boundary[e] if from_boundary and e < len(m.boundary) else 0
    if gaps:
        xs = [m.iteration[p] for p in range(start, m.n_points)]
        return xs, [m.acc(p, e) if m.n_total[p][e] else math.nan for p in range(start, m.n_points)]
    pts = [(m.iteration[p], m.acc(p, e)) for p in range(start, m.n_points) if m.n_total[p][e]]
    return [x for x, _ in pts], [y for _, y in pts]


def mean_curve(curves: Sequence[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Point-wise mean of curves that share their iterations (seeds of one protocol).

    Curves whose iterations differ from the first one's are left out.
    """
    if not curves:
        return [], []
    xs = curves[0][0]
    same = [ys for x, ys in curves if x == xs]
    out = []
    for vals in zip(*same, strict=True):
        finite = [v for v in vals if not math.isnan(v)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return list(xs), out


def boundary_iterations(m: AccuracyMatrix) -> list[int]:
    """Training iteration at which each finished experience ended."""
    return [m.iteration[b] for b in m.boundary]


def overlay_boundaries(matrices: Sequence[AccuracyMatrix]) -> list[list[int]] | None:
    """Each run's boundary iterations when the runs' boundaries differ (different protocols), else None.

    Runs under one protocol end their experiences at the same iterations, so one set of boundary lines
    serves them all; runs whose epochs, batch size or stream differ do not, and each needs its own.
    """
    sets = [boundary_iterations(m) for m in matrices]
    return sets if any(s != sets[0] for s in sets[1:]) else None


def online_error_curve(m: TTAMatrix) -> tuple[list[int], list[float]]:
    """Test-time adaptation: online error of each experience (domain), x = its index in the stream."""
    return list(range(m.n_experiences)), online_errors(m)
