"""Metrics against hand-computed accuracy matrices (expected values worked out in the comments)."""

from __future__ import annotations

import math

import pytest

from cl_bench.metrics import METRIC_SPECS, AccuracyMatrix, compute_all
from cl_bench.metrics import functions as F

CONTRACT = {
    "final_acc": True,
    "final_acc_pooled": True,
    "avg_incremental_acc": True,
    "forgetting": False,
    "bwt": True,
    "fwt": True,
    "min_acc": True,
    "wc_acc": True,
    "wf_10": False,
    "wf_100": False,
    "wp_10": True,
    "wp_100": True,
    "lca_10": True,
    "stability_gap": False,
    "stability_gap_max": False,
    "stability_gap_recovery": False,
    # test-time adaptation (metrics/tta.py): NaN for continual-learning matrices
    "online_error": False,
    "online_error_max_severity": False,
    "online_error_clean": False,
    "clean_acc_after": True,
}


def build(
    rows: list[list[float | None]],
    boundary: list[int],
    totals: int | list[int] = 10,
    iterations: list[int] | None = None,
) -> AccuracyMatrix:
    """Matrix from accuracies rows[p][e] (None = not evaluated), ``totals`` examples per experience."""
    n_exp = len(rows[0])
    per_exp = [totals] * n_exp if isinstance(totals, int) else totals
    m = AccuracyMatrix(n_exp)
    for p, row in enumerate(rows):
        correct = [0 if a is None else round(a * t) for a, t in zip(row, per_exp, strict=True)]
        total = [0 if a is None else t for a, t in zip(row, per_exp, strict=True)]
        m.add_point(p if iterations is None else iterations[p], correct, total)
    for b in boundary:
        m.mark_boundary(b)
    return m


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-12)


# --- boundary metrics ----------------------------------------------------------------------------

# p0 before training, then one point per boundary: b0 = 1, b1 = 2, b2 = 3.
BOUNDARY_ONLY = build(
    [
        [0.1, 0.2, 0.0],  # p0
        [0.9, 0.3, 0.1],  # b0
        [1.0, 0.8, 0.4],  # b1
        [0.5, 0.7, 0.9],  # b2
    ],
    boundary=[1, 2, 3],
)


def test_boundary_metrics() -> None:
    m = BOUNDARY_ONLY
    assert F.final_acc(m) == approx(0.7)  # (0.5 + 0.7 + 0.9) / 3
    assert F.final_acc_pooled(m) == approx(0.7)  # equal test sets: (5 + 7 + 9) / 30
    # (0.9 + (1.0 + 0.8) / 2 + (0.5 + 0.7 + 0.9) / 3) / 3 = (0.9 + 0.9 + 0.7) / 3
    assert F.avg_incremental_acc(m) == approx(2.5 / 3)
    # exp0: max(0.9, 1.0) - 0.5 = 0.5 (the best is at b1, not at b0); exp1: 0.8 - 0.7 = 0.1
    assert F.forgetting(m) == approx(0.3)
    # exp0: 0.5 - 0.9 = -0.4; exp1: 0.7 - 0.8 = -0.1  (so forgetting != -bwt here)
    assert F.bwt(m) == approx(-0.25)
    # exp1: a(b0, 1) - a(p0, 1) = 0.3 - 0.2 = 0.1; exp2: a(b1, 2) - a(p0, 2) = 0.4 - 0.0 = 0.4
    assert F.fwt(m) == approx(0.25)


def test_pooled_differs_from_experience_mean() -> None:
    # exp0 has 10 test examples, exp1 has 30.
    m = build([[0.0, 0.0], [0.9, 0.0], [0.8, 0.4]], boundary=[1, 2], totals=[10, 30])
    assert F.final_acc(m) == approx(0.6)  # (0.8 + 0.4) / 2
    assert F.final_acc_pooled(m) == approx(0.5)  # (8 + 12) / (10 + 30)


def test_fwt_nan_when_unseen_experiences_not_evaluated() -> None:
    # A "seen experiences only" protocol: exp1 is not evaluated before its own training.
    m = build([[0.1, None], [0.9, None], [0.8, 0.7]], boundary=[1, 2])
    assert math.isnan(F.fwt(m))
    assert F.bwt(m) == approx(-0.1)  # 0.8 - 0.9: the rest still works


# --- continual evaluation ------------------------------------------------------------------------

