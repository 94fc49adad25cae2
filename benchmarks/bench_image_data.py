"""File-backed image data path (ImageNet-R style): cl_bench's FileData vs torchvision ImageFolder + DataLoader.

Every variant produces the same kind of training batch as CODA-Prompt's ImageNet-R pipeline — shuffled, random
resized crop to 224 x 224 + horizontal flip, as float32 in [0, 1] — and the script prints training images per
second and the ratio to torchvision.

Data: an ImageFolder tree of ``--classes`` x ``--per-class`` JPEG files of random sizes (250-500 px a side,
smooth random content, quality 90) written to a temporary folder, roughly the size of ImageNet-R's images.

* ``torchvision``: ``datasets.ImageFolder`` with ``transforms.v2`` ``RandomResizedCrop(224)``,
  ``RandomHorizontalFlip()``, ``ToImage()``, ``ToDtype(float32, scale=True)``, batched by
  ``DataLoader(batch_size, shuffle=True, num_workers=W)`` — decoding and cropping from the original file.
* ``FileData``: :class:`cl_bench.data.filedata.FileData` at 224 px with :class:`cl_bench.data.augment.ResizedCropFlip`,
  batches through :meth:`FileData.iter_batches` (``DataLoader`` workers decode each batch: file -> 224 x 224
  uint8, then one batched crop) — what the runner does for ``split_imagenet_r``.
* ``FileData + cache``: the same after the decoded-image cache is built (memory-mapped uint8 ``.npy``; the build
  time is printed separately, it is paid once per file list and image size).

Each variant runs one untimed warm-up epoch, then ``--epochs`` timed epochs (worker start-up included).
Usage::

    python benchmarks/bench_image_data.py [--classes 20] [--per-class 40] [--batch-size 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from cl_bench.core.types import Standardize
from cl_bench.data.augment import ResizedCropFlip
from cl_bench.data.filedata import FileData, scan_image_folder


def write_tree(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    """An ImageFolder tree of smooth random JPEGs of ImageNet-R-like sizes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            h, w = rng.integers(250, 501, size=2)
            small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)  # smooth: compresses like photos
            img.save(folder / f"img_{k}.jpg", quality=90)


def timed(epochs: int, run_epoch: Callable[[], int]) -> float:
    """Images per second over ``epochs`` timed epochs after one warm-up epoch."""
    run_epoch()
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        n += run_epoch()
    return n / (time.perf_counter() - t0)


def consume(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    n = 0
    for x, _ in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 224, 224)
        n += len(x)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        write_tree(root, args.classes, args.per_class)
        n = args.classes * args.per_class
        bs, w = args.batch_size, args.workers
        results: dict[str, float] = {}

        tv = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), v2.ToImage(),
                         v2.ToDtype(torch.float32, scale=True)])  # fmt: skip
        folder = datasets.ImageFolder(str(root), transform=tv)
        loader = DataLoader(folder, batch_size=bs, shuffle=True, num_workers=w)
        results[f"torchvision ImageFolder, {w} workers"] = timed(args.epochs, lambda: consume(loader))

        classes = scan_image_folder(root, "bench", "ROOT/<class>/<image>")
        paths = [str(p) for images in classes.values() for p in images]
        y = torch.tensor([i for i, images in enumerate(classes.values()) for _ in images])
        gen = torch.Generator().manual_seed(0)
        aug, transform = ResizedCropFlip(size=224), Standardize(255.0, (0.0,) * 3, (1.0,) * 3)

        def epoch_of(data: FileData) -> Callable[[], int]:
            def run() -> int:
                perm = torch.randperm(n, generator=gen)
                batches = [perm[i : i + bs] for i in range(0, n, bs)]
                seeds = [int(torch.randint(2**62, (1,), generator=gen)) for _ in batches]
                return consume(data.iter_batches(batches, seeds))

            return run

        for workers in sorted({0, w}):
            data = FileData(paths, y, image_size=224, transform=transform, augment=aug, workers=workers)
            results[f"FileData, {workers} workers"] = timed(args.epochs, epoch_of(data))
        t0 = time.perf_counter()
        cache = Path(tmp) / "cache"
        FileData(paths, y, image_size=224, workers=w, cache_dir=str(cache))
        build = time.perf_counter() - t0
        for workers in sorted({0, w}):
            data = FileData(paths, y, image_size=224, transform=transform, augment=aug, workers=workers,
                            cache_dir=str(cache))  # fmt: skip
            results[f"FileData + decoded cache, {workers} workers"] = timed(args.epochs, epoch_of(data))

    base = results[f"torchvision ImageFolder, {w} workers"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads 1; "
          f"{n} JPEGs (250-500 px), batch {bs}, {args.epochs} timed epochs after 1 warm-up")  # fmt: skip
    print(f"decoded cache build (once): {build:.1f} s = {n / build:.0f} images/s with {w} threads")
    print(f"{'variant':45s} {'images/s':>10s} {'vs torchvision':>15s}")
    for name, ips in results.items():
        print(f"{name:45s} {ips:10.1f} {ips / base:14.2f}x")


if __name__ == "__main__":
    main()
