"""The scenario conformance suite (cl_bench.testing.check_scenario) over every registered scenario.

File-backed and downloadable datasets are checked on tiny copies in their released layouts, written once per
module by :mod:`cl_bench.testing.layouts` (the writers the loader tests use too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario
from cl_bench.testing import SCENARIO_CHECKS, ConformanceError, check_scenario
from cl_bench.testing import layouts as L

_C = ["gaussian_noise", "fog"]  # two corruptions: a shift between domains, no frost textures needed
_IMG = {"image_size": 8, "workers": 0}  # file-backed: decode tiny, in the test process


def _once(root: Path, name: str, write: Callable[[Path], Any]) -> Path:
    """``root/name``, written by ``write`` the first time a scenario asks for it (shared between scenarios)."""
    if not (root / name).exists():
        write(root / name)
    return root / name


def _weights(root: Path, n_classes: int) -> str:
    return str(_once(root, f"cnn_bn_{n_classes}.pt", lambda p: L.write_source_weights(p, "cnn_bn", (3, 32, 32),
                                                                                      n_classes)))  # fmt: skip


def _pilot(n_classes: int) -> Callable[[Path], dict[str, Any]]:
    def config(root: Path) -> dict[str, Any]:
        tree = _once(root, f"pilot{n_classes}", lambda p: L.write_train_test_folders(p, n_classes, (1, 1), (8, 8)))
        return {"root": str(tree), **_IMG, "augment": False}

    return config


def _mnist(root: Path) -> str:
    # The full file set (train and test pairs), small: the loader reads it as it reads the real one.
    return str(_once(root, "mnist", lambda p: L.write_mnist(p, train=100, test=50)))


def _cifar10(root: Path) -> str:
    return str(_once(root, "cifar10", lambda p: L.write_cifar10(p, per_batch=10, test=20)))


def _hf(root: Path) -> str:
    """A small ``save_to_disk`` dataset (hf_split's offline form; the ``datasets`` package is the hf extra)."""
    import io

    import numpy as np
    from PIL import Image

    datasets = pytest.importorskip("datasets", reason="hf_split needs the hf extra: pip install 'cl_bench[hf]'")

    def write(path: Path) -> None:
        rng = np.random.default_rng(0)
        images = []
        for _ in range(24):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, "PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
        data = datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(24)]}, features=features)
        data.save_to_disk(str(path))

    return str(_once(root, "hf", write))


def _imagenet_r_targets(root: Path) -> str:
    # Three of ImageNet-R's 200 wnid folders (a partial copy, allowed with partial=true).
    return str(_once(root, "imagenet-r-tta", lambda p: L.write_imagenet_r(p, ("n01443537", "n01484850",
                                                                               "n12267677"), per_class=3)))


#: Registered name -> its small config, given the module's data folder (files written on first use).
CONFIGS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "toy": lambda r: {},
    "toy_tta": lambda r: {"insert_clean": True},
    "split_digits": lambda r: {},
    "digits_c": lambda r: {"corruptions": _C, "n_per_domain": 50},
    "blurry": lambda r: {"base_args": {"n_experiences": 3}},
    "power_law": lambda r: {},
    "split_mnist": lambda r: {"root": _mnist(r), "download": False},
    "permuted_mnist": lambda r: {"root": _mnist(r), "download": False, "n_experiences": 2},
    "rotated_mnist": lambda r: {"root": _mnist(r), "download": False, "n_experiences": 2},
    "mnist_c": lambda r: {"root": _mnist(r), "download": False, "corruptions": ["gaussian_noise"], "n_per_domain": 20},
    "split_cifar10": lambda r: {"root": _cifar10(r), "download": False},
    "split_cifar100": lambda r: {"root": str(_once(r, "cifar100", L.write_cifar100)), "download": False},
    "cifar10_c": lambda r: {"root": str(_once(r, "c10c", lambda p: L.write_cifar_c(p, _C))), "corruptions": _C,
                            "clean_root": _cifar10(r), "source_model": "cnn_bn"},
    "cifar100_c": lambda r: {"root": str(_once(r, "c100c", lambda p: L.write_cifar_c(p, _C, n_classes=100))),
                             "corruptions": _C, "source_model": "cnn_bn"},
    "corrupted": lambda r: {"base": "split_cifar10", "root": _cifar10(r), "corruptions": _C, "n_per_domain": 20},
    "split_imagenet_r": lambda r: {"root": str(_once(r, "imagenet-r", L.write_imagenet_r)), "n_experiences": 3,
                                   "image_size": 16, "workers": 0},
    "split_tinyimagenet": lambda r: {"root": str(_once(r, "tiny", lambda p: L.write_tinyimagenet(
        p / "tiny-imagenet-200"))), "n_experiences": 2, "workers": 0},
    "tensor_split": lambda r: {"path": str(_once(r, "data.npz", L.write_npz)), "n_experiences": 2},
    "folder_split": lambda r: {"root": str(_once(r, "tree", lambda p: L.write_class_folders(p, 4, 5))),
                               "n_experiences": 2, **_IMG},
    "folder_domains": lambda r: {"root": str(_once(r, "domains", lambda p: L.write_domain_folders(p, per_class=5))),
                                 **_IMG},
    "imagenet_c": lambda r: {"root": str(_once(r, "imagenet-c", lambda p: L.write_imagenet_c(
        p, _C, severities=(5,), per_class=2, side=16))), "corruptions": _C, "n_classes": 3, "n_per_domain": 0,
        "source_model": "cnn_bn", "source_weights": _weights(r, 3), **_IMG},
    "domainnet126": lambda r: {"root": str(_once(r, "domainnet", lambda p: L.write_domainnet(p, side=12))),
                               "source_model": "cnn_bn", "source_weights": _weights(r, 126), **_IMG},
    "hf_split": lambda r: {"path": _hf(r), "n_experiences": 2, "image_size": 8},
    "imagenet_shift": lambda r: {"dataset": "imagenet_r", "root": _imagenet_r_targets(r), "partial": True,
                                 "source_model": "cnn_bn", "source_weights": _weights(r, 1000), **_IMG},
    "split_cub200": _pilot(200), "split_imagenet_a": _pilot(200), "split_objectnet": _pilot(200),
    "split_omnibenchmark": _pilot(300), "split_vtab": _pilot(50), "split_cars": _pilot(196),
}  # fmt: skip
#: > ~1 s each on a busy 2-core box; the inner loop keeps one stream of each kind (an in-memory class split, a
#: corruption stream, a file-backed class split and a file-backed TTA stream).
SLOW = {"rotated_mnist", "blurry", "split_cub200", "split_imagenet_a", "split_objectnet", "split_omnibenchmark",
        "split_cars"}  # fmt: skip


