"""EASE: a new adapter subspace per experience, a prototype ensemble, and semantic-guided prototype complement.

Every experience ``t`` attaches a fresh set of lightweight adapters to the frozen pretrained backbone
(one :class:`~cl_bench.components.petl.Bottleneck` per block, as APER's adapter; earlier sets stay
frozen) and trains it, with a cosine head over the experience's classes, by cross-entropy. The
backbone with set ``k`` active maps an input to the ``k``-th subspace; the model's feature is the
concatenation of all subspaces (optionally preceded by the pretrained backbone's own, ``use_init_ptm``).

The classifier is a prototype per class and subspace. At the end of experience ``t`` the training
data passes once, unaugmented, through every subspace ``0..t``, and each of its classes' prototype
there is the mean feature. An old class ``c`` (first trained in experience ``i < t``) has no data in
the new subspace ``t``, so its prototype there is synthesised (the paper's Eq. 7-8): in its own
subspace ``i``, ``sim_cj = softmax_j cos(p_c^i, p_j^i)`` over the classes ``j`` that have real
prototypes in both ``i`` and ``t``; then ``p̂_c^t = sum_j sim_cj p_j^t``. With ``recalc_sim`` (the official
default) every synthesised prototype is recomputed at every boundary from all the classes that
have real prototypes in both subspaces (``solve_sim_reset``), otherwise only the newest subspace's
are computed, once, from the current classes (``solve_similarity``).

Prediction (``use_reweight``, the official default; ``forward_reweight``): class ``c`` of experience
``i`` scores ``cos(f^i, p_c^i) + alpha / t * sum_{k != i} cos(f^k, p_c^k)`` over the ``t + 1``
subspaces (plus ``beta * cos(f^ptm, p_c^ptm)`` with ``use_init_ptm``), i.e. its own subspace at
weight 1 and the others at a total of ``alpha``. Without reweighting: cosine between the whole
concatenated feature and the concatenated prototypes. Before the first boundary (no prototype yet)
predictions come from the training head. Exemplar-free.

Defaults are LAMDA-PILOT's ``exps/ease.json`` (CIFAR-100 B0 Inc5): ``init_lr = later_lr 0.025``,
``init_epochs = later_epochs 20``, SGD momentum 0.9 (``models/ease.py`` ``get_optimizer``),
``weight_decay 0.0005``, cosine annealing to ``min_lr 0`` (``"scheduler": "cosine"``), ``ffn_num 64``,
``alpha 0.1``, ``beta 0``, ``use_init_ptm false``, ``recalc_sim true``, ``use_reweight true``; the
adapter's scale 0.1 and zero-initialised up-projection are ``utils/inc_net.py`` (``ffn_adapter_scalar
"0.1"``, ``ffn_adapter_init_option "lora"``, ``ffn_option "parallel"``). ``exps/ease_inr.json``
(ImageNet-R) uses lr 0.05, weight decay 0.005 and batch 16. As in APER, the epochs are the
protocol's (``--protocol.epochs 20`` reproduces them; the official batch is 48) and the lr schedule
follows the official ``T_max = 20`` whatever the protocol; the backbone's BatchNorm statistics stay
pretrained, and the official adapter's dropout 0.1 is not used (cl_bench's Bottleneck has none).
Not implemented: the official ablation switches ``use_diagonal``, ``use_old_data`` (exemplars) and
``moni_adam``.

References:
    Zhou, Sun, Ye & Zhan, "Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental
    Learning", CVPR 2024 (arXiv:2403.12030), Sec. 4; official code sun-hailong/LAMDA-PILOT
    ``models/ease.py`` (``replace_fc``, ``solve_sim_reset``, ``solve_similarity``), ``backbone/linears.py``
    (``EaseCosineLinear.forward_reweight``), ``backbone/vit_ease.py`` and ``exps/ease.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import PrototypeHead
from cl_bench.components.feature_cache import FeatureCache
from cl_bench.components.petl import AdapterBank, FirstSessionTuner
from cl_bench.components.prototypes import rank_unseen_last
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.families.pretrained import TINY_RANDOM_BACKBONE, Encoder, PretrainedConfig


@dataclass(frozen=True)
class EASEConfig(PretrainedConfig):
    """EASE hyper-parameters (defaults: LAMDA-PILOT ``exps/ease.json``) on a pretrained backbone.

    Attributes:
        lr: Learning rate of each experience's adapters and head (official ``init_lr`` = ``later_lr``).
        weight_decay: SGD weight decay (official ``weight_decay``).
        tuned_epochs: ``T_max`` of the per-epoch cosine annealing (official ``init_epochs`` = ``later_epochs``).
        min_lr: Floor of the annealing (official ``min_lr``).
        ffn_num: Adapter bottleneck width (official ``ffn_num``).
        adapter_scale: Adapter output scale (official ``ffn_adapter_scalar``).
        alpha: Total weight of a class's other subspaces in its score (official ``alpha``).
        beta: Weight of the pretrained backbone's subspace (official ``beta``; only with ``use_init_ptm``).
        use_init_ptm: Prepend the pretrained backbone's features (from the shared frozen-feature cache).
        use_reweight: Score with the subspace reweighting (official ``use_reweight``) instead of plain cosine
            on the concatenation.
        recalc_sim: Recompute every synthesised prototype at each boundary (official ``recalc_sim``).
    """

    lr: float = 0.025
    weight_decay: float = 5e-4
    tuned_epochs: int = 20
    min_lr: float = 0.0
    ffn_num: int = 64
    adapter_scale: float = 0.1
    alpha: float = 0.1
    beta: float = 0.0
    use_init_ptm: bool = False
    use_reweight: bool = True
    recalc_sim: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive, min_lr and weight_decay >= 0")
        if self.tuned_epochs < 1 or self.ffn_num < 1:
            raise ValueError("tuned_epochs and ffn_num must be >= 1")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta weigh cosine scores and must be >= 0")


def complement(means: torch.Tensor, real: torch.Tensor, targets: torch.Tensor, new_means: torch.Tensor,
               new_real: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Semantic-guided prototype complement: prototypes of ``targets`` in a subspace they have no data in.

    Each target class ``c`` is compared, in its own subspace (``means``), with every class ``j`` that has
    real prototypes in both that subspace and the new one: ``sim_c = softmax_j cos(p_c, p_j)``, and the
    synthesised prototype is ``sum_j sim_cj new_means_j`` (EASE Eq. 7-8; official ``solve_sim_reset``:
    softmax over the reference classes, temperature 1).

    Args:
        means: (C, d) prototypes in the targets' own subspace.
        real: (C,) which rows of ``means`` come from data.
        targets: (C,) bool, the classes to synthesise.
        new_means: (C, d') prototypes in the new subspace.
        new_real: (C,) which rows of ``new_means`` come from data.

    Returns:
        (n_targets, d') synthesised prototypes, in class order (zeros when no class can serve as reference).
    """
    refs = real & new_real & ~targets
    if not bool(refs.any()):
        return torch.zeros(int(targets.sum()), new_means.shape[1], dtype=new_means.dtype, device=new_means.device)
    sim = F.normalize(means[targets], dim=1) @ F.normalize(means[refs], dim=1).T
    return sim.softmax(dim=1) @ new_means[refs]


