"""L2P (as L2P++): a pool of key-matched prompts, prefix-tuned into a frozen pretrained ViT.

Each input's query (the [CLS] feature of a frozen forward pass) selects the ``top_k`` prompts whose
keys are most cosine-similar; the chosen prompts are prepended as key/value prefixes to the
attention of ``layers``. Prompts and the linear classifier learn by cross-entropy; the keys are
pulled towards the queries that select them (``1 - cos``). L2P++ is the CODA-Prompt authors'
re-implementation: prefix tuning instead of L2P's prompt tokens, which they report to work better.

References:
    Wang et al. "Learning to Prompt for Continual Learning". CVPR 2022.
    Smith et al. "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
    Continual Learning". CVPR 2023 (L2P++; reference code GT-RIPL/CODA-Prompt, experiments/cifar-100.sh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from cl_bench.components.prompts import PromptPool
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT, ViTConfig, ViTPromptMethod


@dataclass(frozen=True)
class L2PConfig(ViTConfig):
    """L2P++ hyper-parameters (CODA-Prompt reference code: ``--prompt_param 30 20 -1``, top-5).

    Attributes:
        pool_size: Number of prompts (and keys) in the pool.
        length: Prompt length per layer (half key, half value prefix).
        top_k: Prompts chosen per input.
        layers: Blocks that get the prefixes (L2P++ "shallow": block 0 only).
        key_weight: Weight of the key-query matching loss.
    """

    pool_size: int = 30
    length: int = 20
    top_k: int = 5
    layers: tuple[int, ...] = (0,)
    key_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_size < 1 or self.top_k < 1 or self.top_k > self.pool_size:
            raise ValueError(f"need 1 <= top_k <= pool_size, got top_k={self.top_k}, pool_size={self.pool_size}")


@METHODS.register(
    "l2p",
    reference="Wang et al., 'Learning to Prompt for Continual Learning' (CVPR 2022); L2P++ of Smith et al., "
    "CODA-Prompt (CVPR 2023)",
)
class L2P(ViTPromptMethod):
    """Learning to Prompt: top-k key-matched prompts from a pool, prefix-tuned into a frozen ViT."""

    Config: ClassVar[type] = L2PConfig
    conformance_config: ClassVar[dict[str, object]] = {**TINY_VIT, "pool_size": 6, "length": 4, "top_k": 2,
                                                      "lr": 1e-2}  # fmt: skip

    def build(self, info: StreamInfo) -> None:
        cfg = self.config
        d = self.vit.embed_dim
        self.pool = PromptPool(cfg.layers, cfg.pool_size, cfg.length, d, d).to(self.device)

    def trainable(self) -> list[nn.Module]:
        return [self.head, self.pool]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        idx, sim = self.pool.select(self.vit.query(x), self.config.top_k)
        feats = self.vit(x, self.pool.prefixes(idx))
        return feats, (self.config.key_weight * PromptPool.match_loss(sim, idx) if train else 0.0)
