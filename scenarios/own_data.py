"""Your own data as a stream: an ImageFolder tree, a tensor file, or one folder per domain.

* ``folder_split``: ``ROOT/<class>/<image>`` (split into train/test with a seeded ``test_fraction``) or
  ``ROOT/train/<class>/<image>`` + ``ROOT/test/<class>/<image>``, dealt into class-incremental experiences.
* ``tensor_split``: a ``.npz`` (numpy) or ``.pt`` (torch, loaded with ``weights_only=True``) file holding ``x`` and
  ``y`` and optionally ``x_test`` and ``y_test``; images as ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
  (uint8 0-255 or float), or feature vectors ``(N, D)``.
* ``folder_domains``: ``ROOT/<domain>/<class>/<image>`` (or ``<domain>/train|test/<class>/<image>``), one
  domain-incremental experience per domain, all domains sharing the class list.

The folder or file is recorded as ``scenario.data`` (printed as ``data:``), not in the hashed spec, so the same
files at another path are the same stream. Every spec records a SHA-256 of the data's content (file bytes with
their relative paths and labels), so two users can tell from their records whether they ran the same data;
``content_hash=False`` hashes the listing (relative paths and sizes) instead, for trees too large to read twice.
Nothing is ever written into ``root``.

References:
    Marcel & Rodriguez, "Torchvision the machine-vision package of torch" (ACM MM 2010): the ImageFolder layout
        (class = sub-folder name, label = its position in sorted order).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario, Shift, Standardize, TensorData
from cl_bench.data.augment import CropFlip, ResizedCropFlip
from cl_bench.data.filedata import FileData, paths_and_labels, scan_train_test
from cl_bench.data.streams import split_by_class, stratified_split, with_data

_IMAGENET = Standardize(255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_NORMALIZE = ("unit", "imagenet")
_AUGMENT = ("none", "crop_flip", "resized_crop_flip")
_EXAMPLE = "ROOT/cat/0001.png"


def _check(image_size: int, test_fraction: float, augment: str, normalize: str, workers: int) -> None:
    if image_size < 8:
        raise ConfigError(f"image_size must be >= 8, got {image_size}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if augment not in _AUGMENT:
        raise ConfigError(f"augment must be one of {', '.join(_AUGMENT)}, got {augment!r}")
    if normalize not in _NORMALIZE:
        raise ConfigError(f"normalize must be 'unit' (x/255) or 'imagenet' (ImageNet mean/std, for pretrained "
                          f"backbones), got {normalize!r}")  # fmt: skip
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")


def _augmenter(augment: str, image_size: int) -> CropFlip | ResizedCropFlip | None:
    if augment == "crop_flip":  # CIFAR's recipe scaled to the image: 4 px of padding at 32 px
        return CropFlip(padding=max(1, image_size // 8))
    return ResizedCropFlip(size=image_size) if augment == "resized_crop_flip" else None


def _transform(normalize: str, channels: int) -> Standardize:
    if normalize == "imagenet":
        return _IMAGENET
    return Standardize(255.0, (0.0,) * channels, (1.0,) * channels)


def _digest(files: list[tuple[Path, int]], base: Path, content: bool) -> str:
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


def _seeded_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Train and test indices of a per-class split holding out ``test_fraction``, and how the spec names it."""
    tr, te = stratified_split(y, test_fraction, seed)
    return tr, te, f"seeded {round((1 - test_fraction) * 100)}/{round(test_fraction * 100)} per class (seed {seed})"


def _split_tree(
    tree: tuple[dict[str, list[Path]], dict[str, list[Path]] | None], test_fraction: float, split_seed: int,
    names: list[str] | None = None,
) -> tuple[list[Path], torch.Tensor, list[Path], torch.Tensor, list[str], str]:
    """Train and test paths/labels of one scanned class-folder tree (:func:`scan_train_test`), the class names
    (``names``, else the tree's own) and how it was split."""
    train_cls, test_cls = tree
    names = names if names is not None else sorted(train_cls)
    paths, y = paths_and_labels(train_cls, names)
    if test_cls is not None:
        te_paths, te_y = paths_and_labels(test_cls, names)
        return paths, y, te_paths, te_y, names, "given train/ and test/ folders"
    tr, te, split = _seeded_split(y, test_fraction, split_seed)
    return ([paths[i] for i in tr.tolist()], y[tr], [paths[i] for i in te.tolist()], y[te], names, split)


