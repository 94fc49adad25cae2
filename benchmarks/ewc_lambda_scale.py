"""How far apart native EWC's ``lambda`` and Avalanche's ``ewc_lambda`` are, measured.

Native ``ewc`` penalises ``lambda/2 * sum F (theta - theta*)^2`` with ``F`` the mean over
examples of squared *per-example* gradients (``methods/ewc.py``). Avalanche 0.6.0's
``EWCPlugin`` penalises ``ewc_lambda * sum I (theta - theta*)^2`` with ``I`` the mean over
minibatches of the squared *batch-mean* gradient (``compute_importances``, batch size
``train_mb_size``). Roughly ``I ~ F / B`` (cross terms of a batch mean largely cancel), so
``ewc_lambda ~ lambda * B / 2``; this script measures the actual factor.

Protocol: the 784-400-400-10 MLP of Split-MNIST trains one epoch (SGD, lr 0.01, batch B) on
classes {0, 1}; both importances are computed at that solution on the same examples (ours
through ``diagonal_fisher``, Avalanche's through ``EWCPlugin.compute_importances`` itself);
the network then trains one epoch on classes {2, 3} without a penalty and both penalties
are evaluated at the reached parameters with strength 1. The printed factor
``ours / avalanche`` is what multiplies native ``lambda`` to give the ``ewc_lambda`` of equal
strength at that displacement. Data: the real MNIST test IDX files (``--root``), split 80/20
per class as ``split_mnist`` does when only the test files exist. Usage::

    OMP_NUM_THREADS=1 python benchmarks/ewc_lambda_scale.py --root /work/shared/data/mnist [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from cl_bench.components import FisherPenalty, diagonal_fisher
from cl_bench.nets.models import MLP
from cl_bench.scenarios.mnist import read_idx


def _load(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(read_idx(root / "t10k-images-idx3-ubyte.gz").copy()).float().div(255.0)
    y = torch.from_numpy(read_idx(root / "t10k-labels-idx1-ubyte.gz").copy()).long()
    return ((x - 0.1307) / 0.3081).unsqueeze(1), y


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    net.train()
    order = torch.randperm(len(x), generator=gen)
    for s in range(0, len(x), batch):
        i = order[s : s + batch]
        opt.zero_grad()
        F.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()


def measure(x: torch.Tensor, y: torch.Tensor, seed: int, batch: int, labels: str) -> tuple[float, float]:
    """Penalty ratio native / Avalanche at strength 1 after one experience of displacement, and trace ratio."""
    from avalanche.training.plugins import EWCPlugin

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = MLP(784, 10, 400, 2)
    first, second = (y == 0) | (y == 1), (y == 2) | (y == 3)
    xa, ya = x[first][: int(0.8 * first.sum())], y[first][: int(0.8 * first.sum())]
    xb, yb = x[second][: int(0.8 * second.sum())], y[second][: int(0.8 * second.sum())]
    _train(net, xa, ya, batch, gen)
    ours = FisherPenalty(1.0)
    lab_gen = torch.Generator().manual_seed(seed + 1)
    batches = ((xa[s : s + 256], ya[s : s + 256]) for s in range(0, len(xa), 256))
    fisher = diagonal_fisher(net, batches, labels=labels, generator=lab_gen)  # type: ignore[arg-type]
    ours.consolidate(net, fisher)
    task = torch.zeros(len(xa), dtype=torch.long)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    imp = EWCPlugin(ewc_lambda=1.0).compute_importances(
        net, nn.CrossEntropyLoss(), opt, TensorDataset(xa, ya, task), "cpu", batch
    )
    anchor = {k: v.detach().clone() for k, v in net.named_parameters()}
    _train(net, xb, yb, batch, gen)
    with torch.no_grad():
        theirs = sum((imp[k].data * (p - anchor[k]).pow(2)).sum() for k, p in net.named_parameters())
        trace = 0.5 * sum(float(v.sum()) for v in fisher.values()) / sum(float(v.data.sum()) for v in imp.values())
        return float(ours(net)) / float(theirs), trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/work/shared/data/mnist"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 10, 128])
    ap.add_argument("--fisher", choices=["empirical", "true"], default="empirical")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = _load(args.root)
    for b in args.batches:
        r, t = zip(*(measure(x, y, s, b, args.fisher) for s in args.seeds), strict=True)
        print(f"batch {b:4d}: native/avalanche penalty ratio {statistics.mean(r):.1f} "
              f"(seeds {', '.join(f'{v:.1f}' for v in r)}); importance-trace ratio (F/2 : I) "
              f"{statistics.mean(t):.1f}; B/2 = {b / 2:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
