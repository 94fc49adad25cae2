"""Per-class Gaussian statistics of features, accumulated exactly, and FeCAM's covariance treatment.

:class:`ClassGaussians` keeps float64 per-class sums of ``x`` and ``x x^T`` and counts, so a class's
mean and unbiased covariance (``np.cov``) are exact whatever the batching. The helpers implement
the official FeCAM code's post-processing: shrinkage towards the mean diagonal and mean
off-diagonal values, and normalisation of a covariance to a correlation matrix.

:class:`ClassMixture` stores each class as HiDe-Prompt does for its classifier alignment (one
Gaussian with full covariance, one with diagonal variance, or k-means centroids each with a
diagonal variance) and draws labelled pseudo-features from those Gaussians.

References:
    Goswami, Liu, Twardowski & van de Weijer, "FeCAM: Exploiting the Heterogeneity of Class
    Distributions in Exemplar-Free Continual Learning", NeurIPS 2023 (arXiv:2309.14062), Sec. 4
    (covariance shrinkage, correlation normalisation, Tukey's ladder of powers); official code
    dipamgoswami/FeCAM, ``models/base.py`` (``shrink_cov``, ``normalize_cov``, ``_tukeys_transform``).
    Wang et al., "Hierarchical Decomposition of Prompt-Based Continual Learning: Rethinking Obscured
    Sub-optimality", NeurIPS 2023 (official code thu-ml/HiDe-Prompt,
    ``engines/hide_promtp_wtp_and_tap_engine.py`` ``_compute_mean`` and
    ``train_task_adaptive_prediction``: the three storage modes and their sampling).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

MixtureMode = Literal["multi-centroid", "covariance", "variance"]


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


class ClassMixture(nn.Module):
    """Per-class Gaussians of features, fitted once per class, sampled for classifier alignment.

    Modes (HiDe-Prompt's ``--ca_storage_efficient_method``):

    * ``"covariance"``: the class mean and ``torch.cov + shrink * I`` (full covariance).
    * ``"variance"``: the class mean and the diagonal of that covariance.
    * ``"multi-centroid"`` (HiDe-Prompt's default): k-means (scikit-learn, k-means++, ``n_init=10``)
      splits the class into ``n_components`` clusters, each stored as its mean and per-dimension
      (population) variance; a cluster is sampled from ``N(mean, diag(var) + shrink * I)`` and one
      whose variance is all zero (a single point) is skipped, as the official code does.

    The statistics are buffers, so ``state_dict`` checkpoints them.

    Args:
        n_classes: Size of the label space.
        dim: Feature dimension.
        mode: One of the modes above.
        n_components: Clusters per class (multi-centroid only; 1 otherwise).
        shrink: Added to every variance / the covariance diagonal (1e-4 in the official code).
    """

    def __init__(self, n_classes: int, dim: int, mode: MixtureMode = "multi-centroid", n_components: int = 10,
                 shrink: float = 1e-4) -> None:  # fmt: skip
        super().__init__()
        if mode not in ("multi-centroid", "covariance", "variance"):
            raise ValueError(f"mode must be 'multi-centroid', 'covariance' or 'variance', got {mode!r}")
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.mode, self.shrink = mode, shrink
        k = n_components if mode == "multi-centroid" else 1
        self.register_buffer("means", torch.zeros(n_classes, k, dim))
        self.register_buffer("count", torch.zeros(n_classes, k, dtype=torch.long))  # points per component
        if mode == "covariance":
            self.register_buffer("covs", torch.zeros(n_classes, dim, dim))
        else:
            self.register_buffer("vars", torch.zeros(n_classes, k, dim))

    @property
    def fitted(self) -> torch.Tensor:
        """Boolean mask of the classes with statistics."""
        return self.count.sum(1) > 0

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        """Fit the statistics of every class in ``labels`` from its ``features`` (N, dim), replacing old ones.

        ``seed`` (plus the class index) seeds k-means, so a refit gives the same clusters.
        """
        f64 = features.detach().to("cpu", torch.float64)
        for c in labels.unique().tolist():
            fc = f64[labels.cpu() == c]
            self.means[c].zero_()
            self.count[c].zero_()
            if self.mode == "multi-centroid":
                from sklearn.cluster import KMeans

                k = min(self.means.shape[1], len(fc))
                assign = KMeans(n_clusters=k, n_init=10, random_state=seed * 1009 + c).fit(fc.numpy()).labels_
                self.vars[c].zero_()
                for j in range(k):
                    members = fc[torch.from_numpy(np.asarray(assign == j))]
                    self.means[c, j] = members.mean(0).float()
                    self.vars[c, j] = members.var(0, unbiased=False).float()  # np.var in the official code
                    self.count[c, j] = len(members)
                continue
            self.means[c, 0] = fc.mean(0).float()
            self.count[c, 0] = len(fc)
            cov = torch.cov(fc.T) if len(fc) > 1 else torch.zeros(fc.shape[1], fc.shape[1], dtype=torch.float64)
            cov = cov + self.shrink * torch.eye(fc.shape[1], dtype=torch.float64)
            if self.mode == "covariance":
                self.covs[c] = cov.float()
            else:
                self.vars[c, 0] = torch.diagonal(cov).float()

    def prototypes(self) -> torch.Tensor:
        """Every stored component mean of the fitted classes, (M, dim) in class order."""
        return self.means[self.count > 0]

    def sample(self, classes: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` features from every component of each class in ``classes``, and their labels (class order).

        Args:
            classes: Class indices (1-D) with fitted statistics.
            n: Samples per component (per class for "covariance" and "variance").
            generator: A CPU generator: the draws are reproducible.
        """
        xs, ys = [], []
        dim = self.means.shape[2]
        for c in classes.tolist():
            for j in range(self.means.shape[1]):
                if int(self.count[c, j]) == 0:
                    continue
                z = torch.randn(n, dim, generator=generator).to(self.means.device)
                if self.mode == "covariance":
                    x = self.means[c, j] + z @ torch.linalg.cholesky(self.covs[c]).T
                else:
                    var = self.vars[c, j]
                    if self.mode == "multi-centroid":
                        if float(var.mean()) == 0:  # a one-point cluster: skipped by the official code
                            continue
                        var = var + self.shrink
                    x = self.means[c, j] + z * var.sqrt()
                xs.append(x)
                ys.append(torch.full((n,), c, dtype=torch.long, device=x.device))
        if not xs:
            return self.means.new_zeros(0, dim), torch.zeros(0, dtype=torch.long, device=self.means.device)
        return torch.cat(xs), torch.cat(ys)


__all__ = ["ClassGaussians", "ClassMixture", "MixtureMode", "correlation", "shrink_covariance", "tukey"]
