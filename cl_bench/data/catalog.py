"""The datasets cl_bench's file-backed scenarios read: published files, checksums and layout checks.

One entry per dataset names where it is published, the archives with their published MD5 (torchvision's
lists for MNIST and CIFAR, the Zenodo records for the corruption sets, the CS231n page for Tiny ImageNet),
the layout the scenario reads, and a check that says exactly what is wrong with a folder. ``cl-bench data``
(:mod:`cl_bench.ops.datasets`) lists, checks and prepares them; nothing here downloads.

Where a publisher gives no checksum for the extracted files (CIFAR-C arrays, ImageNet-R, Tiny ImageNet,
ImageNet-C), the check verifies the layout and the published counts and shapes instead, and says so.

References:
    LeCun et al. (1998), MNIST; Krizhevsky (2009), CIFAR-10/100; Hendrycks & Dietterich (ICLR 2019),
    CIFAR-10-C (Zenodo 2535967), CIFAR-100-C (Zenodo 3555552), ImageNet-C (Zenodo 2235448); Hendrycks et al.
    (ICCV 2021), ImageNet-R; Le & Yang (2015), Tiny ImageNet.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl_bench.data.layout_checks import (
    CORRUPTIONS_15,
    CORRUPTIONS_EXTRA,
    PILOT_CLASSES,
    Finding,
    check_domainnet126,
    check_imagenet_c,
    check_imagenet_r,
    check_tiny_imagenet,
    pilot_check,
    shift_check,
)


@dataclass(frozen=True)
class Archive:
    """A file as its publisher distributes it.

    Attributes:
        filename: Name of the published file.
        url: Where it is published.
        md5: The published MD5, or None where the publisher gives none.
        into: Folder under the data root the archive is unpacked into ("" = the root itself, for archives that
            hold their own top folder); None = the dataset's default folder.
    """

    filename: str
    url: str
    md5: str | None
    into: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One published dataset and how cl_bench reads it.

    Attributes:
        name: Short name (``cl-bench data check --dataset NAME``).
        scenarios: Registered scenarios reading it.
        page: The publisher's page.
        layout: The layout the scenarios read, in words.
        subdir: Its default folder under ``$CL_BENCH_DATA`` (what the scenarios default to).
        archives: The published files.
        check: Verifies a candidate folder, returning a :class:`Finding`.
        folders: Names the dataset's folder may have under a root (tried after the root itself).
    """

    name: str
    scenarios: tuple[str, ...]
    page: str
    layout: str
    subdir: str
    archives: tuple[Archive, ...]
    check: Callable[[Path], Finding]
    folders: tuple[str, ...] = ()

    def locate(self, root: Path) -> Finding:
        """Check ``root`` and the usual folders below it; the first candidate holding the dataset wins."""
        candidates = [root, root / self.subdir, *(root / f for f in self.folders),
                      *(root / self.subdir / f for f in self.folders)]  # fmt: skip
        best: Finding | None = None
        for folder in dict.fromkeys(candidates):
            if folder.is_dir():
                found = self.check(folder)
                if found.ok:
                    return found
                if found.folder is not None and best is None:
                    best = found
        return best or Finding(None, [f"no {self.name} files under {root} (expected: {self.layout})"])


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, read in chunks (archives are gigabytes)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, md5: str | None, finding: Finding) -> None:
    if md5 is None:
        finding.verified.append(f"{path.name}: present (no published checksum)")
    elif (got := md5_of(path)) == md5:
        finding.verified.append(f"{path.name}: MD5 {md5} matches the published one")
    else:
        finding.problems.append(f"{path}: MD5 {got} differs from the published {md5}: the file is damaged or "
                                f"not the released one; download it again")  # fmt: skip


