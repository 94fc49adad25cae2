"""NCM / SimpleCIL: nearest class mean on the features of a frozen pretrained backbone.

The backbone never changes; each class is its prototype, the mean feature of its training
examples, accumulated exactly batch by batch. No examples are stored and nothing is forgotten
except through the growing number of competing prototypes.

SimpleCIL (registered as ``simplecil``, below) is this method with ``metric=cosine, normalize=false``:
class means of the *unnormalised* frozen embeddings scored by cosine similarity (LAMDA-PILOT
``models/simplecil.py``, ``replace_fc`` into a ``CosineLinear``); ``ncm``'s default averages L2-normalised
features instead (Janson et al.'s NMC), which differs whenever feature norms vary within a class. It lives
in this file because it is this file's logic with two settings fixed, so a record's name says which rule ran.

References:
    Zhou, Cai, Ye, Zhan & Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
    Generalizability and Adaptivity are All You Need", IJCV 2024 (arXiv:2303.07338): SimpleCIL,
    prototype classifier with cosine similarity on frozen ViT features.
    Janson, Zhang, Aljundi & Elhoseiny, "A Simple Baseline that Questions the Use of
    Pretrained-Models in Continual Learning", NeurIPS 2022 workshop (arXiv:2210.04428): NMC on
    L2-normalised frozen features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import PrototypeHead
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.families.pretrained import TINY_RANDOM_BACKBONE, Encoder, PretrainedConfig


@dataclass(frozen=True)
class NCMConfig(PretrainedConfig):
    """NCM hyper-parameters.

    Attributes:
        metric: "cosine" (SimpleCIL's cosine classifier) or "euclidean" (Janson et al.'s NMC).
        normalize: L2-normalise features before averaging (Janson et al.; SimpleCIL averages raw
            features but scores by cosine, which normalises the prototypes).
    """

    metric: Literal["cosine", "euclidean"] = "cosine"
    normalize: bool = True


@METHODS.register(
    "ncm",
    reference="Zhou et al., 'Revisiting Class-Incremental Learning with Pre-Trained Models' (SimpleCIL), IJCV 2024",
)
class NCM(Method):
    """Nearest class mean on frozen pretrained features (normalize=false: simplecil); exemplar-free."""

    Config: ClassVar[type] = NCMConfig
    caps: ClassVar[Caps] = Caps(memory="none", pretrained_backbone=True)
    conformance_config: ClassVar[dict[str, Any]] = TINY_RANDOM_BACKBONE

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.encoder = Encoder(self.config, info, frozen=True, method=self.name or type(self).__name__)
        self.head = PrototypeHead(info.n_classes, self.encoder.dim, self.encoder.device)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder.features(x)
        return F.normalize(f, dim=1) if self.config.normalize else f

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.head.update(self._features(batch.x), batch.y)
        return {"loss": 0.0}  # no gradient step: the prototypes are exact means

    def end_experience(self, exp: Experience) -> None:
        self.encoder.flush()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self.head.logits(self._features(x), self.config.metric)

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])

    def record_extras(self) -> dict[str, Any]:
        if not hasattr(self, "_tag"):
            self._tag = self.config.tag()
        extras: dict[str, Any] = {"backbone": self._tag}
        if hasattr(self, "encoder"):  # records are also written before setup (a run's first record)
            extras["feature_cache"] = self.encoder.cache_stats()
        return extras


@dataclass(frozen=True)
class SimpleCILConfig(NCMConfig):
    """SimpleCIL: ``ncm`` fixed to raw-feature prototypes scored by cosine similarity.

    Attributes:
        metric: Always "cosine" (SimpleCIL's cosine classifier).
        normalize: Always False (prototypes average the raw embeddings, as ``replace_fc`` does).
    """

    metric: Literal["cosine"] = "cosine"
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric != "cosine" or self.normalize:
            raise ValueError("simplecil is ncm with metric=cosine and normalize=false; use ncm for other settings")


@METHODS.register(
    "simplecil",
    reference="Zhou et al., 'Revisiting Class-Incremental Learning with Pre-Trained Models' (SimpleCIL), IJCV 2024",
)
class SimpleCIL(NCM):
    """SimpleCIL: cosine classifier on raw-feature class means of a frozen backbone (ncm, normalize=false)."""

    Config: ClassVar[type] = SimpleCILConfig
