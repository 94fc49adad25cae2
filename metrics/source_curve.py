"""Clean-source metrics of a test-time adaptation run: how accuracy on the source domain moves during adaptation.

A TTA run with ``Protocol.tta_source_every`` > 0 evaluates the adapting model on a held-out clean source
test split before the stream (iteration 0), every k adaptation batches and after the stream; its record
holds these points as ``source_curve``: a list of ``[iteration, correct, total]``. The functions here read
that list (pure Python, no torch, nothing else of cl_bench). Accuracies are fractions in [0, 1].

* ``source_acc_min``: the worst clean accuracy at any point of the stream (the depth of the stability
  gap; a method can collapse and recover before the stream ends, which the accuracy after the stream
  does not show).
* ``source_forgetting``: clean accuracy before adaptation minus clean accuracy after the stream (> 0:
  the adaptation cost accuracy on the source domain).

References:
    De Lange, van de Ven & Tuytelaars, "Continual evaluation for lifelong learning: Identifying the
        stability gap" (ICLR 2023): per-iteration evaluation and the worst-case accuracy (min-ACC).
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022): accuracy on the
        clean source domain after adaptation as a measure of forgetting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Curve = Sequence[Sequence[int]]

#: name -> (higher_is_better, one-line description) of the metrics :func:`source_curve_metrics` returns.
SOURCE_CURVE_METRICS: dict[str, tuple[bool, str]] = {
    "source_acc_min": (True, "TTA: worst accuracy on the clean source split during the stream (source_curve)"),
    "source_forgetting": (False, "TTA: clean source accuracy before adaptation minus after the stream"),
}


def curve_accuracies(curve: Curve) -> list[tuple[int, float]]:
    """``(iteration, accuracy)`` of every point with a non-zero total, in the curve's order.

    Raises:
        ValueError: A point is not ``[iteration, correct, total]`` with 0 <= correct <= total.
    """
    out = []
    for point in curve:
        if len(point) != 3:
            raise ValueError(f"a source_curve point must be [iteration, correct, total], got {point!r}")
        it, correct, total = point
        if not 0 <= correct <= total:
            raise ValueError(f"source_curve point {point!r}: correct must be in [0, total]")
        if total:
            out.append((int(it), correct / total))
    return out


def source_acc_min(curve: Curve) -> float:
    """Lowest clean accuracy over the curve (NaN for an empty curve)."""
    accs = [a for _, a in curve_accuracies(curve)]
    return min(accs) if accs else math.nan


def source_forgetting(curve: Curve) -> float:
    """First point's clean accuracy minus the last point's (NaN with fewer than two points)."""
    accs = curve_accuracies(curve)
    if len(accs) < 2:
        return math.nan
    return accs[0][1] - accs[-1][1]


def source_curve_metrics(curve: Curve) -> dict[str, float | None]:
    """Both metrics of ``curve``; undefined values (NaN) become None, as in a record's ``metrics``."""
    values = {"source_acc_min": source_acc_min(curve), "source_forgetting": source_forgetting(curve)}
    return {k: None if math.isnan(v) else v for k, v in values.items()}


__all__ = ["SOURCE_CURVE_METRICS", "curve_accuracies", "source_acc_min", "source_curve_metrics",
           "source_forgetting"]  # fmt: skip
