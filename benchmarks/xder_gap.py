"""Where X-DER loses to DER++ on Split-MNIST: per-experience final accuracy and the last experience's heads.

Runs ``xder`` and ``derpp`` with the Split-MNIST cross-check's settings (``benchmarks/crosscheck.py``: MLP 2x100,
SGD lr 0.01, memory 200, 1 epoch, batch 10, boundary evaluation; DER++ at its pair's ``alpha=0.2``,
``beta=1.0``) and prints, per method and over the seeds, the final accuracy, its mean over the first four
experiences and the last experience's accuracy. For the last experience's test examples it also prints
what X-DER's heads do with them: the accuracy within the present head alone (task-aware: is the class
learnt?), the share predicted as a past class, and the mean of ``max present logit - max past logit``
(negative: the past heads outscore the present one).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/xder_gap.py [--root DIR] [--seeds 0 1 2] [--epochs N] [--xder-set KEY=VALUE ...]

About 10 s per run on one CPU thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from cl_bench.cli import parse_sets
from cl_bench.core.errors import UserError
from cl_bench.core.registry import METHODS
from cl_bench.engine.runner import make_loop
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.testing.mnist import default_mnist_folder, holds_mnist_test_set

NETWORK = {"model": "mlp", "hidden_size": 100, "lr": 0.01, "buffer_size": 200}
DERPP = {"alpha": 0.2, "beta": 1.0}  # the crosscheck's derpp pair


def run_one(method: str, config: dict[str, Any], root: Path, seed: int, epochs: int = 1) -> dict[str, Any]:
    """Train ``method`` once; per-experience final accuracy and the last experience's head statistics."""
    spec = RunSpec(method=method, method_config={**NETWORK, **config}, scenario="split_mnist",
                   scenario_config={"root": str(root), "download": False},
                   protocol=Protocol(eval_every=0, batch_size=10, epochs=epochs), seed=seed)  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        loop = make_loop(spec, Path(out))
        loop.start(None)
        loop.train()
        scenario, net = loop.scenario, loop.method.net  # type: ignore[attr-defined]
        net.eval()
        accs = []
        with torch.no_grad():
            for exp in scenario:
                x, y = exp.test.batch(slice(None))
                out_ = net(x)
                accs.append(float((out_.argmax(1) == y).float().mean()))
            last = scenario[len(scenario) - 1]
            present = torch.tensor(last.classes)
            past = torch.tensor(sorted({c for e in scenario for c in e.classes} - set(last.classes)))
            within = present[out_[:, present].argmax(1)]
            gap = out_[:, present].max(1).values - out_[:, past].max(1).values
            as_past = torch.isin(out_.argmax(1), past)
            stats = {"within_head": float((within == y).float().mean()), "as_past": float(as_past.float().mean()),
                     "logit_gap": float(gap.mean())}  # fmt: skip
    return {"accs": accs, **stats}


def mean_std(values: list[float]) -> str:
    t = torch.tensor(values)
    return f"{t.mean():.3f} ± {t.std():.3f}" if len(t) > 1 else f"{t.mean():.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=default_mnist_folder(), help="folder of the MNIST IDX test set")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--xder-set", action="append", default=[], metavar="KEY=VALUE", help="override an xder option")
    ap.add_argument("--epochs", type=int, default=1, help="passes over each experience (the cross-check: 1)")
    ap.add_argument("--skip-derpp", action="store_true")
    args = ap.parse_args(argv)
    if not holds_mnist_test_set(args.root):
        print(f"xder_gap: no MNIST test set (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in "
              f"{args.root}; pass --root DIR or set $CL_BENCH_MNIST.", file=sys.stderr)  # fmt: skip
        return 2
    bad = [item for item in args.xder_set if "=" not in item]
    if bad:
        print(f"xder_gap: --xder-set wants KEY=VALUE, got {bad[0]!r}.", file=sys.stderr)
        return 2
    overrides = parse_sets(args.xder_set)["method"]
    try:  # a bad --xder-set option: the config's own message, before anything is printed
        METHODS.config("xder", {**NETWORK, **overrides})
    except UserError as err:
        print(f"xder_gap: {err}", file=sys.stderr)
        return 2
    runs = [("xder", overrides)] + ([] if args.skip_derpp else [("derpp", DERPP)])
    print("| method | final acc | exps 0-3 | last exp | last exp within its head | last exp as past | "
          "present - past logit |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for method, config in runs:
        res = [run_one(method, config, args.root, s, args.epochs) for s in args.seeds]
        final = [sum(r["accs"]) / len(r["accs"]) for r in res]
        first = [sum(r["accs"][:-1]) / (len(r["accs"]) - 1) for r in res]
        label = method + "".join(f" {k}={v}" for k, v in config.items())
        print(f"| `{label}` | {mean_std(final)} | {mean_std(first)} "
              f"| {mean_std([r['accs'][-1] for r in res])} | {mean_std([r['within_head'] for r in res])} "
              f"| {mean_std([r['as_past'] for r in res])} | {mean_std([r['logit_gap'] for r in res])} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
