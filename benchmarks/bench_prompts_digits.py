"""The prompt methods end to end on real data: a small ViT pretrained on MNIST, continual on sklearn digits.

No pretrained ViT weights are available offline, so this script makes a small one: a timm
``vit_tiny_patch16_224`` shrunk to 16 x 16 inputs (patch 4, depth 4, width 48, 3 heads) is trained
for ``--pretrain-steps`` Adam steps (batch 64) on the MNIST test set (10,000 images, IDX files at
``--mnist``; 28 px images resized to 16 px by :class:`BackboneInput`) and saved as a weight file.
Each method then runs through the real runner on Split-Digits (scikit-learn's 8 x 8 digits, 5
experiences of 2 classes, class-incremental; a different dataset from the pretraining one), loading
the weights with ``weights=PATH``, and the script prints final accuracy, average incremental
accuracy and forgetting. Prompt layers are scaled to the 4-block ViT; other defaults are the papers'.

Usage::

    python benchmarks/bench_prompts_digits.py [--mnist ../shared/data/mnist] [--epochs 1] [--out /tmp/prompts_digits]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cl_bench.components import BackboneInput
from cl_bench.core.registry import SCENARIOS
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.nets.backbones import create_backbone
from cl_bench.testing.mnist import default_mnist_folder

VIT = {"image_size": 16, "patch_size": 4, "depth": 4, "embed_dim": 48, "num_heads": 3}
METHOD_CONFIGS: dict[str, dict[str, Any]] = {
    "l2p": {},
    "dualprompt": {"g_layers": (0, 1), "e_layers": (2, 3), "e_pool_size": 5},
    "coda_prompt": {"pool_size": 50, "layers": (0, 1, 2, 3)},
    "one_prompt": {"g_layers": (0, 1), "e_layers": (2, 3)},
    "l2_vit": {},
    "hide_prompt": {"layers": (0, 1, 2, 3), "pool_size": 5},
}


def pretrain(mnist: Path, steps: int, out: Path) -> Path:
    scenario = SCENARIOS.create("split_mnist", root=str(mnist), download=False)
    data = [e.train for e in scenario] + [e.test for e in scenario]
    x = torch.cat([d.batch(slice(None))[0] for d in data])
    y = torch.cat([d.y for d in data])
    torch.manual_seed(0)
    kw = {"img_size": VIT["image_size"], **{k: v for k, v in VIT.items() if k != "image_size"}}
    vit = create_backbone("vit_tiny_patch16_224", None, **kw)
    adapt = BackboneInput.for_backbone(vit, 16).for_stream(data[0].transform)
    x = adapt(x)
    head = torch.nn.Linear(VIT["embed_dim"], 10)
    opt = torch.optim.Adam([*vit.parameters(), *head.parameters()], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    vit.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = F.cross_entropy(head(vit(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    vit.eval()
    with torch.no_grad():
        acc = (head(vit(x[:2000])).argmax(1) == y[:2000]).float().mean().item()
    print(f"pretrained on {len(x)} MNIST images for {steps} steps: train accuracy {acc:.3f} (first 2,000)")
    path = out / "vit_mnist16.pth"
    torch.save(vit.state_dict(), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=str(default_mnist_folder()))
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="/tmp/prompts_digits")
    ap.add_argument("--methods", nargs="*", default=list(METHOD_CONFIGS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = pretrain(Path(args.mnist), args.pretrain_steps, out)
    protocol = Protocol(eval_every=0, epochs=args.epochs, batch_size=args.batch_size)
    print(f"split_digits, class-IL, {args.epochs} epochs, batch {args.batch_size}, seed 0")
    print(f"{'method':>12} {'final_acc':>10} {'avg_inc_acc':>12} {'forgetting':>11} {'seconds':>8}")
    for name in args.methods:
        cfg = {"backbone": "vit_tiny_patch16_224", "weights": str(weights), **VIT, **METHOD_CONFIGS[name]}
        t0 = time.perf_counter()
        record = run(RunSpec(method=name, method_config=cfg, scenario="split_digits", protocol=protocol), out / name)
        m = record["metrics"]
        print(f"{name:>12} {m['final_acc']:>10.3f} {m['avg_incremental_acc']:>12.3f} {m['forgetting']:>11.3f} "
              f"{time.perf_counter() - t0:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
