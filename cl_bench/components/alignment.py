"""Classifier alignment on sampled class Gaussians, and the contrastive feature regulariser beside it.

HiDe-Prompt introduced both and MOS inherits them (its ``classifer_align`` and ``orth_loss`` are the
same loops): after an experience the classifier is re-trained on pseudo-features drawn from the stored
Gaussians of every seen class (:class:`~cl_bench.components.gaussians.ClassMixture`), so old and new
classes compete on equal terms without stored examples; during an experience each batch feature and
each stored prototype must be recognisable as itself among all of them (``M M^T / T``), which pushes
new features away from the old classes' prototypes.

References:
    Wang et al., "Hierarchical Decomposition of Prompt-Based Continual Learning: Rethinking Obscured
    Sub-optimality", NeurIPS 2023, official code thu-ml/HiDe-Prompt
    ``engines/hide_promtp_wtp_and_tap_engine.py`` (``train_task_adaptive_prediction``, ``orth_loss``).
    Sun et al., "MOS: Model Surgery for Pre-Trained Model-Based Class-Incremental Learning", AAAI 2025,
    official code sun-hailong/AAAI25-MOS ``models/mos.py`` (``classifer_align``, ``orth_loss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components.gaussians import ClassMixture


def contrastive_loss(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """HiDe-Prompt's / MOS's ``orth_loss``: rows of ``M = [prototypes; features]``, each classified as itself
    by ``M M^T / temperature`` (cross-entropy averaged over all rows, prototypes included)."""
    m = torch.cat([prototypes.to(features), features]) if len(prototypes) else features
    return F.cross_entropy(m @ m.T / temperature, torch.arange(len(m), device=m.device))


def align(classifier: nn.Module, params: list[nn.Parameter], stats: ClassMixture, seen: torch.Tensor, n_prev: int,
          lr: float, epochs: int, n: int, generator: torch.Generator, *,
          weight_decay: float = 0.0) -> None:  # fmt: skip
    """Classifier alignment on features sampled from the class Gaussians of every class in ``seen``.

    SGD (momentum 0.9) at ``lr``, cosine-annealed per epoch to 0 over ``epochs`` (torch
    ``CosineAnnealingLR(T_max=epochs)`` stepped after each epoch); each epoch draws ``n`` features per
    component and class, shuffles them and takes ``n_prev`` batches of ``n``, with the logits of unseen
    classes masked out. HiDe-Prompt takes as many batches as earlier classes (``crct_num``) and no weight
    decay; MOS as many as seen classes (``range(self._total_classes)``, every draw once) with its
    ``weight_decay``.

    Args:
        classifier: Maps (B, dim) features to (B, n_classes) logits.
        params: The parameters trained (the classifier's, or part of them).
        stats: The class Gaussians.
        seen: (n_classes,) bool, the classes sampled and scored.
        n_prev: Batches per epoch.
        lr: Initial learning rate.
        epochs: Alignment epochs.
        n: Draws per component and class per epoch, and the batch size.
        generator: CPU generator of the draws and the shuffles.
        weight_decay: SGD weight decay.
    """
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    classes = seen.nonzero().flatten()
    for epoch in range(epochs):
        for group in opt.param_groups:  # torch CosineAnnealingLR(T_max=epochs), stepped after each epoch
            group["lr"] = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
        x, y = stats.sample(classes, n, generator)
        order = torch.randperm(len(x), generator=generator).to(x.device)
        x, y = x[order], y[order]
        for i in range(n_prev):
            xb, yb = x[i * n : (i + 1) * n], y[i * n : (i + 1) * n]
            if len(xb) == 0:
                break
            logits = classifier(xb).masked_fill(~seen, float("-inf"))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


__all__ = ["align", "contrastive_loss"]
