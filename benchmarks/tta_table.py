"""Online error of every test-time adaptation method on digits_c and mnist_c (mean ± sd over seeds).

The table of docs/tta-methods.md. Both streams are cl_bench scenarios run through ``cl_bench.run``
(the TTA protocol: the source model is trained on the clean data by the scenario's source phase,
seeded by the run seed; each test batch is predicted by ``Method.adapt`` before the update and
counted — the online error):

* ``digits_c``: sklearn's 8x8 digits, the 15 benchmark corruptions at severity 5, continual, all 360
  test images per domain, the TTA protocol's default batch (200), the scenario's default source model
  and source phase (5 epochs).
* ``mnist_c``: the real MNIST test set (``--root``), corruptions contrast and fog (severity 5),
  1,000 images per domain, continual, batch 200, the source trained for 1 epoch (``source_epochs`` 1)
  on cl_bench's clean MNIST split — a stream the source model collapses on (≈ 90 % error).

``--setting`` runs another TTA stream setting (e.g. ``mixed_domains``, ``correlated``). Methods whose
augmentation flips images get ``flip=false`` (a mirrored digit is another digit). Every method uses its
default configuration otherwise.

The clean-source columns come from ``Protocol.tta_source_every`` (``--source-every``, default 1:
after every batch): the adapting model is evaluated (``predict``) on the stream's held-out clean source test split
before the stream, every k batches and after it; ``source_acc_min`` is the worst of these accuracies,
``source_forgetting`` the first minus the last (see metrics/source_curve.py). ``--doc docs/tta.md``
writes the table (with how it was measured) between the markers ``<!-- tta_table:begin -->`` and
``<!-- tta_table:end -->`` of that file.

Usage::

    .venv/bin/python benchmarks/tta_table.py --seeds 0 1 2                     # every TTA method
    .venv/bin/python benchmarks/tta_table.py --methods source roid --streams digits_c --seeds 0
    .venv/bin/python benchmarks/tta_table.py --seeds 0 1 2 --doc docs/tta.md  # the table of docs/tta.md
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from cl_bench.core.registry import METHODS
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for
from cl_bench.testing.mnist import default_mnist_folder

# CL_BENCH_MNIST as the tests use it; else the shared folder next to the checkout
DEFAULT_ROOT = default_mnist_folder()  # $CL_BENCH_MNIST, else shared/data/mnist beside the checkout


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


#: (record metric, column heading) per stream, in table order
COLUMNS = (("online_error", "online error"), ("source_acc_min", "clean acc. min"),
           ("source_forgetting", "clean forgetting"))  # fmt: skip
#: default clean-source interval per stream: after every batch (digits_c has 2 batches of 200 per domain,
#: mnist_c 5), so source_acc_min sees every state the adapting model passes through
SOURCE_EVERY = {"digits_c": 1, "mnist_c": 1}
BEGIN, END = "<!-- tta_table:begin -->", "<!-- tta_table:end -->"


def cell(values: list[float], expected: int = 0) -> str:
    """Mean ± sd of ``values``; "(n=k)" when fewer than ``expected`` runs finished."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    short = f" (n={len(vals)})" if len(vals) < expected else ""
    if len(vals) == 1:
        return f"{vals[0]:.3f}{short}"
    return f"{statistics.fmean(vals):.3f} ± {statistics.stdev(vals):.3f}{short}"


def finished(spec: RunSpec, out: str) -> dict | None:
    """The completed record of ``spec`` under ``out``, read without building the stream (else None)."""
    path = Path(out) / run_id_for(spec) / "run.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return rec if rec.get("status") == "completed" else None


