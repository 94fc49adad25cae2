"""Shared pieces of the your-own-data scenarios (``folder_split``, ``tensor_split``, ``folder_domains``,
``hf_split``): option checks, augmentation and normalisation choices, the seeded per-class split, content
hashes and the reading of ``.npz`` / ``.pt`` array files.

References:
    Harris et al., "Array programming with NumPy" (Nature 2020): the ``.npz`` format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.types import Standardize
from cl_bench.data.augment import CropFlip, ResizedCropFlip
from cl_bench.data.streams import stratified_split

IMAGENET = Standardize(255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZE = ("unit", "imagenet")
AUGMENT = ("none", "crop_flip", "resized_crop_flip")


def check_options(image_size: int, test_fraction: float, augment: str, normalize: str, workers: int) -> None:
    """Raise :class:`ConfigError` for an image option out of range (one message per option)."""
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if augment not in AUGMENT:
        raise ConfigError(f"augment must be one of {', '.join(AUGMENT)}, got {augment!r}")
    if normalize not in NORMALIZE:
        raise ConfigError(f"normalize must be 'unit' (x/255) or 'imagenet' (ImageNet mean/std, for pretrained "
                          f"backbones), got {normalize!r}")  # fmt: skip
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")


def augmenter(augment: str, image_size: int) -> CropFlip | ResizedCropFlip | None:
    """The training-batch augmentation named by ``augment`` ("none" gives None)."""
    if augment == "crop_flip":  # CIFAR's recipe scaled to the image: 4 px of padding at 32 px
        return CropFlip(padding=max(1, image_size // 8))
    return ResizedCropFlip(size=image_size) if augment == "resized_crop_flip" else None


def image_transform(normalize: str, channels: int) -> Standardize:
    """uint8 images to model inputs: x/255 ("unit") or ImageNet's mean/std ("imagenet")."""
    if normalize == "imagenet":
        return IMAGENET
    return Standardize(255.0, (0.0,) * channels, (1.0,) * channels)


def files_digest(files: list[tuple[Path, int]], base: Path, content: bool) -> str:
    """SHA-256 of (relative path, label, bytes or size) for every file, in the given order."""
    h = hashlib.sha256()
    for path, label in files:
        h.update(f"{path.relative_to(base).as_posix()}\0{label}\0".encode())
        if content:
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(str(path.stat().st_size).encode())
        h.update(b"\n")
    return h.hexdigest()


def seeded_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Train and test indices of a per-class split holding out ``test_fraction``, and how the spec names it."""
    tr, te = stratified_split(y, test_fraction, seed)
    return tr, te, f"seeded {round((1 - test_fraction) * 100)}/{round(test_fraction * 100)} per class (seed {seed})"


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` or ``.pt`` file (never unpickled), checked to hold ``x`` and ``y``.

    Raises:
        DataError: An unreadable file, another suffix, or missing arrays.
    """
    what = "a .npz (numpy.savez) or .pt (torch.save of a dict) file holding x and y, optionally x_test and y_test"
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        elif path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise DataError(f"{path} holds a {type(obj).__name__}, not a dict; expected {what}")
            arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in obj.items()}
        else:
            raise DataError(f"tensor_split reads .npz or .pt files, got {path.name}; expected {what}")
    except (OSError, ValueError, RuntimeError, EOFError) as err:
        # numpy's own advice (allow_pickle) would tell a user to execute an untrusted file: never show it.
        reason = "not a valid archive" if "pickle" in str(err) else str(err).splitlines()[0][:200]
        raise DataError(f"cannot read {path} ({type(err).__name__}: {reason}); expected {what}") from None
    missing = [k for k in ("x", "y") if k not in arrays] + (["y_test"] if "x_test" in arrays and "y_test" not in
                                                             arrays else [])  # fmt: skip
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'nothing'}); "
                        f"expected {what}")  # fmt: skip
    return arrays


def as_inputs(x: np.ndarray, y: np.ndarray, path: Path, key: str) -> tuple[torch.Tensor, np.ndarray]:
    """``x`` as a channels-first tensor (vectors stay ``(N, D)``) and its checked labels.

    Raises:
        DataError: Shapes, dtypes or label counts that are not an input array with its labels.
    """
    if x.ndim not in (2, 3, 4) or len(x) != len(y) or y.ndim != 1:
        raise DataError(f"{path}: {key} has shape {x.shape} and its labels {y.shape}; expected (N, D), (N, H, W), "
                        f"(N, H, W, C) or (N, C, H, W) inputs with N labels")  # fmt: skip
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: {key} has dtype {x.dtype}; expected uint8 images or float inputs")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels of {key} have dtype {y.dtype}; expected integer class labels")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()  # channels last (numpy / PIL order) to channels first
    return t, y


__all__ = ["AUGMENT", "IMAGENET", "NORMALIZE", "as_inputs", "augmenter", "check_options", "files_digest",
           "image_transform", "read_arrays", "seeded_split"]
