"""Native ER vs Avalanche's Replay through the bridge: final accuracy and training-time ratio.

Both run through cl_bench's runner on the same stream, seeds and budget (same network,
optimiser, batch size, epochs and memory of 200 examples); only the training loop differs
(cl_bench's ``er`` vs Avalanche's ``Replay`` strategy in Avalanche's loop). The script prints,
per seed, both final accuracies and their gap, and the ratio of training seconds
``bridge / native`` (evaluation excluded). Also runs GEM, LwF, SI and DER once each when
``--all`` is given. Usage::

    python benchmarks/bench_avalanche_bridge.py [--scenario split_digits] [--seeds 0 1 2] [--epochs 10]
        [--eval-every 0] [--all]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="split_digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: the scenario's")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="also run avalanche:GEM, LwF, SI and DER")
    args = ap.parse_args()
    torch.set_num_threads(1)
    protocol = Protocol(eval_every=args.eval_every, epochs=args.epochs)
    gaps, ratios = [], []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            rec = {m: run(RunSpec(method=m, scenario=args.scenario, protocol=protocol, seed=seed), out)
                   for m in ("er", "avalanche:Replay")}  # fmt: skip
            er, rp = (rec[m]["metrics"]["final_acc"] for m in ("er", "avalanche:Replay"))
            ratio = rec["avalanche:Replay"]["cost"]["train_seconds"] / rec["er"]["cost"]["train_seconds"]
            gaps.append(abs(er - rp))
            ratios.append(ratio)
            print(f"seed {seed}: final_acc er {er:.3f}  avalanche:Replay {rp:.3f}  gap {abs(er - rp):.3f}  "
                  f"train-time ratio bridge/native {ratio:.2f}", flush=True)  # fmt: skip
        print(f"mean gap {statistics.mean(gaps):.3f}, max gap {max(gaps):.3f}, "
              f"median train-time ratio {statistics.median(ratios):.2f}")  # fmt: skip
        if args.all:
            for m in ("avalanche:GEM", "avalanche:LwF", "avalanche:SI", "avalanche:DER", "lwf", "agem"):
                r = run(RunSpec(method=m, scenario=args.scenario, protocol=protocol, seed=args.seeds[0]), out)
                print(f"{m}: final_acc {r['metrics']['final_acc']:.3f}  bwt {r['metrics']['bwt']:.3f}  "
                      f"train {r['cost']['train_seconds']:.1f}s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
