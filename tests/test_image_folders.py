"""File-backed image scenarios on small trees of real JPEG/PNG files written here: ImageNet-R (seeded and
CODA-Prompt split files), Tiny ImageNet, the FileData batch path (workers, decoded cache) and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cl_bench.cli import main
from cl_bench.core.errors import DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.data.augment import ResizedCropFlip
from cl_bench.data.filedata import FileData
from cl_bench.testing.layouts import class_image, write_imagenet_r, write_tinyimagenet

WNIDS = ["n01443537", "n01484850", "n01494475", "n01498041", "n01514859", "n01518878"]
PER_CLASS = 5


@pytest.fixture
def imagenet_r(tmp_path: Path) -> Path:
    return write_imagenet_r(tmp_path / "imagenet-r", WNIDS, PER_CLASS)


def _split_files(root: Path, folder: Path, drop_class: str | None = None) -> Path:
    # CODA-Prompt's format: YAML {data: [data/imagenet-r/<train|test>/<wnid>/<file>], targets: [int]}.
    folder.mkdir(parents=True, exist_ok=True)
    for name, keep in (("imagenet-r_train.yaml", lambda k: k < 4), ("imagenet-r_test.yaml", lambda k: k == 4)):
        data, targets = [], []
        for c, wnid in enumerate(WNIDS):
            if wnid == drop_class and name.endswith("test.yaml"):
                continue
            for f in sorted((root / wnid).iterdir()):
                k = int(f.stem.split("_")[1])
                if keep(k):
                    data.append(f"data/imagenet-r/{'train' if k % 2 else 'test'}/{wnid}/{f.name}")
                    targets.append(c)
        (folder / name).write_text(yaml.safe_dump({"data": data, "targets": targets}))
    return folder


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["run", "-q", *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(Path(out.split("record: ")[1].split()[0]).read_text())


def test_imagenet_r_seeded_split_from_cli(imagenet_r: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = ["--set", f"scenario.root={imagenet_r}", "--set", "scenario.n_experiences=3", "--set",
            "scenario.image_size=16", "--set", "scenario.workers=1"]  # fmt: skip
    rec = _run(capsys, "--scenario", "split_imagenet_r", *sets, "--method", "finetune", "--set", "model=cnn",
               "--epochs", "2", "--batch-size", "4", "--eval-every", "3", "--out", str(tmp_path / "runs"))  # fmt: skip
    spec = rec["scenario"]["spec"]
    assert rec["status"] == "completed" and spec["split"] == "seeded 80/20 per class" and spec["split_seed"] == 0
    assert spec["n_train"] == 24 and spec["n_test"] == 6 and spec["n_classes_found"] == 6
    assert spec["n_experiences"] == 3 and sorted(sum(spec["classes_per_experience"], [])) == list(range(6))
    assert "random resized crop" in spec["augment"] and spec["seed"] == 0
    assert rec["accuracy_matrix"]["iteration"][-1] == 3 * 2 * 2  # 8 images per experience, batch 4, 2 epochs
    s = SCENARIOS.create("split_imagenet_r", root=str(imagenet_r), n_experiences=3, image_size=16, workers=0)
    assert s.input_shape == (3, 16, 16) and s.spec_hash == rec["scenario"]["spec_hash"]
    x, y = s[0].test.batch(torch.arange(len(s[0].test)))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and set(y.tolist()) == set(s[0].classes)


def test_imagenet_r_coda_prompt_split(imagenet_r: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    splits = _split_files(imagenet_r, tmp_path / "splits")
    s = SCENARIOS.create("split_imagenet_r", root=str(imagenet_r), split="coda_prompt", split_dir=str(splits),
                         n_experiences=2, image_size=16, class_order="identity")  # fmt: skip
    assert s.spec["split"].startswith("coda_prompt") and set(s.spec["split_files_sha256"]) == {
        "imagenet-r_train.yaml", "imagenet-r_test.yaml"}  # fmt: skip
    assert s.spec["n_train"] == 24 and s.spec["n_test"] == 6 and s[0].classes == (0, 1, 2)
    assert all(p.endswith(".png") for p in s[1].test.paths)  # the k == 4 files, as the file lists say
    rec = _run(capsys, "--scenario", "split_imagenet_r", "--set", f"scenario.root={imagenet_r}", "--set",
               "scenario.split=coda_prompt", "--set", f"scenario.split_dir={splits}", "--set", "scenario.image_size=16",
               "--set", "scenario.n_experiences=2", "--method", "finetune", "--set", "model=cnn", "--epochs", "1",
               "--eval-every", "0", "--out", str(tmp_path / "runs"))  # fmt: skip
    assert rec["scenario"]["spec"]["split_files_sha256"] == s.spec["split_files_sha256"]
    # prepared layout of CODA-Prompt's own copy: ROOT/<train|test>/<wnid>/<file>
    prepared = tmp_path / "prepared"
    for f in imagenet_r.glob("n*/*"):
        k = int(f.stem.split("_")[1])
        dest = prepared / ("train" if k % 2 else "test") / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    p = SCENARIOS.create("split_imagenet_r", root=str(prepared), split="coda_prompt", split_dir=str(splits),
                         n_experiences=2, image_size=16, class_order="identity")  # fmt: skip
    assert p.spec["n_train"] == 24 and p.spec["n_classes_found"] == 6
    assert all(path.startswith(str(prepared)) for path in p[0].train.paths)
    assert torch.equal(p[1].test.batch(slice(0, 3))[0], s[1].test.batch(slice(0, 3))[0])


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda root, tmp: ["--set", f"scenario.root={tmp / 'nowhere'}"], "does not exist"),
        (lambda root, tmp: ["--set", f"scenario.root={root / WNIDS[0]}"], "not a ImageNet-R ImageFolder tree"),
        (lambda root, tmp: ["--set", f"scenario.root={root}", "--set", "scenario.split=coda_prompt", "--set",
                            f"scenario.split_dir={_split_files(root, tmp / 's', drop_class=WNIDS[2])}"],
         f"no image of class(es) {WNIDS[2]}"),
        (lambda root, tmp: ["--set", f"scenario.root={root}", "--set", "scenario.split=coda_prompt", "--set",
                            f"scenario.split_dir={tmp}"], "imagenet-r_train.yaml not found"),
        (lambda root, tmp: ["--set", f"scenario.root={root}", "--set", "scenario.split=coda"], "'coda_prompt'"),
    ],
)  # fmt: skip
def test_imagenet_r_user_errors(make, needle: str, imagenet_r: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["run", "--scenario", "split_imagenet_r", *make(imagenet_r, tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


def test_split_file_class_outside_root_and_corrupt_image(imagenet_r: Path, tmp_path: Path) -> None:
    splits = _split_files(imagenet_r, tmp_path / "splits")
    doc = yaml.safe_load((splits / "imagenet-r_train.yaml").read_text())
    doc["data"].append("data/imagenet-r/train/n99999999/art_0.jpg")
    doc["targets"].append(6)
    (splits / "imagenet-r_train.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(DataError, match="class n99999999 has no folder"):
        SCENARIOS.create("split_imagenet_r", root=str(imagenet_r), split="coda_prompt", split_dir=str(splits))
    (imagenet_r / WNIDS[0] / "art_0.jpg").write_bytes(b"not a jpeg")
    s = SCENARIOS.create("split_imagenet_r", root=str(imagenet_r), n_experiences=1, image_size=16)
    with pytest.raises(DataError, match="corrupt"):
        s[0].train.batch(torch.arange(len(s[0].train)))


def test_filedata_workers_and_cache_give_the_same_batches(imagenet_r: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    paths = sorted(str(p) for p in imagenet_r.glob("n*/*"))
    y = torch.arange(len(paths)) % 6
    aug = ResizedCropFlip(size=16)
    plain = FileData(paths, y, image_size=16, augment=aug)
    cached = FileData(paths, y, image_size=16, augment=aug, workers=2, cache_dir=str(tmp_path / "cache"))
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    assert np.load(files[0]).shape == (len(paths), 3, 16, 16)
    idx = torch.tensor([3, 0, 17, 29, 8])
    assert torch.equal(plain.batch(idx)[0], cached.batch(idx)[0])
    batches, seeds = [idx, torch.tensor([1, 2]), torch.tensor([5])], [11, 12, None]
    a = list(plain.iter_batches(batches, seeds))
    b = list(cached.iter_batches(batches, seeds))
    sub = cached.subset(torch.arange(10, 20))
    c = list(FileData.concat([sub, cached.subset(torch.arange(10))]).iter_batches(
        [idx.clamp(max=19), torch.tensor([11, 12]), torch.tensor([15])], seeds))  # fmt: skip
    for (xa, ya, ra), (xb, yb, rb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ra, rb)
    assert torch.equal(a[0][2], plain.raw_batch(idx))  # raw = decoded, un-augmented stored form
    assert torch.equal(a[2][0], plain.batch(torch.tensor([5]))[0])  # seed None: no augmentation
    assert torch.equal(c[1][0], a[1][0])  # rows 11, 12 of the concatenation are files 1, 2
    assert not torch.equal(a[0][0], plain.batch(idx)[0])  # augmented
    # a second dataset over the same files reuses the cache instead of decoding again ...
    import cl_bench.data.filedata as fd

    def no_decode(path: str, size: int) -> np.ndarray:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(fd, "decode_image", no_decode)
    again = FileData(paths, y, image_size=16, cache_dir=str(tmp_path / "cache"), workers=2)
    assert torch.equal(again.batch(idx)[0], cached.batch(idx)[0])
    # ... but a changed file (size or time) makes a new cache, and a different image size another one
    monkeypatch.undo()
    class_image(imagenet_r / WNIDS[0] / "art_0.jpg", 3, 0)
    FileData(paths, y, image_size=16, cache_dir=str(tmp_path / "cache"))
    FileData(paths, y, image_size=12, cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3 and not list((tmp_path / "cache").glob(".*"))


def test_resized_crop_flip_is_seeded_and_exact_at_full_scale() -> None:
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(400, 3, 1, 1).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = ResizedCropFlip(size=8)(x, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    same = ResizedCropFlip(size=8)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    flipped = (out[:, 0, :, 0].float().mean(1) > out[:, 0, :, -1].float().mean(1)).float().mean()
    assert 0.35 < float(flipped) < 0.65  # about half mirrored
    full = torch.equal(ResizedCropFlip(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)(x, gen), x)
    assert full  # the whole image, unscaled, comes back unchanged
    crops = ResizedCropFlip(size=4, flip_p=0.0)(x, gen)  # smaller output: antialiased downscale, still uint8
    assert crops.shape == (400, 3, 4, 4) and crops.dtype == torch.uint8
    assert len({tuple(c[0].flatten().tolist()) for c in crops}) > 100  # boxes vary per image


TINY = ["n01443537", "n01629819", "n01641577", "n01644900"]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tinyimagenet(tmp_path / "tiny-imagenet-200", TINY)  # wnids.txt unsorted, as released


def test_tinyimagenet_from_cli(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _run(capsys, "--scenario", "split_tinyimagenet", "--set", f"scenario.root={tiny.parent}", "--set",
               "scenario.n_experiences=2", "--set", f"scenario.cache_dir={tmp_path / 'cache'}", "--method",
               "finetune", "--set", "model=cnn", "--epochs", "1", "--batch-size", "4", "--eval-every", "1", "--out",
               str(tmp_path / "runs"))  # fmt: skip
    spec = rec["scenario"]["spec"]
    assert rec["status"] == "completed" and spec["n_train"] == 12 and spec["n_test"] == 8
    assert spec["n_experiences"] == 2 and spec["class_order"] and spec["seed"] == 0
    assert rec["accuracy_matrix"]["iteration"][-1] == 4  # 6 images per experience, batch 4
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    s = SCENARIOS.create("split_tinyimagenet", root=str(tiny), n_experiences=2, class_order="identity")
    assert s.input_shape == (3, 64, 64) and s[0].classes == (0, 1)
    assert s[0].train.x.dtype == torch.uint8 and s[0].train.augment is not None
    val = s[1].test  # labels follow the annotations: val_4, val_5 are class 2 (sorted wnid index)
    assert sorted(val.y.tolist()) == [2, 2, 3, 3]


@pytest.mark.parametrize(
    "breakage, needle",
    [
        (lambda r: (r / "wnids.txt").unlink(), "wnids.txt is missing"),
        (lambda r: [p.unlink() for p in (r / "train" / TINY[1] / "images").iterdir()], f"class {TINY[1]}"),
        (lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n"),
         "n99999999, which wnids.txt does not list"),
        (lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01443537\t0\t0\t1\t1\n"),
         "has no image of class(es) n01629819"),
        (lambda r: (r / "val" / "images" / "val_3.JPEG").unlink(), "val_3.JPEG, which does not exist"),
    ],
)  # fmt: skip
def test_tinyimagenet_layout_errors(breakage, needle: str, tiny: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    breakage(tiny)
    code = main(["run", "--scenario", "split_tinyimagenet", "--set", f"scenario.root={tiny}", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


# Three runs with a DataLoader worker each; in-process resume is every method's check_resume (test_conformance.py),
# and worker-decoded batches equal in-process ones in test_filedata_workers_and_cache_give_the_same_batches.
@pytest.mark.slow
def test_imagenet_r_run_resumes_to_the_same_record(imagenet_r: Path, tmp_path: Path) -> None:
    # Worker-decoded, augmented batches must not depend on where a run was interrupted.
    from cl_bench.engine.runner import RunInterrupted, resume, run
    from cl_bench.engine.spec import Protocol, RunSpec

    spec = RunSpec(method="er", method_config={"model": "cnn", "buffer_size": 10}, scenario="split_imagenet_r",
                   scenario_config={"root": str(imagenet_r), "n_experiences": 2, "image_size": 16, "workers": 1},
                   protocol=Protocol(epochs=2, batch_size=4, eval_every=2), seed=3)  # fmt: skip
    full = run(spec, tmp_path / "a")
    with pytest.raises(RunInterrupted):
        run(spec, tmp_path / "b", checkpoint_every=3, stop_after=7)
    resumed = resume(next(p for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")), checkpoint_every=3)
    keep = ("accuracy_matrix", "metrics", "scenario", "protocol")
    assert {k: resumed[k] for k in keep} == {k: full[k] for k in keep}
    assert full["accuracy_matrix"]["iteration"][-1] == 12  # 12 images per experience, batch 4, 2 epochs


def test_wrappers_over_a_file_backed_stream(imagenet_r: Path) -> None:
    args = {"root": str(imagenet_r), "n_experiences": 3, "image_size": 16, "workers": 0}
    b = SCENARIOS.create("blurry", base="split_imagenet_r", base_args=args, window=2.0, seed=1)
    assert isinstance(b[1].train, FileData) and sum(map(sum, b.spec["composition"])) == 24
    assert sorted(p for e in b for p in e.train.paths) == sorted(
        p for e in SCENARIOS.create("split_imagenet_r", **args) for p in e.train.paths)  # fmt: skip
    p = SCENARIOS.create("power_law", base="split_imagenet_r", base_args=args, exponent=0.0, rehearsal_fraction=0.5)
    assert len(p[2].train) == 8 + 4 + 4 and p[2].train.batch(torch.arange(16))[0].shape == (16, 3, 16, 16)
