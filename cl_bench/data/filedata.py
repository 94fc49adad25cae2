"""File-backed image datasets: lazily decoded file lists, batched by index like :class:`TensorData`.

Sets too large for memory (ImageNet-R: ~30,000 images at 224 x 224) stay on disk as image files. A
:class:`FileData` holds their paths and labels; :meth:`FileData.batch` decodes the images at an index
(on a thread pool), and :meth:`FileData.iter_batches` streams whole training batches through a torch
``DataLoader`` with worker processes, so decoding overlaps training. With a ``cache_dir`` every image is
decoded and resized once into one uint8 ``.npy`` array (keyed by the file list, file sizes and times, and the
image size) that later runs memory-map instead of decoding again.

The stored form is what :class:`TensorData` would hold: uint8 ``3 x S x S`` (RGB, resized to S x S with
bilinear filtering, as CODA-Prompt's test transform does for ImageNet-R). Training augmentation and the batch
transform run on whole batches, as for tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core import atomic
from cl_bench.core.errors import DataError
from cl_bench.core.types import Augment, TrainView

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
"""File endings read as images (case-insensitive), as torchvision's ImageFolder does."""


def decode_image(path: str, size: int) -> np.ndarray:
    """One image file as uint8 ``(3, size, size)``: RGB, resized to ``size`` x ``size`` (bilinear).

    The aspect ratio is not kept, as in CODA-Prompt's ImageNet-R test transform ``Resize((224, 224))``.

    Raises:
        DataError: If the file is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    except FileNotFoundError:
        raise DataError(f"image {path} listed in the dataset does not exist; the data folder is incomplete") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot decode image {path} ({err}); the file is corrupt — replace or delete it") from None


class _Store:
    """The full file list of a dataset and, optionally, its decoded cache (shared by subsets)."""

    def __init__(self, paths: Sequence[str], size: int, cache_dir: str | None, workers: int) -> None:
        self.paths = list(paths)
        self.size = size
        self.workers = workers
        self.cache_path: Path | None = None
        self._array: np.ndarray | None = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir).expanduser() / f"decoded-{self.key()}-{size}px.npy"
            if not self.cache_path.is_file():
                self._build_cache()

    def key(self) -> str:
        """Hash of the file list (paths, sizes, modification times) and the stored size."""
        h = hashlib.sha256(json.dumps([self.size, len(self.paths)]).encode())
        for p in self.paths:
            try:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\n".encode())
        return h.hexdigest()[:20]

    def _build_cache(self) -> None:
        assert self.cache_path is not None
        # Atomic: a killed build leaves no half-written cache behind.
        with atomic.replacing(self.cache_path) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(self.paths), 3, self.size,
                                                                                  self.size))  # fmt: skip
            chunk = 256
            for s in range(0, len(self.paths), chunk):
                arr[s : s + chunk] = self.decode(range(s, min(s + chunk, len(self.paths))), use_cache=False)
            arr.flush()
            del arr

    @property
    def array(self) -> np.ndarray | None:
        if self._array is None and self.cache_path is not None:
            self._array = np.load(self.cache_path, mmap_mode="r")
        return self._array

    def decode(self, rows: Sequence[int], use_cache: bool = True, threads: bool = True) -> np.ndarray:
        """Stored-form images of ``rows`` as one uint8 array ``(n, 3, S, S)``."""
        rows = list(rows)
        if use_cache and self.array is not None:
            return np.asarray(self.array[np.asarray(rows, dtype=np.int64)])
        out = np.empty((len(rows), 3, self.size, self.size), dtype=np.uint8)
        if threads and self.workers > 0 and len(rows) > 1:
            # PIL releases the GIL while decoding and resizing, so threads decode in parallel.
            with ThreadPoolExecutor(self.workers) as pool:
                for i, img in enumerate(pool.map(lambda r: decode_image(self.paths[r], self.size), rows)):
                    out[i] = img
        else:
            for i, r in enumerate(rows):
                out[i] = decode_image(self.paths[r], self.size)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes reopen the memory map instead of receiving a pickled copy of the whole array.
        return {**self.__dict__, "_array": None}


class FileData:
    """A labelled image dataset read from files, with the batch interface of :class:`TensorData`.

    Args:
        paths: Image files, one per example.
        y: Integer labels (int64), one per example.
        image_size: Side of the stored square images (S).
        transform: Batch transform from stored uint8 to model input (e.g. :class:`Standardize`).
        augment: Training-time batch augmentation on stored-form batches (see :class:`TensorData`).
        workers: Worker processes of :meth:`iter_batches` (and decoding threads of :meth:`batch`); 0 = none.
        cache_dir: Folder for the decoded-image cache (decode and resize once, memory-map afterwards); None = off.
    """

    def __init__(
        self,
        paths: Sequence[str],
        y: torch.Tensor,
        *,
        image_size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment: Augment | None = None,
        workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if len(paths) != len(y):
            raise ValueError(f"paths and y must have one entry per example: {len(paths)} vs {len(y)}")
        self._init(_Store(paths, image_size, cache_dir, workers), torch.arange(len(paths)), y.to(torch.int64),
                   transform, augment, None)  # fmt: skip

    def _init(self, store: _Store, rows: torch.Tensor, y: torch.Tensor, transform: Any, augment: Any,
              device: torch.device | None) -> None:  # fmt: skip
        self.store, self.rows, self.y = store, rows, y
        self.transform, self.augment, self.device = transform, augment, device
        self.t: torch.Tensor | None = None

    def _view(self, rows: torch.Tensor, y: torch.Tensor, device: torch.device | None) -> FileData:
        new = object.__new__(FileData)
        new._init(self.store, rows, y, self.transform, self.augment, device)
        return new

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def paths(self) -> list[str]:
        """The files of this dataset, in order."""
        return [self.store.paths[r] for r in self.rows.tolist()]

    def _stored(self, idx: torch.Tensor | slice, threads: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[idx]
        return torch.from_numpy(self.store.decode(rows.tolist(), threads=threads)), self.y[idx]

    def batch(
        self,
        idx: torch.Tensor | slice,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded, (augmented,) transformed inputs and labels at ``idx`` — as :meth:`TensorData.batch`."""
        x, y, _ = self.train_batch(idx, device, generator)
        return x, y

    def train_batch(
        self,
        idx: torch.Tensor | slice,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`batch`, plus the decoded stored-form inputs (un-augmented) on the batch's device."""
        raw, y = self._stored(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
        x = self.augment(raw, generator) if generator is not None and self.augment is not None else raw
        dev = device if device is not None else self.device
        x, y = self._finish(x, y, device)
        return x, y, raw if dev is None else raw.to(dev, non_blocking=True)

    def raw_batch(self, idx: torch.Tensor | slice, device: torch.device | str | None = None) -> torch.Tensor:
        """Decoded stored-form (un-augmented, un-transformed) inputs at ``idx``, moved to ``device``."""
        raw, _ = self._stored(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
        dev = device if device is not None else self.device
        return raw if dev is None else raw.to(dev, non_blocking=True)

    @property
    def view(self) -> TrainView:
        """The callable turning raw inputs into training inputs (this data's augmentation, then transform)."""
        return TrainView(self.augment, self.transform)

    def _finish(self, x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None) -> tuple[torch.Tensor,
                                                                                                       torch.Tensor]:
        dev = device if device is not None else self.device
        if dev is not None:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        return (self.transform(x) if self.transform else x), y

    def iter_batches(self, batches: Sequence[torch.Tensor], seeds: Sequence[int | None]) -> Iterator[tuple[
            torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
        """Training batches ``(x, y, raw)`` at ``batches`` (index tensors), decoded ahead by ``workers`` processes.

        Each batch is augmented with a generator seeded by its entry of ``seeds`` (None = no augmentation)
        inside the worker, so the result does not depend on the number of workers; ``raw`` is the decoded,
        un-augmented stored form (what a replay memory keeps, see :meth:`train_batch`).
        """
        items = _Batches(self, [b.cpu() for b in batches], list(seeds))
        dev = self.device
        if self.store.workers == 0:
            for i in range(len(items)):
                x, y, raw = items[i]
                yield (*self._finish(x, y, None), raw if dev is None else raw.to(dev, non_blocking=True))
            return
        loader = torch.utils.data.DataLoader(items, batch_size=None, shuffle=False,
                                             num_workers=min(self.store.workers, max(1, len(items))),
                                             prefetch_factor=2, persistent_workers=False)  # fmt: skip
        for x, y, raw in loader:
            yield (*self._finish(x, y, None), raw if dev is None else raw.to(dev, non_blocking=True))

    def subset(self, idx: torch.Tensor) -> FileData:
        """The examples at ``idx`` (same files, cache, transform and augmentation)."""
        return self._view(self.rows[idx], self.y[idx], self.device)

    @staticmethod
    def concat(parts: Sequence[FileData]) -> FileData:
        """One dataset holding ``parts`` in order; they must be subsets of the same file list."""
        first = parts[0]
        if any(p.store is not first.store for p in parts):
            raise ValueError("FileData.concat needs subsets of one dataset (the same file list)")
        return first._view(torch.cat([p.rows for p in parts]), torch.cat([p.y for p in parts]), first.device)

    def to(self, device: torch.device | str) -> FileData:
        """A view whose batches are moved to ``device`` (the files stay where they are)."""
        return self._view(self.rows, self.y, torch.device(device))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example as the model sees it."""
        return tuple(self.batch(slice(0, 1))[0].shape[1:])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Per-sample access for torch DataLoader / Avalanche interop only.
        x, y = self.batch(slice(i, i + 1))
        return x[0], int(y[0])


class _Batches(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Whole training batches as the items of a map-style dataset (one worker task per batch)."""

    def __init__(self, data: FileData, batches: list[torch.Tensor], seeds: list[int | None]) -> None:
        self.data, self.batches, self.seeds = data, batches, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw, y = self.data._stored(self.batches[i], threads=False)  # a worker process is the parallelism
        seed, x = self.seeds[i], raw
        if seed is not None and self.data.augment is not None:
            x = self.data.augment(raw, torch.Generator().manual_seed(seed))
        return x, y, raw


def find_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_image_folder(root: Path, dataset: str, example: str) -> dict[str, list[Path]]:
    """Class folder name -> its image files, for an ImageFolder tree ``ROOT/<class>/<image>``.

    Classes are the sub-folders holding at least one image, sorted by name (label = position, as in
    torchvision's ``ImageFolder``).

    Raises:
        DataError: If ``root`` is missing or holds no class folders with images (the message shows the layout
            expected, with ``example`` as a sample path).
    """
    if not root.is_dir():
        raise DataError(f"{dataset} root {root} does not exist or is not a folder; expected an ImageFolder tree "
                        f"ROOT/<class>/<image> such as {example}. Pass the folder with --set scenario.root=DIR")
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        images = find_images(sub)
        if images:
            classes[sub.name] = images
    if not classes:
        subs = sorted(p.name for p in root.iterdir() if p.is_dir())[:5]
        found = f"its sub-folders {subs} hold no images" if subs else "it has no sub-folders"
        raise DataError(f"{root} is not a {dataset} ImageFolder tree: {found}. Expected ROOT/<class>/<image> "
                        f"(e.g. {example}), with image files ending in {', '.join(IMAGE_EXTENSIONS)}")
    return classes


def scan_train_test(
    root: Path, dataset: str, example: str
) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    """(train classes, test classes or None) of ``root``: ``root/train`` and ``root/test`` when both exist
    (each an ImageFolder tree, as PILOT's and torchvision's copies are laid out), else ``root`` itself.

    Raises:
        DataError: If a tree is missing or empty (see :func:`scan_image_folder`), or the test tree has a
            class the training tree lacks.
    """
    halves = [root / "train", root / "test"]
    if not all(h.is_dir() for h in halves):
        return scan_image_folder(root, dataset, example), None
    train = scan_image_folder(halves[0], dataset, example.replace("ROOT", "ROOT/train", 1))
    test = scan_image_folder(halves[1], dataset, example.replace("ROOT", "ROOT/test", 1))
    extra = sorted(set(test) - set(train))
    if extra:
        raise DataError(f"{halves[1]} has class folder(s) {', '.join(extra[:5])} that {halves[0]} lacks; a class "
                        f"must have training images to be learnt. Add them to train/ or remove them")
    return train, test


def paths_and_labels(classes: dict[str, list[Path]], names: list[str]) -> tuple[list[Path], torch.Tensor]:
    """The image files of ``classes`` in the order of ``names`` and their labels (position in ``names``);
    a name without images contributes none."""
    index = {c: i for i, c in enumerate(names)}
    paths = [p for c in names for p in classes.get(c, [])]
    return paths, torch.tensor([index[c] for c in names for _ in classes.get(c, [])], dtype=torch.int64)


__all__ = ["FileData", "IMAGE_EXTENSIONS", "decode_image", "find_images", "paths_and_labels", "scan_image_folder",
           "scan_train_test"]
