"""Test-time adaptation metrics: online error of the predictions made before each update.

They read a :class:`~cl_bench.metrics.tta_matrix.TTAMatrix` (``compute_all`` gives them no other
kind of matrix). Errors are fractions in [0, 1]; lower is better. Per-domain errors: :func:`online_errors`.

References:
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022).
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
        (CVPR 2023): online error per domain and its mean; in the gradual setting also the error at
        the highest severity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from cl_bench.metrics.spec import metric
from cl_bench.metrics.tta_matrix import TTAMatrix

RMT = ('Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation", '
       "CVPR 2023")  # fmt: skip
COTTA = 'Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation", CVPR 2022'


def online_errors(m: TTAMatrix) -> list[float]:
    """Online error of each experience (NaN for unfinished or empty ones)."""
    return [1.0 - m.acc(e) for e in range(m.n_experiences)]


def _online_error_where(m: TTAMatrix, keep: Callable[[int], bool]) -> float:
    """Mean online error over the finished experiences whose severity passes ``keep`` (NaN if none)."""
    errs = [err for e, err in enumerate(online_errors(m)) if e < m.n_finished and keep(m.severity[e])]
    if not errs or any(math.isnan(v) for v in errs):
        return math.nan
    return math.fsum(errs) / len(errs)


@metric("online_error", higher_is_better=False, reference=RMT, kind="tta",
        description="TTA: mean error over corrupted experiences of predictions made before adapting")  # fmt: skip
def online_error(m: TTAMatrix) -> float:
    return _online_error_where(m, lambda severity: severity > 0)


@metric("online_error_max_severity", higher_is_better=False, reference=RMT, kind="tta",
        description="TTA: online error over the experiences at the highest severity (gradual streams: 5)")  # fmt: skip
def online_error_max_severity(m: TTAMatrix) -> float:
    top = max((s for s in m.severity[: m.n_finished] if s > 0), default=0)
    if top == 0:
        return math.nan
    return _online_error_where(m, lambda severity: severity == top)


@metric("online_error_clean", higher_is_better=False, reference=COTTA, kind="tta",
        description="TTA: online error on clean source images inserted between domains (forgetting)")  # fmt: skip
def online_error_clean(m: TTAMatrix) -> float:
    return _online_error_where(m, lambda severity: severity == 0)


@metric("clean_acc_after", higher_is_better=True, reference=COTTA, kind="tta",
        description="TTA: accuracy of the adapted model on the clean source test set after the stream")  # fmt: skip
def clean_acc_after(m: TTAMatrix) -> float:
    if len(m.clean_after) != 2 or m.clean_after[1] == 0:
        return math.nan
    return m.clean_after[0] / m.clean_after[1]