# Three experiences with intermediate (e.g. subsampled) eval points; b0 = 2, b1 = 5, b2 = 9.
ITERS = [0, 5, 10, 11, 13, 20, 21, 24, 27, 30]
CONTINUAL = build(
    [
        [0.1, 0.0, 0.1],  # p0  it 0   before training
        [0.5, 0.1, 0.1],  # p1  it 5
        [0.9, 0.2, 0.0],  # p2  it 10  b0
        [0.4, 0.5, 0.2],  # p3  it 11
        [0.8, 0.7, 0.2],  # p4  it 13
        [0.8, 0.9, 0.3],  # p5  it 20  b1
        [0.6, 0.6, 0.5],  # p6  it 21
        [0.4, 0.7, 0.7],  # p7  it 24
        [0.6, 0.7, 0.8],  # p8  it 27
        [0.6, 0.7, 0.8],  # p9  it 30  b2
    ],
    boundary=[2, 5, 9],
    iterations=ITERS,
)


def test_min_acc_uses_points_between_boundaries() -> None:
    # exp0 over p3..p9: min(0.4, 0.8, 0.8, 0.6, 0.4, 0.6, 0.6) = 0.4 (at p3 and p7, neither a boundary)
    # exp1 over p6..p9: min(0.6, 0.7, 0.7, 0.7) = 0.6
    assert F.min_acc(CONTINUAL) == approx(0.5)
    # From boundaries alone it would be ((min(0.8, 0.6) + 0.7) / 2 = 0.65.
    assert F.min_acc(CONTINUAL) != approx(0.65)
    # (1/3) * a(b2, 2) + (2/3) * min_acc = 0.8 / 3 + 2 * 0.5 / 3
    assert F.wc_acc(CONTINUAL) == approx(1.8 / 3)


def test_min_acc_excludes_own_boundary() -> None:
    # exp0's lowest value from b0 on is at b0 itself (0.3); min_acc looks strictly after b0.
    m = build([[0.0, 0.0], [0.3, 0.0], [0.5, 0.6], [0.6, 0.9]], boundary=[1, 3])
    assert F.min_acc(m) == approx(0.5)  # min(0.5, 0.6) over p2, p3; b0 (0.3) excluded
    assert F.wc_acc(m) == approx(0.7)  # 0.9 / 2 + 0.5 / 2


def test_windowed_on_continual_matrix() -> None:
    # Tracked from the start of each experience's own training (exp0 from p0) to the end:
    # exp0 p0..p9: 0.1 0.5 0.9 0.4 0.8 0.8 0.6 0.4 0.6 0.6 -> drop 0.9 - 0.4 = 0.5; rise 0.9 - 0.1 = 0.8
    # exp1 p3..p9: 0.5 0.7 0.9 0.6 0.7 0.7 0.7              -> drop 0.3;             rise 0.4
    # exp2 p6..p9: 0.5 0.7 0.8 0.8                          -> drop 0 (none);        rise 0.3
    # Fewer than 10 points each: w = 10 and 100 agree; the mean includes the last experience.
    for fn in (F.wf_10, F.wf_100):
        assert fn(CONTINUAL) == approx(0.8 / 3)  # (0.5 + 0.3 + 0) / 3
    for fn in (F.wp_10, F.wp_100):
        assert fn(CONTINUAL) == approx(0.5)  # (0.8 + 0.4 + 0.3) / 3


def test_lca_needs_beta_points_while_learned() -> None:
    # CONTINUAL has at most 3 points per experience while learned: no experience has an LCA.
    assert math.isnan(F.lca_10(CONTINUAL))
    # exp0 learned over p0..p11 (12 points), exp1 over p12..p20 (9 points < 10: left out).
    rows: list[list[float | None]] = [[k / 20, 0.0] for k in range(12)] + [[0.5, 0.9]] * 9
    m = build(rows, boundary=[11, 20], totals=20)
    assert F.lca_10(m) == approx(sum(range(10)) / 200)  # mean of 0/20 .. 9/20 = 0.225


def _decay_matrix(insert_gaps: bool = False) -> AccuracyMatrix:
    """exp0 from p0: 0.00, then 1.00, a cliff to 0.50 and a slow decay 0.49, ..., 0.21 (32 points).

    exp1 is 0.5 throughout its training (no drop, no rise). With ``insert_gaps``, a
    point where exp0 is not evaluated follows every real one after p1.
    """
    series = [1.0] + [(51 - k) / 100 for k in range(1, 31)]  # s_k for k = 0..30
    rows: list[list[float | None]] = [[0.0, 0.0]]  # p0 before training
    for k, s in enumerate(series):
        rows.append([s, 0.5])
        if insert_gaps and 0 < k < len(series) - 1:
            rows.append([None, 0.5])
    return build(rows, boundary=[1, len(rows) - 1], totals=100)


