"""Issue 13 for sweeps: bridged (non-resumable) methods are not checkpointed, every failed run leaves a
``failed`` record, and a broken worker pool does not report never-started runs as "failed in 0.0s"."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from cl_bench.core.record import load_record
from cl_bench.engine.spec import RunSpec, run_id_for
from cl_bench.ops import executors, sweep


def _spec(tmp_path: Path, methods: str) -> sweep.SweepSpec:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"methods: {methods}\nscenarios: [split_digits]\nseeds: [0]\nprotocol: {{epochs: 1}}\n"
                    f"out: {tmp_path / 'runs'}\n")  # fmt: skip
    return sweep.load_sweep_spec(path)


@pytest.mark.slow  # imports Avalanche and validates its strategy: ~50 s on a loaded 2-core machine
def test_bridged_methods_run_without_the_checkpoint_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("avalanche")
    spec = _spec(tmp_path, '[er, "avalanche:Naive"]')
    notes = {run_id: overrides for run_id, _, overrides in sweep.plan(spec)}  # what --dry-run prints
    assert [n for n in notes.values() if "not checkpointed" in n] == [
        "not checkpointed (avalanche:Naive cannot be resumed; a killed run starts again)"]
    jobs: list[executors.Job] = []

    def capture(js: list[executors.Job], *args: Any) -> list[executors.JobResult]:
        jobs.extend(js)
        return []

    monkeypatch.setattr(executors, "run_local", capture)
    sweep.run_sweep(spec, workers=1)
    assert {j.spec.method: j.checkpoint_every for j in jobs} == {"er": 50, "avalanche:Naive": 0}


def test_a_run_refused_at_start_leaves_a_failed_record(tmp_path: Path) -> None:
    rs = RunSpec.from_mapping({"method": {"name": "l2p"}, "scenario": {"name": "split_digits"}}, "test")
    job = executors.Job(rs, str(tmp_path), 0, 1, str(tmp_path))
    result = executors.execute_job(job)
    assert result.outcome == "failed" and "weights" in (result.error or "")
    record = load_record(tmp_path / run_id_for(rs))
    assert record["status"] == "failed" and "--set weights=PATH" in record["error"]
    assert executors.state_of(tmp_path / run_id_for(rs)) == "failed"  # the board and --dry-run see it


def test_runs_the_broken_pool_took_down_report_no_duration(tmp_path: Path) -> None:
    rs = RunSpec.from_mapping({"method": {"name": "er"}, "scenario": {"name": "split_digits"}}, "test")
    job = executors.Job(rs, str(tmp_path), 0, 1, str(tmp_path))
    lines: list[str] = []
    progress = executors.Progress(2, 0, 1, lines.append)
    never = executors._pool_broke(job)
    (tmp_path / run_id_for(rs)).mkdir()
    started = executors._pool_broke(job)
    for r in (never, started):
        assert math.isnan(r.seconds)
        progress.update(r)
    assert "not started" in lines[0] and "interrupted" in lines[1]
    assert not any(" in 0.0s" in line or " in nans" in line for line in lines)
    assert all("worker died" in line for line in lines)
