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

    Chaudhry, Ranzato, Rohrbach, Elhoseiny. "Efficient Lifelong Learning with
    A-GEM". ICLR 2019.

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
AGEM = (
    'Chaudhry, Ranzato, Rohrbach & Elhoseiny, "Efficient Lifelong Learning with A-GEM", ICLR 2019'
)
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


def _tracked(m: AccuracyMatrix, i: int) -> list[float]:
    """a(p, i) at the evaluated points from the start of experience i's training to b_L.

    The start, as in the reference code, is the first point after training on i began
    (b_{i-1} + 1): the tracker evaluates the tasks seen so far after each training
    iteration, and at b_{i-1} task i was not yet seen; the first experience is also
    tracked at the pre-update point 0.
    """
    b = m.boundary
    return [a for _, a in _evaluated(m, i, 0 if i == 0 else b[i - 1] + 1, b[-1])]


def _max_rise_from_window_start(series: Sequence[float], w: int) -> float:
    """Largest ``series[q] - series[s]``, s < q < s + w, over the windows the reference deque forms.

    ContinualEvaluation's ``WindowedPlasticityPluginMetric`` reuses the forgetting
    plugin's scan, which skips every start value below an earlier one in the window;
    right for drops, but for rises it leaves only the window's first element as a
    useful start (later candidates are >= it). The deque holds the last ``w``
    tracked values, so the starts are 0 and every s with s + w <= n. 0 when nothing
    rises (per-task values start at 0), NaN if empty. A monotone deque of candidate
    maxima over (s, s + w) keeps this O(n).
    """
    n = len(series)
    if not n:
        return math.nan
    starts = [0] + list(range(1, n - w + 1))
    best = 0.0
    window: deque[int] = deque()  # indices j in (s, min(s + w, n)), values decreasing
    right = 0  # next index to push
    for s in starts:
        while right < min(s + w, n):
            while window and series[window[-1]] <= series[right]:
                window.pop()
            window.append(right)
            right += 1
        while window and window[0] <= s:
            window.popleft()
        if window:
            best = max(best, series[window[0]] - series[s])
    return best


def _windowed(m: AccuracyMatrix, w: int, plasticity: bool) -> float:
    """Task average of the windowed forgetting (or plasticity) of every experience i <= L.

    Reference code: Mattdl/ContinualEvaluation, src/eval/continual_eval_metrics.py,
    ``WindowedForgettingPluginMetric`` / ``WindowedPlasticityPluginMetric`` averaged by
    ``TaskAveragingPluginMetric``. Each task keeps a deque of its last ``w`` tracked
    accuracies (:func:`_tracked`: a window is w consecutive evaluations *of that
    experience*); after every tracking step the task's value becomes the max of
    itself (starting at 0) and the largest drop a[p] - a[q], p < q, inside the deque
    (for WP: the largest rise from the deque's first element, see
    :func:`_max_rise_from_window_start`). The result is the mean over every task
    tracked so far, the one being learned included. The reference averages in
    float32 (``torch.mean``); we average in float64.
    """
    scan = _max_rise_from_window_start if plasticity else _max_drop
    return _mean(scan(_tracked(m, i), w) for i in range(len(m.boundary)))


_WF = "Windowed forgetting: largest accuracy drop within {} consecutive eval points, mean over experiences."
_WP = "Windowed plasticity: largest accuracy gain within {} consecutive eval points, mean over experiences."


@metric("wf_10", higher_is_better=False, description=_WF.format(10), reference=STABILITY_GAP)
def wf_10(m: AccuracyMatrix) -> float:
    """Windowed forgetting WF^10; see :func:`_windowed` for the window convention."""
    return _windowed(m, 10, plasticity=False)


@metric("wf_100", higher_is_better=False, description=_WF.format(100), reference=STABILITY_GAP)
def wf_100(m: AccuracyMatrix) -> float:
    """Windowed forgetting WF^100; see :func:`_windowed` for the window convention."""
    return _windowed(m, 100, plasticity=False)


@metric("wp_10", higher_is_better=True, description=_WP.format(10), reference=STABILITY_GAP)
def wp_10(m: AccuracyMatrix) -> float:
    """Windowed plasticity WP^10: the reference's largest increase, same windows as WF."""
    return _windowed(m, 10, plasticity=True)


@metric("wp_100", higher_is_better=True, description=_WP.format(100), reference=STABILITY_GAP)
def wp_100(m: AccuracyMatrix) -> float:
    """Windowed plasticity WP^100: the reference's largest increase, same windows as WF."""
    return _windowed(m, 100, plasticity=True)


def _lca(m: AccuracyMatrix, beta: int) -> float:
    """Learning curve area: mean over experiences of the mean of their first ``beta`` accuracies while learned.

    Reference code: ContinualEvaluation's ``TrackingLCAPluginMetric`` (A-GEM's LCA
    computed per task, then averaged over tasks, which A-GEM notes is the same
    number). "While learned" is the points :func:`_tracked` starts at up to b_i: the
    pre-update point 0 for the first experience, b_{i-1} + 1 .. b_i for the others
    (the reference never tracks a task at b_{i-1}, so A-GEM's zero-shot accuracy is
    absent except for the first task). An experience with fewer than ``beta``
    evaluated points while learned has no LCA and is left out, as in the reference;
    NaN when none has one.
    """
    b, per_task = m.boundary, []
    for i in range(len(b)):
        points = _evaluated(m, i, 0 if i == 0 else b[i - 1] + 1, b[i])
        if len(points) >= beta:
            per_task.append(_mean(a for _, a in points[:beta]))
    return _mean(per_task)


@metric(
    "lca_10",
    higher_is_better=True,
    description="Learning curve area: mean accuracy over the first 10 eval points while an experience "
    "is learned, mean over experiences.",
    reference=AGEM,
)
def lca_10(m: AccuracyMatrix) -> float:
    """LCA with beta = 10 (A-GEM; ContinualEvaluation's default); see :func:`_lca`."""
    return _lca(m, 10)


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