def test_windowed_forgetting_window_size() -> None:
    m = _decay_matrix()
    # exp0 tracked 0.00, s_0 .. s_30. w = 10: s_0 - s_9 = 1.00 - 0.42 (q - p < 10); exp1: 0.
    assert F.wf_10(m) == approx(0.58 / 2)
    # w = 100 covers every point: 1.00 - s_30 = 1.00 - 0.21
    assert F.wf_100(m) == approx(0.79 / 2)
    # The only rise is 0.00 -> 1.00 at the start of exp0's training.
    assert F.wp_10(m) == approx(0.5)
    assert F.wp_100(m) == approx(0.5)


def test_windowed_counts_only_evaluated_points() -> None:
    # Unevaluated points neither break nor stretch the window: same values as without gaps.
    m = _decay_matrix(insert_gaps=True)
    assert F.wf_10(m) == approx(0.58 / 2)
    assert F.wf_100(m) == approx(0.79 / 2)


def test_windowed_plasticity_window_size() -> None:
    # exp0 from p0: 0.20, 0.21, ..., 0.50 (31 points); gains 0.09 within 10 points, 0.30 overall.
    rows: list[list[float | None]] = [[(20 + k) / 100, 0.5] for k in range(31)]
    m = build(rows, boundary=[0, 30], totals=100)
    assert F.wp_10(m) == approx(0.09 / 2)  # exp1: constant 0.5, gains 0
    assert F.wp_100(m) == approx(0.30 / 2)
    assert F.wf_10(m) == 0.0


def test_windowed_plasticity_reference_quirk() -> None:
    # The reference scan skips start values below an earlier one in the window, so WP only
    # measures rises from the window's first element: 0.5 0.2 0.9 gives 0.4, not 0.2 -> 0.9.
    m = build([[0.5], [0.2], [0.9]], boundary=[2])
    assert F.wp_10(m) == approx(0.4)
    # Once the deque slides past p0 (w = 10, 12 points) 0.2 is the first element: 0.2 -> 0.9.
    rows: list[list[float | None]] = [[0.5], [0.2]] + [[0.9]] * 10
    assert F.wp_10(build(rows, boundary=[11])) == approx(0.7)
    assert F.wp_10(build(rows[:10], boundary=[9])) == approx(0.4)  # never slides


def test_stability_gap_dip_and_recovery() -> None:
    # (0, 1): start a(b0, 0) = 0.9; during exp1 (p3..p5) 0.4 0.8 0.8 -> d = 0.5, min at p3 (it 11);
    #         half recovery 0.4 + 0.25 = 0.65 first reached at p4 (it 13): 2 iterations.
    # (0, 2): start a(b1, 0) = 0.8; during exp2 (p6..p9) 0.6 0.4 0.6 0.6 -> d = 0.4, min at p7 (it 24);
    #         target 0.4 + 0.2 = 0.6 reached exactly at p8 (it 27): 3 iterations.
    # (1, 2): start a(b1, 1) = 0.9; during exp2 0.6 0.7 0.7 0.7 -> d = 0.3, min at p6;
    #         target 0.75 never reached -> no recovery time.
    assert F.stability_gap(CONTINUAL) == approx(0.4)  # (0.5 + 0.4 + 0.3) / 3
    assert F.stability_gap_max(CONTINUAL) == approx(0.5)
    assert F.stability_gap_recovery(CONTINUAL) == approx(2.5)  # (2 + 3) / 2


def test_stability_gap_without_dip() -> None:
    # exp0 only improves during exp1: d = 0.6 - min(0.7, 0.8) = -0.1, no recovery to measure.
    m = build([[0.0, 0.0], [0.6, 0.1], [0.7, 0.5], [0.8, 0.9]], boundary=[1, 3])
    assert F.stability_gap(m) == approx(-0.1)
    assert F.stability_gap_max(m) == approx(-0.1)
    assert math.isnan(F.stability_gap_recovery(m))
    # Chaudhry's forgetting is negative here: max over b0 only (0.6) minus the final 0.8.
    assert F.forgetting(m) == approx(-0.2)


def test_stability_gap_recovery_counts_from_first_minimum() -> None:
    # exp0 during exp1: 0.2 (it 11), 0.6 (it 12), 0.2 (it 13), 0.6 (it 15); d = 0.8 - 0.2, target 0.5.
    # From the first minimum (it 11) half recovery comes at it 12: 1 iteration (not 15 - 13 = 2).
    m = build(
        [[0.0, 0.0], [0.8, 0.0], [0.2, 0.1], [0.6, 0.2], [0.2, 0.3], [0.6, 0.9]],
        boundary=[1, 5],
        iterations=[0, 10, 11, 12, 13, 15],
    )
    assert F.stability_gap(m) == approx(0.6)
    assert F.stability_gap_recovery(m) == approx(1.0)


