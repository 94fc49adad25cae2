"""Executors that run sweep jobs: a local process pool, or Ray.

Each job runs one :class:`~cl_bench.engine.spec.RunSpec` in a worker process through
:func:`execute_job`, which makes runs restartable and exactly-once:

- the run directory is ``<out>/<run_id>`` with a deterministic ``run_id``, so a
  restarted sweep finds its own records;
- a run whose record says ``completed`` is skipped; one with a checkpoint
  resumes from it (:func:`cl_bench.engine.runner.resume`); anything else starts afresh;
- while a worker runs a job it holds an exclusive ``flock`` on
  ``<out>/.locks/<run_id>.lock`` (holding its pid; :func:`cl_bench.engine.rundir.claim`, the same lock
  ``cl-bench run`` takes). The kernel drops the lock
  when the worker dies, so a retried or restarted job can take over, but two
  live processes never train the same run;
- records are written atomically by the runner, so a killed worker leaves the
  last checkpointed state, never a half-written record.

References:
    Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications" (OSDI 2018).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_bench.core.errors import DivergenceError, UserError
from cl_bench.engine import rundir

LOCK_DIR = rundir.LOCK_DIR


@dataclass(frozen=True)
class Job:
    """One run for a worker.

    Attributes:
        spec: The run.
        out: Absolute directory receiving the run directory.
        checkpoint_every: Checkpoint interval, so an interrupted run resumes.
        threads: torch intra-op threads of the worker (cores / workers).
        cwd: Directory that relative paths in the spec (e.g. a data root) refer to.
        trackers: Experiment trackers the run writes to (``--log``).
    """

    spec: Any
    out: str
    checkpoint_every: int
    threads: int
    cwd: str
    trackers: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobResult:
    """What became of a job: outcome "completed", "resumed", "skipped", "failed" or "busy"."""

    run_id: str
    outcome: str
    error: str | None = None
    seconds: float = 0.0
    pid: int = 0


def stderr_log(line: str) -> None:
    """Default progress sink."""
    print(line, file=sys.stderr, flush=True)


def is_completed(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a valid record with status ``completed``."""
    return rundir.status_of(run_dir) == "completed"


def state_of(run_dir: Path) -> str:
    """"completed", "resumable" (has a checkpoint), "failed" or "new"."""
    from cl_bench.engine.runner import CHECKPOINT_FILE

    status = rundir.status_of(run_dir)
    if status == "completed":
        return "completed"
    if status in ("running", "failed") and (run_dir / CHECKPOINT_FILE).exists():
        return "resumable"
    return "failed" if status == "failed" else "new"


def execute_job(job: Job) -> JobResult:
    """Run, resume or skip one job; never raises for a failing run (it reports it).

    Called in a worker process (a pool process or a Ray worker).
    """
    import torch

    from cl_bench.engine.runner import resume, run
    from cl_bench.engine.spec import run_id_for

    t0 = time.perf_counter()
    torch.set_num_threads(job.threads)
    if os.path.isdir(job.cwd) and os.getcwd() != job.cwd:
        os.chdir(job.cwd)
    run_id = run_id_for(job.spec)
    run_dir = Path(job.out) / run_id
    try:
        with rundir.claim(run_dir):
            state = state_of(run_dir)
            if state == "completed":
                return JobResult(run_id, "skipped", None, time.perf_counter() - t0, os.getpid())
            if state == "resumable":
                try:
                    resume(run_dir, checkpoint_every=job.checkpoint_every, log=job.trackers)
                    return JobResult(run_id, "resumed", None, time.perf_counter() - t0, os.getpid())
                except DivergenceError:
                    raise
                except UserError:  # unreadable checkpoint or another run's: this sweep's spec starts afresh
                    pass
            # force: the directory holds nothing this job can resume (state_of said so, or resume refused it)
            run(job.spec, job.out, checkpoint_every=job.checkpoint_every, force=True, log=job.trackers)
            return JobResult(run_id, "completed", None, time.perf_counter() - t0, os.getpid())
    except rundir.RunBusy as err:
        return JobResult(run_id, "busy", str(err), 0.0, os.getpid())
    except Exception as err:  # the run's failed record holds the traceback (or, if it never started, the error)
        from cl_bench.engine.runner import record_failure

        message = f"{type(err).__name__}: {err}"
        try:
            record_failure(job.spec, job.out, message, job.checkpoint_every)
        except Exception:  # noqa: S110 - an unwritable folder: the sweep's summary still names the failure
            pass
        return JobResult(run_id, "failed", message, time.perf_counter() - t0, os.getpid())


