"""L2 regularisation of a fine-tuned pretrained ViT towards its pretrained weights.

Smith et al. revisit rehearsal-free continual learning from a pretrained ViT and find that a plain
L2 pull of the fine-tuned weights back to the *pretrained* ones — in particular on the attention
blocks only — is a strong baseline next to prompting. Here the anchor is fixed (the pretrained
weights, not the previous experience's solution), and ``scope`` chooses which backbone parameters
are fine-tuned and regularised: the attention (``qkv`` and ``proj`` of every block) or all of them.
The linear classifier is trained without penalty.

References:
    Smith, Tian, Halbe, Hsu, Lin, Jin, Kira. "A Closer Look at Rehearsal-Free Continual Learning".
    CVPR Workshops 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from cl_bench.components import FisherPenalty
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT, ViTConfig, ViTPromptMethod


@dataclass(frozen=True)
class L2ViTConfig(ViTConfig):
    """L2-to-pretrained hyper-parameters.

    Attributes:
        lambda_: Penalty strength ``lambda/2 * ||theta - theta_pretrained||^2`` (``--set lambda=...``);
            not taken from the paper (tune it).
        scope: "attention" fine-tunes and regularises only each block's ``qkv`` and ``proj``
            (the paper's attention-only variant); "all" every backbone parameter.
    """

    # Full fine-tuning lr of the CODA-Prompt reference code's FT baseline (configs/cifar-100_ft.yaml).
    lr: float = 5e-5
    lambda_: float = 1.0
    scope: Literal["attention", "all"] = "attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_ < 0:
            raise ValueError("lambda must be >= 0")


@METHODS.register(
    "l2_vit",
    reference="Smith et al., 'A Closer Look at Rehearsal-Free Continual Learning' (CVPR-W 2023), "
    "L2 to the pretrained weights",
)
class L2ViT(ViTPromptMethod):
    """Fine-tunes a pretrained ViT (attention only, by default) with an L2 pull to its pretrained weights."""

    Config: ClassVar[type] = L2ViTConfig
    frozen_backbone: ClassVar[bool] = False
    # Plain fine-tuning of a random tiny ViT needs a larger step than a pretrained ViT-B.
    conformance_config: ClassVar[dict[str, object]] = {**TINY_VIT, "lr": 1e-2}

    def build(self, info: StreamInfo) -> None:
        vit = self.vit.vit
        tuned = {n for n, _ in vit.named_parameters()}
        if self.config.scope == "attention":
            tuned = {n for n, _ in vit.named_parameters() if ".attn.qkv." in n or ".attn.proj." in n}
        for n, p in vit.named_parameters():
            p.requires_grad_(n in tuned)
        self.penalty = FisherPenalty(self.config.lambda_)
        # The anchor is the pretrained network itself, fixed for the whole stream.
        self.penalty.consolidate(vit, {n: torch.ones_like(p) for n, p in vit.named_parameters() if n in tuned})

    def trainable(self) -> list[nn.Module]:
        return [self.head, self.vit]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        return self.vit(x), (self.penalty(self.vit.vit) if train else 0.0)
