"""The shipped reproduction suite (``cl_bench/recipes``): schema, listing, missing data, board, smoke runs.

Every recipe is smoke-run (``cl-bench reproduce run NAME --smoke``, two iterations per experience) on tiny
files written here in the real formats: CIFAR python pickles, CIFAR-10-C ``.npy`` arrays, ImageNet-R wnid
folders with CODA-Prompt split files, MNIST IDX files. That proves each recipe starts as published; what it
reaches needs the real data (``docs/reproduce.md``).
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from cl_bench.cli import main
from cl_bench.core.errors import DataError
from cl_bench.core.record import RECORD_FILE
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.data.corruptions import BENCHMARK_ORDER
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.nets.registry import list_models
from cl_bench.ops import reproduce_board
from cl_bench.ops.reproduce import load_recipes, recipe_command, run_recipes, specs_for
from cl_bench.ops.reproduce_board import board_rows, format_board

RECIPES = load_recipes()
REPO = Path(__file__).resolve().parents[1]


# -- fake data in the real formats ------------------------------------------------------------------------------------
def _batch(n: int, n_classes: int, seed: int, key: bytes) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: (np.arange(n) % n_classes).tolist(),
            b"batch_label": b"fake", b"filenames": [f"{seed}_{i}.png".encode() for i in range(n)]}  # fmt: skip


def write_cifar10(root: Path, per_batch: int = 8) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(per_batch, 10, i, b"labels"), protocol=2))
    (d / "test_batch").write_bytes(pickle.dumps(_batch(20, 10, 0, b"labels"), protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2))
    return root


def write_cifar100(root: Path) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n, seed in (("train", 200, 1), ("test", 100, 2)):
        batch = _batch(n, 100, seed, b"fine_labels")
        batch[b"coarse_labels"] = [y // 5 for y in batch[b"fine_labels"]]
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}  # fmt: skip
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_cifar10_c(root: Path, rows: int = 2, n_classes: int = 10) -> Path:
    # Released layout, fewer rows: <corruption>.npy (5 * rows, 32, 32, 3) uint8, severity s in rows (s-1)*rows...
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    np.save(root / "labels.npy", rng.integers(0, n_classes, 5 * rows).astype(np.uint8))
    for name in BENCHMARK_ORDER:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * rows, 32, 32, 3), dtype=np.uint8))
    return root


WNIDS = [f"n0{1440000 + 7 * i}" for i in range(20)] + ["n01443537", "n01484850"]


def write_imagenet_r(root: Path, per_class: int = 3) -> tuple[Path, Path]:
    """22 wnid folders of small JPEGs (the two first wnids of the real set among them) and CODA-style split files."""
    splits = root.parent / "splits"
    splits.mkdir(parents=True)
    train: dict[str, list[Any]] = {"data": [], "targets": []}
    test: dict[str, list[Any]] = {"data": [], "targets": []}
    for c, wnid in enumerate(WNIDS):
        for k in range(per_class):
            arr = np.random.default_rng(100 * c + k).integers(0, 255, (20, 24, 3), dtype=np.uint8)
            path = root / wnid / f"art_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            part = test if k == per_class - 1 else train
            part["data"].append(f"data/imagenet-r/{wnid}/{path.name}")
            part["targets"].append(c)
    (splits / "imagenet-r_train.yaml").write_text(yaml.safe_dump(train))
    (splits / "imagenet-r_test.yaml").write_text(yaml.safe_dump(test))
    return root, splits


def write_imagenet_c(root: Path, wnids: tuple[str, ...] = ("n01440764", "n01443537", "n01484850")) -> tuple[Path, Path]:
    """The released layout <corruption>/5/<wnid>/*.JPEG for the 15 benchmark corruptions (3 wnids, 2 images each)
    and a small cnn_bn source state dict with a 3-unit head (the recipes' smoke source_model)."""
    import torch

    from cl_bench.nets.models import build_source_model

    rng = np.random.default_rng(0)
    for c in BENCHMARK_ORDER:
        for k, wnid in enumerate(wnids):
            folder = root / c / "5" / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                arr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"ILSVRC2012_val_{k * 10 + i:08d}.JPEG")
    torch.manual_seed(0)
    weights = root.parent / "imagenet_c_source.pt"
    torch.save(build_source_model("cnn_bn", (3, 32, 32), len(wnids)).state_dict(), weights)
    return root, weights


def write_imagenet_shift(root: Path, wnids: tuple[str, ...] = ("n01443537", "n01484850", "n12267677")) -> Path:
    """Three class folders (ImageNet-R wnids, also ImageNet-1k ones: valid for Sketch) of small JPEGs."""
    rng = np.random.default_rng(1)
    for wnid in wnids:
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / wnid / f"img_{i}.jpg")
    return root


def write_source_1k(path: Path) -> Path:
    """A small cnn_bn source state dict with a 1,000-unit ImageNet head (imagenet_shift's smoke source)."""
    import torch

    from cl_bench.nets.models import build_source_model

    torch.manual_seed(0)
    torch.save(build_source_model("cnn_bn", (3, 32, 32), 1000).state_dict(), path)
    return path


def _idx(path: Path, arr: np.ndarray) -> None:
    blob = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(blob))


def write_mnist(root: Path, n_train: int = 100, n_test: int = 40) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("recipe_data")
    imr, splits = write_imagenet_r(base / "imagenet-r")
    imc, imc_weights = write_imagenet_c(base / "ImageNet-C")
    return {"imagenet_c": imc, "imagenet_c_weights": imc_weights,
            "imagenet_shift": write_imagenet_shift(base / "imagenet-shift"),
            "imagenet_shift_weights": write_source_1k(base / "source_1k.pt"),
            "cifar10": write_cifar10(base / "cifar10"), "cifar100": write_cifar100(base / "cifar100"),
            "cifar10_c": write_cifar10_c(base / "CIFAR-10-C"), "mnist": write_mnist(base / "mnist"),
            "cifar100_c": write_cifar10_c(base / "CIFAR-100-C", n_classes=100),
            "imagenet_r": imr, "splits": splits}  # fmt: skip


def smoke_sets(name: str, data: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The ``--set`` values a user passes: each data parameter of the recipe pointed at the fake files."""
    what = {"split_cifar10": "cifar10", "split_cifar100": "cifar100", "cifar10_c": "cifar10_c",
            "cifar100_c": "cifar100_c", "split_mnist": "mnist", "permuted_mnist": "mnist",
            "split_imagenet_r": "imagenet_r",
            "imagenet_c": "imagenet_c", "imagenet_shift": "imagenet_shift"}  # fmt: skip
    recipe = RECIPES[name]
    sets: dict[str, dict[str, Any]] = {"method": {}, "scenario": {}}
    for d in recipe.data:
        if d.when == "full":
            continue
        section, _, key = d.param.partition(".")
        clean = data["cifar100" if recipe.scenario == "cifar100_c" else "cifar10"]
        folder = {"root": data[what[recipe.scenario]], "clean_root": clean, "split_dir": data["splits"],
                  "source_weights": data.get(f"{recipe.scenario}_weights")}[key]
        sets[section][key] = str(folder)
    if recipe.scenario == "split_imagenet_r":
        sets["scenario"].update(workers=0, image_size=32)  # tiny JPEGs; the smoke backbone resizes anyway
    return sets


# -- schema and listing (fast) ----------------------------------------------------------------------------------------
def test_at_least_25_recipes_every_one_runnable_here() -> None:
    assert len(RECIPES) >= 25
    unavailable = [r.name for r in RECIPES.values() if not r.available]
    assert unavailable == [], f"recipes whose method or scenario is not registered: {unavailable}"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_schema(name: str) -> None:
    r = RECIPES[name]
    assert 0 < r.reported < 1 and 0 < r.tolerance < 0.1, "values are fractions, as cl_bench's metrics"
    assert r.reported_std is None or r.tolerance >= r.reported_std
    assert r.paper and r.reported_in and r.tolerance_source and r.setting, "each names its source and setting"
    assert r.data, "each names the data it needs"
    for d in r.data:
        assert d.published and d.what
    assert isinstance(r.compute.get("gpu_hours"), (int, float)) and r.compute.get("note")
    # configs are real: unknown fields or values fail here, not on a GPU hours later
    specs = specs_for(r, seeds=[0])
    METHODS.config(r.method, specs[0].method_config)
    model = specs[0].method_config.get("model")
    assert model is None or model in list_models()
    assert set(specs[0].scenario_config) <= set(SCENARIOS.parameters(r.scenario)), "unknown scenario fields"
    assert isinstance(specs[0].protocol, Protocol) and specs[0].protocol.recipe == name
    assert len(set(r.seeds)) == len(r.seeds) >= 3
    assert recipe_command(r).startswith(f"cl-bench reproduce run {name}")


def test_recipes_of_source_data_methods_name_the_source_data_or_say_it_is_missing() -> None:
    # RMT runs source-free when the stream has no source data, silently; a recipe must not let that pass unsaid.
    for r in RECIPES.values():
        if METHODS.get(r.method).obj.caps.source_data == "none":
            continue
        listed = any(d.param == "scenario.clean_root" and d.when == "always" for d in r.data)
        assert listed or "No source data:" in r.notes, f"{r.name}: source data neither in data: nor in notes"


def test_reproduce_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 25 and all(isinstance(r["reported"], float) for r in rows)
    assert {r["method"] for r in rows} >= {"er", "der", "derpp", "agem", "source", "bn_adapt", "tent", "eata", "sar",
                                           "cotta", "rotta", "adacontrast", "rmt", "lame", "roid", "ncm", "l2p",
                                           "dualprompt", "coda_prompt", "slca", "ranpac"}


def test_missing_data_is_one_paragraph_naming_files_and_checksums(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reproduce", "run", "der_t2_der_seqcifar10_buf200", "--set", f"scenario.root={tmp_path}",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and "\n" not in err.removeprefix("error: ")
    for needle in ("cifar-10-batches-py/data_batch_1", "c99cafc152244af753f735de768cd75f",
                   "cifar-10-python.tar.gz", "--set scenario.root="):
        assert needle in err
    assert not (tmp_path / "out").exists(), "nothing is written before the data is there"
    with pytest.raises(DataError, match="RobustBench"):
        run_recipes(["rmt_bench_tent_cifar10c_continual"], sets={"scenario": {"root": str(tmp_path)}},
                    out=tmp_path / "o2")  # fmt: skip


def test_docs_table_has_one_row_and_one_command_per_recipe() -> None:
    spec = importlib.util.spec_from_file_location("reproduce_table", REPO / "benchmarks" / "reproduce_table.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    rows = [line for line in module.table(None).splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == len(RECIPES) and all("`cl-bench reproduce run " in row for row in rows)
    assert all("not run here" in row for row in rows)
    doc = (REPO / "docs" / "reproduce.md").read_text()
    assert all(f"| {name} |" in doc for name in RECIPES), "docs/reproduce.md is stale: run the --write command"


# -- the board on synthetic records -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real (valid) record of a tiny run, which the synthetic records below are made from."""
    return run(RunSpec("finetune", scenario="toy", protocol=Protocol(eval_every=0)), tmp_path_factory.mktemp("tpl"))


def _record(template: dict[str, Any], folder: Path, recipe: str, metric: str, value: float, seed: int,
            smoke: bool = False) -> None:  # fmt: skip
    record = copy.deepcopy(template)
    record["protocol"].update(recipe=recipe, **({"max_iterations": 2} if smoke else {}))
    record["metrics"][metric] = value
    record["seed"] = seed
    d = folder / f"{recipe}-{seed}-{int(smoke)}"
    d.mkdir(parents=True)
    (d / RECORD_FILE).write_text(json.dumps(record))


def test_board_verdicts_on_synthetic_records(template: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Synthetic metric values cannot agree with the template's accuracy matrix, which load_record re-checks;
    # the board is tested on the records' other fields as written.
    monkeypatch.setattr(reproduce_board, "load_record", lambda p: json.loads(Path(p).read_text()))
    der, tent, ncm = (RECIPES[n] for n in ("der_t2_der_seqcifar10_buf200", "rmt_bench_tent_cifar10c_continual",
                                            "ptm_ncm_cifar100_10tasks"))  # fmt: skip
    for seed, off in enumerate((-0.01, 0.01, 0.0)):
        _record(template, tmp_path, der.name, der.metric, der.reported + off, seed)  # within 2 std: reproduced
    for seed in range(2):
        _record(template, tmp_path, tent.name, tent.metric, tent.reported + 0.05, seed)  # 5 points off: not reproduced
    _record(template, tmp_path, ncm.name, ncm.metric, 0.1, 0, smoke=True)  # smoke records are never compared
    rows = {r["name"]: r for r in board_rows([tmp_path], RECIPES)}
    assert rows[der.name]["verdict"] == "reproduced" and rows[der.name]["seeds"] == 3
    assert rows[der.name]["measured"] == pytest.approx(der.reported)
    assert rows[tent.name]["verdict"] == "not reproduced" and rows[tent.name]["delta"] == pytest.approx(0.05)
    assert rows[ncm.name]["verdict"] == "smoke only"
    assert rows["ptm_slca_cifar100_10tasks"]["verdict"] == "not run"
    table = format_board(list(rows.values()))
    assert "| der_t2_der_seqcifar10_buf200 | final_acc | 61.93 ± 1.79 |" in table


# -- every recipe starts as published (smoke) -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_smoke_run(name: str, fake_data: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    sets = smoke_sets(name, fake_data)
    args = ["reproduce", "run", name, "--smoke", "--seeds", "0", "--out", str(tmp_path)]
    for section, values in sets.items():
        args += [a for k, v in values.items() for a in ("--set", f"{section}.{k}={v}")]
    assert main(args) == 0, capsys.readouterr().err
    (record,) = [json.loads(p.read_text()) for p in tmp_path.rglob(RECORD_FILE)]
    assert record["status"] == "completed" and record["protocol"]["recipe"] == name
    assert record["protocol"]["max_iterations"] == 2
    assert record["metrics"][RECIPES[name].metric] is not None
    rows = {r["name"]: r for r in board_rows([tmp_path], RECIPES)}
    assert rows[name]["verdict"] == "smoke only"


def _smoke_args(name: str, data: dict[str, Path], out: Path) -> list[str]:
    args = ["reproduce", "run", name, "--smoke", "--out", str(out)]
    for section, values in smoke_sets(name, data).items():
        args += [a for k, v in values.items() for a in ("--set", f"{section}.{k}={v}")]
    return args


@pytest.mark.slow
def test_reproduce_on_ray_runs_every_seed_and_skips_completed(fake_data: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    if not os.environ.get("CI"):
        pytest.importorskip("ray")
    name = "clb_gdumb_splitmnist"
    args = [*_smoke_args(name, fake_data, tmp_path), "--seeds", "0,1", "--executor", "ray", "--workers", "2"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count(f"{name}: seed") == 2 and "2 run(s)" in out
    records = sorted((json.loads(p.read_text()) for p in tmp_path.rglob(RECORD_FILE)), key=lambda r: r["seed"])
    assert [r["seed"] for r in records] == [0, 1] and {r["status"] for r in records} == {"completed"}
    assert {r["protocol"]["recipe"] for r in records} == {name}
    mtimes = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob(RECORD_FILE))
    assert main(args) == 0  # a second call finds both completed: skipped, records untouched
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob(RECORD_FILE)) == mtimes


def test_reproduce_workers_without_ray_is_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "run", "clb_gdumb_splitmnist", "--smoke", "--workers", "2", "--out",
                 str(tmp_path / "o")]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "--executor ray" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_leaderboard_marks_reported_measured_reproduced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cl_bench.report.leaderboard import Reported, build_board
    from cl_bench.report.writers import to_csv, to_markdown

    proto = Protocol(eval_every=0, recipe="toy_recipe")
    for seed in (0, 1):
        run(RunSpec("finetune", scenario="toy", protocol=proto, seed=seed), tmp_path / "rec")
    run(RunSpec("finetune", scenario="toy", protocol=Protocol(eval_every=0)), tmp_path / "plain")
    measured = build_board([tmp_path / "rec"]).groups[0].rows[0].cell("final_acc").mean

    def board(value: float) -> Any:
        rep = Reported("toy_recipe", "Someone et al. (2020), Table 1", "final_acc", value, 0.01, 0.02)
        return build_board([tmp_path], reported={"toy_recipe": rep})

    near, far = board(measured + 0.015), board(measured - 0.2)
    marks = {g.protocol.get("recipe", ""): [r.mark for r in g.rows] for g in near.groups}
    assert marks == {"toy_recipe": ["reproduced", "reported"], "": ["measured"]}
    (far_group,) = [g for g in far.groups if g.protocol.get("recipe")]
    assert [r.mark for r in far_group.rows] == ["not reproduced", "reported"]
    reported_row = far_group.rows[1]
    assert reported_row.rank is None and reported_row.records == []
    assert reported_row.cell("final_acc").text() == f"{measured - 0.2:.4f} ± 0.0100"
    assert reported_row.cell("forgetting").text() == "n/a"
    md = to_markdown(near)
    assert "| rank | method | mark | n |" in md and "| reproduced | 2 |" in md and "| reported | 0 |" in md
    assert to_csv(near).splitlines()[0].split(",")[6] == "mark"
    # Without recipes among the records the board has no mark column, as before.
    plain = build_board([tmp_path / "plain"], reported={"toy_recipe": board(0.5).groups[0].rows[-1].reported})
    assert not plain.marked and "mark" not in to_markdown(plain)
    # The CLI board knows the shipped recipes: a record naming one is compared with its published value.
    assert main(["leaderboard", str(tmp_path / "rec"), "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert "mark" not in (tmp_path / "b" / "leaderboard.md").read_text()  # toy_recipe is not a shipped recipe
