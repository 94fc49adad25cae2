"""wf/wp/lca against a replay of ContinualEvaluation's tracking plugins on real run records.

The replay is written from the reference code's logic (Mattdl/ContinualEvaluation,
src/eval/continual_eval_metrics.py: ``WindowedForgettingPluginMetric``,
``WindowedPlasticityPluginMetric``, ``TrackingLCAPluginMetric``, ``TaskAveragingPluginMetric``)
as a plain event loop, independently of the vectorised functions in ``metrics/functions.py``:
it walks the eval points in order, decides which task is being learned and which tasks are
tracked, and feeds each plugin one accuracy at a time, as the strategy's tracker would.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict, deque
from pathlib import Path

import pytest

from cl_bench.metrics import AccuracyMatrix
from cl_bench.metrics import functions as F

GOLDEN = Path(__file__).resolve().parents[1] / "results" / "golden"


class WindowedPlugin:
    """Replay of the windowed forgetting (``rise=False``) / plasticity (``rise=True``) plugin."""

    def __init__(self, window_size: int, rise: bool) -> None:
        self.window_size, self.rise = window_size, rise
        self.acc_window: dict[int, deque[float]] = defaultdict(deque)
        self.max_value: dict[int, float] = defaultdict(float)

    def delta(self, first: float, later: float) -> float:
        return later - first if self.rise else first - later

    def scan(self, window: deque[float]) -> float:
        # The reference's double loop, including its skip of start values below an earlier one.
        if len(window) <= 1:
            return 0.0
        max_delta, max_found = -math.inf, -math.inf
        values = list(window)
        for idx, val in enumerate(values):
            if val < max_found:
                continue
            max_found = val
            for other in values[idx + 1 :]:
                max_delta = max(max_delta, self.delta(val, other))
        return max_delta

    def track(self, task: int, learning: int, acc: float) -> None:
        window = self.acc_window[task]
        window.append(acc)
        if len(window) > self.window_size:
            window.popleft()
        self.max_value[task] = max(self.max_value[task], self.scan(window))

    def task_average(self) -> float:
        vals = list(self.max_value.values())
        return sum(vals) / len(vals) if vals else math.nan


class LCAPlugin:
    """Replay of ``TrackingLCAPluginMetric`` with its task averaging."""

    def __init__(self, beta: int) -> None:
        self.beta = beta
        self.windows: dict[int, list[float]] = defaultdict(list)
        self.lca: dict[int, float] = {}

    def track(self, task: int, learning: int, acc: float) -> None:
        if task != learning or len(self.windows[task]) >= self.beta:
            return
        self.windows[task].append(acc)
        if len(self.windows[task]) == self.beta:
            self.lca[task] = sum(self.windows[task]) / self.beta

    def task_average(self) -> float:
        vals = list(self.lca.values())
        return sum(vals) / len(vals) if vals else math.nan


def replay(m: AccuracyMatrix) -> dict[str, float]:
    """Feed every plugin the tracking events a ContinualEvaluation run would have produced."""
    plugins = {
        "wf_10": WindowedPlugin(10, rise=False),
        "wf_100": WindowedPlugin(100, rise=False),
        "wp_10": WindowedPlugin(10, rise=True),
        "wp_100": WindowedPlugin(100, rise=True),
        "lca_10": LCAPlugin(10),
    }
    learning = 0  # the pre-update point 0 belongs to the first task
    for p in range(m.boundary[-1] + 1):
        if p > 0 and p > m.boundary[learning]:
            learning += 1  # first point after the previous task's last iteration
        for task in range(learning + 1):  # the tracker evaluates the tasks seen so far
            if m.n_total[p][task] == 0:
                continue  # not evaluated here: no tracking event
            acc = m.n_correct[p][task] / m.n_total[p][task]
            for plugin in plugins.values():
                plugin.track(task, learning, acc)
    return {name: plugin.task_average() for name, plugin in plugins.items()}


def check(m: AccuracyMatrix) -> dict[str, float]:
    expected = replay(m)
    for name, value in expected.items():
        got = getattr(F, name)(m)
        if math.isnan(value):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(value, abs=1e-9), name
    return expected


def load(path: Path) -> AccuracyMatrix:
    record = json.loads(path.read_text())
    return AccuracyMatrix.from_dict(record["accuracy_matrix"])


def test_replay_agrees_on_hand_example() -> None:
    # The quirk case of test_metrics: 0.5 0.2 0.9 -> WP 0.4 in both.
    m = AccuracyMatrix(1)
    for p, c in enumerate([5, 2, 9]):
        m.add_point(p, [c], [10])
    m.mark_boundary(2)
    assert check(m)["wp_10"] == pytest.approx(0.4)


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*/run.json")), ids=lambda p: p.parent.name)
def test_golden_records_match_replay(path: Path) -> None:
    check(load(path))


@pytest.mark.slow
def test_per_iteration_run_matches_replay(tmp_path: Path) -> None:
    # A real per-iteration run (480 iterations, 481 eval points), so w = 100 windows slide.
    from cl_bench import Protocol, RunSpec, run

    spec = RunSpec(
        method="er", scenario="split_digits", protocol=Protocol(eval_every=1, batch_size=32, eval_subset=100), seed=0
    )
    record = run(spec, tmp_path)
    m = AccuracyMatrix.from_dict(record["accuracy_matrix"])
    assert m.n_points > 200
    values = check(m)
    assert values["wp_100"] > values["wp_10"] > 0  # the windows matter on this record
    assert not math.isnan(values["lca_10"])
