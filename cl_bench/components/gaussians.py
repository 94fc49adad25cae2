"""Per-class Gaussian statistics of features, accumulated exactly, and FeCAM's covariance treatment.

:class:`ClassGaussians` keeps float64 per-class sums of ``x`` and ``x x^T`` and counts, so a class's
mean and unbiased covariance (``np.cov``) are exact whatever the batching. The helpers implement
the official FeCAM code's post-processing: shrinkage towards the mean diagonal and mean
off-diagonal values, and normalisation of a covariance to a correlation matrix.

References:
    Goswami, Liu, Twardowski & van de Weijer, "FeCAM: Exploiting the Heterogeneity of Class
    Distributions in Exemplar-Free Continual Learning", NeurIPS 2023 (arXiv:2309.14062), Sec. 4
    (covariance shrinkage, correlation normalisation, Tukey's ladder of powers); official code
    dipamgoswami/FeCAM, ``models/base.py`` (``shrink_cov``, ``normalize_cov``, ``_tukeys_transform``).
"""

from __future__ import annotations

from typing import Any

import torch


def tukey(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Tukey's ladder of powers, ``x ** beta`` (``log x`` for beta = 0), sign-preserving.

    The official code applies ``torch.pow(x, beta)`` to post-ReLU (non-negative) features; keeping
    the sign, ``sign(x) |x| ** beta``, gives the same values there and stays finite on signed
    features (ViT tokens) instead of returning NaN.
    """
    if beta == 0:
        return torch.log(x.clamp(min=1e-12))  # only defined for positive features, as in the official code
    return x.sign() * x.abs().pow(beta)


def shrink_covariance(cov: torch.Tensor, alpha1: float, alpha2: float) -> torch.Tensor:
    """``cov + alpha1 * mean(diag) * I + alpha2 * mean(nonzero off-diag) * (1 - I)`` (FeCAM, Eq. 6).

    Args:
        cov: A (d, d) covariance.
        alpha1: Weight of the mean variance added to the diagonal.
        alpha2: Weight of the mean (non-zero) covariance added off the diagonal.
    """
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    off = cov * (1 - eye)
    nonzero = (off != 0).sum().clamp(min=1)  # the official code averages the non-zero entries only
    off_mean = off.sum() / nonzero
    return cov + alpha1 * torch.diagonal(cov).mean() * eye + alpha2 * off_mean * (1 - eye)


def correlation(cov: torch.Tensor) -> torch.Tensor:
    """``cov / (sd sd^T)``: the covariance normalised to unit variances (FeCAM's ``norm_cov``)."""
    sd = torch.diagonal(cov).clamp(min=1e-12).sqrt()
    return cov / (sd.unsqueeze(1) * sd.unsqueeze(0))


class ClassGaussians:
    """Exact running per-class mean and covariance of the features offered so far.

    Args:
        n_classes: Size of the label space.
        dim: Feature dimension.
        device: Where the sums live. Memory: ``8 * dim**2`` bytes per class that has been offered
            features (the second-moment sums are allocated lazily, per class).
    """

    def __init__(self, n_classes: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.sums = torch.zeros(n_classes, dim, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_classes, dtype=torch.int64, device=device)
        self.second: dict[int, torch.Tensor] = {}  # class -> sum of x x^T

    def update(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of ``features`` (N, dim) with labels ``y`` (N,)."""
        f = features.to(self.sums.dtype)
        self.sums.index_add_(0, y, f)
        self.counts += torch.bincount(y, minlength=len(self.counts))
        for c in y.unique().tolist():
            fc = f[y == c]
            if c not in self.second:
                self.second[c] = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=f.device)
            self.second[c] += fc.T @ fc

    @property
    def seen(self) -> torch.Tensor:
        """Boolean mask of the classes with at least one example."""
        return self.counts > 0

    def mean(self, c: int) -> torch.Tensor:
        """Class ``c``'s mean (float64)."""
        return self.sums[c] / self.counts[c].clamp(min=1)

    def covariance(self, c: int) -> torch.Tensor:
        """Class ``c``'s unbiased covariance (float64; zeros below two examples), as ``np.cov``."""
        n = int(self.counts[c])
        if n < 2:
            return torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.sums.device)
        mu = self.mean(c)
        return (self.second[c] - n * torch.outer(mu, mu)) / (n - 1)

    def drop_second_moments(self, classes: list[int]) -> None:
        """Free the (dim, dim) sums of ``classes`` once their covariance has been consumed."""
        for c in classes:
            self.second.pop(c, None)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "counts": self.counts.clone(),
                "second": {c: s.clone() for c, s in self.second.items()}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])
        self.second = {int(c): s.clone() for c, s in state["second"].items()}


__all__ = ["ClassGaussians", "correlation", "shrink_covariance", "tukey"]
