"""Reproducibility and recovery: same seed same record, a killed run resumes to the same result,
failures leave an honest record and bad input leaves nothing behind.

Runs compared bit for bit use one intra-op thread everywhere (here and in child processes):
PyTorch does not promise identical float results across thread counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cl_bench.core.errors import DivergenceError, UserError
from cl_bench.core.record import load_record, matrix_of
from cl_bench.engine.runner import CHECKPOINT_FILE, resume, run
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for

# Split-Digits with ER: 2 epochs x 5 experiences = 292 iterations, evaluated at every one. The first
# checkpoint (iteration 20) comes early, so the kill lands mid-run with a wide margin.
SPEC = RunSpec(method="er", scenario="split_digits", seed=0, protocol=Protocol(epochs=2))
EVERY = 20
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "cl_bench.cli"]


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(SPEC, tmp_path_factory.mktemp("uninterrupted"))
    finally:
        torch.set_num_threads(n)


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what legitimately differs between equal runs (timings, memory)."""
    return {k: v for k, v in record.items() if k != "cost"}


# -- same seed, same record --------------------------------------------------------------------------------


def _quick(seed: int) -> RunSpec:
    return RunSpec(method="er", scenario="split_digits", seed=seed, protocol=Protocol(epochs=1, eval_every=5))


def test_same_seed_gives_the_same_record(tmp_path: Path) -> None:
    a, b = run(_quick(0), tmp_path / "a"), run(_quick(0), tmp_path / "b")
    assert _comparable(a) == _comparable(b)
    assert matrix_of(a).n_points > 20  # a real run, not an empty one


def test_different_seed_gives_a_different_matrix(tmp_path: Path) -> None:
    a, c = run(_quick(0), tmp_path / "a"), run(_quick(1), tmp_path / "c")
    assert a["accuracy_matrix"] != c["accuracy_matrix"]
    assert a["scenario"]["spec_hash"] == c["scenario"]["spec_hash"]  # the run seed does not change the stream


# -- a real kill -------------------------------------------------------------------------------------------


def _start_and_kill(cmd: list[str], out: Path) -> Path:
    """Start ``cmd``, SIGKILL it once its first checkpoint exists, return the run directory."""
    proc = subprocess.Popen(cmd, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not (found := list(out.glob(f"*/{CHECKPOINT_FILE}"))):
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before its first checkpoint:\n"
                            f"{proc.stderr.read().decode() if proc.stderr else ''}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared within 300 s")
            time.sleep(0.005)
        time.sleep(0.1)  # let it train on past the checkpoint: the kill lands mid-run, not on a checkpoint
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill; make SPEC longer"
    return found[0].parent


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "protocol.yaml"
    config.write_text("protocol:\n  epochs: 2\n")
    run_dir = _start_and_kill(
        [*CLI, "run", "--scenario", "split_digits", "--method", "er", "--seed", "0", "--config", str(config),
         "--checkpoint-every", str(EVERY), "--out", str(out)],
        out,
    )  # fmt: skip
    assert run_dir.name == run_id_for(SPEC)
    killed = load_record(run_dir)  # the kill left a valid record ...
    assert killed["status"] == "running"
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)  # ... and a readable checkpoint
    assert 0 < state["iteration"] < uninterrupted["accuracy_matrix"]["iteration"][-1]
    assert state["iteration"] % EVERY == 0

    done = subprocess.run([*CLI, "run", "--resume", str(run_dir)], env=CHILD_ENV, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert str(run_dir / "run.json") in done.stdout  # the CLI prints the record's path
    record = load_record(run_dir)
    assert record["status"] == "completed" and record["error"] is None
    assert record["accuracy_matrix"] == uninterrupted["accuracy_matrix"]
    assert record["metrics"] == uninterrupted["metrics"]
    assert not (run_dir / CHECKPOINT_FILE).exists()


# Dies (like SIGKILL: no cleanup, no failed record) right after the first checkpoint file is in place,
# before the record that goes with it is written.
DIE_AFTER_CHECKPOINT = """
import os, sys
import torch
torch.set_num_threads(1)
from cl_bench.engine import checkpoint, runner, spec
real_save = torch.save
def save_then_die(obj, path, *a, **k):
    real_save(obj, path, *a, **k)
    os.replace(path, os.path.join(os.path.dirname(path), checkpoint.CHECKPOINT_FILE))
    os._exit(9)
checkpoint.torch.save = save_then_die
runner.run(spec.RunSpec(method="er", scenario="split_digits", seed=0, protocol=spec.Protocol(epochs=2)),
           sys.argv[1], checkpoint_every=20)
"""


def test_kill_between_checkpoint_and_its_record_is_resumable(tmp_path: Path, uninterrupted: dict[str, Any]) -> None:
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-c", DIE_AFTER_CHECKPOINT, str(out)], env=CHILD_ENV, timeout=600,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 9, done.stderr
    run_dir = out / run_id_for(SPEC)
    assert (run_dir / CHECKPOINT_FILE).exists()
    assert load_record(run_dir)["status"] == "running"
    assert resume(run_dir)["accuracy_matrix"] == uninterrupted["accuracy_matrix"]


# -- failures ----------------------------------------------------------------------------------------------


def test_diverging_run_raises_and_leaves_a_failed_record(tmp_path: Path) -> None:
    spec = RunSpec(method="finetune", scenario="split_digits", method_config={"lr": 1e6}, protocol=Protocol(epochs=1))
    with pytest.raises(DivergenceError, match="diverged") as info:
        run(spec, tmp_path, checkpoint_every=1)
    run_dir = tmp_path / run_id_for(spec)
    record = load_record(run_dir)  # valid JSON whose metrics match its matrix
    assert record["status"] == "failed"
    assert record["error"] == f"DivergenceError: {info.value}"
    assert "Traceback" not in record["error"] and "Lower the learning rate" in record["error"]
    matrix = matrix_of(record)
    assert matrix.n_points >= 1 and not matrix.complete  # the partial matrix: at least the pre-training eval
    assert matrix.n_total[0] == [len(e.test) for e in _split_digits()]
    assert not list(run_dir.glob(".*.tmp"))  # no half-written files


def _split_digits() -> Any:
    from cl_bench.core.registry import SCENARIOS

    return SCENARIOS.create("split_digits")


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "no_such_method"},
        {"scenario": "no_such_scenario"},
        {"method_config": {"lr": -1.0}},
        {"method_config": {"lr": "fast"}},
        {"method_config": {"buffer_sise": 10}},
        {"scenario_config": {"n_experiences": 0}},
        {"device": "tpu"},
    ],
    ids=lambda d: next(iter(d.items())).__repr__()[:40],
)
def test_bad_config_leaves_no_run_directory(tmp_path: Path, bad: dict[str, Any]) -> None:
    fields = {"method": "er", "scenario": "split_digits", **bad}
    with pytest.raises(UserError):
        run(RunSpec(**fields), tmp_path / "runs", checkpoint_every=5)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_refuses_what_it_cannot_resume(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no run record"):
        resume(tmp_path)
    record = run(_quick(0), tmp_path)
    assert resume(tmp_path / record["run_id"]) == record  # completed: nothing to do
