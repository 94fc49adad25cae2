"""Per-iteration curves break where an experience was not evaluated; ``cl-bench plot --curves``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cl_bench.cli import main
from cl_bench.core.record import new_record
from cl_bench.metrics import AccuracyMatrix
from cl_bench.report.curves import experience_accuracy


def _matrix() -> AccuracyMatrix:
    # exp 1 is evaluated before training and from its own training on, not at points 1-2
    m = AccuracyMatrix(n_experiences=2)
    m.add_point(0, [1, 0], [10, 10])
    m.add_point(5, [8, 0], [10, 0])
    m.add_point(10, [9, 0], [10, 0])
    m.mark_boundary(2)
    m.add_point(15, [7, 5], [10, 10])
    m.add_point(20, [8, 9], [10, 10])
    m.mark_boundary(4)
    return m


def test_gaps_are_nan_so_the_line_breaks() -> None:
    m = _matrix()
    xs, ys = experience_accuracy(m, 1, gaps=True)
    assert xs == [0, 5, 10, 15, 20]
    assert ys[0] == 0.0 and math.isnan(ys[1]) and math.isnan(ys[2]) and ys[3:] == [0.5, 0.9]
    assert experience_accuracy(m, 1) == ([0, 15, 20], [0.0, 0.5, 0.9])  # default unchanged


def test_plot_curves_of_one_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = new_record(run_id="toy-er-s0-0", status="completed", method={"name": "er", "config": {}},
                        scenario={"name": "toy", "spec": {}, "spec_hash": "0"}, protocol={}, seed=0,
                        matrix=_matrix(), cost={}, env={}, request={}, error=None)  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(record))
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "run.json"), "--curves", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path / "run.json"), "--curves", "--experience", "0", "--out", str(out)]) != 0
    assert "--curves draws every experience of one run" in capsys.readouterr().err