class Progress:
    """Counts runs done / running / failed and logs a line per finished run."""

    def __init__(self, total: int, done: int, slots: int, log: Callable[[str], None]) -> None:
        self.total, self.done, self.failed, self.slots, self.log = total, done, 0, slots, log
        self.outstanding = total - done

    def update(self, result: JobResult) -> None:
        self.outstanding -= 1
        if result.outcome in ("completed", "resumed", "skipped"):
            self.done += 1
        else:
            self.failed += 1
        running = min(self.slots, self.outstanding)
        pending = self.outstanding - running
        detail = f" ({result.error.strip().splitlines()[-1]})" if result.error else ""
        took = "" if math.isnan(result.seconds) else f" in {result.seconds:.1f}s"  # NaN: the run's time is unknown
        self.log(f"[sweep] done {self.done}/{self.total} | running {running} | failed {self.failed} | "
                 f"pending {pending} -- {result.run_id} {result.outcome}{took}{detail}")  # fmt: skip

    def retrying(self, n: int, attempt: int) -> None:
        self.outstanding += n
        self.failed -= n
        self.log(f"[sweep] a worker died: retrying {n} interrupted run(s) from their checkpoints (retry {attempt})")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_local(jobs: list[Job], workers: int, max_retries: int, progress: Progress) -> list[JobResult]:
    """Run ``jobs`` on a pool of ``workers`` spawned processes.

    If a worker dies (killed, out of memory), the pool breaks and every
    unfinished job is retried on a fresh pool, up to ``max_retries`` times;
    the retried jobs resume from their checkpoints.
    """
    results: dict[str, JobResult] = {}
    pending = list(jobs)
    attempt = 0
    while pending:
        interrupted: list[Job] = []
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        n = min(workers, len(pending))
        with cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                    initargs=(pending[0].threads,)) as pool:  # fmt: skip
            futures = {pool.submit(execute_job, job): job for job in pending}
            for fut in cf.as_completed(futures):
                job = futures[fut]
                try:
                    result = fut.result()
                except cf.process.BrokenProcessPool:
                    interrupted.append(job)
                    result = _pool_broke(job)
                results[result.run_id] = result
                progress.update(result)
        pending = []
        if interrupted and attempt < max_retries:
            attempt += 1
            progress.retrying(len(interrupted), attempt)
            pending = interrupted
    return list(results.values())


def _pool_broke(job: Job) -> JobResult:
    """The result of a job the broken pool took down: interrupted if it had started (its run directory exists),
    else never started; no duration, since none was measured (not "failed in 0.0s")."""
    from cl_bench.engine.spec import run_id_for

    run_id = run_id_for(job.spec)
    if (Path(job.out) / run_id).exists():
        why = "interrupted: a worker died (killed or out of memory); a restart resumes it from its checkpoint"
    else:
        why = "not started: a worker died and took the pool down before this run began"
    return JobResult(run_id, "failed", why, seconds=math.nan)


def run_ray(
    jobs: list[Job], workers: int, address: str | None, max_retries: int, progress: Progress
) -> list[JobResult]:
    """Run ``jobs`` as Ray tasks: on a local cluster of ``workers`` CPUs, or on the cluster at ``address``.

    Ray retries a task whose worker process died (``max_retries``); the retry
    resumes from the run's checkpoint. On a multi-node cluster ``out`` must be
    on a filesystem every node shares, and cl_bench must be installed there.
    """
    try:
        import ray
    except ImportError:
        raise UserError(
            "the ray executor needs Ray, which is not installed: pip install 'cl_bench[sweep]' (or pip install "
            "ray), or use --executor local"
        ) from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserError(f"cannot start or reach the Ray cluster {address or '(local)'}: {err}") from None
    try:
        task = ray.remote(num_cpus=1, max_retries=max_retries)(execute_job)
        refs = {task.remote(job): job for job in jobs}
        results = []
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as err:
                from cl_bench.engine.spec import run_id_for

                result = JobResult(run_id_for(job.spec), "failed", f"worker died: {type(err).__name__}")
            results.append(result)
            progress.update(result)
        return results
    finally:
        if started:
            ray.shutdown()
