"""Scenario builders: the MNIST IDX loader on files written here, real MNIST streams, Split-Digits."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario
from cl_bench.data import mnist
from cl_bench.data.mnist import load_mnist, read_idx
from cl_bench.testing.layouts import fake_mnist, write_idx, write_mnist

# -- IDX fixtures in the real format: cl_bench.testing.layouts.write_idx / fake_mnist / write_mnist ---------------


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the loader tries to download (download=False must never reach torchvision)."""

    def fail(root: Path) -> None:
        raise AssertionError(f"download attempted into {root}")

    monkeypatch.setattr(mnist, "_try_download", fail)


def as_images(data: torch.Tensor) -> np.ndarray:
    return data.squeeze(1).numpy()


# -- the IDX reader --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_labels_and_images_round_trip(tmp_path: Path, name: str) -> None:
    labels = np.arange(37, dtype=np.uint8) % 10
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    raw_labels = write_idx(tmp_path / name, labels)
    # The header is exactly what the IDX spec prescribes for labels: 0x00000801, then N big-endian.
    head = (gzip.decompress(raw_labels.read_bytes()) if name.endswith(".gz") else raw_labels.read_bytes())[:8]
    assert head == b"\x00\x00\x08\x01" + (37).to_bytes(4, "big")
    np.testing.assert_array_equal(read_idx(raw_labels), labels)
    out = read_idx(write_idx(tmp_path / ("images-" + name), images))
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)


