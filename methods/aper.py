"""APER (ADAM): adapt a pretrained model in the first session with PETL, then merge prototypes.

First experience: PETL modules (``petl`` = adapter, ssf or vpt; see
:mod:`cl_bench.components.petl`) are attached to a copy of the backbone, every pretrained weight
stays frozen, and the modules plus a cosine head are trained with cross-entropy on that
experience's classes. Then the adapted backbone is frozen for good. Every class, from the first
experience on, is its prototype: the mean of the concatenation ``[frozen features, adapted
features]`` of its training examples (computed once per experience, without augmentation), and
predictions are cosine similarities to those prototypes (SimpleCIL on the merged embedding). The
frozen half comes from the shared feature cache; the adapted half is memoised for the run.
Exemplar-free.

Defaults are the official code's CIFAR-100 configurations (``exps/aper_adapter``, ``aper_ssf``,
``aper_vpt-shallow``: ``init_lr 0.01``, SGD momentum 0.9, ``weight_decay 5e-4``, cosine annealing
over ``tuned_epoch 20`` to ``min_lr 0``, ``ffn_num 64``, shallow VPT with 5 tokens). The official
runs 20 epochs on the first session; in cl_bench the epochs are the protocol's
(``--protocol.epochs 20`` reproduces them; later experiences train nothing, so extra epochs there
cost nothing) and the lr schedule follows the official ``T_max = tuned_epochs`` whatever the
protocol. Unlike the official code, the backbone's BatchNorm statistics stay pretrained (eval mode)
during tuning, as everywhere in cl_bench's pretrained family.

References:
    Zhou, Cai, Ye, Zhan & Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
    Generalizability and Adaptivity are All You Need", IJCV 2024 (arXiv:2303.07338), Sec. 5
    (APER, formerly ADAM); official code zhoudw-zdw/RevisitingCIL ``models/aper_ssf.py``
    (first-session tuning, ``construct_dual_branch_network``, ``replace_fc``) and ``exps/aper_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cl_bench.components import PrototypeHead
from cl_bench.components.petl import FirstSessionConfig
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.families.pretrained import TINY_RANDOM_BACKBONE, Encoder, PretrainedConfig


@dataclass(frozen=True)
class APERConfig(FirstSessionConfig, PretrainedConfig):
    """APER hyper-parameters: the first-session PETL fields of :class:`FirstSessionConfig` (defaults: official
    ``exps/aper_*/cifar224_5_5_vit-b_*.json``) on a pretrained backbone."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_first_session(self.backbone)


@METHODS.register(
    "aper",
    reference="Zhou et al., 'Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and "
    "Adaptivity are All You Need' (APER/ADAM), IJCV 2024",
    description="first-session PETL (petl=adapter|ssf|vpt), then prototypes of frozen + adapted features",
)
class APER(Method):
    """First-session PETL adaptation, then a cosine prototype classifier on [frozen, adapted] features."""

    Config: ClassVar[type] = APERConfig
    caps: ClassVar[Caps] = Caps(memory="none", pretrained_backbone=True)
    conformance_config: ClassVar[dict[str, Any]] = {**TINY_RANDOM_BACKBONE, "lr": 0.1, "ffn_num": 8}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.frozen = Encoder(cfg, info, frozen=True, method=self.name or type(self).__name__)
        self.adapted = Encoder(cfg, info, frozen=False, method=self.name or type(self).__name__)
        self.tuner = cfg.tuner(self.adapted.backbone, self.adapted.dim, info.n_classes, seed)
        dev = self.frozen.device
        self.head = PrototypeHead(info.n_classes, self.frozen.dim + self.adapted.dim, dev)
        self.current = torch.zeros(info.n_classes, dtype=torch.bool, device=dev)
        self.tuned = False  # the first experience has ended: the adapted backbone is frozen
        self.n_train = 0

    def begin_experience(self, exp: Experience) -> None:
        self.current.zero_()
        self.current[list(exp.classes)] = True
        self.n_train = len(exp.train) if exp.train is not None else 0

    def observe(self, batch: Batch) -> dict[str, Any]:
        if self.tuned:  # later sessions train nothing: prototypes come from one clean pass at the boundary
            return {"loss": 0.0}
        return {"loss": self.tuner.step(self.adapted(batch.x), batch.y, self.current, self.n_train)}

    def _merged(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.frozen.features(x), self.adapted.features(x)], dim=1)

    def end_experience(self, exp: Experience) -> None:
        if not self.tuned:
            self.adapted.freeze()
            self.tuned = True
        if exp.train is not None:
            x, y = exp.train.batch(slice(None), device=self.frozen.device)
            self.head.update(self._merged(x), y)  # official replace_fc: train data in test mode
        self.frozen.flush()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        if not self.tuned:  # during the first session: the tuning head (no prototype exists yet)
            with torch.no_grad():
                return self.tuner.head(self.adapted.extract(x))
        return self.head.logits(self._merged(x), "cosine")

    def state_dict(self) -> dict[str, Any]:
        return {"petl": self.adapted.backbone.petl.state_dict(), "tuner": self.tuner.state_dict(),
                "head": self.head.state_dict(), "tuned": self.tuned}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adapted.backbone.petl.load_state_dict(state["petl"])
        self.tuner.load_state_dict(state["tuner"])
        self.head.load_state_dict(state["head"])
        if state["tuned"] and not self.tuned:
            self.adapted.freeze()
        self.tuned = state["tuned"]

    def record_extras(self) -> dict[str, Any]:
        if not hasattr(self, "_tag"):
            self._tag = self.config.tag()
        extras: dict[str, Any] = {"backbone": self._tag}
        if hasattr(self, "frozen"):  # records are also written before setup (a run's first record)
            extras["feature_cache"] = self.frozen.cache_stats()
        return extras
