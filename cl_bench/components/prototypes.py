"""Class prototypes: running per-class sums of features, and nearest-mean logits.

References:
    Mensink et al., "Distance-Based Image Classification: Generalizing to New Classes at Near-Zero
    Cost", TPAMI 2013 (nearest class mean). Zhou et al., "Revisiting Class-Incremental Learning with
    Pre-Trained Models: Generalizability and Adaptivity are All You Need", IJCV 2024 (SimpleCIL:
    prototypes of a frozen pretrained model with a cosine classifier).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F


def rank_unseen_last(logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """``logits`` with every class outside ``seen`` set one below the row's lowest seen logit.

    Keeps logits finite (the conformance suite and cross-entropy need that) while no unseen class can
    win the argmax; unchanged when nothing or everything has been seen.
    """
    if bool(seen.all()) or not bool(seen.any()):
        return logits
    floor = logits[:, seen].min(dim=1, keepdim=True).values - 1
    return torch.where(seen.unsqueeze(0), logits, floor)


class PrototypeHead:
    """Exact class means of every feature offered so far, however the data is batched.

    Keeps per-class sums and counts (float64 sums, so the means do not depend on batch order
    beyond rounding), which is also the ``H^T Y`` term of ridge-regression heads.

    Args:
        n_classes: Size of the label space.
        dim: Feature dimension.
        device: Where the sums live.
    """

    def __init__(self, n_classes: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(n_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_classes, dtype=torch.int64, device=device)

    def update(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of ``features`` (N, dim) with labels ``y`` (N,)."""
        self.sums.index_add_(0, y, features.to(self.sums.dtype))
        self.counts += torch.bincount(y, minlength=len(self.counts))

    @property
    def seen(self) -> torch.Tensor:
        """Boolean mask of the classes with at least one example."""
        return self.counts > 0

    def means(self) -> torch.Tensor:
        """Class means (float32, zero rows for unseen classes)."""
        return (self.sums / self.counts.clamp(min=1).unsqueeze(1)).to(torch.float32)

    def logits(self, features: torch.Tensor, metric: Literal["cosine", "euclidean"] = "cosine") -> torch.Tensor:
        """Nearest-mean scores of ``features``: cosine similarity, or minus the squared distance.

        Unseen classes score one below the row's lowest seen score, so logits stay finite and the
        argmax is always a seen class; with no class seen yet all scores are 0.
        """
        n = len(features)
        if not bool(self.seen.any()):
            return torch.zeros(n, len(self.counts), device=features.device)
        means = self.means().to(features.device)
        if metric == "cosine":
            scores = F.normalize(features, dim=1) @ F.normalize(means, dim=1).T
        else:
            scores = -torch.cdist(features, means).pow(2)
        return rank_unseen_last(scores, self.seen.to(features.device))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])


__all__ = ["PrototypeHead", "rank_unseen_last"]
