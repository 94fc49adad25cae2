"""``cl-bench data list | check | prepare`` on the real MNIST files and on small files in the real layouts."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cl_bench.cli import main
from cl_bench.data.catalog import CORRUPTIONS_15


def _cifar_c(folder: Path, n_classes: int = 10, rows: int = 50000) -> None:
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", (np.arange(rows) % n_classes).astype(np.uint8))
    for name in CORRUPTIONS_15:
        np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(rows, 32, 32, 3)).flush()


def test_check_verifies_the_real_mnist_checksums(mnist_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(mnist_root)]) == 0
    out = capsys.readouterr().out
    assert "mnist: OK" in out and "9fb629c4189551a2d022fa330f9573f3 matches" in out


def test_check_names_a_damaged_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}))
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "cifar10: PROBLEMS" in out and "batches.meta is missing" in out
    assert "data_batch_1: MD5" in out and "differs from the published c99cafc152244af753f735de768cd75f" in out


def test_check_tells_cifar_c_sets_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cifar_c(tmp_path / "CIFAR-100-C", n_classes=100)
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar100_c: OK" in out and "cifar10_c" not in out
    np.save(tmp_path / "CIFAR-100-C" / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    (tmp_path / "CIFAR-100-C" / "snow.npy").write_bytes(b"not an array")
    assert main(["data", "check", str(tmp_path), "--dataset", "cifar100_c"]) == 1
    out = capsys.readouterr().out
    assert "fog.npy: (10, 32, 32, 3) uint8, expected (50000, 32, 32, 3) uint8" in out
    assert "snow.npy: not a NumPy .npy array" in out and "allow_pickle" not in out


def test_prepare_checks_then_unpacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cifar_c(tmp_path / "made" / "CIFAR-10-C", rows=5)
    archive = tmp_path / "CIFAR-10-C.tar"
    with tarfile.open(archive, "w") as t:
        t.add(tmp_path / "made" / "CIFAR-10-C", arcname="CIFAR-10-C")
    root = tmp_path / "data"
    assert main(["data", "prepare", str(archive), "--root", str(root)]) == 2
    assert "differs from the published 56bf5dcef84df0e2308c6dcbcbbd8499" in capsys.readouterr().err
    assert not (root / "CIFAR-10-C").exists()  # nothing unpacked
    main(["data", "prepare", str(archive), "--root", str(root), "--skip-checksum"])
    assert (root / "CIFAR-10-C" / "labels.npy").is_file()
    assert "unpacked CIFAR-10-C.tar" in capsys.readouterr().out
    assert not list(root.glob("**/.prepare-*"))
    # A second unpack never overwrites what is there.
    assert main(["data", "prepare", str(archive), "--root", str(root), "--skip-checksum"]) == 2
    assert "already exist" in capsys.readouterr().err


def test_list_and_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar10_c" in out and "absent" in out and "zenodo.org/records/2535967" in out
    assert main(["data", "check", str(tmp_path), "--dataset", "nope"]) == 2
    assert main(["data", "prepare", str(tmp_path / "x.tar"), "--root", str(tmp_path)]) == 2
    (tmp_path / "x.tar").write_bytes(b"")
    assert main(["data", "prepare", str(tmp_path / "x.tar"), "--root", str(tmp_path)]) == 2
    assert "not a published file" in capsys.readouterr().err


def _touch(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")  # the layout checks read names and counts, never pixels


def test_check_pilot_layout_and_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cl_bench.data.layout_checks import PILOT_CLASSES
    from cl_bench.scenarios.pilot import DATASETS as PILOT

    assert PILOT_CLASSES == {d.folder: d.n_classes for d in PILOT.values()}  # one table, two layers
    cub = tmp_path / "cub"
    for split, n in (("train", 2), ("test", 1)):
        for c in range(200):
            _touch(cub / split / f"{c:03d}.Bird", [f"{i}.jpg" for i in range(n)])
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cub: OK" in out and "train/: 200 class folders, 400 images" in out and "no checksums" in out
    (cub / "test" / "007.Bird" / "0.jpg").unlink()
    (cub / "test" / "199.Bird").rename(cub / "test" / "199.Bard")
    _touch(cub / "train", ["stray.jpg"])
    assert main(["data", "check", str(tmp_path), "--dataset", "cub"]) == 1
    out = capsys.readouterr().out
    assert "cub: PROBLEMS" in out and "1 class folder(s) without images (first: 007.Bird)" in out
    assert "1 image(s) directly in the folder" in out and "train/ and test/ name different classes" in out
    (tmp_path / "vtab" / "train").mkdir(parents=True)
    assert main(["data", "check", str(tmp_path), "--dataset", "vtab"]) == 1
    out = capsys.readouterr().out
    assert "0 class folders, the dataset has 50" in out and "vtab/test is missing" in out


def test_check_domainnet126_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "domainnet"
    for d in ("clipart", "painting", "real", "sketch"):
        lines = [f"{d}/class_{c:03d}/{d}_{c}.jpg {c}" for c in range(126)]
        for line in lines:
            _touch(root / Path(line.split()[0]).parent, [Path(line.split()[0]).name])
        (root / f"{d}_list.txt").write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "domainnet126: OK" in out and "sketch_list.txt: 126 images, 126 of the 126 labels" in out
    (root / "real" / "class_005" / "real_5.jpg").unlink()
    with (root / "painting_list.txt").open("a") as f:
        f.write("painting/class_000/extra.jpg 126\n")
    (root / "clipart_list.txt").unlink()
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "clipart_list.txt is missing" in out and "painting_list.txt, line 127" in out
    assert "real_list.txt: 1 of 126 listed images are not under" in out and "real/class_005/real_5.jpg" in out


def test_check_imagenet_c_names_missing_and_short_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "ImageNet-C"  # the imagenet_c scenario's default folder name
    wnids = [f"n{i:08d}" for i in range(1000)]
    for s in (1, 2, 4, 5):
        for w in wnids:
            _touch(root / "gaussian_noise" / str(s) / w, [f"{w}_0.JPEG"])  # the release has 50: a slow fixture
    _touch(root / "gaussian_noise" / "1" / "extras", [])
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "imagenet_c: PROBLEMS" in out and "shot_noise is missing (one of the 15 benchmark corruptions)" in out
    assert "gaussian_noise/3 is missing (severities 1-5)" in out
    assert "folder(s) not named by a WordNet id nXXXXXXXX (first: extras)" in out
    assert "1000 class folder(s) without the released 50 images (first: n00000000 with 1)" in out
