"""DualPrompt: a shared general prompt in the first blocks and per-experience expert prompts after.

G(eneral)-prompts, shared by all experiences, are prefixed to the attention of ``g_layers``;
E(xpert)-prompts, one per experience with a learnable key, to ``e_layers``. While training on
experience t the expert prompt t is used (and its key pulled to the queries, ``1 - cos``); at test
time the expert whose key best matches the input's query (the [CLS] of a frozen forward pass) is
used, so no task id is needed. Prefix tuning as in the CODA-Prompt reference code.

References:
    Wang et al. "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning". ECCV 2022.
    Smith et al. "CODA-Prompt" CVPR 2023 (reference code GT-RIPL/CODA-Prompt, experiments/cifar-100.sh:
    ``--prompt_param 10 20 6``: e-pool 10, e-length 20, g-length 6; g-layers 0-1, e-layers 2-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from cl_bench.components.prompts import PromptPool, merge_prefixes
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT, ViTConfig, ViTPromptMethod


@dataclass(frozen=True)
class DualPromptConfig(ViTConfig):
    """DualPrompt hyper-parameters (CODA-Prompt reference code defaults for 10-task Split CIFAR-100).

    Attributes:
        g_layers: Blocks with the general prompt.
        g_length: General prompt length per block (half key, half value prefix).
        e_layers: Blocks with the expert prompts.
        e_length: Expert prompt length per block.
        e_pool_size: Number of expert prompts; at least the number of experiences (one each).
        key_weight: Weight of the key-query matching loss.
    """

    g_layers: tuple[int, ...] = (0, 1)
    g_length: int = 6
    e_layers: tuple[int, ...] = (2, 3, 4)
    e_length: int = 20
    e_pool_size: int = 10
    key_weight: float = 1.0


@METHODS.register(
    "dualprompt",
    reference="Wang et al., 'DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning' "
    "(ECCV 2022)",
)
class DualPrompt(ViTPromptMethod):
    """Shared general prompts plus key-matched per-experience expert prompts in a frozen ViT."""

    Config: ClassVar[type] = DualPromptConfig
    conformance_config: ClassVar[dict[str, object]] = {**TINY_VIT, "g_layers": (0,), "g_length": 2,
                                                      "e_layers": (1,), "e_length": 4, "e_pool_size": 3,
                                                      "lr": 1e-2}  # fmt: skip

    def build(self, info: StreamInfo) -> None:
        cfg = self.config
        if cfg.e_pool_size < info.n_experiences:
            raise ConfigError(f"dualprompt keeps one expert prompt per experience, but e_pool_size="
                              f"{cfg.e_pool_size} < {info.n_experiences} experiences; set "
                              f"--set e_pool_size={info.n_experiences}")  # fmt: skip
        d = self.vit.embed_dim
        self.general = PromptPool(cfg.g_layers, 1, cfg.g_length, d, d).to(self.device)
        self.expert = PromptPool(cfg.e_layers, cfg.e_pool_size, cfg.e_length, d, d).to(self.device)

    def trainable(self) -> list[nn.Module]:
        return [self.head, self.general, self.expert]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        query = self.vit.query(x)
        if train:
            # Training knows its experience: expert prompt `task` ("task-id bootstrap" of the reference code).
            idx = torch.full((len(x), 1), self.task, dtype=torch.long, device=x.device)
            sim = self.expert.similarity(query)
            aux: torch.Tensor | float = self.config.key_weight * PromptPool.match_loss(sim, idx)
        else:
            idx, _ = self.expert.select(query, 1)
            aux = 0.0
        prefixes = merge_prefixes(self.expert.prefixes(idx), self.general.shared(len(x)))
        return self.vit(x, prefixes), aux
