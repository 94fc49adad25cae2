"""ER vs ER + AdaB2N, and ER / DER++ with and without refresh learning, on one stream over seeds.

Every arm runs through cl_bench's runner with the scenario's protocol (Split-Digits: 10 epochs, batch 10)
and boundary evaluation; only the option under test differs between the two arms of a pair. Prints the
final accuracy and forgetting (mean +- sample std over seeds), the paired difference of final accuracy
(mean +- std of the per-seed differences) and the training seconds, as a markdown table.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/adab2n_refresh.py [--scenario split_digits] [--seeds 0 1 2]
        [--arms er_cnn adab2n ...] [--out DIR]

References:
    Lyu et al., "Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance and
        Adaptation" (NeurIPS 2023).
    Wang, Li, Shen & Huang, "A Unified and General Framework for Continual Learning" (ICLR 2024).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec

#: Arm name -> (method, method config). Memory 200 everywhere (ER's and DER++'s default).
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "er_cnn": ("er", {"model": "cnn"}),
    "adab2n": ("adab2n", {}),  # ER + norm=adab2n on the same CNN
    "er": ("er", {}),
    "er_refresh": ("er", {"refresh": True}),
    "derpp": ("derpp", {}),
    "refresh": ("refresh", {}),  # DER++ + refresh=true
}
#: (baseline arm, treated arm) pairs reported as differences.
PAIRS = [("er_cnn", "adab2n"), ("er", "er_refresh"), ("derpp", "refresh")]


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="split_digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="adab2n_refresh_")
    res: dict[str, dict[str, list[float]]] = {}
    for arm in args.arms:
        method, config = ARMS[arm]
        for seed in args.seeds:
            spec = RunSpec(method=method, method_config=dict(config), scenario=args.scenario,
                           protocol=Protocol(eval_every=0), seed=seed)  # fmt: skip
            rec = run(spec, out)
            r = res.setdefault(arm, {"acc": [], "fgt": [], "sec": []})
            r["acc"].append(rec["metrics"]["final_acc"])
            r["fgt"].append(rec["metrics"]["forgetting"])
            r["sec"].append(rec["cost"].get("train_seconds", float("nan")))
            print(f"{arm} seed {seed}: final_acc {r['acc'][-1]:.4f}", flush=True)
    print(f"\n{args.scenario}, seeds {args.seeds}, memory 200, scenario protocol, boundary evaluation\n")
    print("| arm | method --set | final acc | forgetting | train s |")
    print("|---|---|---|---|---|")
    for arm, r in res.items():
        method, config = ARMS[arm]
        sets = " ".join(f"{k}={v}" for k, v in config.items())
        print(f"| `{arm}` | `{method}` {sets} | {_ms(r['acc'])} | {_ms(r['fgt'])} | {statistics.mean(r['sec']):.1f} |")
    print("\n| pair | Δ final acc (per-seed, mean ± std) |")
    print("|---|---|")
    for a, b in PAIRS:
        if a in res and b in res:
            d = [y - x for x, y in zip(res[a]["acc"], res[b]["acc"], strict=True)]
            print(f"| `{b}` − `{a}` | {_ms(d)} |")


if __name__ == "__main__":
    main()
