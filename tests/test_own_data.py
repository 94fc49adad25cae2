"""Your own data: folder_split, tensor_split and folder_domains on files written in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.testing.layouts import write_class_folders, write_domain_folders, write_images


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "tree", n_classes=4, per_class=10)


@pytest.fixture
def domains(tmp_path: Path) -> Path:
    return write_domain_folders(tmp_path / "domains")


def _run(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict:
    assert main(["run", "-q", *args, "--epochs", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    (record,) = out.glob("*/run.json")
    return json.loads(record.read_text())


def test_folder_split_runs_from_the_cli_and_records_a_content_hash(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = _run(capsys, tmp_path / "runs", "--scenario", "folder_split", "--set", f"scenario.root={tree}", "--set",
               "scenario.n_experiences=2", "--method", "er", "--set", "model=cnn")  # fmt: skip
    spec = rec["scenario"]["spec"]
    assert rec["status"] == "completed" and spec["classes"] == ["class0", "class1", "class2", "class3"]
    assert spec["n_train"] == 32 and spec["n_test"] == 8 and len(spec["data_sha256"]) == 64
    s = SCENARIOS.create("folder_split", root=str(tree), n_experiences=2, image_size=16)
    assert s.spec_hash == SCENARIOS.create("folder_split", root=str(tree), n_experiences=2, image_size=16).spec_hash
    assert set(s[0].classes).isdisjoint(s[1].classes) and s[0].train.input_shape == (3, 16, 16)
    # One changed pixel is another dataset: another hash, another spec.
    first = sorted((tree / "class0").iterdir())[0]
    pixels = np.array(Image.open(first))
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(first)
    changed = SCENARIOS.create("folder_split", root=str(tree), n_experiences=2, image_size=16)
    assert changed.spec["data_sha256"] != s.spec["data_sha256"] and changed.spec_hash != s.spec_hash
    listing = SCENARIOS.create("folder_split", root=str(tree), n_experiences=2, image_size=16, content_hash=False)
    assert listing.spec["hashed"] == "paths and sizes"


def test_folder_split_uses_given_train_and_test_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for c in ("a", "b"):
        write_images(tmp_path / "train" / c, 6, 80, rng)
        write_images(tmp_path / "test" / c, 2, 80, rng)
    s = SCENARIOS.create("folder_split", root=str(tmp_path), n_experiences=2, class_order="identity",
                         augment="crop_flip")
    assert s.spec["split"] == "given train/ and test/ folders" and (s.spec["n_train"], s.spec["n_test"]) == (12, 4)
    assert s[0].classes == (0,) and len(s[0].test) == 2 and "crop" in s.spec["augment"]
    write_images(tmp_path / "test" / "c", 2, 80, rng)
    with pytest.raises(DataError, match="class folder.*c.*lacks"):
        SCENARIOS.create("folder_split", root=str(tmp_path), n_experiences=2)


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_tensor_split_reads_npz_and_pt(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (120, 10, 10, 3), dtype=np.uint8)  # channels last, as numpy / PIL hold images
    y = np.repeat(np.array([7, 3, 11, 5]), 30)
    x_test, y_test = x[::6].copy(), y[::6].copy()
    file = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(file, x=x, y=y, x_test=x_test, y_test=y_test)
    else:
        torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y), "x_test": torch.from_numpy(x_test),
                    "y_test": torch.from_numpy(y_test)}, file)  # fmt: skip
    s = SCENARIOS.create("tensor_split", path=str(file), n_experiences=2, class_order="identity")
    assert s.spec["label_values"] == [3, 5, 7, 11] and s.n_classes == 4
    assert s[0].train.x.shape == (60, 3, 10, 10) and s[0].classes == (0, 1)
    assert s.spec["split"] == "given x_test / y_test" and s.spec["n_test"] == 20
    np.savez(tmp_path / "one.npz", x=x, y=y, x_test=x_test[y_test == 7], y_test=y_test[y_test == 7])
    with pytest.raises(DataError, match="experience 0 .* has no test examples"):
        SCENARIOS.create("tensor_split", path=str(tmp_path / "one.npz"), n_experiences=2, class_order="identity")
    rec = _run(capsys, tmp_path / "runs", "--scenario", "tensor_split", "--set", f"scenario.path={file}", "--set",
               "scenario.n_experiences=2", "--method", "finetune")  # fmt: skip
    assert rec["status"] == "completed" and rec["scenario"]["spec"]["data_sha256"] == s.spec["data_sha256"]


def test_tensor_split_vectors_and_seeded_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "v.npz", x=rng.normal(size=(100, 6)).astype(np.float32), y=np.arange(100) % 5)
    s = SCENARIOS.create("tensor_split", path=str(tmp_path / "v.npz"), n_experiences=5)
    assert s.spec["n_train"] == 80 and s.spec["n_test"] == 20 and s[0].train.x.shape[1:] == (6,)
    assert sum(len(e.train) for e in s) == 80
    with pytest.raises(ConfigError, match="needs image inputs"):
        SCENARIOS.create("tensor_split", path=str(tmp_path / "v.npz"), augment="crop_flip")


def test_folder_domains_is_domain_incremental(
    domains: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = SCENARIOS.create("folder_domains", root=str(domains), domains=("sketch", "photo"), image_size=16)
    assert s.setting == "domain_il" and [e.meta["domain"] for e in s] == ["sketch", "photo"]
    assert all(e.classes == (0, 1, 2) for e in s) and s.n_classes == 3
    rec = _run(capsys, tmp_path / "runs", "--scenario", "folder_domains", "--set", f"scenario.root={domains}",
               "--method", "finetune", "--set", "model=cnn")  # fmt: skip
    assert rec["status"] == "completed" and rec["scenario"]["spec"]["domains"] == ["photo", "sketch"]


def _write_garbage(p: Path) -> Path:
    p.write_bytes(b"not an archive")
    return p


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (lambda t: ["--scenario", "folder_split"], "needs your data: pass --set scenario.root=DIR"),
        (lambda t: ["--scenario", "folder_split", "--set", f"scenario.root={t / 'nope'}"], "does not exist"),
        (lambda t: ["--scenario", "folder_split", "--set", f"scenario.root={t}"], "not a folder_split ImageFolder"),
        (lambda t: ["--scenario", "tensor_split", "--set", f"scenario.path={_write_garbage(t / 'x.npz')}"],
         "not a valid archive"),
        (lambda t: ["--scenario", "tensor_split", "--set", f"scenario.path={t}"], "is a folder"),
        (lambda t: ["--scenario", "folder_domains", "--set", f"scenario.root={t}", "--set",
                    "scenario.domains=[art]"], "asked for ['art']"),
    ],
)  # fmt: skip
def test_bad_own_data_is_one_paragraph(args, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--method", "finetune", *args(tmp_path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and "allow_pickle" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_same_data_at_another_path_is_the_same_stream(tree: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(tree, copy)
    a = SCENARIOS.create("folder_split", root=str(tree), n_experiences=2, image_size=16)
    b = SCENARIOS.create("folder_split", root=str(copy), n_experiences=2, image_size=16)
    assert a.spec_hash == b.spec_hash and a.data != b.data and str(copy) in b.data


@pytest.mark.slow
def test_folder_domains_as_a_tta_stream_trains_its_source_on_a_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    root = tmp_path / "dom"
    for d, n in (("photo", 12), ("art", 6), ("sketch", 9)):
        for c in range(3):
            write_images(root / d / f"c{c}", n, 50 + 70 * c, rng)
    s = SCENARIOS.create("folder_domains", root=str(root), source_domain="photo", image_size=16)
    assert s.source is not None and s.source.train is not None and s.source.weights is None
    assert len(s.source.train) + len(s.source.test) == 36 and s.source.train.x.dtype == torch.uint8
    assert [e.meta["corruption"] for e in s] == ["art", "sketch"] and all(e.train is None for e in s)
    assert [len(e.test) for e in s] == [18, 27] and s.spec["source_domain"] == "photo"
    small = SCENARIOS.create("folder_domains", root=str(root), source_domain="photo", image_size=16,
                             n_per_domain=5, setting="correlated")  # fmt: skip
    assert [len(e.test) for e in small] == [5, 5] and small.spec_hash != s.spec_hash
    rec = _run(capsys, tmp_path / "runs", "--scenario", "folder_domains", "--set", f"scenario.root={root}",
               "--set", "scenario.source_domain=photo", "--set", "scenario.image_size=16",
               "--set", "scenario.source_epochs=1", "--method", "tent")  # fmt: skip
    assert rec["kind"] == "tta" and rec["status"] == "completed"
    assert 0.0 <= rec["metrics"]["online_error"] <= 1.0 and rec["metrics"]["clean_acc_after"] is not None
    # A saved source model replaces the source domain: the same architecture, loaded instead of trained.
    from cl_bench.engine.source import source_model

    weights = tmp_path / "source.pt"
    torch.save(source_model(SCENARIOS.create("folder_domains", root=str(root), source_domain="photo",
                                             image_size=16, source_epochs=1), 0).state_dict(), weights)  # fmt: skip
    loaded = SCENARIOS.create("folder_domains", root=str(root), source_weights=str(weights),
                              domains=("art", "sketch"), image_size=16)  # fmt: skip
    assert loaded.source.train is None and loaded.source.free and loaded.spec["source_weights_sha256"]
    for bad, needle in (({"source_domain": "paint"}, "not a folder"), ({"source_domain": "photo",
                        "domains": ("photo",)}, "cannot also be a test domain"), ({"setting": "correlated"},
                        "source_domain"), ({"source_domain": "photo", "setting": "gradual"}, "no severities")):
        with pytest.raises((ConfigError, DataError), match=needle):
            SCENARIOS.create("folder_domains", root=str(root), image_size=16, **bad)
