"""DomainNet-126 from a small tree and list files in the published format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.testing.layouts import write_domainnet, write_source_weights

CLASSES = {"rabbit": 91, "teapot": 112, "table": 111}


@pytest.fixture
def domainnet(tmp_path: Path) -> tuple[Path, Path]:
    root = write_domainnet(tmp_path / "domainnet", (("clipart", 3), ("painting", 5), ("sketch", 2)), CLASSES)
    return root, write_source_weights(tmp_path / "source.pt", "cnn_bn", (3, 32, 32), 126)


@pytest.mark.slow
def test_domainnet126_reads_the_lists_domain_by_domain(domainnet: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = domainnet
    s = SCENARIOS.create("domainnet126", root=str(root), source_model="cnn_bn", source_weights=str(weights),
                         image_size=32, workers=0)  # fmt: skip
    assert [e.meta["corruption"] for e in s] == ["clipart", "painting", "sketch"] and s.n_classes == 126
    assert [len(e.test) for e in s] == [9, 15, 6] and sorted(set(s[1].test.y.tolist())) == [91, 111, 112]
    sub = SCENARIOS.create("domainnet126", root=str(root), source_model="cnn_bn", source_weights=str(weights),
                           image_size=32, workers=0, n_per_domain=7)  # fmt: skip
    assert [len(e.test) for e in sub] == [7, 7, 6]
    out = tmp_path / "runs"
    args = ["run", "-q", "--scenario", "domainnet126", "--method", "bn_adapt", "--batch-size", "4", "--out", str(out)]
    for k, v in {"root": root, "source_model": "cnn_bn", "source_weights": weights, "image_size": 32,
                 "workers": 0}.items():  # fmt: skip
        args += ["--set", f"scenario.{k}={v}"]
    assert main(args) == 0
    (record,) = out.glob("*/run.json")
    assert json.loads(record.read_text())["status"] == "completed"


def test_domainnet126_errors(domainnet: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = domainnet
    kw = {"root": str(root), "source_model": "cnn_bn", "source_weights": str(weights)}
    with pytest.raises(ConfigError, match="needs a source model"):
        SCENARIOS.create("domainnet126", root=str(root))
    with pytest.raises(ConfigError, match="domains must be some of"):
        SCENARIOS.create("domainnet126", domains=("quickdraw",), **kw)
    with pytest.raises(DataError, match="list file .*real_list.txt not found"):
        SCENARIOS.create("domainnet126", domains=("real",), **kw)
    (root / "sketch_list.txt").write_text("sketch/rabbit/x.jpg 300\n")
    with pytest.raises(DataError, match="label 0-125"):
        SCENARIOS.create("domainnet126", domains=("sketch",), **kw)
    (root / "sketch_list.txt").write_text("sketch/rabbit/missing.jpg 91\n")
    with pytest.raises(DataError, match="1 of the 1 images listed"):
        SCENARIOS.create("domainnet126", domains=("sketch",), **kw)
