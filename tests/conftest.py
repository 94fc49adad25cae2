"""Test-session settings shared by every test module."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cl_bench.testing.mnist import MNIST_ENV, MNIST_TEST_FILES, default_mnist_folder, find_mnist

# The suite trains tiny models whose matmuls are far too small to gain from intra-op threads;
# with PyTorch's default (one thread per core) they slow down badly whenever anything else
# competes for the cores. Subprocesses (CLI runs, sweep workers) inherit the variables.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
torch.set_num_threads(1)


# -- the real MNIST test set ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """Folder with the real MNIST test set (IDX files); the test is skipped, saying how to provide it, if absent."""
    root = find_mnist()
    if root is None:
        where = default_mnist_folder()
        pytest.skip(
            f"real MNIST test set not found in {where}: set {MNIST_ENV}=DIR to a folder holding "
            f"{' and '.join(MNIST_TEST_FILES)} (gzip or not)"
        )
    return root


# -- sweeps without a process pool ------------------------------------------------------------------------------------
def _run_inline(jobs: list[Any], workers: int, max_retries: int, progress: Any) -> list[Any]:
    """``executors.run_local`` without the pool: each job in turn, in this process."""
    from cl_bench.ops import executors

    results = []
    for job in jobs:
        # One intra-op thread, as the rest of the suite (a pool job gets cores / workers).
        results.append(executors.execute_job(dataclasses.replace(job, threads=1)))
        progress.update(results[-1])
    return results


def _inline(mp: pytest.MonkeyPatch) -> Iterator[None]:
    from cl_bench.ops import executors

    n = torch.get_num_threads()
    mp.setattr(executors, "run_local", _run_inline)
    yield
    torch.set_num_threads(n)  # execute_job sets the worker's thread count


@pytest.fixture
def inline_executor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run sweep and tune jobs one after another in this process instead of on a spawned pool.

    Each pool worker starts an interpreter and imports torch (seconds per worker on a busy machine), which is
    most of a small sweep's time; tests whose point is not the pool use this (the job code, ``execute_job``,
    is the same). The pool itself is covered in the full suite by ``test_sweep_on_the_process_pool``
    (tests/test_reports.py) and, with a killed worker, by ``tests/test_sweep_evidence.py``.
    """
    yield from _inline(monkeypatch)


@pytest.fixture(scope="module")
def inline_executor_module() -> Iterator[None]:
    """:func:`inline_executor` for a module-scoped fixture (e.g. one sweep shared by a module's tests)."""
    with pytest.MonkeyPatch.context() as mp:
        yield from _inline(mp)
