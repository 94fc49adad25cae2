"""MNIST from the original IDX files (gzip-compressed or not).

The loader reads the four IDX files from a user-given root, or from torchvision's layout
(``ROOT/MNIST/raw``). It downloads through torchvision only when asked, or when no MNIST file at all is
found (:mod:`cl_bench.data.download`): with only the 10,000-image test files present it never downloads,
and splits them per class into 8,000 train / 2,000 test images with a fixed seed, saying so in the
scenario spec.

References:
    LeCun et al., "Gradient-based learning applied to document recognition" (Proc. IEEE 1998); the IDX
        format as published on the MNIST page.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from cl_bench.core.errors import DataError
from cl_bench.core.types import Standardize, TensorData
from cl_bench.data.download import data_home, wants_download
from cl_bench.data.streams import stratified_split

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TRANSFORM = Standardize(scale=255.0, mean=(0.1307,), std=(0.3081,))
_SPLIT_SEED = 0
_TEST_ONLY_FRACTION = 0.2


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


def _try_download(root: Path) -> None:
    try:
        from torchvision.datasets import MNIST

        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except Exception:  # no network: the caller reports where it looked
        pass


def load_mnist(
    root: str | None, download: bool | None = None
) -> tuple[TensorData, TensorData, dict[str, object]]:
    """Train and test MNIST as uint8 tensors, plus a spec saying where they came from.

    The spec's ``data`` entry says which files were read, where (a path: scenario factories move it out of
    the hashed spec into ``Scenario.data``).

    Args:
        root: Folder with the IDX files, or torchvision's layout under it (default ``$CL_BENCH_DATA/mnist``).
        download: None = download only when no MNIST file at all is found (see :mod:`cl_bench.data.download`);
            True = try whenever the training files are missing; False = never.

    Raises:
        DataError: If no IDX files are found (after an attempted download) or one is corrupt.
    """
    base = Path(root).expanduser() if root else data_home() / "mnist"
    folders = [base, base / "MNIST" / "raw", base / "raw"]

    def locate() -> dict[str, Path | None]:
        for folder in folders:
            found = {k: _find(folder, v) for k, v in FILES.items()}
            if found["test_images"] and found["test_labels"]:
                return found
        return {}

    found = locate()
    any_found = any(_find(f, stem) for f in folders for stem in FILES.values())
    downloaded = False
    if not (found and found["train_images"]) and wants_download(download, any_found, root, base):
        _try_download(base)
        downloaded, found = True, locate() or found
    if not found:
        tried = ("a download through torchvision failed (offline?)" if downloaded else
                 "no download was tried (only with no MNIST file at all in an existing folder, or with "
                 "--set scenario.download=true)")  # fmt: skip
        raise DataError(
            f"MNIST not found: looked for {FILES['test_images']}[.gz] and {FILES['test_labels']}[.gz] (plus the "
            f"train-* files) in {', '.join(str(f) for f in folders)}, and {tried}. Put the original IDX files in "
            f"one of these folders (the test pair alone is enough) and pass it with --set scenario.root=DIR."
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
        spec["data"] = f"mnist train + test sets ({len(train_y)} + {len(test_y)}, IDX) at {found['test_images'].parent}"
    else:
        tr, te = stratified_split(y, _TEST_ONLY_FRACTION, _SPLIT_SEED)
        train, test = TensorData(x[tr], y[tr], TRANSFORM), TensorData(x[te], y[te], TRANSFORM)
        spec["split"] = (
            f"only the 10k test files were found: split per class into {len(tr)} train / {len(te)} test "
            f"(seed {_SPLIT_SEED})"
        )
        spec["data"] = f"mnist test set ({len(y)}, IDX) at {found['test_images'].parent}"  # type: ignore[union-attr]
    if downloaded:
        spec["data"] = f"{spec['data']}, downloaded by torchvision (no MNIST file was found)"
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


__all__ = ["FILES", "TRANSFORM", "load_mnist", "read_idx"]