def _root(root: str | None, name: str, layout: str) -> Path:
    if not root:
        raise ConfigError(f"{name} needs your data: pass --set scenario.root=DIR, a folder laid out as {layout}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"{name}: {base} does not exist or is not a folder; expected {layout}")
    return base


@SCENARIOS.register("folder_split", reference="your own ImageFolder tree, split by class (torchvision's layout)")
def folder_split(
    root: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    augment: str = "none",
    normalize: str = "unit",
    content_hash: bool = True,
    workers: int = 0,
    cache_dir: str | None = None,
) -> Scenario:
    """Any ImageFolder tree as a class-incremental stream.

    Args:
        root: ``ROOT/<class>/<image>``, or ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>``.
        n_experiences: Number of experiences; the classes are dealt into groups of (nearly) equal size.
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order or an explicit list of all class indices (classes are
            numbered by sorted folder name).
        setting: "class_il" or "task_il".
        test_fraction: Share of each class held out when the tree has no train/ and test/ folders.
        split_seed: Seeds that held-out split (part of the data, not of the run).
        image_size: Side the images are resized to (RGB, bilinear).
        augment: Training-batch augmentation: "none", "crop_flip" (padded random crop + flip, CIFAR's) or
            "resized_crop_flip" (random resized crop + flip, ImageNet's).
        normalize: "unit" (x/255) or "imagenet" (ImageNet mean/std, for pretrained backbones).
        content_hash: Hash the images' bytes into the spec (False: their paths and sizes only).
        workers: DataLoader processes decoding training batches ahead (0 = in the loop).
        cache_dir: Decode every image once into a memory-mapped cache under this folder (None = off).

    References:
        Marcel & Rodriguez, "Torchvision the machine-vision package of torch" (ACM MM 2010).
    """
    _check(image_size, test_fraction, augment, normalize, workers)
    base = _root(root, "folder_split", "ROOT/<class>/<image> (or ROOT/train/... and ROOT/test/...)")
    tr_paths, tr_y, te_paths, te_y, names, split = _split_tree(
        scan_train_test(base, "folder_split", _EXAMPLE), test_fraction, split_seed)
    if len(names) < 2:
        raise DataError(f"{base} has one class folder ({names[0]}); a class-incremental stream needs at least two")
    aug = _augmenter(augment, image_size)
    kw: dict[str, Any] = {"image_size": image_size, "transform": _transform(normalize, 3), "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    listing = [*zip(tr_paths, tr_y.tolist(), strict=True), *zip(te_paths, te_y.tolist(), strict=True)]
    spec: dict[str, Any] = {
        "dataset": "folder", "classes": names, "split": split, "image_size": image_size,
        "augment": aug.describe() if aug else None, "normalize": normalize, "n_train": len(tr_paths),
        "n_test": len(te_paths), "data_sha256": _digest(listing, base, content_hash),
        "hashed": "file bytes" if content_hash else "paths and sizes",
    }  # fmt: skip
    train = FileData([str(p) for p in tr_paths], tr_y, augment=aug, **kw)
    test = FileData([str(p) for p in te_paths], te_y, **kw)
    data = f"image folder ({len(tr_paths)} train / {len(te_paths)} test images) at {base}"
    return with_data(split_by_class("folder_split", train, test, n_experiences=n_experiences,
                                    class_order=class_order, seed=seed, setting=setting, spec=spec), data)  # fmt: skip


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
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


def _as_inputs(x: np.ndarray, y: np.ndarray, path: Path, key: str) -> tuple[torch.Tensor, np.ndarray]:
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


@SCENARIOS.register("tensor_split", reference="your own arrays (.npz / .pt), split by class")
def tensor_split(
    path: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    augment: str = "none",
) -> Scenario:
    """Arrays from one file as a class-incremental stream.

    Args:
        path: ``.npz`` or ``.pt`` file with ``x``, ``y`` (and optionally ``x_test``, ``y_test``). uint8 inputs
            are scaled by 1/255; float inputs are used as they are. Labels may be any integers: they are
            renumbered 0..K-1 in sorted order (the spec records the original values).
        n_experiences: Number of experiences.
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order or an explicit list of all classes.
        setting: "class_il" or "task_il".
        test_fraction: Share of each class held out when the file has no test arrays.
        split_seed: Seeds that held-out split.
        augment: "none" or, for images, "crop_flip" (padded random crop + flip).

    References:
        Harris et al., "Array programming with NumPy" (Nature 2020): the ``.npz`` format.
    """
    if not path:
        raise ConfigError("tensor_split needs your data: pass --set scenario.path=FILE, a .npz or .pt file holding "
                          "x and y (and optionally x_test, y_test)")  # fmt: skip
    if augment not in ("none", "crop_flip"):
        raise ConfigError(f"tensor_split's augment must be 'none' or 'crop_flip', got {augment!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    file = Path(path).expanduser()
    if not file.is_file():
        state = "is a folder" if file.is_dir() else "does not exist"
        raise DataError(f"tensor_split: {file} {state}; pass a .npz or .pt file holding x and y")
    arrays = _read_arrays(file)
    x, y = _as_inputs(arrays["x"], arrays["y"], file, "x")
    values = np.unique(np.concatenate([y, arrays["y_test"]]) if "y_test" in arrays else y)
    if len(values) < 2:
        raise DataError(f"{file} has one class ({values[0]}); a class-incremental stream needs at least two")
    relabel = lambda v: torch.from_numpy(np.searchsorted(values, v).astype(np.int64))  # noqa: E731
    if "x_test" in arrays:
        x_test, y_test = _as_inputs(arrays["x_test"], arrays["y_test"], file, "x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{file}: x_test examples have shape {tuple(x_test.shape[1:])}, x's "
                            f"{tuple(x.shape[1:])}; they must match")  # fmt: skip
        tr_x, tr_y, te_x, te_y, split = x, relabel(y), x_test, relabel(y_test), "given x_test / y_test"
    else:
        labels = relabel(y)
        tr, te, split = _seeded_split(labels, test_fraction, split_seed)
        tr_x, tr_y, te_x, te_y = x[tr], labels[tr], x[te], labels[te]
    images = x.dim() == 4
    if augment == "crop_flip" and not images:
        raise ConfigError(f"augment=crop_flip needs image inputs; {file} holds vectors of shape {tuple(x.shape[1:])}")
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    channels = x.shape[1] if images else 1
    transform = Standardize(scale, (0.0,) * channels, (1.0,) * channels)
    aug = CropFlip(padding=max(1, x.shape[-1] // 8)) if augment == "crop_flip" else None
    spec: dict[str, Any] = {
        "dataset": "tensor_file", "input_shape": list(x.shape[1:]), "dtype": str(x.dtype),
        "label_values": values.tolist(), "split": split, "augment": aug.describe() if aug else None,
        "n_train": len(tr_y), "n_test": len(te_y), "data_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "hashed": "file bytes",
    }  # fmt: skip
    train = TensorData(tr_x, tr_y, transform, augment=aug)
    test = TensorData(te_x, te_y, transform)
    data = f"arrays ({len(tr_y)} train / {len(te_y)} test) from {file}"
    return with_data(split_by_class("tensor_split", train, test, n_experiences=n_experiences,
                                    class_order=class_order, seed=seed, setting=setting, spec=spec), data)  # fmt: skip


@SCENARIOS.register("folder_domains", reference="your own folders, one per domain (domain-incremental)")
def folder_domains(
    root: str | None = None,
    domains: tuple[str, ...] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    augment: str = "none",
    normalize: str = "unit",
    content_hash: bool = True,
    workers: int = 0,
    cache_dir: str | None = None,
) -> Scenario:
    """One folder per domain as a domain-incremental stream over a shared class list.

    Args:
        root: ``ROOT/<domain>/<class>/<image>`` (or ``ROOT/<domain>/train|test/<class>/<image>``).
        domains: Domain folders in stream order (default: every domain folder, sorted by name).
        test_fraction: Share of each class per domain held out when a domain has no train/ and test/ folders.
        split_seed: Seeds that held-out split.
        image_size: Side the images are resized to (RGB, bilinear).
        augment: "none", "crop_flip" or "resized_crop_flip" (see ``folder_split``).
        normalize: "unit" (x/255) or "imagenet".
        content_hash: Hash the images' bytes into the spec (False: paths and sizes only).
        workers: DataLoader processes decoding training batches ahead.
        cache_dir: Decoded-image cache folder (None = off).

    References:
        Lomonaco & Maltoni, "CORe50: a new dataset and benchmark for continuous object recognition" (CoRL 2017):
            the new-instances (domain-incremental) protocol this layout expresses.
    """
    _check(image_size, test_fraction, augment, normalize, workers)
    layout = "ROOT/<domain>/<class>/<image>"
    base = _root(root, "folder_domains", layout)
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    order = list(domains) if domains is not None else found
    unknown = [d for d in order if d not in found]
    if unknown or len(order) < 1:
        raise DataError(f"folder_domains: {base} has domain folders {found}; asked for {unknown or order}. "
                        f"Expected {layout}")  # fmt: skip
    trees = [scan_train_test(base / d, f"domain {d}", _EXAMPLE) for d in order]
    names = sorted({c for halves in trees for half in halves if half for c in half})
    aug = _augmenter(augment, image_size)
    kw: dict[str, Any] = {"image_size": image_size, "transform": _transform(normalize, 3), "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    experiences, listing, splits = [], [], {}
    for i, (d, tree) in enumerate(zip(order, trees, strict=True)):
        tr_p, tr_y, te_p, te_y, _, split = _split_tree(tree, test_fraction, split_seed, names)
        listing += [*zip(tr_p, tr_y.tolist(), strict=True), *zip(te_p, te_y.tolist(), strict=True)]
        splits[d] = {"split": split, "n_train": len(tr_p), "n_test": len(te_p)}
        train = FileData([str(p) for p in tr_p], tr_y, augment=aug, **kw)
        test = FileData([str(p) for p in te_p], te_y, **kw)
        classes = tuple(sorted(set(tr_y.tolist()) | set(te_y.tolist())))
        experiences.append(Experience(i, train, test, classes, meta={"domain": d}, shift=Shift(d, 0)))
    spec: dict[str, Any] = {
        "dataset": "folder_domains", "domains": order, "classes": names, "per_domain": splits,
        "image_size": image_size, "augment": aug.describe() if aug else None, "normalize": normalize,
        "data_sha256": _digest(listing, base, content_hash), "hashed": "file bytes" if content_hash else
        "paths and sizes",
    }  # fmt: skip
    data = f"{len(order)} domain folders at {base}"
    return with_data(Scenario("folder_domains", experiences, spec, len(names), "domain_il"), data)
