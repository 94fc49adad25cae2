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


# The two real kills below (subprocesses, ~20 s idle with their uninterrupted reference) are the evidence; resuming to
# the uninterrupted record is checked fast, in-process, by every method's check_resume (tests/test_conformance.py).
@pytest.mark.slow
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


@pytest.mark.slow
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


# -- never lose a run: re-running the original command, changed configs, a second process, Ctrl-C ----------


def _quick_cli(out: Path, *extra: str) -> list[str]:
    """The CLI command of :func:`_quick` (seed 0) writing into ``out``."""
    return [*CLI, "run", "--scenario", "split_digits", "--method", "er", "--seed", "0", "--epochs", "1",
            "--eval-every", "5", "--out", str(out), *extra]  # fmt: skip


def _crash(out: Path, spec: RunSpec | None = None) -> Path:
    """A run of ``spec`` (default :func:`_quick` seed 0) that crashed after its checkpoint at iteration 20."""
    spec = spec or _quick(0)
    with pytest.raises(Exception, match="stop_after"):
        run(spec, out, checkpoint_every=EVERY, stop_after=EVERY + 5)
    run_dir = out / run_id_for(spec)
    assert (run_dir / CHECKPOINT_FILE).exists()
    return run_dir


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=CHILD_ENV, capture_output=True, text=True, timeout=600, check=False)


def _one_paragraph(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    return proc.stderr


@pytest.mark.slow
def test_rerunning_the_command_of_a_crashed_run_keeps_its_checkpoint(tmp_path: Path) -> None:
    run_dir = _crash(tmp_path)
    saved = (run_dir / CHECKPOINT_FILE).read_bytes()
    err = _one_paragraph(_cli(_quick_cli(tmp_path)))
    assert f"cl-bench run --resume {run_dir}" in err and "--force" in err
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == saved  # the progress survives the re-typed command
    assert load_record(run_dir)["status"] == "failed"
    # The same holds through the Python API, and the checkpoint then resumes to the uninterrupted result.
    with pytest.raises(UserError, match="--resume"):
        run(_quick(0), tmp_path)
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == saved
    resumed, fresh = resume(run_dir), run(_quick(0), tmp_path / "fresh")
    assert resumed["accuracy_matrix"] == fresh["accuracy_matrix"] and resumed["metrics"] == fresh["metrics"]


@pytest.mark.slow
def test_a_checkpoint_without_its_record_is_kept_too(tmp_path: Path) -> None:
    run_dir = _crash(tmp_path)
    (run_dir / "run.json").unlink()
    with pytest.raises(UserError, match="checkpoint"):
        run(_quick(0), tmp_path)
    assert (run_dir / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_force_discards_the_checkpoint_and_starts_afresh(tmp_path: Path) -> None:
    run_dir = _crash(tmp_path)
    (run_dir / "notes.txt").write_text("the user's own file")
    record = run(_quick(0), tmp_path, force=True)
    assert record["status"] == "completed" and not (run_dir / CHECKPOINT_FILE).exists()
    assert (run_dir / "notes.txt").read_text() == "the user's own file"  # --force removes run files only


@pytest.mark.slow
def test_a_completed_record_is_kept_unless_forced(tmp_path: Path) -> None:
    first = run(_quick(0), tmp_path)
    run_dir = tmp_path / first["run_id"]
    stamp = (run_dir / "run.json").stat().st_mtime_ns
    proc = _cli([*_quick_cli(tmp_path), "-q"])
    assert proc.returncode == 0, proc.stderr
    assert "already holds a completed record of this run: kept" in proc.stderr
    assert (run_dir / "run.json").stat().st_mtime_ns == stamp  # not recomputed, not rewritten
    again = run(_quick(0), tmp_path, force=True)
    assert (run_dir / "run.json").stat().st_mtime_ns != stamp
    assert _comparable(again) == _comparable(first)


@pytest.mark.slow
@pytest.mark.parametrize(
    "other",
    [
        {"method_config": {"lr": 0.5}},  # same method, another learning rate: would resume "completed" silently
        {"method": "finetune"},  # another method: KeyError on the buffer state before
        {"method_config": {"buffer_size": 50}},  # another buffer size: IndexError before
    ],
    ids=["another_lr", "another_method", "another_buffer_size"],
)
@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path: Path, other: dict[str, Any]) -> None:
    run_dir = _crash(tmp_path / "mine")
    foreign = _crash(tmp_path / "other", RunSpec(**{"method": "er", "scenario": "split_digits", "seed": 0,
                                                     "protocol": _quick(0).protocol, **other}))  # fmt: skip
    (run_dir / CHECKPOINT_FILE).write_bytes((foreign / CHECKPOINT_FILE).read_bytes())
    before = load_record(run_dir)
    err = _one_paragraph(_cli([*CLI, "run", "--resume", str(run_dir)]))
    assert f"belongs to run {foreign.name}" in err and run_dir.name in err
    assert "KeyError" not in err and "IndexError" not in err
    with pytest.raises(UserError, match="belongs to run"):
        resume(run_dir)
    assert load_record(run_dir) == before  # the refusal wrote nothing


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags", [["--set", "lr=0.5"], ["--method", "finetune"], ["--set", "buffer_size=50"], ["--seed", "1"]]
)
@pytest.mark.slow
def test_resume_refuses_options_that_change_the_configuration(tmp_path: Path, flags: list[str]) -> None:
    run_dir = _crash(tmp_path)
    before = load_record(run_dir)
    err = _one_paragraph(_cli([*CLI, "run", "--resume", str(run_dir), *flags]))
    assert flags[0] in err and "describe another configuration" in err
    assert load_record(run_dir) == before and (run_dir / CHECKPOINT_FILE).exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from cl_bench.engine import rundir
with rundir.claim(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused_by_the_lock(tmp_path: Path) -> None:
    run_dir = tmp_path / run_id_for(_quick(0))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], env=CHILD_ENV,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"being written by another live process \\(pid {holder.pid}"):
            run(_quick(0), tmp_path)
        err = _one_paragraph(_cli(_quick_cli(tmp_path)))
        assert f"pid {holder.pid}" in err
        assert not (run_dir / "run.json").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
    assert run(_quick(0), tmp_path)["status"] == "completed"  # the lock dies with its holder


@pytest.mark.slow
def test_ctrl_c_names_the_checkpoint_and_the_resume_command(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cmd = [*CLI, "run", "--scenario", "split_digits", "--method", "er", "--seed", "0", "--epochs", "2",
           "--checkpoint-every", str(EVERY), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=CHILD_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while not list(out.glob(f"*/{CHECKPOINT_FILE}")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared within 300 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_dir = out / run_id_for(SPEC)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"the last checkpoint is {run_dir / CHECKPOINT_FILE}" in err
    assert f"`cl-bench run --resume {run_dir}`" in err
    assert (run_dir / CHECKPOINT_FILE).exists() and load_record(run_dir)["status"] == "failed"
