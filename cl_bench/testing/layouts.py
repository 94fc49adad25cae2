"""Tiny datasets written in the real, released file layouts, for loader tests and the scenario conformance suite.

Each writer puts a few small files where the released dataset puts its many large ones, so a loader (and
:func:`~cl_bench.testing.check_scenario` on a file-backed scenario) reads exactly the format it reads in a real
run, in milliseconds. Images are seeded noise around a per-class shade, so labels are learnable and two calls
with the same arguments write the same bytes.

::

    from cl_bench.testing.layouts import write_class_folders
    root = write_class_folders(tmp_path / "tree", n_classes=4, per_class=10)
    check_scenario("folder_split", {"root": str(root), "n_experiences": 2})

References:
    Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009): the CIFAR python batches.
    LeCun et al., the MNIST database: the IDX format.
    Hendrycks & Dietterich (ICLR 2019): the CIFAR-10-C ``.npy`` files and the ImageNet-C folder tree.
    Peng et al. (ICCV 2019) and Chen et al. (CVPR 2022): the DomainNet(-126) list files.
    Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models" (IJCV 2024): PILOT's
        ``train/`` and ``test/`` class folders.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: The MNIST file names (without ``.gz``), as Yann LeCun's site and torchvision's raw folder hold them.
MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}  # fmt: skip
#: ImageNet wnids (real ones, so sorted-folder label order matches a real copy's).
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668")


def _save(pixels: np.ndarray, path: Path, quality: int | None = None) -> None:
    from PIL import Image  # Pillow: the image library the file-backed loaders decode with

    path.parent.mkdir(parents=True, exist_ok=True)
    # quality: JPEG quality (None = Pillow's default, 75); the format follows the suffix.
    Image.fromarray(pixels).save(path, **({"quality": quality} if quality is not None else {}))


def write_images(folder: Path, n: int, shade: int, rng: np.random.Generator, ext: str = "png",
                 shape: tuple[int, int] = (18, 22), names: str = "{i:03d}") -> list[Path]:  # fmt: skip
    """``n`` RGB images of ``shape`` around grey level ``shade`` in ``folder`` (``names`` formats ``i``)."""
    out = []
    for i in range(n):
        pixels = np.clip(rng.normal(shade, 20, (*shape, 3)), 0, 255).astype(np.uint8)
        out.append(folder / f"{names.format(i=i)}.{ext}")
        _save(pixels, out[-1])
    return out


def write_class_folders(root: Path, n_classes: int = 4, per_class: int = 10, seed: int = 0,
                        prefix: str = "class") -> Path:  # fmt: skip
    """``ROOT/<prefix><c>/<i>.png``: one folder per class (ImageFolder, ``folder_split``'s layout)."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        write_images(root / f"{prefix}{c}", per_class, 40 + 50 * c % 200, rng)
    return root


def write_domain_folders(root: Path, domains: Sequence[tuple[str, str]] = (("photo", "jpg"), ("sketch", "png")),
                         n_classes: int = 3, per_class: int = 8, seed: int = 1) -> Path:  # fmt: skip
    """``ROOT/<domain>/<class>/<image>`` (``folder_domains``' layout); ``domains`` pairs a name with a suffix."""
    rng = np.random.default_rng(seed)
    for d, ext in domains:
        for c in range(n_classes):
            write_images(root / d / f"c{c}", per_class, 60 + 60 * c % 200, rng, ext)
    return root


def write_train_test_folders(root: Path, n_classes: int, per_class: tuple[int, int] = (2, 1),
                             shape: tuple[int, int] = (12, 10)) -> Path:  # fmt: skip
    """``ROOT/train/<NNN.class_c>/<i>.jpg`` and ``ROOT/test/...``: PILOT's released split (CUB-200, VTAB, ...)."""
    rng = np.random.default_rng(0)
    for half, n in zip(("train", "test"), per_class, strict=True):
        for c in range(n_classes):
            for i in range(n):
                pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
                _save(pixels, root / half / f"{c:03d}.class_{c}" / f"{i}.jpg")
    return root


def write_npz(path: Path, n: int = 40, n_classes: int = 4, shape: tuple[int, ...] = (6, 6)) -> Path:
    """An ``.npz`` with ``x`` (uint8, ``n`` x ``shape``) and ``y`` (``tensor_split``'s format)."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=rng.integers(0, 256, (n, *shape), dtype=np.uint8), y=np.arange(n) % n_classes)
    return path


# -- MNIST (IDX) ----------------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000 08 <ndim>, big-endian uint32 dims, raw bytes.

    A ``.gz`` suffix gzip-compresses it, as in the files Yann LeCun's site serves.
    """
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def fake_mnist(n: int, seed: int, per_class: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct random 28x28 images (image i carries i in its first two pixels) and balanced labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    if per_class is None:
        labels = np.arange(n) % 10
    else:
        labels = np.repeat(np.arange(10), per_class)
        assert len(labels) == n
    return images, rng.permutation(labels).astype(np.uint8)


def write_mnist(folder: Path, *, train: int | None = 60, test: int = 30, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the MNIST file set into ``folder`` (the test pair only when ``train`` is None)."""
    ext = ".gz" if gz else ""
    arrays: dict[str, np.ndarray] = {}
    arrays["test_images"], arrays["test_labels"] = fake_mnist(test, seed=1)
    if train is not None:
        arrays["train_images"], arrays["train_labels"] = fake_mnist(train, seed=2)
    for key, arr in arrays.items():
        write_idx(folder / (MNIST_FILES[key] + ext), arr)
    return arrays


# -- CIFAR python batches and CIFAR-10/100-C ------------------------------------------------------------------------
def fake_cifar_batch(n: int, n_classes: int, seed: int, label_key: str) -> dict[bytes, object]:
    """A batch as the original (Python 2) pickles load with encoding="bytes": uint8 N x 3072 rows (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % n_classes).tolist()
    return {b"batch_label": b"fake batch", b"data": data, label_key.encode(): labels,
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}  # fmt: skip


def _str_keys(obj: dict[bytes, object]) -> dict[str, object]:
    # What the original Python 2 files hold as seen under encoding="latin1" (torchvision's way of reading them).
    return {k.decode(): [v.decode() for v in val] if k in (b"filenames", b"label_names") else val  # type: ignore
            for k, val in obj.items()}  # fmt: skip


def write_cifar10(folder: Path, per_batch: int = 20, test: int = 20, str_keys: bool = False) -> Path:
    """Write ``cifar-10-batches-py/`` (5 train batches, test batch, batches.meta) under ``folder``."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)

    def dump(name: str, obj: dict[bytes, object]) -> None:
        (d / name).write_bytes(pickle.dumps(_str_keys(obj) if str_keys else obj, protocol=2))

    for i in range(1, 6):
        dump(f"data_batch_{i}", fake_cifar_batch(per_batch, 10, i, "labels"))
    dump("test_batch", fake_cifar_batch(test, 10, 0, "labels"))
    dump("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch})
    return d


def write_cifar100(folder: Path, train: int = 200, test: int = 100) -> Path:
    """Write ``cifar-100-python/`` (train, test, meta) under ``folder``; fine and coarse labels."""
    d = folder / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n, seed in (("train", train, 1), ("test", test, 2)):
        batch = fake_cifar_batch(n, 100, seed, "fine_labels")
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]  # type: ignore[attr-defined]
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}  # fmt: skip
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def write_cifar_c(root: Path, corruptions: Sequence[str], rows: int = 4, n_classes: int = 10) -> dict[str, np.ndarray]:
    """``<corruption>.npy`` (5 * rows, 32, 32, 3) uint8 and ``labels.npy`` — the released layout, fewer rows."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": rng.integers(0, n_classes, 5 * rows).astype(np.uint8)}
    np.save(root / "labels.npy", arrays["labels"])
    for name in corruptions:
        arrays[name] = rng.integers(0, 256, (5 * rows, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", arrays[name])
    return arrays


# -- ImageNet-derived trees -----------------------------------------------------------------------------------------
def write_imagenet_c(root: Path, corruptions: Sequence[str] = ("gaussian_noise", "fog"),
                     severities: Sequence[int] = (1, 2, 3, 4, 5), wnids: Sequence[str] = WNIDS[:3],
                     per_class: int = 4, side: int = 32) -> Path:  # fmt: skip
    """``ROOT/<corruption>/<severity>/<wnid>/ILSVRC2012_val_<id>.JPEG`` (the released ImageNet-C tree)."""
    rng = np.random.default_rng(0)
    for c in corruptions:
        for s in severities:
            for k, wnid in enumerate(wnids):
                for i in range(per_class):
                    pixels = np.clip(rng.normal(60 + 70 * k % 200, 25, (side, side, 3)), 0, 255).astype(np.uint8)
                    _save(pixels, root / c / str(s) / wnid / f"ILSVRC2012_val_{k * 10 + i:08d}.JPEG")
    return root


def write_domainnet(root: Path, domains: Sequence[tuple[str, int]] = (("clipart", 3), ("painting", 5), ("sketch", 2)),
                    classes: dict[str, int] | None = None, side: int = 24) -> Path:  # fmt: skip
    """``ROOT/<domain>/<class>/<file>.jpg`` and ``ROOT/<domain>_list.txt`` (lines ``<domain>/<class>/<file> <label>``).

    ``domains`` pairs a domain with its images per class; ``classes`` maps class folder names to their
    DomainNet-126 labels (default: three real ones).
    """
    rng = np.random.default_rng(0)
    for d, n in domains:
        lines = []
        for name, label in (classes or {"rabbit": 91, "teapot": 112, "table": 111}).items():
            for i in range(n):
                pixels = np.clip(rng.normal(label, 30, (side, side, 3)), 0, 255).astype(np.uint8)
                rel = f"{d}/{name}/{d}_{label:03d}_{i:06d}.jpg"
                _save(pixels, root / rel)
                lines.append(f"{rel} {label}")
        (root / f"{d}_list.txt").write_text("\n".join(lines) + "\n")
    return root


def class_image(path: Path, cls: int, k: int) -> Path:
    """Image ``k`` of class ``cls``: class-coloured, of size (18 + k) x (22 - k), so resizing is exercised."""
    rng = np.random.default_rng(100 * cls + k)
    arr = rng.integers(0, 60, (18 + k, 22 - k, 3), dtype=np.uint8)
    arr[..., cls % 3] += np.uint8(120 + 20 * (cls // 3))
    _save(arr, path, quality=95 if path.suffix == ".jpg" else None)
    return path


def write_imagenet_r(root: Path, wnids: Sequence[str] = WNIDS[1:7], per_class: int = 5) -> Path:
    """``ROOT/<wnid>/<style>_<k>.jpg`` (ImageNet-R's tree; the last image of a class is a PNG) and a stray file."""
    for c, wnid in enumerate(wnids):
        for k in range(per_class):
            class_image(root / wnid / f"{['art', 'sketch'][k % 2]}_{k}.{'png' if k == 4 else 'jpg'}", c, k)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text("not an image")
    return root


def write_tinyimagenet(root: Path, wnids: Sequence[str] = ("n01443537", "n01629819", "n01641577", "n01644900"),
                       train: int = 3, val: int = 2) -> Path:  # fmt: skip
    """``tiny-imagenet-200/``: ``wnids.txt`` (unsorted, as released), ``train/<wnid>/images/*.JPEG`` with box
    files, ``val/images/*.JPEG`` and ``val/val_annotations.txt``."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        for k in range(train):
            class_image(root / "train" / w / "images" / f"{w}_{k}.JPEG", c, k)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for k in range(val):
            name = f"val_{val * c + k}.JPEG"
            class_image(root / "val" / "images" / name, c, k + train)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def write_source_weights(path: Path, arch: str, input_shape: tuple[int, ...], n_classes: int, seed: int = 0) -> Path:
    """A state dict of source architecture ``arch`` (seeded random weights) saved with ``torch.save``."""
    import torch

    from cl_bench.nets.models import build_source_model

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_source_model(arch, input_shape, n_classes).state_dict(), path)
    return path


__all__ = ["MNIST_FILES", "WNIDS", "class_image", "fake_cifar_batch", "fake_mnist", "write_cifar10",
           "write_cifar100", "write_cifar_c", "write_class_folders", "write_domain_folders", "write_domainnet",
           "write_idx", "write_imagenet_c", "write_imagenet_r", "write_images", "write_mnist", "write_npz",
           "write_source_weights", "write_tinyimagenet", "write_train_test_folders"]  # fmt: skip
