"""Run and resume: pick the loop, claim the run directory, drive the loop, write the final record.

The loops live in :mod:`cl_bench.engine.loop` (continual learning, and methods that drive their own loop)
and :mod:`cl_bench.engine.tta_loop` (test-time adaptation); checkpoint I/O in
:mod:`cl_bench.engine.checkpoint`; the record's schema in :mod:`cl_bench.core.record`.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cl_bench.core.errors import UserError
from cl_bench.core.method import Method
from cl_bench.core.record import RECORD_FILE, load_record, write_record
from cl_bench.core.registry import METHODS
from cl_bench.engine import checkpoint, rundir
from cl_bench.engine.checkpoint import CHECKPOINT_FILE
from cl_bench.engine.loop import CLLoop, Loop, RunInterrupted
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for, spec_from_record
from cl_bench.engine.tta_loop import TTALoop
from cl_bench.report.plots import plot_accuracy_curves
from cl_bench.report.trackers import Trackers, remove_outputs


def make_loop(
    spec: RunSpec,
    run_dir: Path,
    checkpoint_every: int = 0,
    progress: bool = False,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
) -> Loop:
    """The loop that runs ``spec`` (validated, data loaded, nothing written): TTA for methods that adapt at test
    time (``Caps.adapts_at_test``), else the continual-learning loop."""
    cls = method_cls or METHODS.get(spec.method).obj
    loop_cls = TTALoop if cls.caps.adapts_at_test else CLLoop
    return loop_cls(spec, run_dir, checkpoint_every, progress, method_cls, stop_after)


def _drive(r: Loop, state: dict[str, Any] | None) -> dict[str, Any]:
    try:
        if state is None:
            # A "running" record from the start: a run killed right after its first checkpoint
            # landed (before that checkpoint's record) is still resumable.
            write_record(r.run_dir, r.record("running"))
        r.trackers.start({"run_id": r.run_dir.name, **r.spec.to_mapping()})
        r.start(state)
        r.train()
    except BaseException as err:
        r.trackers.close()
        message = str(err) if isinstance(err, UserError) else "".join(traceback.format_exception(err)).strip()
        write_record(r.run_dir, r.record("failed", f"{type(err).__name__}: {message}"))
        raise
    record = r.record("completed")
    write_record(r.run_dir, record)
    r.trackers.finish(record["metrics"] or {})
    checkpoint.remove(r.run_dir)
    plot_accuracy_curves(record, r.run_dir / "accuracy.png")
    return record


def run(
    spec: RunSpec,
    out: str | Path = "runs",
    *,
    checkpoint_every: int = 0,
    progress: bool = False,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
    force: bool = False,
    log: Sequence[str] = (),
    count_flops: bool = False,
) -> dict[str, Any]:
    """Train ``spec.method`` on ``spec.scenario`` and write ``<out>/<run_id>/run.json``.

    Args:
        spec: What to run.
        out: Directory that receives the run directory.
        checkpoint_every: Save a resumable checkpoint every N iterations (0 = never).
        progress: Show a progress bar with live accuracy.
        method_cls: Method class to run instead of looking ``spec.method`` up in
            ``METHODS`` (an unregistered or instrumented class, as in
            :mod:`cl_bench.testing`); ``spec.method`` then only names it.
        stop_after: Testing hook: raise :class:`RunInterrupted` once the run has
            done this many training iterations (after any evaluation and
            checkpoint due at that iteration), as if the process were killed
            there. The failed record and the last checkpoint stay for :func:`resume`.
        force: Overwrite a completed record or an interrupted run's checkpoint in the run directory.
            Without it a completed record is kept and returned, and a checkpoint is refused
            (:func:`cl_bench.engine.rundir.prepare_fresh`).
        log: Experiment trackers to write to (``tensorboard``, ``wandb``, ``mlflow``, ``csv``;
            :mod:`cl_bench.report.trackers`), into the run directory.
        count_flops: Count the FLOPs of every training step and evaluation with
            ``torch.utils.flop_counter`` into the record's ``cost`` (exact; makes steps ~4x slower).

    Returns:
        The completed run record.

    Raises:
        UserError: Bad names, values or data (nothing is written), or a diverging
            loss (a failed record with the partial matrix is written).
        RunInterrupted: When ``stop_after`` is reached.
    """
    run_dir = Path(out) / run_id_for(spec)
    # make_loop validates everything before anything touches the disk.
    r = make_loop(spec, run_dir, checkpoint_every, progress, method_cls, stop_after)
    r.trackers = Trackers(log, run_dir)  # validated (names, installed libraries) before the disk is touched
    r.count_flops = count_flops
    with rundir.claim(run_dir):
        kept = rundir.prepare_fresh(run_dir, force)
        if kept is not None:
            return kept
        remove_outputs(run_dir)  # a fresh run's curves must not append to an earlier attempt's
        return _drive(r, None)


def resume(
    run_dir: str | Path,
    *,
    checkpoint_every: int | None = None,
    progress: bool = False,
    method_cls: type[Method] | None = None,
    stop_after: int | None = None,
    log: Sequence[str] = (),
) -> dict[str, Any]:
    """Continue an interrupted run from its last checkpoint to the same result.

    Args:
        run_dir: The run directory (holding ``run.json`` and ``checkpoint.pt``).
        checkpoint_every: Checkpoint interval from now on (default: the run's own).
        progress: Show a progress bar with live accuracy.
        method_cls: As in :func:`run`; pass the same class the run was started with.
        stop_after: As in :func:`run`; counts the run's iterations from its start.
        log: As in :func:`run`; trackers continue from the checkpoint's iteration (CSV appends; the
            others start a second run or event file that picks up at that step).

    Raises:
        UserError: If ``run_dir`` holds no resumable run.
        RunInterrupted: When ``stop_after`` is reached.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD_FILE).exists():
        raise UserError(f"{run_dir} holds no run record; --resume takes the directory `cl-bench run` printed")
    record = load_record(run_dir)
    if record["status"] == "completed":
        return record
    spec = spec_from_record(record)
    if not (method_cls or METHODS.get(spec.method).obj).caps.resumable:
        raise UserError(
            f"{run_dir} is a run of {spec.method!r}, which cannot be checkpointed or resumed (caps.resumable "
            f"is False); run it again from the start"
        )
    if not checkpoint.path_of(run_dir).exists():
        raise UserError(
            f"{run_dir} has no checkpoint to resume from (it was run without --checkpoint-every, or failed "
            f"before the first one); run it again from the start"
        )
    every = checkpoint_every if checkpoint_every is not None else record["request"].get("checkpoint_every", 0)
    r = make_loop(spec, run_dir, every, progress, method_cls, stop_after)
    r.trackers = Trackers(log, run_dir)
    # A process killed inside an atomic write leaves its temporary file; the write it belonged to
    # never landed, so the file is garbage and the resumed run rewrites what it held.
    with rundir.claim(run_dir):
        for stale in run_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return _drive(r, checkpoint.load(run_dir, spec, spec.device))


