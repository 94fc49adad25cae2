"""Online error of the test-time adaptation methods on Digits-C, in a plain loop (no runner).

A quick behavioural check of the methods themselves, independent of the TTA protocol code:
a small BN CNN (3 conv + BN + ReLU layers, 32-64-64 channels, global pooling, linear head) is
trained for 600 Adam steps (lr 1e-2, batch 64) on the clean sklearn-digits training split of
``digits_c`` (80 %, seed 0); the stream is ``digits_c``'s 15 corruption test sets (severity 5,
360 images each) in benchmark order, continual (no reset between domains), batch ``--batch-size``.
Each batch is predicted by ``method.adapt`` (the prediction made before the update on it) and
counted; the script prints the mean online error over domains, the per-domain errors and the time,
and the ratio of each method's mean error to the source model's. Augmentation flips are off
(``flip=False``) for the mean-teacher methods, because a flipped digit is another digit.

Usage::

    python benchmarks/bench_tta_methods_digits.py [--methods tent,eata,...] [--batch-size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Standardize, StreamInfo, TensorData

ALL = ("source", "tent", "eata", "sar", "rdumb", "cotta", "rmt", "psmt")


class SmallBNNet(nn.Module):
    """3 conv + BN + ReLU layers, global average pooling and a linear head."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def clean_source(seed: int) -> TensorData:
    """The clean training split of digits_c (same split, same transform)."""
    from sklearn.datasets import load_digits

    from cl_bench.data.streams import stratified_split

    d = load_digits()
    x = torch.tensor(np.round(d.images * 255.0 / 16.0), dtype=torch.uint8).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, _ = stratified_split(y, 0.2, 0)
    return TensorData(x[tr], y[tr], Standardize(scale=255.0, mean=(0.3,), std=(0.4,)))


def train_source(src: TensorData, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = SmallBNNet()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(600):
        x, y = src.batch(torch.randint(len(src), (64,), generator=g))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(ALL))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    src = clean_source(args.seed)
    net = train_source(src, args.seed)
    stream = SCENARIOS.create("digits_c")
    info = StreamInfo((1, 8, 8), 10, len(stream), "domain_il", "cpu", source_model=net, source_data=src)
    source_err = None
    for name in args.methods.split(","):
        overrides: dict[str, object] = {}
        if name in ("cotta", "rmt", "psmt"):
            overrides["flip"] = False
        if name == "rmt":
            overrides["source_batch_size"] = args.batch_size
        method = None
        if name != "source":
            method = METHODS.create(name, **overrides)
            method.setup(info, args.seed)
        start = time.perf_counter()
        errors = []
        for exp in stream:
            wrong = 0
            for i in range(0, len(exp.test), args.batch_size):
                x, y = exp.test.batch(slice(i, i + args.batch_size))
                if method is None:
                    with torch.no_grad():
                        out = net(x)
                else:
                    out = method.adapt(x)
                wrong += int((out.argmax(1) != y).sum())
            errors.append(wrong / len(exp.test))
        mean = 100 * float(np.mean(errors))
        source_err = mean if name == "source" else source_err
        ratio = f"  ratio to source {mean / source_err:.2f}" if source_err else ""
        print(f"{name:7s} mean online error {mean:5.1f}%{ratio}  per domain {[round(100 * e) for e in errors]}  "
              f"{time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