# ---------------------------------------------------------------- MNIST (the published MD5s of the .gz files)
def _idx_shape(path: Path) -> tuple[int, tuple[int, ...]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\x00\x00":
            raise ValueError("not an IDX file")
        ndim = head[3]
        dims = np.frombuffer(f.read(4 * ndim), dtype=">u4")
        return int.from_bytes(head, "big"), tuple(int(d) for d in dims)


def _check_mnist(folder: Path) -> Finding:
    finding = Finding(folder)
    expected = {"t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,),
                "train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,)}  # fmt: skip
    published = {a.filename: a.md5 for a in DATASETS["mnist"].archives}
    present = {}
    for stem in expected:
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is not None:
            present[stem] = path
    if "t10k-images-idx3-ubyte" not in present or "t10k-labels-idx1-ubyte" not in present:
        return Finding(None)
    for stem, path in present.items():
        try:
            _, shape = _idx_shape(path)
        except (OSError, ValueError, EOFError) as err:
            finding.problems.append(f"{path}: not a readable IDX file ({err}); download it again")
            continue
        if shape != expected[stem]:
            finding.problems.append(f"{path}: IDX shape {shape}, expected {expected[stem]}")
        elif path.suffix == ".gz":
            _verify(path, published.get(path.name), finding)
        else:
            finding.verified.append(f"{path.name}: IDX header {shape} as published (MD5s are published for the .gz)")
    if "train-images-idx3-ubyte" not in present:
        finding.verified.append("train-* files absent: split_mnist splits the 10,000 test images 8,000/2,000")
    return finding


# ---------------------------------------------------------------- CIFAR (torchvision's published MD5s per batch)
def _cifar_check(cls_name: str) -> Callable[[Path], Finding]:
    def check(folder: Path) -> Finding:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        if folder.name != cls.base_folder and (folder / cls.base_folder).is_dir():
            return Finding(None)
        if not any((folder / name).is_file() for name, _ in files):
            return Finding(None)
        finding = Finding(folder)
        for name, md5 in files:
            path = folder / name
            if not path.is_file():
                finding.problems.append(f"{path} is missing (part of {cls.filename})")
            else:
                _verify(path, md5, finding)
        return finding

    return check


# ---------------------------------------------------------------- CIFAR-10-C / CIFAR-100-C (Zenodo tar MD5s)
def _cifar_c_check(n_classes: int) -> Callable[[Path], Finding]:
    return lambda folder: _check_cifar_c(folder, n_classes)


def _check_cifar_c(folder: Path, n_classes: int) -> Finding:
    if not (folder / "labels.npy").is_file():
        return Finding(None)
    finding = Finding(folder)

    def array(path: Path) -> np.ndarray | None:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):  # numpy's own message suggests allow_pickle, which must not be followed
            finding.problems.append(f"{path}: not a NumPy .npy array; extract it again from the released archive")
            return None

    labels = array(folder / "labels.npy")
    if labels is not None and labels.shape != (50000,):
        finding.problems.append(f"{folder / 'labels.npy'}: shape {labels.shape}, expected (50000,)")
    elif labels is not None and np.issubdtype(labels.dtype, np.integer) and int(labels.max()) != n_classes - 1:
        return Finding(None)  # the other CIFAR-C set: labels tell CIFAR-10-C (0-9) from CIFAR-100-C (0-99)
    for name in (*CORRUPTIONS_15, *CORRUPTIONS_EXTRA):
        path = folder / f"{name}.npy"
        if not path.is_file():
            if name in CORRUPTIONS_15:
                finding.problems.append(f"{path} is missing (one of the 15 benchmark corruptions)")
            continue
        data = array(path)
        if data is not None and (data.shape != (50000, 32, 32, 3) or data.dtype != np.uint8):
            finding.problems.append(f"{path}: {data.shape} {data.dtype}, expected (50000, 32, 32, 3) uint8")
    if not finding.problems:
        finding.verified.append("labels.npy and the corruption arrays have the released shapes (50,000 x 32 x 32 "
                                "x 3 uint8; no per-file checksums are published)")  # fmt: skip
    return finding


_CS = "https://www.cs.toronto.edu/~kriz/"
_ZENODO_C = "https://zenodo.org/records/2235448/files/"

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("mnist", ("split_mnist", "permuted_mnist", "rotated_mnist", "mnist_c"),
            "http://yann.lecun.com/exdb/mnist/", "the four IDX files (.gz or unpacked); the t10k pair alone is enough",
            "mnist", tuple(Archive(n, "https://ossci-datasets.s3.amazonaws.com/mnist/" + n, m)
                           for n, m in [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                                        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                                        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                                        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]),
            _check_mnist, ("MNIST/raw", "raw")),
    Dataset("cifar10", ("split_cifar10", "cifar10_c (clean source)"), "https://www.cs.toronto.edu/~kriz/cifar.html",
            "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}", "cifar",
            (Archive("cifar-10-python.tar.gz", _CS + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
            _cifar_check("CIFAR10"), ("cifar-10-batches-py",)),
    Dataset("cifar100", ("split_cifar100", "cifar100_c (clean source)"), "https://www.cs.toronto.edu/~kriz/cifar.html",
            "cifar-100-python/{train, test, meta}", "cifar",
            (Archive("cifar-100-python.tar.gz", _CS + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
            _cifar_check("CIFAR100"), ("cifar-100-python",)),
    Dataset("cifar10_c", ("cifar10_c",), "https://zenodo.org/records/2535967",
            "CIFAR-10-C/{labels.npy, <corruption>.npy} (50,000 x 32 x 32 x 3 uint8, severities 1-5 stacked)",
            "CIFAR-10-C", (Archive("CIFAR-10-C.tar", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
                                   "56bf5dcef84df0e2308c6dcbcbbd8499", ""),),
            _cifar_c_check(10), ("CIFAR-10-C",)),
    Dataset("cifar100_c", ("cifar100_c",), "https://zenodo.org/records/3555552",
            "CIFAR-100-C/{labels.npy, <corruption>.npy} (50,000 x 32 x 32 x 3 uint8, severities 1-5 stacked)",
            "CIFAR-100-C", (Archive("CIFAR-100-C.tar", "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
                                    "11f0ed0f1191edbf9fa23466ae6021d3", ""),),
            _cifar_c_check(100), ("CIFAR-100-C",)),
    Dataset("imagenet_r", ("split_imagenet_r", "imagenet_shift"), "https://github.com/hendrycks/imagenet-r",
            "imagenet-r/<wnid>/<image>.jpg (200 classes, 30,000 images)", "imagenet-r",
            (Archive("imagenet-r.tar", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", None, ""),),
            check_imagenet_r, ("imagenet-r",)),
    Dataset("tiny_imagenet", ("split_tinyimagenet",), "http://cs231n.stanford.edu/",
            "tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images, val/val_annotations.txt}",
            "tiny-imagenet-200", (Archive("tiny-imagenet-200.zip", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                                          "90528d7ca1a48142e341f4ef8d21d0de", ""),),
            check_tiny_imagenet, ("tiny-imagenet-200",)),
    *(Dataset(n.replace("-", "_"), (f"split_{'cub200' if n == 'cub' else n.replace('-', '_')}",),
              "https://github.com/zhoudw-zdw/RevisitingCIL",
              f"{n}/train/<class>/<image> and {n}/test/<class>/<image> ({k} class folders each; the folder is "
              f"recognised by its name)", n, (), pilot_check(n)) for n, k in PILOT_CLASSES.items()),
    Dataset("domainnet126", ("domainnet126",), "https://ai.bu.edu/M3SDA/",
            "domainnet/{clipart,painting,real,sketch}_list.txt (lines '<domain>/<class>/<file>.jpg <label>') beside "
            "domainnet/<domain>/<class>/<file>.jpg", "domainnet", (), check_domainnet126, ("domainnet",)),
    Dataset("imagenet_a_release", ("imagenet_shift",), "https://github.com/hendrycks/natural-adv-examples",
            "imagenet-a/<wnid>/<image>.jpg (the 200 ImageNet-A classes, 7,500 images)", "imagenet-a",
            (Archive("imagenet-a.tar", "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", None, ""),),
            shift_check("imagenet_a"), ("imagenet-a",)),
    Dataset("imagenet_v2", ("imagenet_shift",), "https://github.com/modestyachts/ImageNetV2",
            "imagenetv2-matched-frequency-format-val/<class index 0..999>/<image>.jpeg (10,000 images)",
            "imagenetv2-matched-frequency-format-val", (), shift_check("imagenet_v2")),
    Dataset("imagenet_sketch", ("imagenet_shift",), "https://github.com/HaohanWang/ImageNet-Sketch",
            "sketch/<wnid>/<image>.JPEG (1,000 classes, 50,889 images)", "sketch", (),
            shift_check("imagenet_sketch"), ("sketch",)),
    Dataset("imagenet_c", ("imagenet_c",), "https://zenodo.org/records/2235448",
            "imagenet-c/<corruption>/<severity 1-5>/<wnid>/*.JPEG (15 corruptions x 5 severities x 1,000 classes)",
            "imagenet-c", tuple(Archive(n, _ZENODO_C + n, m, "imagenet-c") for n, m in [
                ("noise.tar", "e80562d7f6c3f8834afb1ecf27252745"), ("blur.tar", "2d8e81fdd8e07fef67b9334fa635e45c"),
                ("weather.tar", "33ffea4db4d93fe4a428c40a6ce0c25d"),
                ("digital.tar", "89157860d7b10d5797849337ca2e5c03"),
                ("extra.tar", "d492dfba5fc162d8ec2c3cd8ee672984")]),
            check_imagenet_c, ("imagenet-c", "ImageNet-C")),
)}  # fmt: skip


def archive_owner(filename: str) -> tuple[Dataset, Archive] | None:
    """The dataset and published archive a file name belongs to, if any."""
    for dataset in DATASETS.values():
        for archive in dataset.archives:
            if archive.filename == filename:
                return dataset, archive
    return None


__all__ = ["Archive", "CORRUPTIONS_15", "CORRUPTIONS_EXTRA", "DATASETS", "Dataset", "Finding", "archive_owner",
           "md5_of"]  # fmt: skip
