"""Run directories: claim one with a lock, never delete a run's data implicitly, check checkpoint identity.

One mechanism for every front door (``cl-bench run``, :func:`cl_bench.run`, sweep workers):

- :func:`claim` takes an exclusive ``flock`` on ``<out>/.locks/<run_id>.lock`` (holding the pid). The kernel
  drops it when the process dies, so a crashed run can be taken over, but two live processes never write
  the same run directory. A process already holding the lock may claim again (the sweep worker claims,
  then calls :func:`cl_bench.engine.runner.run`, which claims too).
- :func:`prepare_fresh` decides what a fresh start may do with an existing directory: a completed record
  is kept (returned) unless ``force``; an interrupted run with a checkpoint is refused with the exact
  ``--resume`` command unless ``force``; ``force`` removes only the files a run writes, never the folder.
- :func:`identity` / :func:`check_identity`: a checkpoint records the run id and spec hash it belongs to,
  and a resume refuses a checkpoint of another run.

References:
    Linux ``flock(2)``: advisory locks on open file descriptions, released when the holder exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cl_bench.core.errors import UserError

LOCK_DIR = ".locks"
CHECKPOINT_FILE = "checkpoint.pt"
RECORD_FILE = "run.json"
# The files a run writes into its directory; --force removes these and nothing else.
RUN_FILES = (RECORD_FILE, CHECKPOINT_FILE, "accuracy.png")

_held: dict[str, int] = {}  # lock path -> claims by this process (re-entrant)


class RunBusy(UserError):
    """Another live process holds the run's lock."""


def lock_path(run_dir: Path) -> Path:
    """``<out>/.locks/<run_id>.lock`` of ``run_dir = <out>/<run_id>``."""
    return run_dir.parent / LOCK_DIR / f"{run_dir.name}.lock"


def check_out(out: Path) -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written (one paragraph)."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == out else f"lies under {parent}, which is a file"
                raise UserError(f"--out {out} {where}; give a directory (it is created if missing)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"--out {out}: {parent} is not writable (read-only or not yours); give a "
                                f"directory you can write to")  # fmt: skip
            return


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the block; raise :class:`RunBusy` if another live process holds it."""
    check_out(run_dir.parent)
    path = lock_path(run_dir)
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {path.parent} ({err.strerror}); give an --out directory you can write to") \
            from None
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise RunBusy(
                f"run {run_dir.name} is being written by another live process (pid {holder}, lock {path}); "
                f"wait for it to finish, or stop it, before running the same run again"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]


def status_of(run_dir: Path) -> str | None:
    """The status in ``run_dir``'s record, ``"invalid"`` for an unreadable one, None without one."""
    from cl_bench.core.record import RecordError, load_record

    if not (run_dir / RECORD_FILE).exists():
        return None
    try:
        return str(load_record(run_dir)["status"])
    except RecordError:
        return "invalid"


def resume_command(run_dir: Path) -> str:
    """The exact command that continues ``run_dir``."""
    return f"cl-bench run --resume {run_dir}"


def prepare_fresh(run_dir: Path, force: bool) -> dict[str, Any] | None:
    """Make ``run_dir`` ready for a fresh start; return the kept record if it is already completed.

    Raises:
        UserError: ``run_dir`` holds an interrupted run with a checkpoint (and not ``force``).
    """
    from cl_bench.core.record import load_record

    status = status_of(run_dir)
    if not force:
        if status == "completed":
            return load_record(run_dir)
        if (run_dir / CHECKPOINT_FILE).exists():
            raise UserError(
                f"{run_dir} holds an interrupted run (record status {status}) with a checkpoint; starting it "
                f"again would throw that progress away. Continue it with `{resume_command(run_dir)}`, or add "
                f"--force to discard it and start afresh"
            )
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for stale in run_dir.glob(".*.tmp") if run_dir.is_dir() else ():
        stale.unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {run_dir} ({err.strerror}); give an --out directory you can write to") \
            from None
    return None


def identity(spec: Any) -> dict[str, str]:
    """What a checkpoint belongs to: the run id and the full spec hash of ``spec``."""
    from cl_bench.core.types import spec_hash
    from cl_bench.engine.spec import run_id_for

    blob = {"method": spec.method, "mc": spec.method_config, "scenario": spec.scenario,
            "sc": spec.scenario_config, "protocol": spec.protocol.to_dict(), "seed": spec.seed}  # fmt: skip
    return {"run_id": run_id_for(spec), "spec_hash": spec_hash(blob)}


def check_identity(state: dict[str, Any], spec: Any, path: Path) -> None:
    """Refuse a checkpoint that belongs to another run than ``spec`` (one paragraph)."""
    want, got = identity(spec), state.get("identity")
    if got != want:
        found = "carries no run identity" if got is None else f"belongs to run {got.get('run_id')}"
        raise UserError(
            f"checkpoint {path} {found}, but the record beside it is run {want['run_id']}: resuming it would "
            f"mix two configurations into one record. Put back the checkpoint of this run, or start it afresh "
            f"with the original command and --force"
        )


__all__ = ["RunBusy", "check_identity", "check_out", "claim", "identity", "prepare_fresh", "resume_command",
           "status_of"]  # fmt: skip
