"""The released CIFAR-10-C / CIFAR-100-C files: ``labels.npy`` and one ``<corruption>.npy`` per corruption.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
        (ICLR 2019); the files of their Zenodo records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.types import Standardize, TensorData
from cl_bench.data import corruptions as C

_TITLE = {"cifar10_c": "CIFAR-10-C", "cifar100_c": "CIFAR-100-C"}
#: [0, 1] inputs, the RobustBench convention for CIFAR-10-C models.
CIFAR_C_TRANSFORM = Standardize(scale=255.0)


def check_stream(corruptions: tuple[str, ...], severity: int) -> None:
    """Raise ConfigError for an unknown corruption or a severity outside 1-5."""
    if not corruptions:
        raise ConfigError(f"corruptions must name at least one of: {', '.join(C.CORRUPTIONS)}")
    for name in corruptions:
        C.check(name, severity)


def load_cifar_c(
    root: str | None, dataset: str, corruptions: tuple[str, ...], severity: int
) -> tuple[list[TensorData], dict[str, object]]:
    """Test sets of the released ``<corruption>.npy`` files at one severity, plus a spec.

    The released files hold 50,000 x 32 x 32 x 3 uint8 images (severities 1-5 stacked, 10,000 each, severity
    s in rows (s-1)*10,000 .. s*10,000) and ``labels.npy``. Generally any 5 * k rows are accepted (severity s
    = rows (s-1)*k .. s*k), so subsets written in the same layout load too.

    Raises:
        ConfigError: No root, unknown corruption or severity outside 1-5.
        DataError: A missing file, or an array of the wrong shape or dtype (the message names what was expected).
    """
    check_stream(corruptions, severity)
    if root is None:
        raise ConfigError(
            f"{dataset} needs the released files: pass the folder holding labels.npy and <corruption>.npy with "
            f"--set scenario.root=DIR (the {_TITLE[dataset]} files are on Hendrycks & Dietterich's Zenodo record)"
        )
    folder = Path(root).expanduser()
    labels = _load(folder / "labels.npy", dataset)
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % 5:
        raise DataError(
            f"{folder / 'labels.npy'} has shape {labels.shape}; expected (50000,) (5 severities x 10,000 labels, or "
            f"generally 5 * k)"
        )
    rows = len(labels) // 5
    part = slice((severity - 1) * rows, severity * rows)
    y = torch.from_numpy(np.asarray(labels[part]).astype(np.int64))
    out = []
    for name in corruptions:
        path = folder / f"{name}.npy"
        arr = _load(path, dataset)
        if arr.shape != (len(labels), 32, 32, 3) or arr.dtype != np.uint8:
            raise DataError(
                f"{path} holds {arr.dtype} {arr.shape}; expected uint8 ({len(labels)}, 32, 32, 3) to match "
                f"labels.npy (the released files are 50,000 x 32 x 32 x 3 uint8)"
            )
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(arr[part]).transpose(0, 3, 1, 2)))
        out.append(TensorData(x, y, CIFAR_C_TRANSFORM))
    spec: dict[str, object] = {"dataset": dataset, "source": "released .npy files", "rows_per_severity": rows,
                               "transform": "x/255 (RobustBench convention, no normalisation)",
                               "data": f"{_TITLE[dataset]} released .npy files ({rows} per severity, "
                                       f"{', '.join(corruptions)}) at {folder}"}  # fmt: skip
    return out, spec


def _load(path: Path, dataset: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(
            f"{path} not found: the {dataset} root must hold labels.npy and one <corruption>.npy per corruption "
            f"({', '.join(C.CORRUPTIONS)}), as released by Hendrycks & Dietterich"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        # numpy's message for a pickle (or a non-.npy file it takes for one) advises allow_pickle=True, which
        # would run code from the file: never pass that on; say what the file is not instead.
        why = "it is not a NumPy .npy array" if "pickle" in str(err) else str(err)
        raise DataError(f"cannot read {path} ({why}); the file is corrupt or not one of the released "
                        f"{dataset} files — fetch it again") from None  # fmt: skip


__all__ = ["CIFAR_C_TRANSFORM", "check_stream", "load_cifar_c"]
