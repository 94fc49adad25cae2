"""Run records: the JSON contract every tool reads (DESIGN.md, "Run record").

Records are written atomically (temp file + rename, :mod:`cl_bench.core.atomic`), so a reader never sees a
half-written file, and loading one recomputes its metrics from the accuracy
matrix and checks that they agree.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from cl_bench.core import atomic
from cl_bench.core.errors import UserError
from cl_bench.metrics import Matrix, compute_all, matrix_from_dict, matrix_kind
from cl_bench.metrics.source_curve import source_curve_metrics

SCHEMA_VERSION = 1
RECORD_FILE = "run.json"
REQUIRED_KEYS = (
    "schema_version", "run_id", "status", "method", "scenario", "protocol", "seed",
    "accuracy_matrix", "metrics", "cost", "env", "error",
)  # fmt: skip
STATUSES = ("completed", "failed", "running")
#: A record's ``kind``: which loop made it and so which matrix type (and metrics) it holds.
KINDS = ("cl", "tta")
#: ``data_seconds``: building the scenario (loading, splitting); ``*_flops``: counted with
#: ``torch.utils.flop_counter`` when the run asked for it (``--count-flops``); ``n_params``: the method's network;
#: ``exemplars`` / ``buffer_bytes``: what a method with a memory keeps at the end (``Method.memory_size`` /
#: ``Method.memory_bytes``), for comparisons at equal memory.
COST_KEYS = ("train_seconds", "eval_seconds", "peak_rss_mb", "source_seconds", "data_seconds", "train_flops",
             "eval_flops", "n_params", "peak_gpu_mb", "exemplars", "buffer_bytes")  # fmt: skip


class RecordError(UserError):
    """A record file is unreadable or does not follow the schema."""


#: Kept for callers of the old name: :func:`cl_bench.core.atomic.write_bytes`.
atomic_write_bytes = atomic.write_bytes


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    """Atomically write ``record`` as ``run_dir/run.json`` and return the path."""
    path = Path(run_dir) / RECORD_FILE
    atomic.write_bytes(path, (json.dumps(_jsonable(record), indent=1) + "\n").encode())
    return path


def new_record(
    *,
    run_id: str,
    status: str,
    method: dict[str, Any],
    scenario: dict[str, Any],
    protocol: dict[str, Any],
    seed: int,
    matrix: Matrix,
    cost: dict[str, float],
    env: dict[str, Any],
    request: dict[str, Any],
    error: str | None,
) -> dict[str, Any]:
    """A run record: the one place its top-level schema is spelled (DESIGN.md, "Run record").

    Args:
        run_id: Name of the run directory.
        status: One of :data:`STATUSES`.
        method: ``{"name", "config", ...extras}`` of the method.
        scenario: ``{"name", "spec", "spec_hash"}`` of the stream.
        protocol: The resolved protocol (with the stream's ``setting``).
        seed: The run seed.
        matrix: The matrix so far (an ``AccuracyMatrix``, or a ``TTAMatrix`` for test-time adaptation: it
            sets the record's ``kind``); the record's metrics are computed from it here.
        cost: Seconds spent per phase (rounded to ms here) and ``peak_rss_mb``; keys from :data:`COST_KEYS`.
        env: Versions and platform (:func:`environment`).
        request: What was asked (unresolved configs, device, checkpoint interval), for resuming.
        error: ``"Type: message"`` of a failed run, else None.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    unknown = set(cost) - set(COST_KEYS)
    if unknown:
        raise ValueError(f"unknown cost keys {sorted(unknown)}; expected some of {COST_KEYS}")
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": status,
        "kind": matrix.kind,
        "method": method,
        "scenario": scenario,
        "protocol": protocol,
        "seed": seed,
        "accuracy_matrix": matrix.to_dict(),
        "metrics": compute_all(matrix),
        "cost": {k: (round(v, 3) if k.endswith("_seconds") else v) for k, v in cost.items()},
        "env": env,
        "request": request,
        "error": error,
    }


def add_source_curve(record: dict[str, Any], curve: list[list[int]]) -> dict[str, Any]:
    """Add a TTA run's clean-source curve to ``record``, in place: the optional top-level field.

    ``record["source_curve"]`` is the list of ``[iteration, correct, total]`` points measured with
    ``Protocol.tta_source_every`` (outside the accuracy matrix), and ``record["metrics"]`` gains
    ``source_acc_min`` and ``source_forgetting`` computed from it (:mod:`cl_bench.metrics.source_curve`).
    Records of runs without the setting have neither.
    """
    record["source_curve"] = [[int(v) for v in point] for point in curve]
    record["metrics"].update(source_curve_metrics(record["source_curve"]))
    return record


def environment(device: str) -> dict[str, Any]:
    """The ``env`` block of a record: versions, device, commit and platform of this process."""
    import platform

    import torch

    from cl_bench import __version__

    return {
        "cl_bench": __version__, "torch": torch.__version__, "device": device, "git_sha": git_sha(),
        "python": platform.python_version(), "platform": platform.platform(),
    }  # fmt: skip


def validate_record(record: Any, source: str = "record") -> None:
    """Check the schema of a loaded record and that its metrics match its matrix.

    Raises:
        RecordError: Naming the first problem found.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{source} is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RecordError(f"{source} lacks the keys {', '.join(missing)}; it is not a cl_bench run record")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{source} has schema_version {record['schema_version']}; this cl_bench reads {SCHEMA_VERSION}"
        )
    if record["status"] not in STATUSES:
        raise RecordError(f"{source} has status {record['status']!r}; expected one of {', '.join(STATUSES)}")
    if record.get("kind", "cl") not in KINDS:
        raise RecordError(f"{source} has kind {record['kind']!r}; expected one of {', '.join(KINDS)}")
    try:
        matrix = matrix_from_dict(record["accuracy_matrix"], kind=record.get("kind"))
    except (ValueError, TypeError) as err:
        raise RecordError(f"{source} has a malformed accuracy_matrix: {err}") from None
    stored = record["metrics"] or {}
    fresh = compute_all(matrix, [k for k in stored if k in _known_metrics()])
    for name, value in fresh.items():
        old = stored[name]
        if (value is None) != (old is None) or (value is not None and abs(value - old) > 1e-9):
            raise RecordError(
                f"{source}: metric {name} is stored as {old} but its accuracy matrix gives {value}; "
                f"the record was edited or written by an incompatible version"
            )


def _known_metrics() -> set[str]:
    from cl_bench.metrics import METRIC_SPECS

    return set(METRIC_SPECS)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate a record (``run.json`` or the run directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"no run record at {path}; pass a run.json file or the run directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path} is not valid JSON ({err}); the record is corrupt") from None
    validate_record(record, str(path))
    return record


def record_kind(record: dict[str, Any]) -> str:
    """A record's ``kind`` ("cl" | "tta"), inferred from its matrix for records written without one."""
    return str(record.get("kind") or matrix_kind(record["accuracy_matrix"]))


def matrix_of(record: dict[str, Any]) -> Matrix:
    """The matrix stored in a record: an ``AccuracyMatrix``, or a ``TTAMatrix`` for ``kind`` "tta"."""
    return matrix_from_dict(record["accuracy_matrix"], kind=record.get("kind"))


def git_sha() -> str | None:
    """Commit of the cl_bench checkout, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