# -- MNIST layouts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_full_layout_uses_official_split(tmp_path: Path, gz: bool, no_download: None) -> None:
    arrays = write_mnist(tmp_path, train=60, test=30, gz=gz)
    train, test, spec = load_mnist(str(tmp_path), download=False)
    np.testing.assert_array_equal(as_images(train.x), arrays["train_images"])
    np.testing.assert_array_equal(train.y.numpy(), arrays["train_labels"])
    np.testing.assert_array_equal(as_images(test.x), arrays["test_images"])
    np.testing.assert_array_equal(test.y.numpy(), arrays["test_labels"])
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert spec["n_train"] == 60 and spec["n_test"] == 30 and "official" in str(spec["split"])
    # The batch transform standardises with the usual MNIST statistics.
    x, _ = test.batch(slice(0, 2))
    expected = (torch.from_numpy(arrays["test_images"][:2]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x.squeeze(1), expected)

    scenario = SCENARIOS.create("split_mnist", root=str(tmp_path), download=False, class_order="identity")
    first = scenario[0]
    keep = np.isin(arrays["train_labels"], [0, 1])
    assert first.classes == (0, 1)
    np.testing.assert_array_equal(as_images(first.train.x), arrays["train_images"][keep])
    np.testing.assert_array_equal(first.train.y.numpy(), arrays["train_labels"][keep])


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_test_only_layout_is_a_deterministic_stratified_80_20_split(
    tmp_path: Path, gz: bool, no_download: None
) -> None:
    per_class = [10, 20, 15, 5, 10, 10, 30, 10, 40, 10]  # uneven on purpose: 160 images
    images, labels = fake_mnist(sum(per_class), seed=3, per_class=per_class)
    ext = ".gz" if gz else ""
    write_idx(tmp_path / (mnist.FILES["test_images"] + ext), images)
    write_idx(tmp_path / (mnist.FILES["test_labels"] + ext), labels)

    train, test, spec = load_mnist(str(tmp_path), download=False)
    assert (len(train), len(test)) == (128, 32)
    assert spec["n_train"] == 128 and spec["n_test"] == 32
    assert "only the 10k test files" in str(spec["split"]) and "128 train / 32 test" in str(spec["split"])
    # Stratified: every class keeps 80 % for training.
    assert torch.bincount(train.y, minlength=10).tolist() == [round(0.8 * n) for n in per_class]
    assert torch.bincount(test.y, minlength=10).tolist() == [round(0.2 * n) for n in per_class]
    # A partition of the file: every image lands in exactly one part, with its own label.
    ids = lambda d: (d.x[:, 0, 0, 0].long() * 256 + d.x[:, 0, 0, 1].long()).tolist()  # noqa: E731
    assert sorted(ids(train) + ids(test)) == list(range(160))
    for part in (train, test):
        np.testing.assert_array_equal(part.y.numpy(), labels[ids(part)])
    # Deterministic: a second load gives the same split.
    train2, test2, _ = load_mnist(str(tmp_path), download=False)
    assert torch.equal(train.x, train2.x) and torch.equal(test.y, test2.y)


@pytest.mark.parametrize("sub", [("MNIST", "raw"), ("raw",)], ids=["torchvision", "raw"])
def test_torchvision_layout(tmp_path: Path, sub: tuple[str, ...], no_download: None) -> None:
    arrays = write_mnist(tmp_path.joinpath(*sub), train=40, test=20, gz=False)
    train, test, spec = load_mnist(str(tmp_path), download=False)
    np.testing.assert_array_equal(as_images(train.x), arrays["train_images"])
    np.testing.assert_array_equal(test.y.numpy(), arrays["test_labels"])
    assert "official" in str(spec["split"])


def test_download_fills_in_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With download=True the loader asks torchvision and then reads what it left in ROOT/MNIST/raw."""
    calls: list[Path] = []

    def fake_download(root: Path) -> None:
        calls.append(root)
        write_mnist(root / "MNIST" / "raw", train=40, test=20, gz=False)

    monkeypatch.setattr(mnist, "_try_download", fake_download)
    train, test, _ = load_mnist(str(tmp_path), download=True)
    assert calls == [tmp_path] and (len(train), len(test)) == (40, 20)


def test_failed_download_falls_back_to_the_test_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path, train=None, test=50)
    monkeypatch.setattr(mnist, "_try_download", lambda root: None)  # no network
    train, test, spec = load_mnist(str(tmp_path), download=True)
    assert (len(train), len(test)) == (40, 10) and "only the 10k test files" in str(spec["split"])


def test_only_the_test_files_never_download_and_keep_the_8k_2k_split(tmp_path: Path, no_download: None) -> None:
    """The default (download=None) with the test pair present: no download attempt (the same data on every
    machine), nothing created in the user's folder, and ``Scenario.data`` names the files (issue 13)."""
    write_mnist(tmp_path, train=None, test=50)
    before = sorted(tmp_path.rglob("*"))
    sc = SCENARIOS.create("split_mnist", root=str(tmp_path))
    assert sorted(tmp_path.rglob("*")) == before  # no MNIST/raw or any other folder made
    assert "only the 10k test files" in str(sc.spec["split"]) and "data" not in sc.spec
    assert sc.data == f"mnist test set (50, IDX) at {tmp_path}"


def test_automatic_download_only_when_no_file_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=None tries torchvision only into the default folder or an existing, MNIST-free one, and says
    so; a root that does not exist is reported, never created."""
    calls: list[Path] = []

    def fake_download(root: Path) -> None:
        calls.append(root)
        write_mnist(root / "MNIST" / "raw", train=40, test=20, gz=False)

    monkeypatch.setattr(mnist, "_try_download", fake_download)
    sc = SCENARIOS.create("split_mnist", root=str(tmp_path))
    assert calls == [tmp_path] and sc.data is not None and "downloaded by torchvision" in sc.data
    with pytest.raises(DataError, match="no download was tried"):
        SCENARIOS.create("split_mnist", root=str(tmp_path / "typo"))
    assert calls == [tmp_path] and not (tmp_path / "typo").exists()


def test_missing_files_say_where_the_loader_looked(tmp_path: Path, no_download: None) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # a stray train file is not enough
    with pytest.raises(DataError) as err:
        SCENARIOS.create("split_mnist", root=str(tmp_path), download=False)
    msg = str(err.value)
    for folder in (tmp_path, tmp_path / "MNIST" / "raw"):
        assert str(folder) in msg
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "scenario.root" in msg


def test_missing_root_folder(tmp_path: Path, no_download: None) -> None:
    with pytest.raises(DataError, match="not found"):
        load_mnist(str(tmp_path / "does" / "not" / "exist"), download=False)


def _corrupt(path: Path, kind: str) -> None:
    blob = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(blob[: len(blob) - 100])
    elif kind == "truncated_gzip":
        path.write_bytes(gzip.compress(gzip.decompress(blob)[:-100])[:-20])
    elif kind == "short_payload":  # a well-formed gzip of a truncated IDX file
        path.write_bytes(gzip.compress(gzip.decompress(blob)[:-100]))
    elif kind == "bad_magic":
        raw = bytearray(gzip.decompress(blob) if path.suffix == ".gz" else blob)
        raw[2] = 0x0D  # IDX type 0x0D = float32, not MNIST's unsigned bytes
        path.write_bytes(gzip.compress(bytes(raw)) if path.suffix == ".gz" else bytes(raw))
    elif kind == "not_idx":
        path.write_bytes(gzip.compress(b"<html>404 Not Found</html>"))
    elif kind == "garbage_gzip":
        path.write_bytes(b"this is not gzip data at all" * 10)
    elif kind == "corrupt_deflate":  # valid gzip header, damaged compressed stream
        raw = bytearray(blob)
        for i in range(20, len(raw) - 8):
            raw[i] ^= 0xA5
        path.write_bytes(bytes(raw))
    elif kind == "bad_crc":
        raw = bytearray(blob)
        raw[-8] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        raise AssertionError(kind)


CORRUPTIONS = ["truncated_gzip", "short_payload", "bad_magic", "not_idx", "garbage_gzip", "corrupt_deflate", "bad_crc"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("which", ["test_images", "test_labels", "train_images"])
def test_corrupt_gzip_file_is_a_data_error_naming_it(tmp_path: Path, kind: str, which: str, no_download: None) -> None:
    write_mnist(tmp_path, train=40, test=20, gz=True)
    bad = tmp_path / (mnist.FILES[which] + ".gz")
    _corrupt(bad, kind)
    with pytest.raises(DataError) as err:
        SCENARIOS.create("split_mnist", root=str(tmp_path), download=False)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "bad_magic"])
def test_corrupt_raw_file_is_a_data_error_naming_it(tmp_path: Path, kind: str, no_download: None) -> None:
    write_mnist(tmp_path, train=None, test=20, gz=False)
    bad = tmp_path / mnist.FILES["test_images"]
    _corrupt(bad, kind)
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), download=False)
    assert str(bad) in str(err.value)


def test_mismatched_or_invalid_contents_are_data_errors(tmp_path: Path, no_download: None) -> None:
    images, labels = fake_mnist(20, seed=0)
    img_path = write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    lbl_path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:19])  # one label short
    with pytest.raises(DataError, match="does not hold MNIST"):
        load_mnist(str(tmp_path), download=False)
    write_idx(lbl_path, np.where(labels == 3, 12, labels))  # label 12 does not exist
    with pytest.raises(DataError, match="0-9"):
        load_mnist(str(tmp_path), download=False)
    write_idx(lbl_path, labels)
    write_idx(img_path, images[:, :16, :16])  # not 28x28
    with pytest.raises(DataError, match="does not hold MNIST"):
        load_mnist(str(tmp_path), download=False)
    write_idx(img_path, images[:0])  # well-formed but empty
    write_idx(lbl_path, labels[:0])
    with pytest.raises(DataError, match="no images"):
        load_mnist(str(tmp_path), download=False)


# -- real MNIST (the 10,000-image test set, test-only layout) --------------------------------------------------------
@pytest.fixture
def make_mnist(mnist_root: Path) -> Callable[..., Scenario]:
    """``make_mnist(name, **config)`` builds an MNIST scenario from the real test set, never downloading."""
    return lambda name, **kw: SCENARIOS.create(name, root=str(mnist_root), download=False, **kw)


@pytest.fixture(scope="module")
def real_mnist(mnist_root: Path) -> tuple:
    return load_mnist(str(mnist_root), download=False)


def test_split_mnist_default(real_mnist: tuple, make_mnist: Callable[..., Scenario]) -> None:
    scenario = make_mnist("split_mnist")
    assert len(scenario) == 5 and scenario.n_classes == 10 and scenario.setting == "class_il"
    assert scenario.input_shape == (1, 28, 28)
    assert scenario.spec["n_train"] == 8000 and scenario.spec["n_test"] == 2000
    assert "8000 train / 2000 test" in scenario.spec["split"]
    seen: set[int] = set()
    for i, exp in enumerate(scenario):
        assert exp.index == i and exp.task_id is None and len(exp.classes) == 2
        assert not seen & set(exp.classes)
        seen |= set(exp.classes)
        assert set(exp.train.y.unique().tolist()) == set(exp.classes) == set(exp.test.y.unique().tolist())
    assert seen == set(range(10))
    assert sum(len(e.train) for e in scenario) == 8000 and sum(len(e.test) for e in scenario) == 2000
    # Per class, the 80/20 split of the test file: class 1 has 1,135 images -> 908 / 227.
    train, test, _ = real_mnist
    assert torch.bincount(train.y).tolist() == [784, 908, 826, 808, 786, 714, 766, 822, 779, 807]
    assert torch.bincount(test.y).tolist() == [196, 227, 206, 202, 196, 178, 192, 206, 195, 202]


def test_split_mnist_class_orders(make_mnist: Callable[..., Scenario]) -> None:
    seeded0, again, seeded1 = (
        make_mnist("split_mnist", seed=0),
        make_mnist("split_mnist", seed=0),
        make_mnist("split_mnist", seed=1),
    )
    order0 = seeded0.spec["class_order"]
    assert sorted(order0) == list(range(10)) and order0 == again.spec["class_order"]
    assert order0 != seeded1.spec["class_order"]
    assert [e.classes for e in seeded0] == [tuple(sorted(order0[2 * i : 2 * i + 2])) for i in range(5)]
    assert seeded0.spec_hash == again.spec_hash != seeded1.spec_hash

    identity = make_mnist("split_mnist", class_order="identity")
    assert [e.classes for e in identity] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]

    explicit = [9, 3, 0, 7, 1, 2, 8, 4, 6, 5]
    for given in (explicit, tuple(explicit), ",".join(map(str, explicit))):  # list, tuple, CLI string
        scenario = make_mnist("split_mnist", class_order=given)
        assert [e.classes for e in scenario] == [(3, 9), (0, 7), (1, 2), (4, 8), (5, 6)]
        assert scenario.spec["class_order"] == explicit

    uneven = make_mnist("split_mnist", n_experiences=3, class_order="identity")
    assert [e.classes for e in uneven] == [(0, 1, 2), (3, 4, 5), (6, 7, 8, 9)]


def test_split_mnist_task_il_gives_task_ids(make_mnist: Callable[..., Scenario]) -> None:
    scenario = make_mnist("split_mnist", setting="task_il")
    assert scenario.setting == "task_il" and scenario.spec["setting"] == "task_il"
    assert [e.task_id for e in scenario] == [0, 1, 2, 3, 4]
    assert scenario.spec_hash != make_mnist("split_mnist").spec_hash


def _column_source(original: torch.Tensor, permuted: torch.Tensor) -> list[set[int]]:
    """For each pixel position of ``permuted``, the positions of ``original`` holding the same column of values."""
    where: dict[bytes, set[int]] = {}
    for j, col in enumerate(original.flatten(1).T.contiguous()):
        where.setdefault(col.numpy().tobytes(), set()).add(j)
    return [where.get(col.numpy().tobytes(), set()) for col in permuted.flatten(1).T.contiguous()]


def test_permuted_mnist(real_mnist: tuple, make_mnist: Callable[..., Scenario]) -> None:
    train, test, _ = real_mnist
    scenario = make_mnist("permuted_mnist", n_experiences=3)
    assert len(scenario) == 3 and scenario.setting == "domain_il" and scenario.n_classes == 10
    both = torch.cat([train.x, test.x])
    for exp in scenario:
        assert exp.classes == tuple(range(10)) and exp.task_id is None
        assert torch.equal(exp.train.y, train.y) and torch.equal(exp.test.y, test.y)  # same labels, same order
        # One pixel permutation, applied to train and test alike: every pixel column of the permuted
        # (train + test) matrix is a column of the original matrix.
        sources = _column_source(both, torch.cat([exp.train.x, exp.test.x]))
        assert all(sources), "some permuted pixel matches no original pixel"
        # Each image's multiset of pixel values is unchanged.
        assert torch.equal(exp.test.x.flatten(1).sort(1).values, test.x.flatten(1).sort(1).values)
    xs = [exp.train.x for exp in scenario]
    assert not torch.equal(xs[0], xs[1]) and not torch.equal(xs[1], xs[2]) and not torch.equal(xs[0], xs[2])
    again, other = make_mnist("permuted_mnist", n_experiences=3), make_mnist("permuted_mnist", n_experiences=3, seed=1)
    assert torch.equal(again[2].test.x, scenario[2].test.x) and again.spec_hash == scenario.spec_hash
    assert not torch.equal(other[0].test.x, scenario[0].test.x) and other.spec_hash != scenario.spec_hash


def test_rotated_mnist(real_mnist: tuple, make_mnist: Callable[..., Scenario]) -> None:
    train, test, _ = real_mnist
    scenario = make_mnist("rotated_mnist")
    assert len(scenario) == 20 and scenario.setting == "domain_il"
    angles = [exp.meta["angle"] for exp in scenario]
    assert angles == [9.0 * i for i in range(20)] and angles[-1] == 171.0
    assert scenario.spec["angles"] == angles
    assert torch.equal(scenario[0].train.x, train.x) and torch.equal(scenario[0].test.x, test.x)
    for exp in scenario:
        assert torch.equal(exp.test.y, test.y) and exp.classes == tuple(range(10))
    assert not torch.equal(scenario[1].test.x, test.x)
    # Two experiences: 0 and 90 degrees; a quarter turn is exact (counter-clockwise, as torch.rot90).
    half = make_mnist("rotated_mnist", n_experiences=2)
    assert torch.equal(half[1].test.x, torch.rot90(test.x, 1, dims=(-2, -1)))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("split_mnist", {"n_experiences": 0}),
        ("split_mnist", {"n_experiences": 11}),
        ("split_mnist", {"class_order": "random"}),
        ("split_mnist", {"setting": "domain_il"}),
        ("permuted_mnist", {"n_experiences": 0}),
        ("rotated_mnist", {"n_experiences": 0}),
    ],
)
def test_bad_mnist_parameters(name: str, overrides: dict, make_mnist: Callable[..., Scenario]) -> None:
    with pytest.raises(ConfigError):
        make_mnist(name, **overrides)


# -- Split-Digits ----------------------------------------------------------------------------------------------------
def test_split_digits_default() -> None:
    scenario = SCENARIOS.create("split_digits")
    assert len(scenario) == 5 and scenario.setting == "class_il" and scenario.input_shape == (1, 8, 8)
    classes = [c for exp in scenario for c in exp.classes]
    assert all(len(exp.classes) == 2 for exp in scenario) and sorted(classes) == list(range(10))
    assert sum(len(e.train) for e in scenario) + sum(len(e.test) for e in scenario) == 1797
    assert sum(len(e.test) for e in scenario) == scenario.spec["n_test"]
    for exp in scenario:
        assert set(exp.train.y.tolist()) == set(exp.classes) == set(exp.test.y.tolist())
    x, _ = scenario[0].train.batch(slice(0, 4))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 8, 8)


def test_split_digits_spec_hash() -> None:
    base = SCENARIOS.create("split_digits")
    assert base.spec_hash == SCENARIOS.create("split_digits").spec_hash  # stable across builds
    assert base.spec_hash == SCENARIOS.create("split_digits", seed=0, n_experiences=5).spec_hash
    others = [
        SCENARIOS.create("split_digits", seed=1),
        SCENARIOS.create("split_digits", class_order="identity"),
        SCENARIOS.create("split_digits", class_order=list(reversed(range(10)))),
        SCENARIOS.create("split_digits", n_experiences=2),
        SCENARIOS.create("split_digits", setting="task_il"),
    ]
    hashes = {s.spec_hash for s in others}
    assert base.spec_hash not in hashes and len(hashes) == len(others)


def test_scenario_iterates_independently() -> None:
    scenario = SCENARIOS.create("split_digits")
    first = iter(scenario)
    assert next(first).index == 0 and next(first).index == 1
    second = iter(scenario)
    assert next(second).index == 0  # a fresh iterator, not the half-used one
    assert next(first).index == 2
    assert [e.index for e in scenario] == [e.index for e in scenario] == [0, 1, 2, 3, 4]
    assert [(a.index, b.index) for a, b in zip(scenario, scenario, strict=True)] == [(i, i) for i in range(5)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_experiences": 0},
        {"n_experiences": 11},
        {"n_experiences": -1},
        {"class_order": "random"},
        {"class_order": [0, 1, 2]},
        {"class_order": [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]},
        {"class_order": list(range(1, 11))},
        {"class_order": "0,1,2,3,4,5,6,7,8,x"},
        {"setting": "domain_il"},
        {"test_fraction": 0.0},
        {"test_fraction": 1.5},
    ],
)
def test_bad_split_digits_parameters(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        SCENARIOS.create("split_digits", **overrides)
