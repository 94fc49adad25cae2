"""ImageNet-C from a small tree in the released layout (<corruption>/<severity>/<wnid>/*.JPEG)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.data.filedata import FileData
from cl_bench.nets.models import build_source_model
from cl_bench.testing.layouts import write_imagenet_c, write_source_weights

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = write_imagenet_c(tmp_path / "imagenet-c", ("gaussian_noise", "fog"), (1, 2, 3, 4, 5), WNIDS, per_class=4)
    return root, write_source_weights(tmp_path / "source.pt", "cnn_bn", (3, 32, 32), 3)


def _make(root: Path, weights: Path, **kw: object):
    return SCENARIOS.create("imagenet_c", root=str(root), corruptions=("gaussian_noise", "fog"), n_classes=3,
                            image_size=32, source_model="cnn_bn", source_weights=str(weights), workers=0, **kw)


def test_imagenet_c_streams_file_backed_domains_with_a_seeded_subset(tree: tuple[Path, Path]) -> None:
    root, weights = tree
    s = _make(root, weights, n_per_domain=8)
    assert [e.meta["corruption"] for e in s] == ["gaussian_noise", "fog"] and all(e.train is None for e in s)
    assert all(isinstance(e.test, FileData) and len(e.test) == 8 for e in s)
    # The same images (by file name) in every domain, labels from the sorted wnid folders.
    names = [[Path(p).name for p in e.test.paths] for e in s]
    assert names[0] == names[1] and sorted(set(s[0].test.y.tolist())) <= [0, 1, 2]
    # played in a seeded random order (as the RMT repo shuffles), not class by class as the folders are scanned
    full = _make(root, weights, n_per_domain=0)
    assert sorted(full[0].test.y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert full[0].test.y.tolist() != sorted(full[0].test.y.tolist())
    assert s.spec["source_weights_sha256"] and s.spec["images_per_domain"] == 12
    gradual = _make(root, weights, setting="gradual", n_per_domain=0)
    assert [e.meta["severity"] for e in gradual][:9] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    mixed = _make(root, weights, setting="mixed_domains", n_per_domain=0)
    assert len(mixed) == 1 and len(mixed[0].test) == 24 and isinstance(mixed[0].test, FileData)


@pytest.mark.slow
def test_imagenet_c_runs_tent_from_the_cli(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = tree
    out = tmp_path / "runs"
    args = ["run", "-q", "--scenario", "imagenet_c", "--method", "tent", "--batch-size", "4", "--out", str(out)]
    for k, v in {"root": root, "corruptions": "[gaussian_noise, fog]", "n_classes": 3, "image_size": 32,
                 "source_model": "cnn_bn", "source_weights": weights, "workers": 0}.items():  # fmt: skip
        args += ["--set", f"scenario.{k}={v}"]
    assert main(args) == 0
    (record,) = out.glob("*/run.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "completed" and 0.0 <= rec["metrics"]["online_error"] <= 1.0


def test_imagenet_c_errors(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = tree
    with pytest.raises(ConfigError, match="needs a source model"):
        SCENARIOS.create("imagenet_c", root=str(root))
    with pytest.raises(DataError, match="holds 3 class folders with images, expected 1000"):
        SCENARIOS.create("imagenet_c", root=str(root), corruptions=("fog",), source_weights=str(weights))
    with pytest.raises(DataError, match="does not exist"):
        _make(tmp_path / "nope", weights)
    next((root / "fog" / "5" / WNIDS[0]).iterdir()).unlink()
    with pytest.raises(DataError, match="every domain of ImageNet-C holds the same images"):
        _make(root, weights)


def test_resnet50_source_model_is_torchvisions() -> None:
    from torchvision.models import resnet50

    ours = build_source_model("resnet50", (3, 224, 224), 1000)
    assert ours.state_dict().keys() == resnet50().state_dict().keys()
    assert sum(p.numel() for p in ours.parameters()) == 25_557_032  # torchvision's documented count