def write_doc(path: Path, text: str) -> None:
    """Replace the text between the table markers of ``path`` (appended as a new section if absent)."""
    doc = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text.strip()}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="folder with the MNIST IDX files")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every method with caps.adapts_at_test")
    ap.add_argument("--streams", nargs="*", default=["digits_c", "mnist_c"], choices=["digits_c", "mnist_c"])
    ap.add_argument("--setting", default="continual", help="TTA stream setting of both streams")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default="runs/tta_table", help="where run records go")
    ap.add_argument("--source-every", type=int, default=None,
                    help="clean-source evaluation every K batches (Protocol.tta_source_every; 0 = off; default: "
                    f"per stream {SOURCE_EVERY})")  # fmt: skip
    ap.add_argument("--only-finished", action="store_true",
                    help="run nothing: tabulate the completed records under --out (cells show n if seeds are missing)")
    ap.add_argument("--doc", default=None, help="write the table between the tta_table markers of this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = args.methods or tta_methods()
    unknown = [m for m in methods if m not in tta_methods()]
    if unknown:
        print(f"not test-time adaptation methods: {unknown}; choose from {tta_methods()}", file=sys.stderr)
        return 2
    configs = stream_configs(args.root, args.setting)
    every = {s: SOURCE_EVERY[s] if args.source_every is None else args.source_every for s in args.streams}
    values: dict[tuple[str, str, str], list[float]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for stream in args.streams:
        for method in methods:
            fields = getattr(METHODS.get(method).config_cls, "__dataclass_fields__", {})
            method_config = {"flip": False} if "flip" in fields else {}
            for seed in args.seeds:
                t0 = time.perf_counter()
                spec = RunSpec(method=method, method_config=method_config, scenario=stream,
                               scenario_config=configs[stream], seed=seed,
                               protocol=Protocol(tta_source_every=every[stream]))  # fmt: skip
                rec = finished(spec, args.out)
                if rec is None and args.only_finished:
                    continue  # tabulate what exists; the cell shows how many seeds it holds
                rec = rec or run(spec, args.out)
                dt = time.perf_counter() - t0
                # from the record, so a table re-made from finished records (run() returns them) keeps the times
                spent = rec["cost"].get("train_seconds", 0.0) + rec["cost"].get("eval_seconds", 0.0)
                seconds[(stream, method)] = seconds.get((stream, method), 0.0) + spent
                for name, _ in COLUMNS:
                    value = rec["metrics"].get(name)
                    values.setdefault((stream, method, name), []).append(math.nan if value is None else value)
                shown = "  ".join(f"{name} {values[(stream, method, name)][-1]:.3f}" for name, _ in COLUMNS)
                print(f"{stream:8} {method:12} seed {seed} {shown} ({dt:.0f} s)", flush=True)
    cols = [c for c in COLUMNS if any(every.values()) or c[0] == "online_error"]
    lines = [f"Online error and clean-source accuracy (fractions), {args.setting} streams, mean ± sd over seeds "
             f"{args.seeds}; clean-source points before and after the stream and every "
             + ", ".join(f"{k} batches on {s}" for s, k in every.items()) + ".",
             "", "| method | " + " | ".join(f"{s} {h}" for s in args.streams for _, h in cols) + " | seconds |",
             "|" + "---|" * (2 + len(args.streams) * len(cols))]  # fmt: skip
    for method in methods:
        cells = [cell(values.get((s, method, name), []), len(args.seeds)) for s in args.streams for name, _ in cols]
        total = sum(seconds.get((s, method), 0.0) for s in args.streams)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {total:.0f} |")
    given = "" if args.source_every is None else f" --source-every {args.source_every}"
    lines += ["", f"Measured by `benchmarks/tta_table.py --seeds {' '.join(map(str, args.seeds))}{given}`; "
              f"machine: {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch thread(s) (shared with other jobs), torch {torch.__version__}, "
              f"python {platform.python_version()}; 'seconds' is the adaptation plus clean-evaluation time of a "
              "method's runs (records' cost train_seconds + eval_seconds; source phase excluded)."]  # fmt: skip
    text = "\n".join(lines)
    print("\n" + text)
    if args.doc:
        write_doc(Path(args.doc), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
