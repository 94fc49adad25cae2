"""Time saved by the frozen-feature cache on a 5-run sweep of frozen-backbone methods.

Five runs that all need EfficientNet-Lite0 features of the same stream (ncm cosine, ncm
Euclidean, ncm on raw features, ranpac M=1000, ranpac M=2000) run twice: once with
``feature_cache=false`` (each run extracts its own features; within a run they are still
memoised in memory, so evaluation never re-extracts) and once sharing a fresh on-disk cache
(the first run extracts, the other four read). Prints both wall times and their ratio, and checks
that every metric is identical with and without the cache.

Usage::

    .venv/bin/python benchmarks/bench_feature_cache.py [--scenario split_digits|split_mnist] [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.testing.mnist import default_mnist_folder

SWEEP: list[tuple[str, dict[str, Any]]] = [
    ("ncm", {"metric": "cosine"}),
    ("ncm", {"metric": "euclidean"}),
    ("ncm", {"normalize": False}),
    ("ranpac", {"projection_dim": 1000}),
    ("ranpac", {"projection_dim": 2000}),
]


def sweep(scenario: str, scenario_cfg: dict[str, Any], image_size: int, cache: bool, out: Path) -> tuple[float, list]:
    protocol = Protocol(eval_every=0, eval_subset=0, batch_size=32, epochs=1)
    metrics, t0 = [], time.perf_counter()
    for i, (method, cfg) in enumerate(SWEEP):
        cfg = {**cfg, "image_size": image_size, "feature_cache": cache}
        spec = RunSpec(method=method, method_config=cfg, scenario=scenario, scenario_config=scenario_cfg,
                       protocol=protocol, seed=0)  # fmt: skip
        metrics.append(run(spec, out=out / f"{'cached' if cache else 'uncached'}{i}")["metrics"])
    return time.perf_counter() - t0, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="split_digits", choices=["split_digits", "split_mnist"])
    parser.add_argument("--mnist", default=str(default_mnist_folder()))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scenario_cfg = {"root": args.mnist, "download": False} if args.scenario == "split_mnist" else {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CL_BENCH_CACHE"] = str(Path(tmp) / "cache")
        uncached, m_plain = sweep(args.scenario, scenario_cfg, args.image_size, False, Path(tmp))
        cached, m_cached = sweep(args.scenario, scenario_cfg, args.image_size, True, Path(tmp))
    same = all(a == b for a, b in zip(m_plain, m_cached, strict=True))
    print(f"{args.scenario}, {len(SWEEP)} runs, EfficientNet-Lite0 at {args.image_size} px, {args.threads} threads")
    print(f"uncached {uncached:.1f} s, cached {cached:.1f} s: cached is {uncached / cached:.2f}x faster "
          f"(metrics identical: {same})")  # fmt: skip


if __name__ == "__main__":
    main()
