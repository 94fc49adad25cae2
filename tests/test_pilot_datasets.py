"""PILOT's datasets (CUB-200, ImageNet-A, ObjectNet, OmniBenchmark, VTAB, Cars) on trees in the released layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cl_bench.cli import main
from cl_bench.core.errors import DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.scenarios.pilot import DATASETS
from cl_bench.testing.layouts import write_train_test_folders


def test_every_pilot_dataset_is_registered_with_its_class_count() -> None:
    assert set(DATASETS) <= set(SCENARIOS.names())
    assert {n: d.n_classes for n, d in DATASETS.items()} == {
        "split_cub200": 200, "split_imagenet_a": 200, "split_objectnet": 200, "split_omnibenchmark": 300,
        "split_vtab": 50, "split_cars": 196}  # fmt: skip


@pytest.mark.slow
def test_vtab_in_the_released_layout_runs_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_train_test_folders(tmp_path / "vtab", 50)
    s = SCENARIOS.create("split_vtab", root=str(root), image_size=16, workers=0)
    assert len(s) == 5 and all(len(e.classes) == 10 for e in s) and s.spec["n_train"] == 100
    # PILOT's order: np.random.seed(1993); np.random.permutation(50), dealt into groups of 10.
    order = np.random.RandomState(1993).permutation(50).tolist()
    assert s.spec["class_order"] == order and s[0].classes == tuple(sorted(order[:10]))
    assert s[0].train.input_shape == (3, 16, 16)
    out = tmp_path / "runs"
    assert main(["run", "-q", "--scenario", "split_vtab", "--set", f"scenario.root={root}", "--set",
                 "scenario.image_size=16", "--set", "scenario.workers=0", "--method", "finetune", "--set",
                 "model=cnn", "--epochs", "1", "--batch-size", "16", "--out", str(out)]) == 0  # fmt: skip
    (record,) = out.glob("*/run.json")
    assert json.loads(record.read_text())["status"] == "completed"


def test_pilot_layout_errors_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*ROOT/train/<class>"):
        SCENARIOS.create("split_cub200", root=str(tmp_path / "nope"))
    write_train_test_folders(tmp_path / "small", 20)
    with pytest.raises(DataError, match="has 20 class folders, CUB-200-2011 has 200"):
        SCENARIOS.create("split_cub200", root=str(tmp_path / "small"))
    flat = tmp_path / "flat" / "a"
    flat.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "0.png")
    with pytest.raises(DataError, match="no train/ and test/ folders"):
        SCENARIOS.create("split_cars", root=str(tmp_path / "flat"))
