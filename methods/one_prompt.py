"""OnePrompt with Virtual Outlier Regularisation (OVOR): one shared prompt, tighter class boundaries.

OnePrompt drops the prompt pool: a single prompt, shared by every experience and input, is
prefix-tuned into a frozen ViT (a short "general" part in the first blocks, a longer "expert" part
after, DualPrompt's layout). No query forward pass is needed, which halves inference cost.

Virtual outlier regularisation (VOR) tightens the classifier's decision boundaries so classes of
different experiences are confused less: after the regular training of an experience, the
features of its training data are computed; the ``n_boundary`` features farthest from their
k-th nearest neighbour (on the unit sphere) are boundary points; Gaussian candidates around them
are scored by their own k-th nearest-neighbour distance to the inliers and the farthest are kept
as virtual outliers (the NPOS synthesis). The classifier is then trained for ``vor_epochs`` on the
cached features with cross-entropy plus an energy hinge: inlier energy ``-logsumexp(logits)`` is
pushed below ``thres_id``, outlier energy above ``thres_ood`` (squared hinges through a Huber
loss, weight ``vor_weight``).

References:
    Huang, Chen, Hsu. "OVOR: OnePrompt with Virtual Outlier Regularization for Rehearsal-Free
    Class-Incremental Learning". ICLR 2024 (reference code jpmorganchase/ovor: configs/common.yaml,
    learners/ood.py, experiments/cifar-100.sh ``--prompt_param 10 40 10 --epochs 0 16 4``).
    Tao, Du, Zhu, Li. "Non-parametric Outlier Synthesis". ICLR 2023 (NPOS).
    Liu, Wang, Owens, Li. "Energy-based Out-of-distribution Detection". NeurIPS 2020 (energy hinge).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components.prompts import PromptPool, merge_prefixes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT, ViTConfig, ViTPromptMethod


@dataclass(frozen=True)
class OnePromptConfig(ViTConfig):
    """OnePrompt + VOR hyper-parameters (OVOR reference code defaults for 10-task Split CIFAR-100).

    Attributes:
        g_layers: Blocks with the short (general) part of the prompt.
        g_length: Its length per block (half key, half value prefix).
        e_layers: Blocks with the long (expert) part.
        e_length: Its length per block.
        vor: Apply virtual outlier regularisation after each experience.
        vor_epochs: Classifier epochs with VOR after each experience (reference: 4 of 20 epochs).
        vor_weight: Weight of the energy hinge (``lmda``).
        vor_noise: Std of the Gaussian candidates around boundary points (``cov``).
        thres_id: Inlier energy threshold.
        thres_ood: Outlier energy threshold.
        knn_k: Neighbours for the k-th nearest-neighbour distance (``K``).
        n_boundary: Boundary points per experience (``select``).
        n_candidates: Candidates drawn around each boundary point (``sample_from``).
        outliers_per_class: Virtual outliers kept per class of the experience (``num_per_class``).
        vor_batch_size: Inlier features per VOR step (``id_bsz``).
    """

    g_layers: tuple[int, ...] = (0, 1)
    g_length: int = 10
    e_layers: tuple[int, ...] = (2, 3, 4)
    e_length: int = 40
    vor: bool = True
    vor_epochs: int = 4
    vor_weight: float = 0.1
    vor_noise: float = 0.1
    thres_id: float = -15.0
    thres_ood: float = -3.0
    knn_k: int = 50
    n_boundary: int = 50
    n_candidates: int = 600
    outliers_per_class: int = 40
    vor_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("knn_k", "n_boundary", "n_candidates", "outliers_per_class", "vor_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vor_epochs < 0:
            raise ValueError(f"vor_epochs must be >= 0, got {self.vor_epochs}")


def _kth_distance(points: torch.Tensor, ref: torch.Tensor, k: int, skip_self: bool) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in ``ref`` (chunked to bound memory)."""
    out = []
    for chunk in points.split(4096):
        d = torch.cdist(chunk, ref)
        out.append(d.topk(k + int(skip_self), dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def synthesize_outliers(feats: torch.Tensor, n_out: int, k: int, n_boundary: int, n_candidates: int,
                        noise: float, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """NPOS virtual outliers of ``feats``, rescaled to the features' mean norm.

    Boundary points are the inliers farthest from their k-th neighbour (unit sphere); candidates
    ``boundary + noise * N(0, I)`` farthest from their k-th inlier neighbour are kept.
    """
    z = F.normalize(feats, dim=1)
    k = max(1, min(k, len(z) - 1))
    boundary = _kth_distance(z, z, k, skip_self=True).topk(min(n_boundary, len(z))).indices
    centres = z[boundary].repeat_interleave(n_candidates, 0)
    cand = centres + noise * torch.randn(centres.shape, generator=generator).to(z)
    keep = _kth_distance(cand, z, k, skip_self=False).topk(min(n_out, len(cand))).indices
    return cand[keep] * feats.norm(dim=1).mean()


@METHODS.register(
    "one_prompt",
    reference="Huang et al., 'OVOR: OnePrompt with Virtual Outlier Regularization for Rehearsal-Free "
    "Class-Incremental Learning' (ICLR 2024)",
)
class OnePrompt(ViTPromptMethod):
    """One shared prefix-tuned prompt in a frozen ViT, with virtual outlier regularisation of the classifier."""

    Config: ClassVar[type] = OnePromptConfig
    conformance_config: ClassVar[dict[str, object]] = {**TINY_VIT, "g_layers": (0,), "g_length": 2,
                                                      "e_layers": (1,), "e_length": 4, "lr": 1e-2,
                                                      "knn_k": 5, "n_boundary": 10, "n_candidates": 20}  # fmt: skip

    def build(self, info: StreamInfo) -> None:
        cfg = self.config
        d = self.vit.embed_dim
        self.general = PromptPool(cfg.g_layers, 1, cfg.g_length, d, d).to(self.device)
        self.expert = PromptPool(cfg.e_layers, 1, cfg.e_length, d, d).to(self.device)

    def trainable(self) -> list[nn.Module]:
        return [self.head, self.general, self.expert]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        prefixes = merge_prefixes(self.general.shared(len(x)), self.expert.shared(len(x)))
        return self.vit(x, prefixes), 0.0

    def end_experience(self, exp: Experience) -> None:
        cfg = self.config
        if not cfg.vor or cfg.vor_epochs == 0 or exp.train is None or len(exp.train) < 2:
            return
        gen = torch.Generator().manual_seed(self.seed * 7919 + exp.index)
        self.vit.eval()
        feats, labels = [], []
        with torch.no_grad():
            for idx in torch.arange(len(exp.train)).split(256):
                x, y = exp.train.batch(idx, self.device)
                feats.append(self.features(self.adapt_input(x), False)[0])
                labels.append(y)
        f, y = torch.cat(feats), torch.cat(labels)
        outliers = synthesize_outliers(f, cfg.outliers_per_class * len(exp.classes), cfg.knn_k, cfg.n_boundary,
                                       cfg.n_candidates, cfg.vor_noise, gen)  # fmt: skip
        allowed = self.current if cfg.mask_old_classes else self.seen
        n_batches = math.ceil(len(f) / cfg.vor_batch_size)
        per_batch = max(1, len(outliers) // n_batches)
        for _ in range(cfg.vor_epochs):
            order, out_order = torch.randperm(len(f), generator=gen), torch.randperm(len(outliers), generator=gen)
            for b in range(n_batches):
                i = order[b * cfg.vor_batch_size : (b + 1) * cfg.vor_batch_size].to(self.device)
                o = out_order[b * per_batch : (b + 1) * per_batch].to(self.device)
                logits_in, logits_out = self.head(f[i])[:, allowed], self.head(outliers[o])[:, allowed]
                target = torch.cumsum(allowed.long(), 0)[y[i]] - 1  # labels among the allowed classes
                energy_in, energy_out = -logits_in.logsumexp(1), -logits_out.logsumexp(1)
                hinge_in, hinge_out = F.relu(energy_in - cfg.thres_id), F.relu(cfg.thres_ood - energy_out)
                reg = (F.huber_loss(hinge_in, torch.zeros_like(hinge_in))
                       + F.huber_loss(hinge_out, torch.zeros_like(hinge_out)))  # fmt: skip
                loss = F.cross_entropy(logits_in, target) + cfg.vor_weight * reg
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
