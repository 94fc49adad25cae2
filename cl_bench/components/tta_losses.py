"""Losses, sample selection and source statistics shared by the test-time adaptation methods.

References:
    Wang et al. "Tent: Fully Test-Time Adaptation by Entropy Minimization". ICLR 2021.
    Niu et al. "Efficient Test-Time Model Adaptation without Forgetting" (EATA). ICML 2022.
    Döbler et al. "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (RMT). CVPR 2023.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.types import TensorData


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy of ``softmax(logits)`` (Tent's objective)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def marginal_entropy(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Entropy ``H(mean_i p_i)`` of the batch's mean prediction (the diversity term of SHOT-IM and
    AdaContrast; ``eps`` inside the log as SHOT's code, 1e-5)."""
    mean = logits.softmax(1).mean(0)
    return -(mean * torch.log(mean + eps)).sum()


def cross_entropy_to(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``-sum softmax(target) * log_softmax(logits)`` (CoTTA's teacher loss)."""
    return -(target_logits.softmax(1) * logits.log_softmax(1)).sum(1)


def symmetric_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per-example SCE(s, t) = -1/2 sum p_t log p_s - 1/2 sum p_s log p_t (RMT, Eq. 3)."""
    return 0.5 * cross_entropy_to(logits, target_logits) + 0.5 * cross_entropy_to(target_logits, logits)


class ReliableEntropy:
    """EATA's sample-efficient entropy: only reliable, non-redundant samples, weighted by confidence.

    A sample counts if its entropy is below ``e_margin`` (reliable) and, once a moving average of
    the predicted class distribution exists, its softmax has cosine similarity below ``d_margin``
    to that average (non-redundant). Each kept sample's entropy is weighted by
    ``1 / exp(entropy - e_margin)``; the average is updated with momentum 0.9 from the
    reliable samples (EATA, Eqs. 6 and 8; reference code mr-eggplant/EATA).

    Args:
        n_classes: Output width C.
        e_margin_fraction: e_margin as a fraction of ln C (EATA: 0.4 ln 1000 on ImageNet).
        d_margin: Redundancy threshold on the cosine similarity (None disables the filter).
    """

    def __init__(self, n_classes: int, e_margin_fraction: float, d_margin: float | None) -> None:
        self.e_margin = e_margin_fraction * math.log(n_classes)
        self.d_margin = d_margin
        self.mean_probs: torch.Tensor | None = None

    def __call__(self, outputs: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Loss on ``outputs`` (logits), number of reliable samples, number used in the loss."""
        ent = softmax_entropy(outputs)
        reliable = ent < self.e_margin
        probs = outputs.softmax(1)[reliable]
        ent = ent[reliable]
        if self.d_margin is not None and self.mean_probs is not None:
            cos = F.cosine_similarity(self.mean_probs.unsqueeze(0), probs, dim=1)
            keep = cos.abs() < self.d_margin
            ent, probs = ent[keep], probs[keep]
        if len(probs):
            batch_mean = probs.detach().mean(0)
            self.mean_probs = batch_mean if self.mean_probs is None else 0.9 * self.mean_probs + 0.1 * batch_mean
        coeff = torch.exp(self.e_margin - ent.detach())
        loss = (ent * coeff).mean() if len(ent) else outputs.sum() * 0.0
        return loss, int(reliable.sum()), len(ent)

    def state_dict(self) -> dict[str, Any]:
        """The moving average of the predicted class distribution."""
        return {"mean_probs": self.mean_probs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        mp = state["mean_probs"]
        self.mean_probs = None if mp is None else mp.clone()


def source_batches(
    data: TensorData, n_samples: int, batch_size: int, device: torch.device, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``n_samples`` source examples (a seeded random subset) in batches, on ``device``."""
    order = torch.randperm(len(data), generator=generator)[: min(n_samples, len(data))]
    for i in range(0, len(order), batch_size):
        yield data.batch(order[i : i + batch_size], device)


def pseudo_label_fisher(
    model: nn.Module, params: dict[str, nn.Parameter], batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher estimate of EATA: mean over batches of the squared batch gradient.

    The loss is the cross-entropy to the model's own predictions (labels are not used), with
    the model as configured for adaptation (EATA's reference code, ``compute_fishers``). Unlike
    :func:`cl_bench.components.diagonal_fisher` it squares batch-mean gradients, not per-example
    ones, because batch-statistics normalisation makes per-example gradients meaningless.

    Args:
        model: The network, configured for adaptation.
        params: Name -> parameter to estimate the Fisher of.
        batches: ``(x, y)`` source batches (``y`` is ignored).
    """
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    n = 0
    names, tensors = list(params), list(params.values())
    for x, _ in batches:
        out = model(x)
        loss = F.cross_entropy(out, out.argmax(1))
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for k, g in zip(names, grads, strict=True):
            if g is not None:
                fisher[k] += g.detach().pow(2)
        n += 1
    return {k: v / max(n, 1) for k, v in fisher.items()}