def _params() -> list[Any]:
    out = []
    for name in SCENARIOS.names():
        marks = [pytest.mark.slow] if name in SLOW else []
        if name not in CONFIGS:
            why = "no small config listed in tests/test_scenario_conformance.py"
            marks.append(pytest.mark.skip(reason=f"{name}: {why}"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("layouts")


@pytest.mark.parametrize("name", _params())
def test_registered_scenario_conforms(name: str, data_root: Path) -> None:
    report = check_scenario(name, CONFIGS[name](data_root))
    assert report.ok and [r.name for r in report.results] == list(SCENARIO_CHECKS)


def test_every_listed_scenario_is_registered() -> None:
    # A renamed scenario must not leave the suite silently; an unlisted one shows as a skip naming this file.
    assert set(CONFIGS) <= set(SCENARIOS.names())


def _nondeterministic(seed: int = 0) -> Scenario:
    import torch

    from cl_bench.core.types import TensorData

    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))  # unseeded on purpose
    x = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    d = TensorData(x, y)
    # Also overlapping test classes in a class-incremental stream and a class never trained on.
    return Scenario("broken", [Experience(0, d, d, (0, 1)), Experience(1, d, d, (0, 1, 2))], {"seed": seed}, 3,
                    "class_il")  # fmt: skip


def test_each_scenario_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # The toy config stays valid (config round trip passes); the builds come from the broken builder.
    monkeypatch.setattr(SCENARIOS, "create", lambda name, **kw: _nondeterministic())
    with pytest.raises(ConformanceError) as err:
        check_scenario("toy")
    failed = {r.name for r in err.value.report.failures}
    assert {"check_deterministic", "check_classes", "check_class_il_disjoint"} <= failed
    assert "check_iteration" not in failed and "check_spec" not in failed


def test_file_backed_checks_read_the_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A file-backed builder whose second build lists its files in another order (same labels, same classes):
    # only the file lists and the decoded images tell the builds apart, and check_deterministic must see it.
    import torch

    from cl_bench.core.types import Standardize
    from cl_bench.data.filedata import FileData

    root = L.write_class_folders(tmp_path / "tree", n_classes=2, per_class=3)
    paths = [str(p) for p in sorted(root.rglob("*.png"))]
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    builds = iter([[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5]])

    def build(name: str, **kw: Any) -> Scenario:
        order = next(builds)
        d = FileData([paths[i] for i in order], y, image_size=8, transform=Standardize(255.0, (0.0,) * 3, (1.0,) * 3))
        return Scenario("files", [Experience(0, d, d, (0, 1))], {"setting": "class_il"}, 2, "class_il")

    monkeypatch.setattr(SCENARIOS, "create", build)
    with pytest.raises(ConformanceError) as err:
        check_scenario("toy")
    assert {r.name for r in err.value.report.failures} == {"check_deterministic"}
    assert "training data differs" in str(err.value)
