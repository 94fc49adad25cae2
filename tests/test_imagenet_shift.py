"""ImageNet-R / -A / -V2 / -Sketch as TTA targets, from small trees in each released layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.data.filedata import FileData
from cl_bench.data.imagenet_wnids import output_rows, wnid_list
from cl_bench.engine.source import source_model
from cl_bench.nets.models import build_source_model, restrict_outputs

# (class folder names, the labels they must get) per layout: a few classes of each release.
TREES = {
    "imagenet_r": ("imagenet-r", ["n01443537", "n01484850", "n12267677"], [0, 1, 199], ".jpg"),
    "imagenet_a": ("imagenet-a", ["n01498041", "n01531178", "n12267677"], [0, 1, 199], ".jpg"),
    "imagenet_v2": ("imagenetv2-matched-frequency-format-val", ["0", "10", "999"], [0, 10, 999], ".jpeg"),
    "imagenet_sketch": ("sketch", ["n01440764", "n01443537", "n15075141"], [0, 1, 999], ".JPEG"),
}


def write_tree(base: Path, dataset: str, per_class: int = 4) -> Path:
    """``per_class`` small JPEGs in each class folder of ``dataset``'s layout under ``base``; its root."""
    folder, names, _, ext = TREES[dataset]
    rng = np.random.default_rng(0)
    root = base / folder
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 60 * k, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img_{i}{ext}")
    return root


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A small cnn_bn source model with a 1,000-unit ImageNet head."""
    torch.manual_seed(0)
    path = tmp_path / "source_1k.pt"
    torch.save(build_source_model("cnn_bn", (3, 32, 32), 1000).state_dict(), path)
    return path


def _make(root: Path, weights: Path, dataset: str, **kw: object):
    return SCENARIOS.create("imagenet_shift", dataset=dataset, root=str(root), partial=True, image_size=32,
                            source_model="cnn_bn", source_weights=str(weights), workers=0, **kw)  # fmt: skip


def test_packaged_wnid_lists_are_the_references() -> None:
    all_1k, r, a = wnid_list("imagenet_1k"), wnid_list("imagenet_r"), wnid_list("imagenet_a")
    assert (len(all_1k), len(set(all_1k)), len(r), len(set(r)), len(a), len(set(a))) == (1000, 1000, 200, 200, 200,
                                                                                         200)  # fmt: skip
    assert all(re.fullmatch(r"n\d{8}", w) for w in all_1k)
    assert list(all_1k) == sorted(all_1k) and list(r) == sorted(r) and list(a) == sorted(a)  # the reference order
    assert set(r) <= set(all_1k) and set(a) <= set(all_1k) and len(set(r) & set(a)) == 86
    assert all_1k[0] == "n01440764" and all_1k[-1] == "n15075141"
    # natural-adv-examples' thousand_k_to_200 starts {..., 6: 0, ..., 11: 1, ..., 13: 2, ..., 15: 3, ...}
    assert output_rows("imagenet_a")[:4] == (6, 11, 13, 15)
    assert output_rows("imagenet_r")[:3] == (1, 2, 4)  # imagenet_r_mask: n01443537, n01484850, n01494475


def test_restrict_outputs_is_the_logit_mask() -> None:
    torch.manual_seed(0)
    for name, shape in (("cnn_bn", (3, 16, 16)), ("lenet_bn", (1, 28, 28))):
        net = build_source_model(name, shape, 1000).eval()
        x = torch.randn(5, *shape)
        rows = output_rows("imagenet_r")
        with torch.no_grad():
            full = net(x)
            restrict_outputs(net, rows)
            assert torch.allclose(net(x), full[:, list(rows)], atol=1e-6) and net.head.out_features == 200
    with pytest.raises(ConfigError, match="distinct indices below 10"):
        restrict_outputs(build_source_model("cnn_bn", (3, 16, 16), 10), (1, 12))


@pytest.mark.parametrize("dataset", list(TREES))
def test_each_layout_streams_file_backed_with_the_reference_labels(dataset: str, tmp_path: Path,
                                                                   weights: Path) -> None:  # fmt: skip
    root = write_tree(tmp_path, dataset)
    s = _make(tmp_path if dataset == "imagenet_sketch" else root, weights, dataset)  # Sketch: its parent too
    (e,) = list(s)
    assert isinstance(e.test, FileData) and len(e.test) == 12 and e.train is None
    n_classes = 200 if dataset in ("imagenet_r", "imagenet_a") else 1000
    assert s.n_classes == n_classes and s.spec["n_classes"] == n_classes and s.spec["source_weights_sha256"]
    _, names, labels, _ = TREES[dataset]
    got = {(Path(p).parent.name, int(y)) for p, y in zip(e.test.paths, e.test.y.tolist(), strict=True)}
    assert got == set(zip(names, labels, strict=True))
    assert e.test.y.tolist() != sorted(e.test.y.tolist())  # a seeded shuffle, not class by class
    model = source_model(s, 0)
    x, _ = e.test.batch(slice(0, 4))
    assert model(x).shape == (4, n_classes)
    if n_classes == 200:  # the 200 outputs are the 1k model's rows of the dataset's wnids
        full = build_source_model("cnn_bn", (3, 32, 32), 1000)
        full.load_state_dict(torch.load(weights, weights_only=True))
        with torch.no_grad():
            expect = full.eval()(x)[:, list(output_rows(dataset))]
            assert torch.allclose(model(x), expect, atol=1e-5)
    sub = _make(root, weights, dataset, n_per_domain=5, setting="correlated")
    assert len(sub[0].test) == 5


def test_imagenet_shift_errors(tmp_path: Path, weights: Path) -> None:
    root = write_tree(tmp_path, "imagenet_r")
    with pytest.raises(ConfigError, match="needs a source model"):
        SCENARIOS.create("imagenet_shift", root=str(root))
    with pytest.raises(ConfigError, match="unknown dataset"):
        _make(root, weights, "imagenet_x")
    with pytest.raises(ConfigError, match="one domain without severities"):
        _make(root, weights, "imagenet_r", setting="gradual")
    with pytest.raises(DataError, match="holds 3 of the 200 class folders"):
        SCENARIOS.create("imagenet_shift", root=str(root), source_weights=str(weights))
    (root / "n01440764").mkdir()  # a 1k class that is not one of ImageNet-R's 200
    Image.new("RGB", (8, 8)).save(root / "n01440764" / "x.jpg")
    with pytest.raises(DataError, match="not the 200 imagenet_r WordNet-id folders"):
        _make(root, weights, "imagenet_r")
    with pytest.raises(DataError, match="does not exist"):
        _make(tmp_path / "nope", weights, "imagenet_a")


def _cli(tmp_path: Path, root: Path, weights: Path, dataset: str, method: str) -> dict:
    out = tmp_path / f"runs_{method}"
    args = ["run", "-q", "--scenario", "imagenet_shift", "--method", method, "--batch-size", "4", "--out", str(out)]
    for k, v in {"dataset": dataset, "root": root, "partial": "true", "image_size": 32, "source_model": "cnn_bn",
                 "source_weights": weights, "workers": 0}.items():  # fmt: skip
        args += ["--set", f"scenario.{k}={v}"]
    assert main(args) == 0
    (record,) = out.glob("*/run.json")
    return json.loads(record.read_text())


def test_imagenet_r_runs_bn_adapt_from_the_cli(tmp_path: Path, weights: Path) -> None:
    rec = _cli(tmp_path, write_tree(tmp_path, "imagenet_r"), weights, "imagenet_r", "bn_adapt")
    assert rec["status"] == "completed" and 0.0 <= rec["metrics"]["online_error"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(TREES))
def test_every_layout_runs_tent_from_the_cli(dataset: str, tmp_path: Path, weights: Path) -> None:
    rec = _cli(tmp_path, write_tree(tmp_path, dataset), weights, dataset, "tent")
    assert rec["status"] == "completed" and 0.0 <= rec["metrics"]["online_error"] <= 1.0


def test_data_check_names_what_an_imagenet_a_copy_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "imagenet-a"
    for w in wnid_list("imagenet_a")[1:]:  # one class missing
        (a / w).mkdir(parents=True)
        (a / w / "0.jpg").touch()
    (a / "n01440764").mkdir()  # tench: a 1k class, not one of ImageNet-A's
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "imagenet_a_release: PROBLEMS" in out and "199 of the 200 class folders (missing e.g. n01498041)" in out
    assert "1 folder(s) that are not imagenet_a classes (first: n01440764)" in out
    assert "199 images, the release has 7,500" in out


@pytest.mark.slow
def test_data_check_passes_a_complete_imagenet_v2_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    for c in range(1000):  # the release: 10 images in each of the 1,000 class-index folders
        (v2 / str(c)).mkdir(parents=True)
        for i in range(10):
            (v2 / str(c) / f"{i}.jpeg").touch()
    main(["data", "check", str(tmp_path)])
    out = capsys.readouterr().out
    assert "imagenet_v2: OK" in out and "the 1000 class folders of the release, 10,000 images" in out
