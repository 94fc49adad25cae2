"""Atomic writes (cl_bench.core.atomic): whole files only, with the mode the umask gives (issue 19)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cl_bench.core import atomic
from cl_bench.core.record import write_record
from cl_bench.metrics import AccuracyMatrix
from cl_bench.report.plots import plot_accuracy_curves


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def mask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(mask: int) -> None:
    assert atomic.umask() == mask
    assert atomic.umask() == mask


def test_every_writer_gives_the_umask_mode(mask: int, tmp_path: Path) -> None:
    want = {0o022: 0o644, 0o002: 0o664}[mask]
    atomic.write_text(tmp_path / "a.txt", "hello")
    atomic.write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    atomic.torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    m = AccuracyMatrix(1)
    m.mark_boundary(m.add_point(0, [1], [2]))
    record = {"method": {"name": "m"}, "scenario": {"name": "s"}, "seed": 0, "accuracy_matrix": m.to_dict()}
    run_json = write_record(tmp_path / "run", record)
    png = plot_accuracy_curves(record, tmp_path / "curves.png")
    files = [tmp_path / "a.txt", tmp_path / "sub" / "b.bin", tmp_path / "c.pt", run_json, png]
    assert {f.name: _mode(f) for f in files} == {f.name: want for f in files}
    assert (tmp_path / "a.txt").read_text() == "hello" and (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file is left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_text("half")
        assert tmp.name.startswith(".run.json.") and tmp.name.endswith(".tmp")  # what resume() sweeps away
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
