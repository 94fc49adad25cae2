"""Sample weighting, the soft-likelihood-ratio loss and prior correction of ROID (shared with CMF).

ROID weights each test sample by how certain its prediction is and how much it differs from the
recent average prediction (diversity): with both min-max normalised to [0, 1] over the batch,

    w_i = exp(div_i * cert_i / T),   div_i = 1 - cos(p_bar, p_i),   cert_i = -H(p_i),

and samples whose diversity is below the batch mean get weight 0. ``p_bar`` is an EMA (0.9) of the
mean batch prediction, starting uniform. The loss on the kept samples is the weighted soft
likelihood ratio plus a weighted symmetric cross-entropy between the prediction on an augmented view
and the prediction on the original (consistency), both summed and divided by the batch size.
Prior correction re-weights the output probabilities by the batch's smoothed mean prediction.

References:
    Marsden, Döbler & Yang. "Universal Test-time Adaptation through Weight Ensembling, Diversity
    Weighting, and Prior Correction" (ROID). WACV 2024 (Sec. 3, Eq. 2-6). Facts read from the RMT
    authors' benchmark code (github.com/mariodoebler/test-time-adaptation, methods/roid.py,
    utils/losses.py ``SoftLikelihoodRatio``): clip 0.99, eps 1e-5, T = 1/3, momentum 0.9.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cl_bench.components.tta_losses import softmax_entropy, symmetric_cross_entropy


def soft_likelihood_ratio(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5) -> torch.Tensor:
    """Per-example SLR loss ``-sum_c p_c log(p_c / (1 - p_c))`` with p clipped at ``clip`` (ROID, Eq. 2).

    Unlike entropy its gradient does not vanish for confident predictions, and the clip keeps it finite.
    """
    p = logits.softmax(1).clamp(max=clip)
    return -(p * torch.log(p / (1 - p) + eps)).sum(1)


def _minmax(v: torch.Tensor) -> torch.Tensor:
    # a constant vector (e.g. a batch of one) maps to 0, where the reference would divide by zero
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)


class CertaintyDiversityWeights:
    """ROID's per-sample weights and the EMA of the mean prediction they are measured against.

    Args:
        n_classes: Output width C (the average starts uniform, 1 / C).
        temperature: T of ``exp(div * cert / T)`` (ROID: 1/3).
        momentum: EMA momentum of the mean prediction (ROID: 0.9).
    """

    def __init__(self, n_classes: int, temperature: float = 1 / 3, momentum: float = 0.9) -> None:
        self.temperature, self.momentum = temperature, momentum
        self.class_probs = torch.full((n_classes,), 1.0 / n_classes)

    def weights(self, logits: torch.Tensor, update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [B] (0 for dropped samples) and the boolean mask of the kept samples; with ``update``
        the EMA of the mean prediction moves towards this batch's."""
        with torch.no_grad():
            probs = logits.softmax(1)
            ema = self.class_probs.to(probs.device)
            div = _minmax(1 - F.cosine_similarity(ema.unsqueeze(0), probs, dim=1))
            keep = div >= div.mean()
            cert = _minmax(-softmax_entropy(logits))
            w = torch.exp(div * cert / self.temperature) * keep
            if update:
                self.class_probs = (self.momentum * ema + (1 - self.momentum) * probs.mean(0)).cpu()
        return w, keep

    def state_dict(self) -> dict[str, Any]:
        """The moving average of the mean prediction."""
        return {"class_probs": self.class_probs.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.class_probs = state["class_probs"].clone()


def weighted_slr_consistency(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    out: torch.Tensor,
    weights: torch.Tensor,
    keep: torch.Tensor,
    augment: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """ROID's loss: weighted SLR on kept samples + weighted SCE(augmented, original) (both / batch size).

    Args:
        model: The network being adapted.
        x: The test batch.
        out: ``model(x)`` (with gradient).
        weights: Per-sample weights from :class:`CertaintyDiversityWeights`.
        keep: The kept samples.
        augment: Draws an augmented view of a batch; None drops the consistency term.
    """
    n = len(x)
    loss = (soft_likelihood_ratio(out) * weights)[keep].sum() / n
    if augment is not None and bool(keep.any()):
        out_aug = model(augment(x[keep]))
        loss = loss + (symmetric_cross_entropy(out_aug, out[keep]) * weights[keep]).sum() / n
    return loss


def prior_correction(logits: torch.Tensor) -> torch.Tensor:
    """Log of the prior-corrected probabilities ``p * prior_s / sum(...)`` (ROID, Sec. 3.4).

    ``prior`` is the batch's mean prediction, smoothed towards uniform by
    ``s = max(1/B, 1/C) / max(prior)``: ``prior_s = (prior + s) / (1 + s C)``. The reference code
    multiplies the logits by ``prior_s``; the paper's formula, used here, multiplies the probabilities
    (the logits' sign would otherwise decide the direction of the correction).
    """
    probs = logits.softmax(1)
    prior = probs.mean(0)
    smooth = max(1 / logits.shape[0], 1 / logits.shape[1]) / prior.max()
    corrected = probs * ((prior + smooth) / (1 + smooth * logits.shape[1]))
    return torch.log(corrected / corrected.sum(1, keepdim=True)).clamp_min(-1e4)
