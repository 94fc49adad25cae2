"""CIFAR-10 and CIFAR-100 from torchvision's "python version" pickle batches (Krizhevsky, 2009).

The loader reads the files as torchvision lays them out under a user-given root
(``ROOT/cifar-10-batches-py/data_batch_1..5, test_batch`` and ``ROOT/cifar-100-python/train, test``), or
from a root that is that batches folder itself. It downloads through torchvision only when asked, or when
no file of the variant is found (:mod:`cl_bench.data.download`). Images are held as uint8 N x 3 x 32 x 32
tensors; training batches get the standard random crop (padding 4) + horizontal flip batch-wise on the
device (:class:`cl_bench.data.augment.CropFlip`), then every batch is normalised with the dataset's
per-channel mean and std.

The batches are pickles; they are read with an unpickler that only rebuilds numpy arrays and plain
containers, so a tampered file cannot run code.

References:
    Krizhevsky, "Learning multiple layers of features from tiny images" (tech. report, 2009).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import DataError
from cl_bench.core.types import Standardize, TensorData
from cl_bench.data.augment import CropFlip
from cl_bench.data.download import data_home, wants_download


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant's files live and what they hold.

    Attributes:
        name: Dataset name in specs ("cifar10" / "cifar100").
        folder: torchvision's batches folder under the root.
        train_files: Training batch files, in order.
        test_file: The test batch file.
        meta_file: The label-names file (optional; checked when present).
        label_key: Key of the labels in each batch.
        n_classes: Number of classes.
        transform: Per-dataset normalisation.
    """

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    n_classes: int
    transform: Standardize


CIFAR10 = CifarFormat(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", 10, Standardize(255.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
)  # fmt: skip
CIFAR100 = CifarFormat(
    "cifar100", "cifar-100-python", ("train",), "test", "meta", "fine_labels", 100,
    Standardize(255.0, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
)  # fmt: skip
AUGMENT = CropFlip(padding=4, flip_p=0.5)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}  # fmt: skip


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtins only (no arbitrary code from a file)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays")


def read_batch(path: Path) -> dict[str, Any]:
    """Read one CIFAR pickle batch into a dict with ``str`` keys.

    Raises:
        DataError: If the file cannot be read or is not a CIFAR batch pickle.
    """
    try:
        blob = path.read_bytes()
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except Exception as err:  # truncated, garbage or tampered pickles raise many different types
        raise DataError(
            f"cannot read {path} ({type(err).__name__}: {err}); the file is corrupt — delete it and fetch the "
            f"CIFAR 'python version' archive again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (a pickled dict), it holds a {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _images_labels(path: Path, fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if "data" not in batch or fmt.label_key not in batch:
        raise DataError(
            f"{path} is not a {fmt.name} batch: expected keys 'data' and '{fmt.label_key}', found "
            f"{sorted(batch)}" + (" (is this the other CIFAR variant?)" if "data" in batch else "")
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[fmt.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(
            f"{path} does not hold CIFAR images: data {data.dtype} {data.shape} and labels {labels.shape} should "
            f"be uint8 (N, 3072) and (N,)"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= fmt.n_classes):
        raise DataError(f"labels in {path} span {labels.min()}..{labels.max()}; {fmt.name} labels are "
                        f"0..{fmt.n_classes - 1}")  # fmt: skip
    return data, labels


def _try_download(root: Path, fmt: CifarFormat) -> None:
    try:
        from torchvision import datasets

        cls = datasets.CIFAR10 if fmt is CIFAR10 else datasets.CIFAR100
        cls(str(root), train=True, download=True)
    except Exception:  # no network: the caller reports where it looked
        pass


def _locate(base: Path, fmt: CifarFormat) -> tuple[Path | None, list[Path]]:
    folders = [base / fmt.folder, base]
    needed = (*fmt.train_files, fmt.test_file)
    for folder in folders:
        if all((folder / f).is_file() for f in needed):
            return folder, folders
    return None, folders


def load_cifar(
    fmt: CifarFormat, root: str | None, download: bool | None = None
) -> tuple[TensorData, TensorData, dict[str, object]]:
    """Train and test sets of one CIFAR variant as uint8 NCHW tensors, plus a spec of where they came from.

    Args:
        fmt: :data:`CIFAR10` or :data:`CIFAR100`.
        root: The folder holding torchvision's batches folder, or that folder itself
            (default ``$CL_BENCH_DATA/cifar``).
        download: None = download only when no file of the variant is found (see
            :mod:`cl_bench.data.download`); True = try whenever files are missing; False = never.

    Raises:
        DataError: If the files are not found (after an attempted download), or one is corrupt.
    """
    base = Path(root).expanduser() if root else data_home() / "cifar"
    folder, looked = _locate(base, fmt)
    needed = (*fmt.train_files, fmt.test_file)
    any_found = any((f / n).is_file() for f in looked for n in needed)
    downloaded = False
    if folder is None and wants_download(download, any_found, root, base):
        _try_download(base, fmt)
        downloaded = True
        folder, looked = _locate(base, fmt)
    if folder is None:
        partial = [(f, [n for n in needed if not (f / n).is_file()]) for f in looked if f.is_dir()]
        partial = [(f, missing) for f, missing in partial if len(missing) < len(needed)]
        detail = "".join(f"; {f} lacks {', '.join(m)}" for f, m in partial)
        tried = ("a download through torchvision failed (offline?)" if downloaded else
                 "no download was tried (only with no file of it at all in an existing folder, or with "
                 "--set scenario.download=true)")  # fmt: skip
        raise DataError(
            f"{fmt.name} not found: looked for {', '.join(needed)} in {', '.join(str(f) for f in looked)}{detail}, "
            f"and {tried}. Unpack the CIFAR 'python version' archive "
            f"(it makes {fmt.folder}/) under a folder and pass that folder with --set scenario.root=DIR."
        )
    if (folder / fmt.meta_file).is_file():
        meta = read_batch(folder / fmt.meta_file)
        names = meta.get("label_names", meta.get("fine_label_names"))
        if names is not None and len(names) != fmt.n_classes:
            raise DataError(f"{folder / fmt.meta_file} names {len(names)} classes; {fmt.name} has {fmt.n_classes} "
                            f"(is this the other CIFAR variant?)")  # fmt: skip
    parts = [_images_labels(folder / f, fmt) for f in fmt.train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _images_labels(folder / fmt.test_file, fmt)

    def data(x: np.ndarray, y: np.ndarray, augment: CropFlip | None) -> TensorData:
        images = torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
        return TensorData(images, torch.from_numpy(y), fmt.transform, augment=augment)

    spec: dict[str, object] = {
        "dataset": fmt.name,
        "split": f"official {len(train_y)}/{len(test_y)}",
        "transform": f"x/255, standardize(mean={fmt.transform.mean}, std={fmt.transform.std})",
        "n_train": len(train_y),
        "n_test": len(test_y),
        "data": f"{fmt.name} train + test sets ({len(train_y)} + {len(test_y)}, python batches) at {folder}"
        + (", downloaded by torchvision (no file of it was found)" if downloaded else ""),
    }
    return data(train_x, train_y, AUGMENT), data(test_x, test_y, None), spec


__all__ = ["AUGMENT", "CIFAR10", "CIFAR100", "CifarFormat", "load_cifar", "read_batch"]
