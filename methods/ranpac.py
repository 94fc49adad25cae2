"""RanPAC: random projection of frozen pretrained features, then a Gram-matrix ridge classifier.

Frozen backbone features ``f`` (dim d) go through a fixed random Gaussian matrix ``W`` (d x M)
and a ReLU, ``h = relu(f W)``; the expanded, nonlinear features decorrelate class prototypes.
The head is ridge regression onto one-hot labels, kept exactly incremental by accumulating the
Gram matrix ``G = sum h h^T`` and the class sums ``Q = sum h y^T`` (a :class:`PrototypeHead`):
``W_o = (G + lambda I)^-1 Q``. After each experience lambda is chosen from 10^-8 .. 10^8 by the
mean squared error on a held-out 20% of that experience's projected features (the paper's code).
Exemplar-free; the backbone never changes.

Not reproduced here: the paper's optional first-session parameter-efficient adaptation of the
backbone (Phase 1); this is RanPAC's Phase 2 on a frozen backbone (its "no PETL" variant).

References:
    McDonnell, Gong, Parvaneh, Abbasnejad & van den Hengel, "RanPAC: Random Projections and
    Pre-trained Models for Continual Learning", NeurIPS 2023 (arXiv:2307.02251), Sec. 4 and
    Algorithm 1; M = 10000 (Sec. 5), ridge search ``10.0 ** np.arange(-8, 9)`` with an 80/20 split
    (reference code RanPACer/RanPAC, ``optimise_ridge_parameter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import PrototypeHead
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.families.pretrained import TINY_RANDOM_BACKBONE, Encoder, PretrainedConfig

#: The paper's ridge grid (reference code: ``10.0 ** np.arange(-8, 9)``).
RIDGES: tuple[float, ...] = tuple(10.0**k for k in range(-8, 9))


def select_ridge(h: torch.Tensor, y: torch.Tensor, ridges: tuple[float, ...], gen: torch.Generator) -> float:
    """The ridge whose fit on 80% of ``(h, y)`` has the lowest MSE on the other 20%.

    One eigendecomposition serves every candidate: of the N x N kernel when there are fewer
    training rows than features (the dual form), else of the M x M Gram matrix.

    Args:
        h: Projected features (N, M), float64.
        y: One-hot targets (N, C), float64.
        ridges: Candidates.
        gen: Draws the split (the experience's rows arrive sorted by class).
    """
    n = len(h)
    n_train = int(0.8 * n)
    if n_train < 1 or n_train == n:
        return ridges[len(ridges) // 2]
    perm = torch.randperm(n, generator=gen).to(h.device)
    tr, va = perm[:n_train], perm[n_train:]
    h_tr, h_va, y_tr, y_va = h[tr], h[va], y[tr], y[va]
    if n_train <= h.shape[1]:
        s, u = torch.linalg.eigh(h_tr @ h_tr.T)
        left, right = h_va @ h_tr.T @ u, u.T @ y_tr  # pred = h_va h_tr^T (K + l I)^-1 y_tr
    else:
        s, u = torch.linalg.eigh(h_tr.T @ h_tr)
        left, right = h_va @ u, u.T @ (h_tr.T @ y_tr)  # pred = h_va (G + l I)^-1 h_tr^T y_tr
    losses = [F.mse_loss(left @ (right / (s.clamp(min=0) + lam).unsqueeze(1)), y_va).item() for lam in ridges]
    return ridges[min(range(len(ridges)), key=losses.__getitem__)]


@dataclass(frozen=True)
class RanPACConfig(PretrainedConfig):
    """RanPAC hyper-parameters.

    Attributes:
        projection_dim: M, the random projection's width (paper: 10000; memory grows as 8 M^2 bytes
            for the float64 Gram matrix, 800 MB at 10000).
    """

    projection_dim: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")


@METHODS.register(
    "ranpac",
    reference="McDonnell et al., 'RanPAC: Random Projections and Pre-trained Models for Continual Learning', "
    "NeurIPS 2023",
)
class RanPAC(Method):
    """Random-projection features of a frozen backbone with an incremental ridge classifier; exemplar-free."""

    Config: ClassVar[type] = RanPACConfig
    caps: ClassVar[Caps] = Caps(memory="none", pretrained_backbone=True)
    conformance_config: ClassVar[dict[str, Any]] = {**TINY_RANDOM_BACKBONE, "projection_dim": 64}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.encoder = Encoder(self.config, info, frozen=True, method=self.name or type(self).__name__)
        dev, m = self.encoder.device, self.config.projection_dim
        gen = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(self.encoder.dim, m, generator=gen).to(dev)  # N(0, 1) entries, as the paper
        self.gram = torch.zeros(m, m, dtype=torch.float64, device=dev)
        self.class_sums = PrototypeHead(info.n_classes, m, dev)  # Q^T: per-class sums of h
        self.readout = torch.zeros(m, info.n_classes, device=dev)
        self.task_features: list[torch.Tensor] = []
        self.task_labels: list[torch.Tensor] = []
        self.split_gen = torch.Generator().manual_seed(seed + 1)
        self.ridge = 0.0  # chosen at the first boundary

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.encoder.features(x) @ self.projection)

    def observe(self, batch: Batch) -> dict[str, Any]:
        # Backbone features (d wide, not M) are kept until the experience ends: the ridge search
        # needs this experience's rows; they are dropped at the boundary (no examples are stored).
        self.task_features.append(self.encoder.features(batch.x))
        self.task_labels.append(batch.y)
        return {"loss": 0.0}

    def end_experience(self, exp: Experience) -> None:
        self.encoder.flush()
        if not self.task_features:
            return
        f, y = torch.cat(self.task_features), torch.cat(self.task_labels)
        h = F.relu(f @ self.projection).to(torch.float64)
        self.gram += h.T @ h
        self.class_sums.update(h, y)
        onehot = F.one_hot(y, self.info.n_classes).to(torch.float64)
        self.ridge = select_ridge(h, onehot, RIDGES, self.split_gen)
        eye = torch.eye(len(self.gram), dtype=torch.float64, device=self.gram.device)
        self.readout = torch.linalg.solve(self.gram + self.ridge * eye, self.class_sums.sums.T).to(torch.float32)
        self.task_features, self.task_labels = [], []

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self._project(x) @ self.readout

    def state_dict(self) -> dict[str, Any]:
        return {"gram": self.gram.clone(), "sums": self.class_sums.state_dict(), "readout": self.readout.clone(),
                "task_features": list(self.task_features), "task_labels": list(self.task_labels),
                "split_gen": self.split_gen.get_state(), "ridge": self.ridge}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gram.copy_(state["gram"])
        self.class_sums.load_state_dict(state["sums"])
        self.readout.copy_(state["readout"])
        self.task_features, self.task_labels = list(state["task_features"]), list(state["task_labels"])
        self.split_gen.set_state(state["split_gen"])
        self.ridge = state["ridge"]

    def record_extras(self) -> dict[str, Any]:
        if not hasattr(self, "_tag"):
            self._tag = self.config.tag()
        return {"backbone": self._tag}
