"""Online error of every test-time adaptation method on digits_c and mnist_c (mean ± sd over seeds).

The table of docs/tta-methods.md. Both streams are cl_bench scenarios run through ``cl_bench.run``
(the TTA protocol: the source model is trained on the clean data by the scenario's source phase,
seeded by the run seed; each test batch is predicted by ``Method.adapt`` before the update and
counted — the online error):

* ``digits_c``: sklearn's 8x8 digits, the 15 benchmark corruptions at severity 5, continual, all 360
  test images per domain, the protocol's default batch (10), the scenario's default source model
  and source phase (5 epochs).
* ``mnist_c``: the real MNIST test set (``--root``), corruptions contrast and fog (severity 5),
  1,000 images per domain, continual, batch 10, the source trained for 1 epoch (``source_epochs`` 1)
  on cl_bench's clean MNIST split — a stream the source model collapses on (≈ 90 % error).

All numbers are percent. ``--per-domain`` also prints, per stream, the mean online error of every
domain, columns named by corruption and severity (``cl_bench.report.domains``), beside the mean.

``--setting`` runs another TTA stream setting (e.g. ``mixed_domains``, ``correlated``). Methods whose
augmentation flips images get ``flip=false`` (a mirrored digit is another digit). Every method uses its
default configuration otherwise.

Usage::

    .venv/bin/python benchmarks/tta_table.py --seeds 0 1 2                     # every TTA method
    .venv/bin/python benchmarks/tta_table.py --methods source roid --streams digits_c --seeds 0
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from cl_bench.core.registry import METHODS
from cl_bench.engine.runner import run
from cl_bench.engine.spec import RunSpec
from cl_bench.metrics import TTAMatrix
from cl_bench.metrics.tta import online_errors
from cl_bench.report.domains import domain_names

# CL_BENCH_MNIST as the tests use it; else the shared folder next to the checkout
DEFAULT_ROOT = Path(os.environ.get("CL_BENCH_MNIST") or Path(__file__).resolve().parents[2] / "shared/data/mnist")


def stream_configs(root: str, setting: str) -> dict[str, dict]:
    """The scenario configuration of each stream of the table."""
    return {
        "digits_c": {"setting": setting},
        "mnist_c": {"root": root, "download": False, "corruptions": ("contrast", "fog"), "n_per_domain": 1000,
                    "train_domains": False, "source_epochs": 1, "setting": setting},
    }  # fmt: skip


def tta_methods() -> list[str]:
    """Every registered method that adapts at test time."""
    return [n for n in METHODS.names() if METHODS.get(n).obj.caps.adapts_at_test]


def cell(values: list[float]) -> str:
    """Mean ± sample sd of error fractions, printed in percent (the unit of every column)."""
    vals = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def per_domain_table(stream: str, methods: list[str], per_domain: dict[tuple[str, str], list[list[float]]],
                     names: list[str]) -> list[str]:  # fmt: skip
    """Markdown rows: one per method, a column per domain (mean over seeds, %) and the mean."""
    head = ["method", *names, "mean"]
    rows = [f"\n{stream}: online error (%) per domain, mean over seeds\n", "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head)]  # fmt: skip
    for method in methods:
        runs = per_domain.get((stream, method), [])
        if not runs:
            continue
        cols = [cell([r[d] for r in runs]).split(" ±")[0] for d in range(len(names))]
        overall = statistics.fmean(100 * v for r in runs for v in r if not math.isnan(v))
        rows.append(f"| {method} | " + " | ".join(cols) + f" | {overall:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="folder with the MNIST IDX files")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method with caps.adapts_at_test")
    ap.add_argument("--streams", nargs="*", default=["digits_c", "mnist_c"], choices=["digits_c", "mnist_c"])
    ap.add_argument("--setting", default="continual", help="TTA stream setting of both streams")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default="runs/tta_table", help="where run records go")
    ap.add_argument("--per-domain", action="store_true", help="also print per-domain errors per stream")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = args.methods or tta_methods()
    unknown = [m for m in methods if m not in tta_methods()]
    if unknown:
        print(f"not test-time adaptation methods: {unknown}; choose from {tta_methods()}", file=sys.stderr)
        return 2
    configs = stream_configs(args.root, args.setting)
    errors: dict[tuple[str, str], list[float]] = {}
    per_domain: dict[tuple[str, str], list[list[float]]] = {}
    names: dict[str, list[str]] = {}
    seconds: dict[tuple[str, str], float] = {}
    t_all = time.perf_counter()
    for stream in args.streams:
        for method in methods:
            fields = getattr(METHODS.get(method).config_cls, "__dataclass_fields__", {})
            method_config = {"flip": False} if "flip" in fields else {}
            for seed in args.seeds:
                t0 = time.perf_counter()
                spec = RunSpec(method=method, method_config=method_config, scenario=stream,
                               scenario_config=configs[stream], seed=seed)  # fmt: skip
                rec = run(spec, args.out)
                dt = time.perf_counter() - t0
                seconds[(stream, method)] = seconds.get((stream, method), 0.0) + dt
                err = rec["metrics"]["online_error"]
                errors.setdefault((stream, method), []).append(err)
                m = TTAMatrix.from_dict(rec["accuracy_matrix"])
                per_domain.setdefault((stream, method), []).append(online_errors(m))
                names[stream] = domain_names(rec["scenario"]["spec"], m.severity)
                print(f"{stream:8} {method:12} seed {seed} online error {100 * err:.1f} % ({dt:.0f} s)", flush=True)
    print(f"\nOnline error (%), {args.setting} streams, mean ± sd over seeds {args.seeds}\n")
    head = ["method", *args.streams]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for method in methods:
        print(f"| {method} | " + " | ".join(cell(errors.get((s, method), [])) for s in args.streams) + " |")
    if args.per_domain:
        for stream in args.streams:
            print("\n".join(per_domain_table(stream, methods, per_domain, names.get(stream, []))))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}; total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
