"""T3A: test-time template adjustment of the classifier (output only, parameters untouched).

The linear head's weight rows are the initial class templates (supports). Each test embedding
z = features(x) joins the supports of the class the source head predicts for it; per class only the
``filter_k`` supports of lowest prediction entropy are kept (the head's own rows count as supports
too). A test batch is classified by cosine similarity to the class centroids of the L2-normalised
supports, the current batch already included. The network itself is never changed.

References:
    Iwasawa & Matsuo. "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
    Generalization". NeurIPS 2021 (Sec. 3, Eq. 3-5). Code: github.com/matsuolab/T3A.
    Default ``filter_k`` = 100: the RMT benchmark's T3A config (github.com/mariodoebler/test-time-adaptation,
    conf.py ``T3A.FILTER_K``); the paper selects M among {1, 5, 20, 50, 100, all} per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import softmax_entropy
from cl_bench.components.tta_output import features_and_head
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, held_bytes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import FrozenSourceMethod


@dataclass(frozen=True)
class T3AConfig:
    """T3A hyper-parameters.

    Attributes:
        filter_k: M, supports kept per class (lowest entropy first).
    """

    filter_k: int = 100

    def __post_init__(self) -> None:
        if self.filter_k < 1:
            raise ConfigError(f"t3a filter_k must be >= 1, got {self.filter_k}")


@METHODS.register(
    "t3a",
    reference="Iwasawa & Matsuo, 'Test-Time Classifier Adjustment Module for Model-Agnostic Domain "
    "Generalization' (NeurIPS 2021)",
)
class T3A(FrozenSourceMethod):
    """T3A: classify by prototypes of confident test embeddings, seeded with the head's weights."""

    Config: ClassVar[type] = T3AConfig
    # It keeps embeddings (not examples) of at most filter_k test samples per class, reported as its memory.
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, updates_parameters=False, memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)  # a private eval-mode copy of the source model
        self.features, self.head = features_and_head(self.net, self.name)
        with torch.no_grad():
            w = self.head.weight.detach().clone()
            self.supports, self.labels, self.ent = self._scored(w)
        self.n_warmup = len(w)

    def _scored(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.head(z)
        return z, logits.argmax(1), softmax_entropy(logits)

    def _filtered(self, supports: torch.Tensor, labels: torch.Tensor, ent: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        keep = []
        for c in labels.unique():
            idx = (labels == c).nonzero().squeeze(1)
            # stable sort: ties keep arrival order, so runs are deterministic
            order = torch.sort(ent[idx], stable=True).indices[: self.config.filter_k]
            keep.append(idx[order])
        sel = torch.cat(keep).sort().values
        return supports[sel], labels[sel], ent[sel]

    def _step(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        z = self.features(x)
        s, y, e = self._scored(z)
        state = self._filtered(torch.cat([self.supports, s]), torch.cat([self.labels, y]), torch.cat([self.ent, e]))
        supports, labels, _ = state
        onehot = F.one_hot(labels, self.info.n_classes).to(supports.dtype)
        centroids = F.normalize(F.normalize(supports, dim=1).T @ onehot, dim=0)  # [D, C]
        return z @ centroids, state

    @torch.no_grad()
    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self._step(x)[0]

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        out, (self.supports, self.labels, self.ent) = self._step(x)
        return out

    def memory_size(self) -> int:
        return max(len(self.supports) - self.n_warmup, 0) if hasattr(self, "supports") else 0

    def memory_budget(self) -> int | None:
        return self.config.filter_k * self.info.n_classes if hasattr(self, "info") else None

    def memory_bytes(self) -> int | None:
        # the test embeddings beyond the head's own rows, with their pseudo-labels and entropies
        n = self.memory_size()
        return 0 if n == 0 else held_bytes(n, self.supports, self.labels, self.ent)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "supports": self.supports.clone(), "labels": self.labels.clone(),
                "ent": self.ent.clone()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.supports, self.labels, self.ent = state["supports"].clone(), state["labels"].clone(), state["ent"].clone()
