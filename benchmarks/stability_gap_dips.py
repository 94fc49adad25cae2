"""Per pair (old experience i, new experience j) of a run record: the stability-gap dip and its recovery.

For every i < j: the accuracy on i at the end of experience j - 1 (``a0``), its minimum while j is
trained (``min``; ``d = a0 - min`` is the metric ``stability_gap``'s d(i, j)), how many training
iterations into j the minimum falls, and the share of the dip recovered by the end of j
(``(a(b_j, i) - min) / d``; can exceed 100 %). Usage::

    python benchmarks/stability_gap_dips.py runs/<run id>/run.json
"""

from __future__ import annotations

import argparse
import statistics

from cl_bench.core.record import load_record
from cl_bench.metrics import AccuracyMatrix


def dips(m: AccuracyMatrix) -> list[tuple[int, int, float, float, int, float]]:
    """(i, j, a0, min, iterations into j at the min, recovered share of the dip) for every i < j."""
    b, rows = m.boundary, []
    for j in range(1, len(b)):
        for i in range(j):
            a0 = m.acc(b[j - 1], i)
            pts = [(m.iteration[p], m.acc(p, i)) for p in range(b[j - 1] + 1, b[j] + 1) if m.n_total[p][i]]
            it_min, a_min = min(pts, key=lambda t: t[1])
            d = a0 - a_min
            rec = (m.acc(b[j], i) - a_min) / d if d > 0 else float("nan")
            rows.append((i, j, a0, a_min, it_min - m.iteration[b[j - 1]], rec))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("record")
    args = ap.parse_args()
    rows = dips(AccuracyMatrix.from_dict(load_record(args.record)["accuracy_matrix"]))
    print(" i  j     a0    min   drop  iters-to-min  recovered")
    for i, j, a0, lo, t, rec in rows:
        print(f"{i:2d} {j:2d}  {a0:.3f}  {lo:.3f}  {a0 - lo:.3f}  {t:12d}  {100 * rec:8.0f} %")
    drops = [a0 - lo for _, _, a0, lo, _, _ in rows]
    print(f"drop: mean {statistics.mean(drops):.3f}, range {min(drops):.3f}-{max(drops):.3f}; iterations to the "
          f"minimum {min(r[4] for r in rows)}-{max(r[4] for r in rows)}; recovered "
          f"{min(100 * r[5] for r in rows):.0f}-{max(100 * r[5] for r in rows):.0f} %")  # fmt: skip


if __name__ == "__main__":
    main()
