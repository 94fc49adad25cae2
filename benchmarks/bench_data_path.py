"""Training data path on CIFAR-sized data: cl_bench's fast path vs torchvision's DataLoader.

Both produce the same training batches — shuffled, random crop 32 with zero
padding 4, horizontal flip p=0.5, scaled to [0, 1] and normalised with the
CIFAR-10 mean/std — and the script prints training images/second and the
ratio ``fast / DataLoader`` (target >= 3x).

Data: a CIFAR-10 "python version" file set of ``--n`` random images (default
10,000: five ``data_batch_*`` pickles, a ``test_batch`` and ``batches.meta``)
written to a temporary folder in the real format, then read

* by cl_bench's loader (:func:`cl_bench.scenarios.cifar.load_cifar`) for the
  fast path: uint8 N x 3 x 32 x 32 tensors on the device; per batch: index
  with a shuffled permutation, :class:`cl_bench.data.augment.CropFlip` (one gather
  for the whole batch, seeded per batch as the runner does), ``Standardize``;
* by ``torchvision.datasets.CIFAR10`` (its md5 check switched off, since the
  files are synthetic) for the baseline: per sample, PIL image ->
  ``transforms.v2`` ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
  ``ToImage()``, ``ToDtype(float32, scale=True)``, ``Normalize``; batched by
  ``DataLoader(batch_size, shuffle=True, num_workers=0 or 2)``; batches are
  moved to the device. A third row runs the same v2 pipeline per sample on the
  uint8 tensors (no PIL), ``num_workers=0``.

Each variant runs one untimed warm-up epoch, then ``--epochs`` timed epochs
(worker start-up included, as in training). Usage::

    python benchmarks/bench_data_path.py [--n 10000] [--batch-size 128] [--epochs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.transforms import v2

from cl_bench.scenarios.cifar import CIFAR10, load_cifar

MEAN, STD = CIFAR10.transform.mean, CIFAR10.transform.std


def write_cifar10(folder: Path, n: int, seed: int = 0) -> Path:
    """Write a CIFAR-10 python-pickle file set of ``n`` random training images (and n // 5 test images)."""
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    sizes = [n // 5 + (1 if i < n % 5 else 0) for i in range(5)]
    for i, size in enumerate(sizes, start=1):
        batch = {  # str keys: what the original Python 2 pickles give under encoding="latin1"
            "batch_label": f"training batch {i} of 5",
            "data": rng.integers(0, 256, size=(size, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=size).tolist(),
            "filenames": [f"img_{i}_{k}.png" for k in range(size)],
        }
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    m = max(n // 5, 10)
    test = {"batch_label": "testing batch 1 of 1", "data": rng.integers(0, 256, size=(m, 3072), dtype=np.uint8),
            "labels": (np.arange(m) % 10).tolist(), "filenames": ["t.png"] * m}  # fmt: skip
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": sizes[0]}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


class _UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10 reader and ``__getitem__``, without the md5 check (the files are synthetic)."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        self.classes = [f"c{i}" for i in range(10)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _TensorSamples(Dataset):
    """Per-sample access to uint8 CHW tensors, with a per-sample transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.x[i]), int(self.y[i])


def _v2(pil: bool) -> v2.Compose:
    steps: list[torch.nn.Module] = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if pil:
        steps.append(v2.ToImage())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)


def _fast_epochs(root: Path, batch_size: int, device: torch.device) -> Callable[[int], Iterable[torch.Tensor]]:
    train, _, _ = load_cifar(CIFAR10, str(root), download=False)
    data = train.to(device)
    n = len(data)

    def epoch(e: int) -> Iterable[torch.Tensor]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(e)).to(device)
        for b in range(0, n, batch_size):
            gen = torch.Generator().manual_seed(e * 1_000_003 + b)
            x, _ = data.batch(perm[b : b + batch_size], generator=gen)
            yield x

    return epoch


def _loader_epochs(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> Callable[
    [int], Iterable[torch.Tensor]
]:  # fmt: skip
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)

    def epoch(e: int) -> Iterable[torch.Tensor]:
        torch.manual_seed(e)
        for x, _ in loader:
            yield x.to(device, non_blocking=True)

    return epoch


def _time(epoch: Callable[[int], Iterable[torch.Tensor]], epochs: int, device: torch.device) -> tuple[float, int]:
    for _ in epoch(-1):  # warm-up
        pass
    images = 0
    t0 = time.perf_counter()
    for e in range(epochs):
        for x in epoch(e):
            images += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, images


def main() -> None:
    """Run the comparison and print a table and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="training images in the synthetic CIFAR-10 file set")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar10(root, args.n)
        t0 = time.perf_counter()
        load_cifar(CIFAR10, str(root), download=False)
        load_seconds = time.perf_counter() - t0
        tv = _UncheckedCIFAR10(str(root), train=True, transform=_v2(pil=True))
        train, _, _ = load_cifar(CIFAR10, str(root), download=False)
        variants = {
            "cl_bench fast path (uint8 tensors, batch-wise crop/flip/normalise)": _fast_epochs(
                root, args.batch_size, device
            ),
            "torchvision CIFAR10 + v2 per sample (PIL), DataLoader workers=0": _loader_epochs(
                tv, args.batch_size, 0, device
            ),
            "torchvision CIFAR10 + v2 per sample (PIL), DataLoader workers=2": _loader_epochs(
                tv, args.batch_size, 2, device
            ),
            "uint8 tensors + v2 per sample (no PIL), DataLoader workers=0": _loader_epochs(
                _TensorSamples(train.x, train.y, _v2(pil=False)), args.batch_size, 0, device
            ),
        }
        rates = {}
        print(f"{args.n} CIFAR-sized training images, batch {args.batch_size}, {args.epochs} timed epochs, "
              f"device {device}, torch threads {torch.get_num_threads()}; cl_bench loader read the pickles in "
              f"{load_seconds:.2f}s")  # fmt: skip
        for name, epoch in variants.items():
            seconds, images = _time(epoch, args.epochs, device)
            rates[name] = images / seconds
            print(f"  {rates[name]:>10,.0f} images/s  {name}")
    fast = next(iter(rates.values()))
    baseline = max(list(rates.values())[1:])
    print(f"ratio fast / best DataLoader variant = {fast / baseline:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
