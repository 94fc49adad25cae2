"""Cost of the prompt methods per training step and per prediction, relative to one frozen ViT forward.

The methods differ in how many ViT passes they need: l2p, dualprompt and coda_prompt run a frozen
query pass before the prompted pass; one_prompt needs only the prompted pass (the OVOR paper's
inference-cost argument); l2_vit back-propagates into the attention weights. This script builds
each method on a ViT (random weights: cost does not depend on the weights), feeds it random
batches of 3 x 224 x 224 images through the real hooks (``observe`` / ``predict``) and prints
seconds per call and the ratio to a plain ``torch.no_grad`` forward of the same backbone.

Usage::

    python benchmarks/bench_prompts.py [--backbone vit_tiny_patch16_224] [--batch-size 16] [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo, TensorData
from cl_bench.nets.backbones import create_backbone

METHODS_TIMED = ["l2p", "dualprompt", "coda_prompt", "one_prompt", "l2_vit"]


def timed(fn, steps: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_tiny_patch16_224")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 224, 224)
    y = torch.randint(0, 10, (args.batch_size,))
    vit = create_backbone(args.backbone).eval()
    with torch.no_grad():
        base = timed(lambda: vit(x), args.steps)
    print(f"backbone {args.backbone}, batch {args.batch_size}, {torch.get_num_threads()} threads, CPU")
    print(f"{'frozen forward':>16}: {base:.3f} s/batch (1.00x)")
    info = StreamInfo((3, 224, 224), 100, 10, "class_il")
    exp = Experience(0, TensorData(x, y), TensorData(x, y), tuple(range(10)))
    print(f"{'method':>16}  {'train step':>12} {'ratio':>7}  {'predict':>10} {'ratio':>7}")
    for name in METHODS_TIMED:
        method = METHODS.create(name, backbone=args.backbone)
        method.setup(info, 0)
        method.begin_experience(exp)
        step = timed(lambda m=method: m.observe(Batch(x, y, None, 0)), args.steps)
        with torch.inference_mode():
            pred = timed(lambda m=method: m.predict(x, PredictContext()), args.steps)
        print(f"{name:>16}  {step:>10.3f} s {step / base:>6.2f}x  {pred:>8.3f} s {pred / base:>6.2f}x")


if __name__ == "__main__":
    main()
