"""CODA-Prompt: an input-weighted sum of learnable prompt components, trained in task slices.

At each prompted block the prefix is ``sum_m alpha_m P_m`` with ``alpha_m = cos(q * A_m, K_m)``:
the query ``q`` (the [CLS] of a frozen forward pass) is gated by a learnable attention vector per
component before it is compared with the component's key, so the whole prompt is end-to-end
differentiable (no top-k selection). The components are split evenly over the experiences; each
experience trains a fresh slice, Gram-Schmidt initialised orthogonal to the earlier (frozen) ones,
with an optional orthogonality penalty.

References:
    Smith et al. "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
    Continual Learning". CVPR 2023 (reference code GT-RIPL/CODA-Prompt, experiments/cifar-100.sh:
    ``--prompt_param 100 8 0.1``: 100 components, length 8, layers 0-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from cl_bench.components.prompts import CodaPrompt
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT, ViTConfig, ViTPromptMethod


@dataclass(frozen=True)
class CodaPromptConfig(ViTConfig):
    """CODA-P hyper-parameters (reference code defaults for 10-task Split CIFAR-100).

    Attributes:
        pool_size: Total prompt components, divided evenly over the experiences.
        length: Prompt length per block (half key, half value prefix).
        layers: Prompted blocks.
        ortho_weight: Weight of the orthogonality penalty on the trained slice of components, keys
            and attention vectors; 1e-7 = the reference code's 0.1 times the 1e-6 it multiplies in.
    """

    pool_size: int = 100
    length: int = 8
    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    ortho_weight: float = 1e-7


@METHODS.register(
    "coda_prompt",
    reference="Smith et al., 'CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free "
    "Continual Learning' (CVPR 2023)",
)
class CodaPromptMethod(ViTPromptMethod):
    """Attention-weighted, orthogonally initialised prompt components in a frozen ViT."""

    Config: ClassVar[type] = CodaPromptConfig
    conformance_config: ClassVar[dict[str, object]] = {**TINY_VIT, "pool_size": 6, "length": 4, "layers": (0, 1),
                                                      "lr": 1e-2}  # fmt: skip

    def build(self, info: StreamInfo) -> None:
        cfg = self.config
        d = self.vit.embed_dim
        self.coda = CodaPrompt(cfg.layers, cfg.pool_size, cfg.length, d, d, info.n_experiences).to(self.device)

    def trainable(self) -> list[nn.Module]:
        return [self.head, self.coda]

    def new_task(self, exp: Experience) -> None:
        # Seeded per (run seed, experience) so a resumed run draws the same initialisation.
        gen = torch.Generator().manual_seed(self.seed * 7919 + exp.index)
        self.coda.begin_task(exp.index, gen)

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        if self.task < 0:  # before any experience no component is active
            return self.vit(x), 0.0
        prefixes, ortho = self.coda(self.vit.query(x), self.task, train)
        return self.vit(x, prefixes), (self.config.ortho_weight * ortho if train else 0.0)