def test_stability_gap_skips_unevaluated_points() -> None:
    # exp0 is not evaluated at p2; its minimum during exp1 is at p3 (0.5), not a phantom 0.
    m = build([[0.0, 0.0], [0.9, 0.1], [None, 0.3], [0.5, 0.6], [0.8, 0.9]], boundary=[1, 4])
    assert F.stability_gap(m) == approx(0.4)  # 0.9 - 0.5
    assert F.min_acc(m) == approx(0.5)


# --- incomplete runs and edge cases ---------------------------------------------------------------


def test_incomplete_matrix_uses_finished_experiences() -> None:
    # 3 experiences, only two finished (b0 = 1, b1 = 3); p4 belongs to the unfinished exp2.
    m = build(
        [
            [0.0, 0.1, 0.1],  # p0
            [0.8, 0.0, 0.0],  # p1  b0
            [0.4, 0.5, 0.0],  # p2
            [0.6, 0.9, 0.2],  # p3  b1 (exp2 evaluated, but not finished)
            [0.0, 0.0, 0.5],  # p4  after the last boundary: ignored
        ],
        boundary=[1, 3],
    )
    assert not m.complete
    assert F.final_acc(m) == approx(0.75)  # (0.6 + 0.9) / 2
    assert F.final_acc_pooled(m) == approx(0.75)  # (6 + 9) / 20, exp2 left out
    assert F.avg_incremental_acc(m) == approx(0.775)  # (0.8 + 0.75) / 2
    assert F.forgetting(m) == approx(0.2)  # 0.8 - 0.6
    assert F.bwt(m) == approx(-0.2)
    assert F.fwt(m) == approx(-0.1)  # a(b0, 1) - a(p0, 1) = 0.0 - 0.1
    assert F.min_acc(m) == approx(0.4)  # min(0.4, 0.6); p4's 0.0 is after b1
    assert F.wc_acc(m) == approx(0.65)  # 0.9 / 2 + 0.4 / 2
    # exp0 p0..p3: 0.0 0.8 0.4 0.6; exp1 p2..p3: 0.5 0.9 (p4 ignored)
    assert F.wf_100(m) == approx(0.2)  # (0.8 - 0.4 + 0) / 2
    assert F.wp_100(m) == approx(0.6)  # (0.8 + 0.4) / 2
    assert F.stability_gap(m) == approx(0.4)


def test_single_experience() -> None:
    m = build([[0.2], [0.7]], boundary=[1])
    values = compute_all(m)
    for name in ("final_acc", "final_acc_pooled", "avg_incremental_acc", "wc_acc"):
        assert values[name] == approx(0.7)
    # The windowed metrics track the experience being learned: 0.2 -> 0.7.
    for name in ("wf_10", "wf_100"):
        assert values[name] == 0.0
    for name in ("wp_10", "wp_100"):
        assert values[name] == approx(0.5)
    defined = {"final_acc", "final_acc_pooled", "avg_incremental_acc", "wc_acc", "wf_10", "wf_100", "wp_10"}
    undefined = set(CONTRACT) - defined - {"wp_100"}
    for name in undefined:
        assert values[name] is None, name
        if METRIC_SPECS[name].kind == "cl":  # TTA metrics read a TTAMatrix only; compute_all gives them None here
            assert math.isnan(METRIC_SPECS[name].fn(m)), name


def test_no_boundary_is_all_nan() -> None:
    m = build([[0.2, 0.1], [0.5, 0.1]], boundary=[])
    assert all(v is None for v in compute_all(m).values())
    assert all(v is None for v in compute_all(AccuracyMatrix(2)).values())


def test_missing_final_evaluation_is_nan() -> None:
    # exp0 was not evaluated at the final boundary: no silent average over exp1 alone.
    m = build([[0.0, 0.0], [0.9, 0.1], [None, 0.8]], boundary=[1, 2])
    assert math.isnan(F.final_acc(m))
    assert math.isnan(F.final_acc_pooled(m))
    assert math.isnan(F.forgetting(m))


def test_compute_all() -> None:
    values = compute_all(CONTINUAL)
    assert set(values) == set(CONTRACT)
    assert values["min_acc"] == approx(0.5)
    assert values["stability_gap_recovery"] == approx(2.5)
    assert compute_all(CONTINUAL, ["bwt"]) == {"bwt": approx(-0.25)}  # (0.6 - 0.9 + 0.7 - 0.9) / 2


# --- registry ------------------------------------------------------------------------------------


def test_registry_matches_contract() -> None:
    assert set(METRIC_SPECS) == set(CONTRACT)
    for name, spec in METRIC_SPECS.items():
        assert spec.higher_is_better is CONTRACT[name], name
        assert spec.description.strip() and "\n" not in spec.description, name
        # A reference names the paper: authors, a quoted title, and a venue year.
        assert spec.reference.count('"') == 2, name
        assert any(f" {year}" in spec.reference for year in range(2015, 2026)), name
