"""Checkpoint I/O of a run: the one place a run's state is written to or read from disk.

A checkpoint is the loop's state (position, matrix, method, RNG, cost) plus the identity of the run it
belongs to (:func:`cl_bench.engine.rundir.identity`), written atomically (temporary file + rename), so a
process killed mid-write leaves the previous checkpoint intact, and a resume refuses another run's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cl_bench.core import atomic
from cl_bench.core.errors import UserError
from cl_bench.engine import rundir

CHECKPOINT_FILE = rundir.CHECKPOINT_FILE


def path_of(run_dir: Path) -> Path:
    """``run_dir/checkpoint.pt``."""
    return Path(run_dir) / CHECKPOINT_FILE


def save(run_dir: Path, spec: Any, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (with ``spec``'s identity) as ``run_dir``'s checkpoint and return its path."""
    path = path_of(run_dir)
    # The temporary name matches the ".*.tmp" that resume() sweeps away.
    atomic.torch_save({**state, "identity": rundir.identity(spec)}, path)
    return path


def load(run_dir: Path, spec: Any, device: str) -> dict[str, Any]:
    """The checkpoint of ``run_dir``, mapped to ``device``, after checking that it belongs to ``spec``.

    Raises:
        UserError: Unreadable (corrupt) file, or a checkpoint of another run.
    """
    path = path_of(run_dir)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise UserError(f"cannot read checkpoint {path} ({err}); it is corrupt — start the run afresh") from None
    rundir.check_identity(state, spec, path)
    return state


def remove(run_dir: Path) -> None:
    """Delete ``run_dir``'s checkpoint (a completed run needs none)."""
    path_of(run_dir).unlink(missing_ok=True)


__all__ = ["CHECKPOINT_FILE", "load", "path_of", "remove", "save"]
