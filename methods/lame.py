"""LAME: Laplacian-adjusted maximum-likelihood estimation of the test-batch labels (output only).

The network is never changed: the source model (in eval mode, source batch-norm statistics) gives
class probabilities p_i and embeddings z_i for a test batch; LAME returns assignments Y that minimise

    E(Y) = - sum_i y_i . log p_i  -  lambda sum_ij w_ij y_i . y_j  +  sum_i y_i . log y_i

(a Laplacian term pulling neighbours in embedding space to the same class, with affinities W),
by the concave-convex fixed point y_i <- softmax(log p_i + lambda sum_j w_ij y_j) run until the
energy stops decreasing (relative change 1e-8, at most 100 steps). The affinity is the kNN graph
of the L2-normalised embeddings (w_ij = 1 if j is among the k nearest neighbours of i).

References:
    Boudiaf, Mueller, Ben Ayed & Bertinetto. "Parameter-free Online Test-time Adaptation".
    CVPR 2022 (Eq. 6-8). Code: github.com/fiveai/LAME. Defaults (kNN affinity, k = 5,
    lambda = 1, 100 steps): the RMT benchmark's LAME configs and methods/lame.py
    (github.com/mariodoebler/test-time-adaptation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components.tta_output import features_and_head
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import FrozenSourceMethod


@dataclass(frozen=True)
class LAMEConfig:
    """LAME hyper-parameters (RMT benchmark defaults: AFFINITY kNN, KNN 5, SIGMA 1, FORCE_SYMMETRY off).

    Attributes:
        affinity: "knn" (binary kNN graph), "rbf" (Gaussian kernel over the kNN distances) or "linear"
            (clipped cosine similarity).
        knn: Neighbours per sample for "knn" and for the scale of "rbf".
        sigma: RBF bandwidth multiplier.
        force_symmetry: Use (W + W^T) / 2.
        bound_lambda: lambda, the weight of the Laplacian term.
        max_steps: Maximum fixed-point iterations.
    """

    affinity: Literal["knn", "rbf", "linear"] = "knn"
    knn: int = 5
    sigma: float = 1.0
    force_symmetry: bool = False
    bound_lambda: float = 1.0
    max_steps: int = 100

    def __post_init__(self) -> None:
        if self.affinity not in ("knn", "rbf", "linear"):
            raise ConfigError(f"lame affinity must be 'knn', 'rbf' or 'linear', got {self.affinity!r}")
        if self.knn < 1 or self.sigma <= 0 or self.bound_lambda < 0 or self.max_steps < 1:
            raise ConfigError("lame needs knn >= 1, sigma > 0, bound_lambda >= 0 and max_steps >= 1")


def affinity(z: torch.Tensor, cfg: LAMEConfig) -> torch.Tensor:
    """The [N, N] affinity matrix of the embeddings ``z`` (L2-normalised) that ``cfg`` names."""
    n = len(z)
    if cfg.affinity == "linear":
        w = (z @ z.T).clamp_min(0)
    else:
        dist = torch.cdist(z, z)
        k = min(cfg.knn + 1, n)  # +1: each sample is its own nearest neighbour, which is left out
        d_knn, idx = dist.topk(k, dim=1, largest=False)
        d_knn, idx = d_knn[:, 1:], idx[:, 1:]
        w = torch.zeros(n, n, dtype=z.dtype, device=z.device)
        if cfg.affinity == "knn":
            w.scatter_(1, idx, 1.0)
        else:
            scale = cfg.sigma * d_knn[:, -1:].mean().clamp_min(1e-12) if idx.shape[1] else z.new_tensor(1.0)
            w.scatter_(1, idx, torch.exp(-(d_knn**2) / (2 * scale**2)))
    return (w + w.T) / 2 if cfg.force_symmetry else w


def laplacian_adjust(probs: torch.Tensor, w: torch.Tensor, bound_lambda: float, max_steps: int) -> torch.Tensor:
    """LAME's assignments Y [N, C] for probabilities ``probs`` and affinities ``w`` (Boudiaf et al., Eq. 8)."""
    unary = -torch.log(probs + 1e-10)
    y = (-unary).softmax(1)
    old = None
    for step in range(max_steps):
        pairwise = bound_lambda * (w @ y)
        y = (-unary + pairwise).softmax(1)
        energy = float((unary * y - pairwise * y + y * torch.log(y.clamp_min(1e-20))).sum())
        if step > 1 and old is not None and abs(energy - old) <= 1e-8 * abs(old):
            break
        old = energy
    return y


@METHODS.register(
    "lame", reference="Boudiaf et al., 'Parameter-free Online Test-time Adaptation' (CVPR 2022)"
)
class LAME(FrozenSourceMethod):
    """LAME: adjust the source model's outputs on each test batch with a Laplacian over its embeddings."""

    Config: ClassVar[type] = LAMEConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, updates_parameters=False)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)  # a private eval-mode copy of the source model, saved in state_dict
        self.features, self.head = features_and_head(self.net, self.name)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        z = self.features(x)
        probs = self.head(z).softmax(1)
        y = laplacian_adjust(probs, affinity(F.normalize(z, dim=1), self.config), self.config.bound_lambda,
                             self.config.max_steps)  # fmt: skip
        return torch.log(y.clamp_min(1e-20))  # log-assignments: argmax is LAME's label, softmax gives Y back

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x, PredictContext())
