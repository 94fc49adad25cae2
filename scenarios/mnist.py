"""MNIST streams: Split-, Permuted- and Rotated-MNIST, read from the original IDX files.

The loader reads the four IDX files (gzip-compressed or not) from a user-given
root, or from torchvision's layout (``ROOT/MNIST/raw``), downloading through
torchvision where the network allows. When only the 10,000-image test files are
present, it splits them per class into 8,000 train / 2,000 test images with a
fixed seed and says so in the scenario spec.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario, Shift, Standardize, TensorData
from cl_bench.data.streams import split_by_class, stratified_split

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TRANSFORM = Standardize(scale=255.0, mean=(0.1307,), std=(0.3081,))
_SPLIT_SEED = 0
_TEST_ONLY_FRACTION = 0.2
_PROTOCOL = {"batch_size": 32, "epochs": 1}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array.

    Raises:
        DataError: If the file is truncated, not IDX, or not unsigned bytes.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: corrupt deflate data inside a .gz
        raise DataError(f"cannot read {path} ({err}); the file is corrupt — delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes (bad magic number); delete it and fetch the original "
            f"MNIST file again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)  # Python ints: a garbage header cannot overflow
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: its header announces {dims} ({expected} bytes) but it has "
            f"{len(raw)} bytes; delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _default_root() -> Path:
    return Path(os.environ.get("CL_BENCH_DATA", Path.home() / ".cache" / "cl_bench")) / "mnist"


def _try_download(root: Path) -> None:
    try:
        from torchvision.datasets import MNIST

        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except Exception:  # no network: the caller reports where it looked
        pass


def load_mnist(root: str | None, download: bool = True) -> tuple[TensorData, TensorData, dict[str, object]]:
    """Train and test MNIST as uint8 tensors, plus a spec saying where they came from.

    Raises:
        DataError: If no IDX files are found (after an attempted download) or one is corrupt.
    """
    base = Path(root).expanduser() if root else _default_root()
    folders = [base, base / "MNIST" / "raw", base / "raw"]

    def locate() -> dict[str, Path | None]:
        for folder in folders:
            found = {k: _find(folder, v) for k, v in FILES.items()}
            if found["test_images"] and found["test_labels"]:
                return found
        return {}

    found = locate()
    if not (found and found["train_images"]) and download:
        _try_download(base)
        found = locate() or found
    if not found:
        raise DataError(
            f"MNIST not found: looked for {FILES['test_images']}[.gz] and {FILES['test_labels']}[.gz] (plus the "
            f"train-* files) in {', '.join(str(f) for f in folders)}, and downloading it failed or was disabled. "
            f"Put the original IDX files in one of these folders (the test pair alone is enough) and pass it "
            f"with --set scenario.root=DIR."
        )
    test_x, test_y = read_idx(found["test_images"]), read_idx(found["test_labels"])  # type: ignore[arg-type]
    _check_pair(test_x, test_y, found["test_images"])  # type: ignore[arg-type]
    x = torch.from_numpy(test_x.copy()).unsqueeze(1)
    y = torch.from_numpy(test_y.astype(np.int64))
    spec: dict[str, object] = {"dataset": "mnist", "transform": "x/255, standardize(0.1307, 0.3081)"}
    if found["train_images"] and found["train_labels"]:
        train_x, train_y = read_idx(found["train_images"]), read_idx(found["train_labels"])
        _check_pair(train_x, train_y, found["train_images"])
        train = TensorData(torch.from_numpy(train_x.copy()).unsqueeze(1), torch.from_numpy(train_y.astype(np.int64)),
                           TRANSFORM)  # fmt: skip
        test = TensorData(x, y, TRANSFORM)
        spec["split"] = "official 60k/10k"
    else:
        tr, te = stratified_split(y, _TEST_ONLY_FRACTION, _SPLIT_SEED)
        train, test = TensorData(x[tr], y[tr], TRANSFORM), TensorData(x[te], y[te], TRANSFORM)
        spec["split"] = (
            f"only the 10k test files were found: split per class into {len(tr)} train / {len(te)} test "
            f"(seed {_SPLIT_SEED})"
        )
    spec.update(n_train=len(train), n_test=len(test))
    return train, test, spec


def _check_pair(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{path} does not hold MNIST: images {images.shape} and labels {labels.shape} should be "
            f"(N, 28, 28) and (N,); fetch the original files again"
        )
    if len(labels) == 0:
        raise DataError(f"{path} holds no images; fetch the original MNIST files again")
    if labels.max(initial=0) > 9:
        raise DataError(f"labels beside {path} go up to {labels.max()}; MNIST labels are 0-9 — the file is corrupt")


@SCENARIOS.register(
    "split_mnist",
    reference="LeCun et al., 'Gradient-based learning applied to document recognition' (1998); Split-MNIST "
    "protocol of Zenke, Poole & Ganguli, 'Continual learning through synaptic intelligence' (ICML 2017)",
)
def split_mnist(
    root: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    download: bool = True,
) -> Scenario:
    """Split-MNIST: the 10 digits dealt into experiences (default 5 x 2 classes).

    Args:
        root: Folder with the MNIST IDX files (default ``$CL_BENCH_DATA/mnist``).
        n_experiences: Number of experiences.
        seed: Seeds the class order.
        class_order: "seeded", "identity" or an explicit list of the 10 classes.
        setting: "class_il" or "task_il".
        download: Try torchvision's download when the files are missing.
    """
    train, test, spec = load_mnist(root, download)
    return split_by_class("split_mnist", train, test, n_experiences=n_experiences, class_order=class_order,
                          seed=seed, setting=setting, spec=spec, protocol_defaults=_PROTOCOL)  # fmt: skip


def _domain_stream(name: str, train: TensorData, test: TensorData, views: list[tuple[torch.Tensor, torch.Tensor,
                   dict[str, object]]], spec: dict[str, object]) -> Scenario:  # fmt: skip
    experiences = [
        Experience(i, TensorData(tx, train.y, TRANSFORM), TensorData(sx, test.y, TRANSFORM), tuple(range(10)),
                   None, meta, Shift("_".join(f"{k}{v}" for k, v in meta.items())))
        for i, (tx, sx, meta) in enumerate(views)
    ]  # fmt: skip
    return Scenario(name, experiences, spec, 10, "domain_il", _PROTOCOL)


@SCENARIOS.register(
    "permuted_mnist",
    reference="Goodfellow et al., 'An empirical investigation of catastrophic forgetting in gradient-based "
    "neural networks' (ICLR 2014); Kirkpatrick et al., 'Overcoming catastrophic forgetting' (PNAS 2017)",
)
def permuted_mnist(root: str | None = None, n_experiences: int = 5, seed: int = 0, download: bool = True) -> Scenario:
    """Permuted-MNIST: each experience applies its own fixed pixel permutation (domain-incremental).

    Args:
        root: Folder with the MNIST IDX files.
        n_experiences: Number of permutations (experiences).
        seed: Seeds the permutations.
        download: Try torchvision's download when the files are missing.
    """
    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
    train, test, spec = load_mnist(root, download)
    gen = torch.Generator().manual_seed(seed)
    views = []
    for i in range(n_experiences):
        perm = torch.randperm(28 * 28, generator=gen)
        views.append((train.x.flatten(1)[:, perm].view_as(train.x), test.x.flatten(1)[:, perm].view_as(test.x),
                      {"permutation": i}))  # fmt: skip
    spec = {**spec, "n_experiences": n_experiences, "seed": seed, "permutation": "torch.randperm(784) per experience"}
    return _domain_stream("permuted_mnist", train, test, views, spec)


@SCENARIOS.register(
    "rotated_mnist",
    reference="Lopez-Paz & Ranzato, 'Gradient Episodic Memory for continual learning' (NeurIPS 2017); 20 "
    "rotations of 0-171 degrees as in De Lange et al. (ICLR 2023)",
)
def rotated_mnist(root: str | None = None, n_experiences: int = 20, seed: int = 0, download: bool = True) -> Scenario:
    """Rotated-MNIST: experience i rotates every digit by i * 180 / n degrees (20 -> 0, 9, ..., 171).

    Args:
        root: Folder with the MNIST IDX files.
        n_experiences: Number of rotations (experiences).
        seed: Recorded for symmetry with other streams; the angles are fixed.
        download: Try torchvision's download when the files are missing.
    """
    from torchvision.transforms.v2 import functional as TF

    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
    train, test, spec = load_mnist(root, download)
    angles = [i * 180.0 / n_experiences for i in range(n_experiences)]
    views = [(TF.rotate(train.x, a), TF.rotate(test.x, a), {"angle": a}) for a in angles]
    spec = {**spec, "n_experiences": n_experiences, "seed": seed, "angles": angles}
    return _domain_stream("rotated_mnist", train, test, views, spec)
