"""hf_split: Hugging Face datasets written with save_to_disk (and a local data folder) as class-incremental streams."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS

datasets = pytest.importorskip("datasets", reason="hf_split's tests need the hf extra: pip install 'cl_bench[hf]'")


def _png(shade: int, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(rng.normal(shade, 20, (14, 18, 3)), 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _dataset(n_per_class: int = 6, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    rows = [(c, _png(40 + 50 * c, rng)) for c in range(4) for _ in range(n_per_class)]
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b", "c", "d"])})
    return datasets.Dataset.from_dict({"img": [{"bytes": b, "path": None} for _, b in rows],
                                       "fine": [c for c, _ in rows]}, features=features)  # fmt: skip


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    datasets.DatasetDict({"train": _dataset(6), "test": _dataset(2, seed=1)}).save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_hf_split_reads_a_saved_dataset_dict_with_configurable_columns(saved: Path) -> None:
    s = SCENARIOS.create("hf_split", path=str(saved), image_column="img", label_column="fine", n_experiences=2,
                         image_size=16)  # fmt: skip
    assert s.spec["classes"] == ["a", "b", "c", "d"] and s.spec["n_train"] == 24 and s.spec["n_test"] == 8
    assert s.spec["split"] == "given 'train' and 'test' splits" and len(s.spec["data_sha256"]) == 64
    assert set(s[0].classes).isdisjoint(s[1].classes) and s[0].train.input_shape == (3, 16, 16)
    x, y = s[0].train.batch(slice(None))
    assert float(x.max()) <= 1.0 and set(y.tolist()) == set(s[0].classes)
    again = SCENARIOS.create("hf_split", path=str(saved), image_column="img", label_column="fine",
                             n_experiences=2, image_size=16)  # fmt: skip
    assert again.spec_hash == s.spec_hash


def test_hf_split_content_hash_follows_the_data_and_a_single_split_is_held_out(tmp_path: Path) -> None:
    _dataset(5).save_to_disk(str(tmp_path / "one"))
    kw = {"image_column": "img", "label_column": "fine", "n_experiences": 2, "image_size": 16}
    s = SCENARIOS.create("hf_split", path=str(tmp_path / "one"), **kw)
    assert s.spec["split"].startswith("seeded 80/20") and s.spec["n_train"] + s.spec["n_test"] == 20
    _dataset(5, seed=7).save_to_disk(str(tmp_path / "other"))  # other pixels, same shapes and labels
    other = SCENARIOS.create("hf_split", path=str(tmp_path / "other"), **kw)
    assert other.spec["data_sha256"] != s.spec["data_sha256"] and other.spec_hash != s.spec_hash
    # The same data saved elsewhere is the same stream (the path is data:, not spec).
    _dataset(5).save_to_disk(str(tmp_path / "copy"))
    assert SCENARIOS.create("hf_split", path=str(tmp_path / "copy"), **kw).spec_hash == s.spec_hash


def test_hf_split_by_name_from_a_local_data_folder_with_integer_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (30, 8, 8), dtype=np.uint8)
    y = np.repeat([3, 5, 9], 10)
    folder = tmp_path / "parquet"
    folder.mkdir()
    datasets.Dataset.from_dict({"pixels": x.tolist(), "digit": y.tolist()}).to_parquet(str(folder / "train.parquet"))
    s = SCENARIOS.create("hf_split", dataset=str(folder), cache_dir=str(tmp_path / "cache"), image_column="pixels",
                         label_column="digit", n_experiences=3)  # fmt: skip
    assert s.spec["classes"] == ["3", "5", "9"] and s.spec["input_shape"] == [1, 8, 8]
    assert [len(e.classes) for e in s] == [1, 1, 1]


@pytest.mark.slow
def test_hf_split_runs_from_the_cli(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-q", "--scenario", "hf_split", "--set", f"scenario.path={saved}", "--set",
                 "scenario.image_column=img", "--set", "scenario.label_column=fine", "--set",
                 "scenario.n_experiences=2", "--set", "scenario.image_size=16", "--method", "er", "--set", "model=cnn",
                 "--epochs", "1", "--out", str(tmp_path / "runs")]) == 0, capsys.readouterr().err  # fmt: skip
    (record,) = (tmp_path / "runs").glob("*/run.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "completed" and rec["scenario"]["spec"]["dataset"] == "huggingface"


@pytest.mark.parametrize(("kw", "needle"), [
    ({"path": None}, "exactly one source"),
    ({"path": "/nonexistent/hf"}, "not a folder"),
    ({"image_column": "pixels"}, "no image column 'pixels'"),
    ({"label_column": "coarse"}, "no label column 'coarse'"),
    ({"train_split": "validation"}, "not 'validation'"),
])  # fmt: skip
def test_bad_hf_input_is_one_clear_error(kw: dict, needle: str, saved: Path) -> None:
    args = {"path": str(saved), "image_column": "img", "label_column": "fine", "image_size": 16, **kw}
    with pytest.raises((ConfigError, DataError), match=needle):
        SCENARIOS.create("hf_split", **args)


def test_missing_datasets_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, saved: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'cl_bench\[hf\]'"):
        SCENARIOS.create("hf_split", path=str(saved))
