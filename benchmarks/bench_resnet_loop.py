"""Overhead of cl_bench's loop on a real network: ResNet-18 + ER through ``run()`` vs a plain PyTorch loop.

Both sides do the same work on the same CIFAR-shaped stream (Split-CIFAR-10 read from random images written
here in torchvision's on-disk pickle format, 5 experiences x 2 classes): one epoch per experience, per
iteration a batch of ``--batch-size`` incoming images with CIFAR's 4-px crop + flip and normalisation, plus as
many images replayed from a reservoir memory (re-augmented), one SGD step of the CIFAR ResNet-18
(``cl_bench.create_model("resnet18")``); an evaluation on ``--eval-subset`` test images of every seen
experience every 50 iterations, and on every experience's full test set before training and at each
boundary. The cl_bench side is timed as the whole ``run()`` minus the scenario's data loading (which the
plain side gets for free, pre-loaded); the plain side is a hand-written loop over the same tensors.
On CPU the clock is the process's CPU time (``time.process_time``; set ``OMP_NUM_THREADS=1``), which other
processes on a shared machine do not inflate as they do wall time; on CUDA it is wall time. Each side runs
``--repeats`` times, interleaved; the best time of each is compared.

With CUDA present, the script also times the cl_bench run under ``--precision fp16`` and ``bf16`` and prints
the automatic-mixed-precision speed-up over fp32; on CPU it prints the bf16 ratio when ``--bf16`` is given.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_resnet_loop.py [--iterations 60] [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import pickle
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench import create_model
from cl_bench.core.registry import SCENARIOS
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec

EVAL_EVERY = 50


def write_cifar10(folder: Path, n_train: int, n_test: int) -> Path:
    """``cifar-10-batches-py/`` with random images: ``n_train`` over the 5 train batches, ``n_test`` test images."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = math.ceil(n_train / 5)
    for name, n in [*[(f"data_batch_{i}", per) for i in range(1, 6)], ("test_batch", n_test)]:
        blob = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"labels": [int(v) for v in rng.integers(0, 10, n)]}  # fmt: skip
        (d / name).write_bytes(pickle.dumps(blob, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": per}
    (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def clock(args: argparse.Namespace) -> float:
    """Process CPU time on CPU (robust to other processes sharing the machine), wall time on CUDA."""
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def cl_bench_seconds(root: Path, out: Path, args: argparse.Namespace, precision: str = "fp32") -> float:
    """Time of one cl_bench run (data loading excluded) on ``args.device``, see :func:`clock`."""
    spec = RunSpec(method="er", method_config={"model": "resnet18", "buffer_size": args.buffer_size},
                   scenario="split_cifar10", scenario_config={"root": str(root), "download": False},
                   protocol=Protocol(eval_every=EVAL_EVERY, eval_subset=args.eval_subset, batch_size=args.batch_size,
                                     epochs=1, precision=precision),
                   device=args.device)  # fmt: skip
    t0, w0 = clock(args), time.perf_counter()
    record = run(spec, out, force=True)
    wall, spent = time.perf_counter() - w0, clock(args) - t0
    assert record["status"] == "completed"
    c = record["cost"]
    if args.verbose:
        print(f"  cl_bench run: clock {spent:.2f} s, wall {wall:.2f} s, data {c['data_seconds']:.2f}, train "
              f"{c['train_seconds']:.2f}, eval {c['eval_seconds']:.2f} (wall)")  # fmt: skip
    return spent - c["data_seconds"]


def plain_seconds(root: Path, args: argparse.Namespace) -> float:
    """The same work in a hand-written PyTorch loop over the scenario's tensors (built outside the timing)."""
    scenario = SCENARIOS.create("split_cifar10", root=str(root), download=False)
    dev = torch.device(args.device)
    exps = [(e.train.to(dev), e.test.to(dev)) for e in scenario]
    t0, w0 = clock(args), time.perf_counter()
    torch.manual_seed(0)
    net = create_model("resnet18", 10, (3, 32, 32)).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    augment, norm = exps[0][0].augment, exps[0][0].transform
    cap, bs = args.buffer_size, args.batch_size
    mem_x = torch.empty((cap, 3, 32, 32), dtype=torch.uint8, device=dev)
    mem_y = torch.empty(cap, dtype=torch.long, device=dev)
    size = seen = 0
    gen = torch.Generator().manual_seed(0)
    subsets = [torch.randperm(len(te.y), generator=gen)[: args.eval_subset or len(te.y)].to(dev) for _, te in exps]

    @torch.inference_mode()
    def evaluate(n_exp: int, subset: bool) -> list[float]:
        net.eval()
        accs = []
        for e in range(n_exp):
            te = exps[e][1]
            idx = subsets[e] if subset else torch.arange(len(te.y), device=dev)
            correct = 0
            for s in range(0, len(idx), 1024):
                x, y = norm(te.x[idx[s : s + 1024]]), te.y[idx[s : s + 1024]]
                correct += int((net(x).argmax(1) == y).sum())
            accs.append(correct / max(1, len(idx)))
        net.train()
        return accs

    evaluate(len(exps), subset=False)
    it = 0
    for e, (tr, _) in enumerate(exps):
        perm = torch.randperm(len(tr.y), generator=gen).to(dev)
        n_batches = math.ceil(len(perm) / bs)
        for b in range(n_batches):
            idx = perm[b * bs : (b + 1) * bs]
            raw, y = tr.x[idx], tr.y[idx]
            x = norm(augment(raw, torch.Generator().manual_seed(it)))
            if size:
                pick = torch.randperm(size, generator=gen)[: len(y)].to(dev)
                x = torch.cat([x, norm(augment(mem_x[pick], gen))])
                y_all = torch.cat([y, mem_y[pick]])
            else:
                y_all = y
            loss = F.cross_entropy(net(x), y_all)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for i in range(len(y)):  # reservoir sampling (Vitter's algorithm R)
                seen += 1
                if size < cap:
                    mem_x[size], mem_y[size] = raw[i], y[i]
                    size += 1
                else:
                    j = int(torch.randint(seen, (1,), generator=gen))
                    if j < cap:
                        mem_x[j], mem_y[j] = raw[i], y[i]
            it += 1
            if it % EVAL_EVERY == 0 and b < n_batches - 1:
                evaluate(e + 1, subset=True)
        evaluate(len(exps), subset=False)
    spent = clock(args) - t0
    if args.verbose:
        print(f"  plain run:    clock {spent:.2f} s, wall {time.perf_counter() - w0:.2f} s")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=60, help="training iterations over the whole stream")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--buffer-size", type=int, default=200)
    ap.add_argument("--eval-subset", type=int, default=20, help="test images per experience between boundaries")
    ap.add_argument("--test", type=int, default=100, help="test images in the whole stream")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the cost split of each cl_bench run")
    ap.add_argument("--bf16", action="store_true", help="also time the cl_bench run under --precision bf16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cifar10(Path(tmp) / "data", args.iterations * args.batch_size, args.test)
        ours: list[float] = []
        plain: list[float] = []
        for _ in range(args.repeats):  # interleaved, so drifting machine load hits both sides alike
            ours.append(cl_bench_seconds(root, Path(tmp) / "runs", args))
            plain.append(plain_seconds(root, args))
        print(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s), device {args.device}")  # fmt: skip
        print(f"work: ResNet-18 + ER, {args.iterations} iterations x ({args.batch_size} new + {args.batch_size} "
              f"replayed) CIFAR-shaped images, eval every {EVAL_EVERY} (subset {args.eval_subset}/exp) + boundaries")
        print(f"cl_bench  best {min(ours):7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in ours)})")
        print(f"plain     best {min(plain):7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in plain)})")
        print(f"ratio cl_bench / plain = {min(ours) / min(plain):.3f}   (target <= 1.05)")
        extra: dict[str, Any] = {}
        if args.device.startswith("cuda"):
            extra = {p: min(cl_bench_seconds(root, Path(tmp) / "runs", args, p) for _ in range(args.repeats))
                     for p in ("fp16", "bf16")}  # fmt: skip
        elif args.bf16:
            extra = {"bf16": min(cl_bench_seconds(root, Path(tmp) / "runs", args, "bf16") for _ in range(args.repeats))}
        for p, t in extra.items():
            print(f"{p:<5} cl_bench best {t:7.2f} s   speed-up over fp32 = {min(ours) / t:.2f}x")


if __name__ == "__main__":
    main()
