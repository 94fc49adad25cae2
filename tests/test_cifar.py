"""CIFAR streams on pickle batches written here in torchvision's real on-disk format, and the batch augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.data.augment import CropFlip
from cl_bench.data.streams import resolve_class_order
from cl_bench.engine.runner import RunInterrupted, resume, run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.scenarios import cifar
from cl_bench.scenarios.cifar import CIFAR10, CIFAR100, load_cifar, read_batch
from cl_bench.testing.layouts import fake_cifar_batch, write_cifar10, write_cifar100

# Fixtures in the real format: cl_bench.testing.layouts (fake_cifar_batch, write_cifar10, write_cifar100).


# -- loaders ---------------------------------------------------------------------------------------------------------
def test_load_cifar10_reads_pixels_in_nchw_order(tmp_path: Path) -> None:
    d = write_cifar10(tmp_path)
    train, test, spec = load_cifar(CIFAR10, str(tmp_path), download=False)
    assert train.x.shape == (100, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (20, 3, 32, 32) and len(test.y) == 20
    raw = pickle.loads((d / "data_batch_2").read_bytes())
    img = raw[b"data"][3]
    assert torch.equal(train.x[20 + 3, 1, 0], torch.from_numpy(img[1024:1056]))  # green plane, first row
    assert train.y[23].item() == raw[b"labels"][3]
    assert spec["dataset"] == "cifar10" and spec["n_train"] == 100
    assert train.augment is not None and test.augment is None
    x, _ = test.batch(slice(0, 4))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32)


def test_reads_what_torchvision_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import datasets

    write_cifar10(tmp_path, str_keys=True)
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *a, **k: True)  # the fixture's md5s are not real
    tv_train, tv_test = datasets.CIFAR10(str(tmp_path), train=True), datasets.CIFAR10(str(tmp_path), train=False)
    train, test, _ = load_cifar(CIFAR10, str(tmp_path), download=False)
    assert torch.equal(train.x, torch.from_numpy(tv_train.data).permute(0, 3, 1, 2))  # torchvision holds NHWC
    assert train.y.tolist() == tv_train.targets and test.y.tolist() == tv_test.targets


def test_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    d = write_cifar100(tmp_path)
    train, test, _ = load_cifar(CIFAR100, str(d), download=False)
    assert len(train) == 200 and len(test) == 100 and int(train.y.max()) == 99


def test_split_cifar10_five_by_two(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    sc = SCENARIOS.create("split_cifar10", root=str(tmp_path), download=False)
    assert len(sc) == 5 and sc.n_classes == 10 and sc.input_shape == (3, 32, 32)
    assert all(len(e.classes) == 2 for e in sc)
    assert sorted(c for e in sc for c in e.classes) == list(range(10))
    for e in sc:
        assert set(e.train.y.tolist()) == set(e.classes) == set(e.test.y.tolist())
        assert e.train.augment is not None  # subsets keep the augmentation
    assert sc.spec["class_order_name"] == "seeded" and sc.spec["train_augment"].startswith("random crop")
    assert sc.protocol_defaults["batch_size"] == 128


@pytest.mark.parametrize(("n_exp", "per_exp"), [(10, 10), (20, 5)])
def test_split_cifar100_splits(tmp_path: Path, n_exp: int, per_exp: int) -> None:
    write_cifar100(tmp_path)
    sc = cifar.split_cifar100(str(tmp_path), n_experiences=n_exp, download=False)
    assert len(sc) == n_exp and all(len(e.classes) == per_exp for e in sc)
    assert sc.spec["n_experiences"] == n_exp


def test_default_is_ten_by_ten(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    assert len(cifar.split_cifar100(str(tmp_path), download=False)) == 10


# -- class orders ----------------------------------------------------------------------------------------------------
def test_pycil1993_order_is_numpy_seed_1993_permutation(tmp_path: Path) -> None:
    state = np.random.get_state()
    np.random.seed(1993)
    expected = np.random.permutation(100).tolist()
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    assert resolve_class_order("pycil1993", 100, seed=7) == expected
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's global state is untouched
    write_cifar100(tmp_path)
    sc = cifar.split_cifar100(str(tmp_path), class_order="pycil1993", download=False)
    assert sc.spec["class_order"] == expected and sc.spec["class_order_name"] == "pycil1993"
    assert sc[0].classes == tuple(sorted(expected[:10]))


def test_class_orders_identity_seeded_explicit(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    ident = cifar.split_cifar10(str(tmp_path), class_order="identity", download=False)
    assert [e.classes for e in ident] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    a = cifar.split_cifar10(str(tmp_path), seed=1, download=False)
    b = cifar.split_cifar10(str(tmp_path), seed=1, download=False)
    c = cifar.split_cifar10(str(tmp_path), seed=2, download=False)
    assert a.spec_hash == b.spec_hash != c.spec_hash
    order = (9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
    exp = cifar.split_cifar10(str(tmp_path), class_order=order, download=False)
    assert exp.spec["class_order"] == list(order) and exp.spec["class_order_name"] == "explicit"
    assert exp[0].classes == (8, 9)


def test_existing_orders_unchanged_and_unknown_name_lists_choices() -> None:
    assert resolve_class_order("identity", 5, 0) == [0, 1, 2, 3, 4]
    assert (
        resolve_class_order("seeded", 10, 3) == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    )
    assert resolve_class_order("2,0,1", 3, 0) == [2, 0, 1]
    with pytest.raises(ConfigError, match="pycil1993"):
        resolve_class_order("pycil", 10, 0)


# -- augmentation ----------------------------------------------------------------------------------------------------
def test_cropflip_matches_per_sample_crop_then_flip() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = CropFlip(padding=4)(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == torch.uint8
    g = torch.Generator().manual_seed(5)
    oy, ox = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for k in range(16):
        ref = padded[k, :, oy[k] : oy[k] + 32, ox[k] : ox[k] + 32]
        assert torch.equal(out[k], ref.flip(-1) if flip[k] else ref)


def test_augmentation_is_deterministic_and_training_only(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    exp = cifar.split_cifar10(str(tmp_path), download=False)[0]
    idx = torch.arange(8)
    a, _ = exp.train.batch(idx, generator=torch.Generator().manual_seed(1))
    b, _ = exp.train.batch(idx, generator=torch.Generator().manual_seed(1))
    c, _ = exp.train.batch(idx, generator=torch.Generator().manual_seed(2))
    plain, _ = exp.train.batch(idx)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert torch.equal(plain, exp.train.transform(exp.train.x[idx]))  # no generator: no augmentation
    off = cifar.split_cifar10(str(tmp_path), augment=False, download=False)
    assert off[0].train.augment is None and off.spec["train_augment"] == "none"


# -- bad input -------------------------------------------------------------------------------------------------------
def test_missing_root_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py") as err:
        cifar.split_cifar10(str(tmp_path / "nowhere"), download=False)
    assert "data_batch_1" in str(err.value) and "test_batch" in str(err.value)


def test_wrong_layout_says_which_files_are_missing(tmp_path: Path) -> None:
    d = write_cifar10(tmp_path)
    (d / "data_batch_4").unlink()
    with pytest.raises(DataError, match="lacks data_batch_4"):
        cifar.split_cifar10(str(tmp_path), download=False)
    write_cifar10(tmp_path / "ten")
    with pytest.raises(DataError, match="cifar100 not found"):  # CIFAR-10 files where CIFAR-100 is expected
        cifar.split_cifar100(str(tmp_path / "ten"), download=False)


def test_other_variant_under_the_expected_names(tmp_path: Path) -> None:
    d = write_cifar100(tmp_path)
    batch = fake_cifar_batch(10, 10, 0, "labels")
    (d / "train").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="fine_labels"):
        cifar.split_cifar100(str(tmp_path), download=False)


@pytest.mark.parametrize("blob", [b"", b"not a pickle at all", None])
def test_corrupt_batch_names_the_file(tmp_path: Path, blob: bytes | None) -> None:
    d = write_cifar10(tmp_path)
    path = d / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500] if blob is None else blob)  # None: truncated
    with pytest.raises(DataError, match="data_batch_3"):
        cifar.split_cifar10(str(tmp_path), download=False)


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="evil"):
        read_batch(path)


def test_bad_shapes_and_labels(tmp_path: Path) -> None:
    d = write_cifar10(tmp_path)
    batch = fake_cifar_batch(20, 10, 1, "labels")
    batch[b"labels"] = [11] * 20
    (d / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="0..9"):
        cifar.split_cifar10(str(tmp_path), download=False)
    batch = fake_cifar_batch(20, 10, 1, "labels")
    batch[b"data"] = batch[b"data"][:, :100]  # type: ignore[index]
    (d / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="3072"):
        cifar.split_cifar10(str(tmp_path), download=False)


# -- end to end ------------------------------------------------------------------------------------------------------
def _spec(root: Path, epochs: int = 1) -> RunSpec:
    return RunSpec(
        method="finetune", method_config={"model": "cnn"}, scenario="split_cifar10",
        scenario_config={"root": str(root), "download": False},
        protocol=Protocol(eval_every=2, eval_subset=8, batch_size=16, epochs=epochs),
    )  # fmt: skip


def test_finetune_cnn_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class Spy(CropFlip):
        def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            calls.append((len(x), generator.initial_seed()))
            return super().__call__(x, generator)

    from cl_bench.data import cifar as cifar_files

    monkeypatch.setattr(cifar_files, "AUGMENT", Spy())  # the loader attaches it to the training set
    write_cifar10(tmp_path / "data")
    rec = run(_spec(tmp_path / "data"), tmp_path / "runs")
    assert rec["status"] == "completed"
    assert len(calls) == 5 * 2 and len({seed for _, seed in calls}) == 10  # every training batch, each its own seed
    assert rec["scenario"]["spec"]["dataset"] == "cifar10"
    assert len(rec["accuracy_matrix"]["boundary"]) == 5
    assert 0.0 <= rec["metrics"]["final_acc"] <= 1.0


def test_resumed_run_redraws_the_same_augmentation(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data")
    spec = _spec(tmp_path / "data")
    full = run(spec, tmp_path / "a")
    with pytest.raises(RunInterrupted):  # the last checkpoint is after iteration 3: mid-way through experience 1
        run(spec, tmp_path / "b", checkpoint_every=3, stop_after=5)
    resumed = resume(tmp_path / "b" / full["run_id"])
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