@METHODS.register(
    "ease",
    reference="Zhou, Sun, Ye & Zhan, 'Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental "
    "Learning' (EASE), CVPR 2024",
    description="an adapter subspace per experience, prototypes in every subspace, old ones complemented by "
    "class similarity, reweighted cosine",
)
class EASE(Method):
    """Expandable adapter subspaces with a semantic-guided prototype complement."""

    Config: ClassVar[type] = EASEConfig
    caps: ClassVar[Caps] = Caps(memory="none", pretrained_backbone=True)
    conformance_config: ClassVar[dict[str, Any]] = {**TINY_RANDOM_BACKBONE, "lr": 0.1, "ffn_num": 8}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        name = self.name or type(self).__name__
        self.net = Encoder(cfg, info, frozen=False, method=name)
        self.bank = AdapterBank(self.net.backbone, ffn_num=cfg.ffn_num, adapter_scale=cfg.adapter_scale)
        self.ptm = Encoder(cfg, info, frozen=True, method=name) if cfg.use_init_ptm else None
        dev = self.net.device
        self.ptm_protos = PrototypeHead(info.n_classes, self.net.dim, dev) if self.ptm is not None else None
        self.protos: list[PrototypeHead] = []  # per finished subspace: means of real data
        self.synth: list[torch.Tensor] = []  # per finished subspace: complemented prototypes (C, dim)
        self.caches: list[FeatureCache] = []  # per finished subspace: its (now fixed) features, this run only
        self.home = torch.full((info.n_classes,), -1, dtype=torch.long, device=dev)  # a class's own subspace
        self.current = torch.zeros(info.n_classes, dtype=torch.bool, device=dev)
        self.tuner: FirstSessionTuner | None = None
        self.n_train = 0

    # -- subspaces -----------------------------------------------------------------------------------------------
    @property
    def done(self) -> int:
        """Number of finished (frozen) subspaces."""
        return len(self.protos)

    def _set_seed(self, k: int) -> int:
        return self.seed * 1000 + k  # each set and head its own stream, reproducible per run seed

    def _new_tuner(self, k: int, params: list[torch.nn.Parameter]) -> FirstSessionTuner:
        cfg = self.config
        return FirstSessionTuner(self.net.backbone, params, self.net.dim, self.info.n_classes, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, tuned_epochs=cfg.tuned_epochs, min_lr=cfg.min_lr,
                                 seed=self._set_seed(k))  # fmt: skip

    def _finish_subspace(self) -> None:
        dev, n, dim = self.net.device, self.info.n_classes, self.net.dim
        self.caches.append(FeatureCache({"run-local": id(self), "subspace": self.done}, persist=False))
        self.protos.append(PrototypeHead(n, dim, dev))
        self.synth.append(torch.zeros(n, dim, device=dev))

    def subspace_features(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` in finished subspace ``k`` (the backbone with adapter set ``k``), memoised."""
        self.bank.select(k)
        return self.caches[k].lookup(x, self.net.extract).to(x.device)

    def prototypes(self, k: int) -> torch.Tensor:
        """(C, dim) prototypes in subspace ``k``: class means where the class had data there, else complemented."""
        real = self.protos[k].seen.unsqueeze(1)
        return torch.where(real, self.protos[k].means(), self.synth[k])

    def _complement(self) -> None:
        """Synthesise old classes' prototypes in subspaces they have no data in (official ``replace_fc``)."""
        seen = self.home >= 0
        for d in range(self.done):
            if not self.config.recalc_sim and d != self.done - 1:
                continue  # solve_similarity: only the newest subspace, computed once
            real_d = self.protos[d].seen
            for i in range(d):  # classes of an earlier subspace lack data in d
                targets = seen & ~real_d & (self.home == i)
                if not bool(targets.any()):
                    continue
                self.synth[d][targets] = complement(self.prototypes(i), self.protos[i].seen, targets,
                                                    self.prototypes(d), real_d)  # fmt: skip

    # -- protocol ------------------------------------------------------------------------------------------------
    def begin_experience(self, exp: Experience) -> None:
        self.current.zero_()
        self.current[list(exp.classes)] = True
        self.n_train = len(exp.train) if exp.train is not None else 0
        if len(self.bank) == self.done:  # a new subspace (a resumed run's replay finds it already there)
            self.tuner = self._new_tuner(self.done, self.bank.add(self._set_seed(self.done)))

    def observe(self, batch: Batch) -> dict[str, Any]:
        assert self.tuner is not None, "observe before begin_experience"
        self.bank.select(self.done)
        return {"loss": self.tuner.step(self.net(batch.x), batch.y, self.current, self.n_train)}

    def end_experience(self, exp: Experience) -> None:
        self.bank.freeze()
        self.tuner = None
        self._finish_subspace()
        if exp.train is not None and len(exp.train):
            x, y = exp.train.batch(slice(None), device=self.net.device)
            # official replace_fc: the experience's training data, in test mode, through every subspace
            for k in range(self.done):
                self.protos[k].update(self.subspace_features(k, x), y)
            if self.ptm is not None and self.ptm_protos is not None:
                self.ptm_protos.update(self.ptm.features(x), y)
            classes = torch.unique(y)
            self.home[classes] = torch.where(self.home[classes] < 0, self.done - 1, self.home[classes])
        self._complement()
        if self.ptm is not None:
            self.ptm.flush()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        n_cls = self.info.n_classes
        if self.done == 0:  # the first experience is under way: its training head (no prototype exists yet)
            if self.tuner is None:
                return torch.zeros(len(x), n_cls, device=x.device)
            self.bank.select(0)
            with torch.no_grad():
                return self.tuner.head(self.net.extract(x))
        feats = [self.subspace_features(k, x) for k in range(self.done)]
        protos = [self.prototypes(k).to(x.device) for k in range(self.done)]
        if self.ptm is not None and self.ptm_protos is not None:
            ptm_f, ptm_p = self.ptm.features(x), self.ptm_protos.means().to(x.device)
        if not self.config.use_reweight:
            if self.ptm is not None:
                feats, protos = [ptm_f, *feats], [ptm_p, *protos]
            logits = F.normalize(torch.cat(feats, 1), dim=1) @ F.normalize(torch.cat(protos, 1), dim=1).T
        else:
            t = self.done - 1
            home = self.home.to(x.device)
            logits = torch.zeros(len(x), n_cls, device=x.device)
            for k in range(self.done):
                own = (home == k).to(logits.dtype)
                weight = own + (1 - own) * (self.config.alpha / t if t else 0.0)
                logits += weight * (F.normalize(feats[k], dim=1) @ F.normalize(protos[k], dim=1).T)
            if self.ptm is not None:
                logits += self.config.beta * (F.normalize(ptm_f, dim=1) @ F.normalize(ptm_p, dim=1).T)
        return rank_unseen_last(logits, (self.home >= 0).to(x.device))

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"sets": len(self.bank), "petl": self.net.backbone.petl.state_dict(),
                "tuner": None if self.tuner is None else self.tuner.state_dict(),
                "protos": [h.state_dict() for h in self.protos], "synth": [s.clone() for s in self.synth],
                "home": self.home.clone(),
                "ptm_protos": None if self.ptm_protos is None else self.ptm_protos.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        while len(self.bank) < state["sets"]:
            self.bank.add(self._set_seed(len(self.bank)))
        self.net.backbone.petl.load_state_dict(state["petl"])
        self.bank.freeze()
        self.protos, self.synth, self.caches = [], [], []
        for proto, synth in zip(state["protos"], state["synth"], strict=True):
            self._finish_subspace()
            self.protos[-1].load_state_dict(proto)
            self.synth[-1].copy_(synth)
        self.home.copy_(state["home"])
        if self.ptm_protos is not None:
            self.ptm_protos.load_state_dict(state["ptm_protos"])
        self.tuner = None
        if state["tuner"] is not None:  # saved inside an experience: its set trains on
            params = self.bank.parameters(self.done)
            for p in params:
                p.requires_grad_(True)
            self.tuner = self._new_tuner(self.done, params)
            self.tuner.load_state_dict(state["tuner"])

    def record_extras(self) -> dict[str, Any]:
        if not hasattr(self, "_tag"):
            self._tag = self.config.tag()
        extras: dict[str, Any] = {"backbone": self._tag}
        if hasattr(self, "caches"):  # records are also written before setup (a run's first record)
            caches = [*self.caches, *([self.ptm.cache] if self.ptm is not None and self.ptm.cache else [])]
            hits, misses = sum(c.hits for c in caches), sum(c.misses for c in caches)
            extras["feature_cache"] = {"hits": hits, "misses": misses,
                                       "hit_rate": round(hits / max(hits + misses, 1), 4)}  # fmt: skip
            extras["subspaces"] = self.done
        return extras
