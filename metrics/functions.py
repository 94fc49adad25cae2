"""Built-in metrics: pure functions of an :class:`AccuracyMatrix`, registered on import.

Notation: a(p, i) is the accuracy on experience i at eval point p; p = 0 is the
evaluation before training; b_j = ``boundary[j]`` is the eval point where training
on experience j ended. Experiences are 0-indexed.

Incomplete runs are scored on the experiences finished so far: with
``L = len(boundary) - 1``, experience L plays the role of the last one and b_L is
the final point; eval points after b_L are ignored. Every metric returns NaN
without a boundary, and NaN propagates: if a value a metric needs was not
evaluated (``n_total == 0``), the metric is NaN rather than an average over
whatever happens to be there. The exception are the continual-evaluation metrics
of De Lange et al., which scan many eval points per experience and simply skip
the points at which that experience was not evaluated.

References:
    Lopez-Paz, Ranzato. "Gradient Episodic Memory for Continual Learning".
    NeurIPS 2017.

    Rebuffi, Kolesnikov, Sperl, Lampert. "iCaRL: Incremental Classifier and
    Representation Learning". CVPR 2017.

    Chaudhry, Dokania, Ajanthan, Torr. "Riemannian Walk for Incremental Learning:
    Understanding Forgetting and Intransigence". ECCV 2018.

    Lomonaco et al. "Avalanche: an End-to-End Library for Continual Learning".
    CVPR Workshops 2021.

    De Lange, van de Ven, Tuytelaars. "Continual evaluation for lifelong learning:
    identifying the stability gap". ICLR 2023. Reference code:
    https://github.com/Mattdl/ContinualEvaluation (src/eval/continual_eval_metrics.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from cl_bench.metrics.matrix import AccuracyMatrix
from cl_bench.metrics.spec import metric

GEM = 'Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017'
ICARL = (
    'Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and Representation Learning", '
    "CVPR 2017"
)
RWALK = (
    'Chaudhry, Dokania, Ajanthan & Torr, "Riemannian Walk for Incremental Learning: Understanding '
    'Forgetting and Intransigence", ECCV 2018'
)
AVALANCHE = 'Lomonaco et al., "Avalanche: an End-to-End Library for Continual Learning", CVPR Workshops 2021'
STABILITY_GAP = (
    'De Lange, van de Ven & Tuytelaars, "Continual evaluation for lifelong learning: identifying the '
    'stability gap", ICLR 2023'
)

# Accuracies are ratios of counts; an exact half-recovery can miss its target by one ulp.
_EPS = 1e-12


def _mean(values: Iterable[float]) -> float:
    """Mean that is NaN when empty or when any value is NaN."""
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else math.nan


def _extreme(values: Iterable[float], pick: Callable[[list[float]], float]) -> float:
    """``min``/``max`` that is NaN when empty or when any value is NaN (built-ins are order-dependent)."""
    vals = list(values)
    return math.nan if not vals or any(math.isnan(v) for v in vals) else pick(vals)


def _evaluated(m: AccuracyMatrix, i: int, first: int, last: int) -> list[tuple[int, float]]:
    """(p, a(p, i)) for eval points ``first <= p <= last`` at which experience i was evaluated."""
    return [(p, m.acc(p, i)) for p in range(first, last + 1) if m.n_total[p][i]]


def _max_drop(series: Sequence[float], w: int) -> float:
    """Largest ``series[p] - series[q]`` with p < q and q - p < w; 0 if no pair drops; NaN if empty.

    A monotone deque of candidate maxima keeps this O(n) for w = 100 over thousands of points.
    """
    if not series:
        return math.nan
    best = 0.0
    window: deque[int] = deque()
    for q, value in enumerate(series):
        while window and window[0] <= q - w:
            window.popleft()
        if window:
            best = max(best, series[window[0]] - value)
        while window and series[window[-1]] <= value:
            window.pop()
        window.append(q)
    return best


# --- boundary metrics ---------------------------------------------------------------------------


@metric(
    "final_acc",
    higher_is_better=True,
    description="Accuracy at the end of the stream, averaged over experiences.",
    reference=GEM,
)
def final_acc(m: AccuracyMatrix) -> float:
    """Mean over experiences i <= L of a(b_L, i)."""
    if not m.boundary:
        return math.nan
    return _mean(m.acc(m.boundary[-1], i) for i in range(len(m.boundary)))


@metric(
    "final_acc_pooled",
    higher_is_better=True,
    description="Accuracy at the end of the stream, pooled over the samples of all experiences.",
    reference=AVALANCHE,
)
def final_acc_pooled(m: AccuracyMatrix) -> float:
    """Correct / total over experiences i <= L at b_L (large test sets weigh more)."""
    if not m.boundary:
        return math.nan
    end, seen = m.boundary[-1], list(range(len(m.boundary)))
    # pooled_acc silently drops unevaluated experiences; a missing one must not pass as a score.
    if not all(m.n_total[end][i] for i in seen):
        return math.nan
    return m.pooled_acc(end, seen)


@metric(
    "avg_incremental_acc",
    higher_is_better=True,
    description="Mean over experiences k of the accuracy on experiences 0..k after training on k.",
    reference=ICARL,
)
def avg_incremental_acc(m: AccuracyMatrix) -> float:
    """Mean over k <= L of (mean over i <= k of a(b_k, i))."""
    return _mean(_mean(m.acc(b, i) for i in range(k + 1)) for k, b in enumerate(m.boundary))


@metric(
    "forgetting",
    higher_is_better=False,
    description="Mean drop from the best boundary accuracy of each earlier experience to the final one.",
    reference=RWALK,
)
def forgetting(m: AccuracyMatrix) -> float:
    """Mean over i < L of max_{i <= k < L} a(b_k, i) - a(b_L, i); NaN with one experience."""
    b, last = m.boundary, len(m.boundary) - 1
    return _mean(
        _extreme((m.acc(b[k], i) for k in range(i, last)), max) - m.acc(b[last], i) for i in range(last)
    )


@metric(
    "bwt",
    higher_is_better=True,
    description="Backward transfer: final accuracy minus accuracy right after training, earlier experiences.",
    reference=GEM,
)
def bwt(m: AccuracyMatrix) -> float:
    """Mean over i < L of a(b_L, i) - a(b_i, i); NaN with one experience."""
    b, last = m.boundary, len(m.boundary) - 1
    return _mean(m.acc(b[last], i) - m.acc(b[i], i) for i in range(last))


@metric(
    "fwt",
    higher_is_better=True,
    description="Forward transfer: accuracy on an experience just before training on it, minus before any.",
    reference=GEM,
)
def fwt(m: AccuracyMatrix) -> float:
    """Mean over 1 <= i <= L of a(b_{i-1}, i) - a(0, i).

    NaN with one experience, or when unseen experiences were not evaluated (a
    protocol that only evaluates seen experiences cannot measure forward transfer).
    """
    b = m.boundary
    return _mean(m.acc(b[i - 1], i) - m.acc(0, i) for i in range(1, len(b)))


# --- continual evaluation (De Lange et al. 2023): every eval point, not only boundaries ----------


def _min_accs(m: AccuracyMatrix) -> list[float]:
    """Per experience i < L: min a(p, i) over evaluated points b_i < p <= b_L.

    Strictly after b_i, as in the reference code (``TaskTrackingMINAccuracyPluginMetric``
    skips the task currently being learned, and b_i is the last point of that phase).
    """
    b = m.boundary
    return [_extreme((a for _, a in _evaluated(m, i, b[i] + 1, b[-1])), min) for i in range(len(b) - 1)]


@metric(
    "min_acc",
    higher_is_better=True,
    description="Mean over earlier experiences of their lowest accuracy at any eval point after training.",
    reference=STABILITY_GAP,
)
def min_acc(m: AccuracyMatrix) -> float:
    """Average minimum accuracy: mean over i < L of min_{b_i < p <= b_L} a(p, i); NaN with one experience."""
    return _mean(_min_accs(m))


@metric(
    "wc_acc",
    higher_is_better=True,
    description="Worst-case accuracy: (1/T) final accuracy on the last experience + (1 - 1/T) min_acc.",
    reference=STABILITY_GAP,
)
def wc_acc(m: AccuracyMatrix) -> float:
    """(1/T) a(b_L, L) + (1 - 1/T) min_acc with T = L + 1; just a(b_L, L) when T = 1."""
    if not m.boundary:
        return math.nan
    t = len(m.boundary)
    current = m.acc(m.boundary[-1], t - 1)
    return current if t == 1 else current / t + (1 - 1 / t) * min_acc(m)


def _windowed(m: AccuracyMatrix, w: int, sign: float) -> float:
    """Mean over i < L of the largest windowed drop of ``sign * a(., i)`` over b_i <= p <= b_L.

    Convention, from the reference code (Mattdl/ContinualEvaluation at bae2a58,
    src/eval/continual_eval_metrics.py, ``WindowedForgettingPluginMetric``): each
    task keeps a deque of its last ``w`` tracked accuracies, so a window is w
    consecutive evaluations *of that experience* (points where it was not
    evaluated do not count) and a pair p < q qualifies iff q - p < w in that
    series; the per-task value starts at 0 and a one-element window gives 0, so
    the result is never negative; per-task values are then averaged. The deque
    runs continuously across experience transitions, so the window may start at
    b_i itself: the drop from the end of training on i into the first iterations
    of i + 1 -- the stability gap -- counts. The reference deque starts even
    earlier, at the task's first tracking during its own training, and averages
    over the current task too; cl_bench's contract (DESIGN.md) instead looks only
    at points from b_i on and averages over earlier experiences i < L.
    """
    b = m.boundary
    return _mean(
        _max_drop([sign * a for _, a in _evaluated(m, i, b[i], b[-1])], w) for i in range(len(b) - 1)
    )


_WF = "Windowed forgetting: largest accuracy drop within {} consecutive eval points after training, mean."
_WP = "Windowed plasticity: largest accuracy gain within {} consecutive eval points after training, mean."


@metric("wf_10", higher_is_better=False, description=_WF.format(10), reference=STABILITY_GAP)
def wf_10(m: AccuracyMatrix) -> float:
    """Windowed forgetting WF^10; see :func:`_windowed` for the window convention."""
    return _windowed(m, 10, 1.0)


@metric("wf_100", higher_is_better=False, description=_WF.format(100), reference=STABILITY_GAP)
def wf_100(m: AccuracyMatrix) -> float:
    """Windowed forgetting WF^100; see :func:`_windowed` for the window convention."""
    return _windowed(m, 100, 1.0)


@metric("wp_10", higher_is_better=True, description=_WP.format(10), reference=STABILITY_GAP)
def wp_10(m: AccuracyMatrix) -> float:
    """Windowed plasticity WP^10: the largest increase a(q, i) - a(p, i), same windows as WF."""
    return _windowed(m, 10, -1.0)


@metric("wp_100", higher_is_better=True, description=_WP.format(100), reference=STABILITY_GAP)
def wp_100(m: AccuracyMatrix) -> float:
    """Windowed plasticity WP^100: the largest increase a(q, i) - a(p, i), same windows as WF."""
    return _windowed(m, 100, -1.0)


def _dips(m: AccuracyMatrix) -> list[tuple[float, int | None]]:
    """(drop d(i, j), iterations to half recovery or None) for every pair i < j <= L.

    d(i, j) = a(b_{j-1}, i) - min over evaluated points b_{j-1} < p <= b_j of a(p, i);
    it is not clipped, so it is negative when i only improved during j. Recovery
    (cl_bench's own convention, not from the paper): iterations from the first
    point attaining the minimum to the first later point p <= b_j with
    a(p, i) >= min + d / 2; None when d <= 0 or when i never recovers half the
    drop within experience j.
    """
    b, out = m.boundary, []
    for j in range(1, len(b)):
        for i in range(j):
            start, points = m.acc(b[j - 1], i), _evaluated(m, i, b[j - 1] + 1, b[j])
            if math.isnan(start) or not points:
                out.append((math.nan, None))
                continue
            k = min(range(len(points)), key=lambda n: points[n][1])  # first point at the minimum
            p_min, lowest = points[k]
            drop = start - lowest
            target = lowest + drop / 2 - _EPS
            recovered = (m.iteration[p] - m.iteration[p_min] for p, a in points[k + 1 :] if a >= target)
            out.append((drop, next(recovered, None) if drop > 0 else None))
    return out


@metric(
    "stability_gap",
    higher_is_better=False,
    description="Mean drop of an earlier experience's accuracy during a later experience, vs. its start.",
    reference=STABILITY_GAP,
)
def stability_gap(m: AccuracyMatrix) -> float:
    """Mean over pairs i < j <= L of d(i, j) (see :func:`_dips`); NaN with one experience."""
    return _mean(d for d, _ in _dips(m))


@metric(
    "stability_gap_max",
    higher_is_better=False,
    description="Largest drop of an earlier experience's accuracy during a later experience.",
    reference=STABILITY_GAP,
)
def stability_gap_max(m: AccuracyMatrix) -> float:
    """Max over pairs i < j <= L of d(i, j) (see :func:`_dips`); NaN with one experience."""
    return _extreme((d for d, _ in _dips(m)), max)


@metric(
    "stability_gap_recovery",
    higher_is_better=False,
    description="Mean training iterations from the stability-gap minimum to recovering half the drop "
    "(cl_bench's convention).",
    reference=STABILITY_GAP,
)
def stability_gap_recovery(m: AccuracyMatrix) -> float:
    """Mean half-recovery time in iterations over the pairs that dropped and recovered (see :func:`_dips`).

    The half-recovery convention is cl_bench's own; De Lange et al. describe the
    recovery qualitatively. NaN when no pair dropped and recovered.
    """
    return _mean(float(r) for _, r in _dips(m) if r is not None)