def record_failure(spec: RunSpec, out: str | Path, error: str, checkpoint_every: int = 0) -> Path | None:
    """Leave a ``failed`` record for a run that stopped before its loop existed, unless it has a record.

    :func:`run` refuses a bad configuration before touching the disk (right for one command: the user sees the
    message). A sweep's run has no user watching; without a record, its failure would be missing from the board
    and from ``sweep --dry-run`` (issue 13). The record has the request and the error, and an empty matrix.

    Returns:
        The record's path, or None if the run directory already holds a record (which is kept).
    """
    from cl_bench.core.record import environment, new_record
    from cl_bench.metrics import AccuracyMatrix

    run_dir = Path(out) / run_id_for(spec)
    if (run_dir / RECORD_FILE).exists():
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    request = {"method_config": spec.method_config, "scenario_config": spec.scenario_config,
               "protocol": spec.protocol.to_dict(), "device": spec.device, "checkpoint_every": checkpoint_every}
    record = new_record(run_id=run_dir.name, status="failed",
                        method={"name": spec.method, "config": spec.method_config},
                        scenario={"name": spec.scenario, "spec": {}, "spec_hash": None},
                        protocol=spec.protocol.to_dict(), seed=spec.seed, matrix=AccuracyMatrix(0), cost={},
                        env=environment(spec.device), request=request, error=error)  # fmt: skip
    return write_record(run_dir, record)


__all__ = ["CHECKPOINT_FILE", "Protocol", "RunInterrupted", "RunSpec", "make_loop", "record_failure", "run", "resume",
           "run_id_for"]  # fmt: skip
