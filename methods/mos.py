"""MOS: model surgery on a pretrained backbone — merged per-task adapters, aligned head, self-refined retrieval.

Every experience ``t`` adds a set of lightweight adapters to the frozen backbone (one
:class:`~cl_bench.components.petl.Bottleneck` per block, through :class:`~cl_bench.components.petl.AdapterBank`),
initialised from set ``t - 1`` (the official code keeps training the same ``cur_adapter`` and snapshots it
at each task's end), and trains it with a linear head over all classes (logits of the other experiences'
classes masked out) by cross-entropy plus ``reg`` times the contrastive term of
:func:`~cl_bench.components.alignment.contrastive_loss` (batch features and the stored means of the earlier
classes, each classified as itself at temperature 0.8). Three parts:

1. **Adapter merging** (parameter-level forgetting): after every optimiser step of experience ``t >= 1``,
   ``theta_t <- (1 - m) theta_t + m * mean(theta_0 .. theta_{t-1})`` over the adapter weights and biases,
   ``m = adapter_momentum``, applied ``merges_per_step`` times (13, as the official training does; see
   below); the earlier sets are the frozen snapshots. At the experience's end the set is frozen as it is.
2. **Classifier alignment**: at each boundary the experience's training data passes, unaugmented, through
   its own set; per class the feature mean and covariance (+1e-4 I) are stored
   (:class:`~cl_bench.components.gaussians.ClassMixture`); from the second experience on the head alone is
   re-trained on features sampled from the Gaussians of every seen class
   (:func:`~cl_bench.components.alignment.align`).
3. **Training-free self-refined retrieval** (retrieval-level forgetting), in ``predict``: the "original
   model" — set 0 with a cosine classifier on the class means of set-0 features — names a class, hence an
   experience ``k``; the head scores the features of set ``k``, its class names an experience ``k'``, and
   this repeats until ``k' = k`` or ``max_refine`` passes. With ``ensemble`` the prediction is
   ``softmax(head logits) + softmax((t + 1) * original cosine logits)``, ``t + 1`` the number of sets.
   Between boundaries (per-iteration evaluation) the set being trained is used live, not memoised, and
   its classes can win only through the head (they have no prototype yet), as in the official code,
   whose ``cls2task`` already holds them; before the first experience starts ``predict`` gives zeros.

**Where the merge happens (a deliberate difference).** The official ``reweight_adapter`` (``backbone/vit_mos.py``
l.328-346) assigns the merged weights in place, and ``forward_features`` (l.348-379) calls it inside the loop
over the blocks, so every forward pass merges again, once per block (12 times on ViT-B), in training and at
test time alike — on the snapshot being evaluated (``adapter_list[k]``, l.373-377) and on ``cur_adapter``
while the class statistics are computed (``_compute_mean``, ``train=True``). Its predictions therefore depend
on how many forward passes have run: over a test set each set ``k >= 1`` is pulled geometrically (``0.9 ** 12``
per batch) towards the mean of the earlier snapshots. cl_bench's ``predict`` must not change state, so here
the merges happen only in training steps, as training sees them: a training step of the official code merges
13 times (12 in its forward pass, one in ``adapter_merge`` after the optimiser step, ``_init_train``
l.174-175), so ``merges_per_step = 13`` merges follow each optimiser step — as one merge of momentum
``1 - (1 - m) ** 13`` (0.75 at ``m = 0.1``), the same thing since the target mean is fixed during the
experience. None happens in a forward pass: the class statistics and every prediction use the set as frozen
at its experience's end, and evaluation cannot move it. Differences left: the official forward of block
``l`` sees that step's first ``l + 1`` merges rather than the previous step's 13, and its evaluations keep
collapsing the later sets towards the earlier mean, which ours never do. ``merges_per_step = 1`` is the
reading "one merge per step" (``adapter_merge`` alone); measured on Split-MNIST (docs/pretrained.md) it ends
at 0.828 final accuracy against 0.903 with the default 13 (seed 0).

Defaults are the official ``exps/mos_cifar.json`` (CIFAR-100, B0 Inc5): ``init_lr 0.03`` with the head at
0.1x (``models/mos.py`` ``get_optimizer`` l.121-122), SGD momentum 0.9 (l.126-129), ``weight_decay 0.0005``,
cosine annealing over ``tuned_epoch 20`` to ``min_lr 0`` (l.144), ``ffn_num 16``, ``adapter_momentum 0.1``,
``reg 0.1``, orthogonal-loss temperature 0.8 (l.346), ``crct_epochs 30``, ``ca_lr 0.005`` with SGD momentum 0.9
and the parameter group's ``weight_decay`` (l.252-254), ``batch_size * 5`` = 240 samples per class and batch,
as many batches as seen classes (l.261, l.304), ``ca_storage_efficient_method "covariance"`` (+1e-4 I, l.222),
``MAX_ITER = 4`` refinement passes (l.379), ``ensemble true`` (l.398-401); the adapter's scale 0.1, parallel
placement and zero-initialised up-projection are ``utils/inc_net.py`` (``ffn_adapter_scalar "0.1"``,
``ffn_option "parallel"``, ``ffn_adapter_init_option "lora"``). ``exps/mos_inr.json`` (ImageNet-R) uses lr 0.05,
weight decay 0.005, batch 16, 10 epochs. As in EASE, the epochs are the protocol's (``--protocol.epochs 20``
and batch 48 reproduce the official ones) and the schedule follows ``T_max = tuned_epochs``; the backbone's
BatchNorm statistics stay pretrained; the official adapter dropout 0.1 (``vit_mos.py`` l.269) is not used
(cl_bench's Bottleneck has none); the head is initialised as a timm ViT head (the official one comes from
``timm.create_model(..., num_classes=...)``, ``backbone/vit_mos.py`` l.420; ``init_weights_vit_timm`` of the
installed timm 1.0.31: truncated normal, std 0.02, zero bias).

References:
    Sun, Zhou, Zhao, Gan, Zhan & Ye, "MOS: Model Surgery for Pre-Trained Model-Based Class-Incremental
    Learning", AAAI 2025 (arXiv:2412.09441); official code sun-hailong/AAAI25-MOS (commit 8d5e07c)
    ``models/mos.py`` (``_init_train``, ``_compute_mean``, ``classifer_align``, ``orth_loss``, ``_eval_cnn``),
    ``backbone/vit_mos.py`` (``adapter_merge``, ``reweight_adapter``), ``utils/inc_net.py`` (``MOSNet.forward_orig``)
    and ``exps/mos_cifar.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components import PrototypeHead
from cl_bench.components.alignment import align, contrastive_loss
from cl_bench.components.feature_cache import FeatureCache
from cl_bench.components.gaussians import ClassMixture, MixtureMode
from cl_bench.components.petl import AdapterBank
from cl_bench.components.prototypes import rank_unseen_last
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo
from cl_bench.families.pretrained import TINY_RANDOM_BACKBONE, Encoder, PretrainedConfig


@dataclass(frozen=True)
class MOSConfig(PretrainedConfig):
    """MOS hyper-parameters (defaults: official ``exps/mos_cifar.json``) on a pretrained backbone.

    Attributes:
        lr: Learning rate of the adapters (official ``init_lr``).
        head_lr_scale: The head's lr relative to the adapters' (``models/mos.py`` l.122: ``init_lr * 0.1``).
        weight_decay: SGD weight decay of training and alignment (official ``weight_decay``).
        tuned_epochs: ``T_max`` of the per-epoch cosine annealing (official ``tuned_epoch``).
        min_lr: Floor of the annealing (official ``min_lr``).
        ffn_num: Adapter bottleneck width (official ``ffn_num``).
        adapter_scale: Adapter output scale (``utils/inc_net.py`` ``ffn_adapter_scalar``).
        adapter_momentum: ``m`` of the merge with the mean of the earlier sets (official ``adapter_momentum``;
            0 = no merging).
        merges_per_step: Merges after each optimiser step: the official training step merges once per ViT-B
            block inside ``forward_features`` (12) and once in ``adapter_merge`` (see the module docstring);
            13 whatever the backbone, since the count is the official ViT-B's.
        reg: Weight of the contrastive term (official ``reg``).
        reg_temperature: Its temperature (``models/mos.py`` l.346).
        ca_epochs: Alignment epochs (official ``crct_epochs``).
        ca_lr: Alignment SGD lr, cosine-annealed over ``ca_epochs`` (official ``ca_lr``).
        ca_samples: Features drawn per class and epoch, also the alignment batch (``batch_size * 5``, l.261).
        ca_storage: Class statistics (official ``ca_storage_efficient_method``).
        n_centroids: k-means clusters per class with ``ca_storage="multi-centroid"`` (official ``n_centroids``).
        max_refine: Passes of the self-refined retrieval (``MAX_ITER``, l.379); 1 = the original model's
            choice of set, unrefined.
        ensemble: Add the original model's softmax (temperature ``1 / (t + 1)``) to the head's (official
            ``ensemble``).
    """

    lr: float = 0.03
    head_lr_scale: float = 0.1
    weight_decay: float = 5e-4
    tuned_epochs: int = 20
    min_lr: float = 0.0
    ffn_num: int = 16
    adapter_scale: float = 0.1
    adapter_momentum: float = 0.1
    merges_per_step: int = 13
    reg: float = 0.1
    reg_temperature: float = 0.8
    ca_epochs: int = 30
    ca_lr: float = 0.005
    ca_samples: int = 240
    ca_storage: MixtureMode = "covariance"
    n_centroids: int = 10
    max_refine: int = 4
    ensemble: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.ca_lr <= 0 or self.head_lr_scale < 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ValueError("lr and ca_lr must be positive; head_lr_scale, min_lr and weight_decay >= 0")
        if min(self.tuned_epochs, self.ffn_num, self.ca_samples, self.n_centroids, self.max_refine,
               self.merges_per_step) < 1:  # fmt: skip
            raise ValueError("tuned_epochs, ffn_num, ca_samples, n_centroids, max_refine and merges_per_step must "
                             "be >= 1")  # fmt: skip
        if not 0 <= self.adapter_momentum <= 1 or self.reg < 0 or self.reg_temperature <= 0 or self.ca_epochs < 0:
            raise ValueError("adapter_momentum must be in [0, 1], reg and ca_epochs >= 0, reg_temperature > 0")
        if self.ca_storage not in ("covariance", "variance", "multi-centroid"):
            raise ValueError(f"ca_storage must be covariance, variance or multi-centroid, got {self.ca_storage!r}")


def refine(logits_of: Any, start: torch.Tensor, task_of: torch.Tensor, max_refine: int) -> torch.Tensor:
    """Self-refined adapter retrieval (official ``_eval_cnn`` l.376-395), vectorised over the rows.

    Row ``i`` starts at set ``start[i]``; each pass scores it with that set (``logits_of(sets)``, rows in
    order) and moves to the experience of the best class, until the set no longer changes or ``max_refine``
    passes have run. Returns the logits of each row's last pass.

    Args:
        logits_of: ``sets (N,) -> logits (N, C)`` with the classes that cannot be predicted at ``-inf``.
        start: (N,) the first set of every row.
        task_of: (C,) the experience of each class (-1 = none yet).
        max_refine: Largest number of passes.
    """
    sets, active, final = start.clone(), torch.ones_like(start, dtype=torch.bool), None
    for step in range(1, max_refine + 1):
        logits = logits_of(sets)
        final = logits if final is None else torch.where(active.unsqueeze(1), logits, final)
        nxt = task_of[logits.argmax(1)]
        active = active & (nxt != sets) & (step < max_refine)
        if not bool(active.any()):
            break
        sets = torch.where(active, nxt, sets)
    assert final is not None
    return final


@METHODS.register(
    "mos",
    reference="Sun et al., 'MOS: Model Surgery for Pre-Trained Model-Based Class-Incremental Learning', AAAI 2025",
    description="an adapter set per experience merged towards the earlier ones, Gaussian classifier alignment, "
    "self-refined set retrieval ensembled with the first set's prototypes",
)
class MOS(Method):
    """Model surgery: momentum-merged per-experience adapters, aligned head, self-refined retrieval."""

    Config: ClassVar[type] = MOSConfig
    caps: ClassVar[Caps] = Caps(memory="none", pretrained_backbone=True)
    conformance_config: ClassVar[dict[str, Any]] = {**TINY_RANDOM_BACKBONE, "lr": 0.3, "ffn_num": 8, "ca_epochs": 3,
                                                    "ca_samples": 16}  # fmt: skip

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.net = Encoder(cfg, info, frozen=False, method=self.name or type(self).__name__)
        self.bank = AdapterBank(self.net.backbone, ffn_num=cfg.ffn_num, adapter_scale=cfg.adapter_scale)
        dev, n, dim = self.net.device, info.n_classes, self.net.dim
        self.head = nn.Linear(dim, n).to(dev)
        with torch.no_grad():  # timm's ViT head init (init_weights_vit_timm), seeded per run
            nn.init.trunc_normal_(self.head.weight, std=0.02, generator=torch.Generator().manual_seed(seed))
            self.head.bias.zero_()
        self.protos = PrototypeHead(n, dim, dev)  # the original model: class means of set-0 features
        self.stats = ClassMixture(n, dim, cfg.ca_storage, cfg.n_centroids).to(dev)
        self.task_of = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.current = torch.zeros(n, dtype=torch.bool, device=dev)
        self.caches: list[FeatureCache] = []  # per finished set: its (now fixed) features, this run only
        self.opt: torch.optim.SGD | None = None
        self.prev_mean: list[torch.Tensor] = []
        self.seen_rows = self.n_train = 0

    @property
    def done(self) -> int:
        """Number of finished (frozen) adapter sets."""
        return len(self.caches)

    # -- training ------------------------------------------------------------------------------------------------
    def _start_set(self, resumed: dict[str, Any] | None = None) -> None:
        """Optimiser and merge target of set ``done`` (built in ``begin_experience`` or on resume)."""
        cfg, k = self.config, self.done
        params = self.bank.parameters(k)
        for p in params:
            p.requires_grad_(True)
        self.opt = torch.optim.SGD([{"params": params, "lr": cfg.lr},
                                    {"params": list(self.head.parameters()), "lr": cfg.lr * cfg.head_lr_scale}],
                                   lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)  # fmt: skip
        with torch.no_grad():  # mean of the earlier (frozen) snapshots, fixed for the whole experience
            earlier = [self.bank.parameters(j) for j in range(k)]
            self.prev_mean = [torch.stack(ps).mean(0) for ps in zip(*earlier, strict=True)] if k else []
        if resumed is not None:
            self.opt.load_state_dict(resumed["opt"])
            self.seen_rows = resumed["seen"]

    def begin_experience(self, exp: Experience) -> None:
        self.current.zero_()
        self.current[list(exp.classes)] = True
        self.task_of[self.current & (self.task_of < 0)] = exp.index
        self.n_train = len(exp.train) if exp.train is not None else 0
        if len(self.bank) > self.done:  # a resumed run's replay finds the set already there
            return
        self.bank.add(self.seed * 1000 + self.done)
        if self.done:  # the official cur_adapter trains on: the new set starts as the previous one
            with torch.no_grad():
                for p, q in zip(self.bank.parameters(self.done), self.bank.parameters(self.done - 1), strict=True):
                    p.copy_(q)
        self.seen_rows = 0
        self._start_set()

    def observe(self, batch: Batch) -> dict[str, Any]:
        assert self.opt is not None, "observe before begin_experience"
        cfg = self.config
        epoch = self.seen_rows // max(self.n_train, 1)  # official CosineAnnealingLR stepped per epoch
        factor = (cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * epoch / cfg.tuned_epochs)) / 2) / cfg.lr
        for group, base in zip(self.opt.param_groups, (cfg.lr, cfg.lr * cfg.head_lr_scale), strict=True):
            group["lr"] = base * factor
        self.bank.select(self.done)
        f = self.net(batch.x)
        logits = self.head(f).masked_fill(~self.current, torch.finfo(f.dtype).min)
        loss = F.cross_entropy(logits, batch.y)
        if cfg.reg > 0:
            loss = loss + cfg.reg * contrastive_loss(f, self.stats.prototypes(), cfg.reg_temperature)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.seen_rows += len(batch.y)
        if self.prev_mean and cfg.adapter_momentum > 0:  # k merges towards a fixed mean = one of 1 - (1 - m)^k
            m = 1 - (1 - cfg.adapter_momentum) ** cfg.merges_per_step
            with torch.no_grad():
                for p, mean in zip(self.bank.parameters(self.done), self.prev_mean, strict=True):
                    p.mul_(1 - m).add_(mean, alpha=m)
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        self.bank.freeze()
        self.opt, self.prev_mean = None, []
        t = self.done
        self.caches.append(FeatureCache({"run-local": id(self), "set": t}, persist=False))
        if exp.train is None or len(exp.train) == 0:
            return
        x, y = exp.train.batch(slice(None), device=self.net.device)
        # Seeded per (run seed, experience): a run resumed at this boundary draws the same numbers.
        gen = torch.Generator().manual_seed(self.seed * 7919 + t)
        self.stats.fit(self.set_features(t, x), y, seed=self.seed * 7919 + t)  # official _compute_mean
        self.protos.update(self.set_features(0, x), y)  # official replace_fc: forward_orig = set 0
        seen = self.protos.seen
        if t > 0 and self.config.ca_epochs > 0:
            cfg = self.config
            align(self.head, list(self.head.parameters()), self.stats, seen, int(seen.sum()), cfg.ca_lr,
                  cfg.ca_epochs, cfg.ca_samples, gen, weight_decay=cfg.weight_decay)  # fmt: skip

    # -- prediction ----------------------------------------------------------------------------------------------
    def set_features(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` with adapter set ``k`` (memoised once the set is frozen; live while it trains)."""
        self.bank.select(k)
        if k < self.done:
            return self.caches[k].lookup(x, self.net.extract).to(x.device)
        return self.net.extract(x)

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        n_sets, n_cls = len(self.bank), self.info.n_classes
        if n_sets == 0:
            return torch.zeros(len(x), n_cls, device=x.device)
        known = (self.task_of >= 0).to(x.device)  # classes of the experiences begun (official cls2task)
        task_of = self.task_of.to(x.device).clamp(min=0)
        feats = torch.stack([self.set_features(k, x) for k in range(n_sets)], 1)  # (N, sets, dim)
        rows = torch.arange(len(x), device=x.device)
        with torch.no_grad():

            def head_logits(sets: torch.Tensor) -> torch.Tensor:
                return self.head(feats[rows, sets]).masked_fill(~known, float("-inf"))

            seen = self.protos.seen.to(x.device)
            orig = self.protos.logits(feats[:, 0]) if bool(seen.any()) else None
            start = task_of[orig.argmax(1)] if orig is not None else torch.zeros_like(rows)
            out = refine(head_logits, start, task_of, self.config.max_refine).softmax(1)
            if self.config.ensemble and orig is not None:
                out = out + (orig * n_sets).masked_fill(~seen, float("-inf")).softmax(1)
        return rank_unseen_last(out, known)

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        train = None if self.opt is None else {"opt": self.opt.state_dict(), "seen": self.seen_rows}
        return {"sets": len(self.bank), "done": self.done, "petl": self.net.backbone.petl.state_dict(),
                "head": self.head.state_dict(), "protos": self.protos.state_dict(),
                "stats": self.stats.state_dict(), "task_of": self.task_of.clone(), "train": train}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        while len(self.bank) < state["sets"]:
            self.bank.add(self.seed * 1000 + len(self.bank))
        self.net.backbone.petl.load_state_dict(state["petl"])
        self.bank.freeze()
        self.head.load_state_dict(state["head"])
        self.protos.load_state_dict(state["protos"])
        self.stats.load_state_dict(state["stats"])
        self.task_of.copy_(state["task_of"])
        self.caches = [FeatureCache({"run-local": id(self), "set": k}, persist=False) for k in range(state["done"])]
        self.opt, self.prev_mean = None, []
        if state["train"] is not None:  # saved inside an experience: its set trains on
            self._start_set(state["train"])

    def record_extras(self) -> dict[str, Any]:
        if not hasattr(self, "_tag"):
            self._tag = self.config.tag()
        extras: dict[str, Any] = {"backbone": self._tag}
        if hasattr(self, "caches"):  # records are also written before setup (a run's first record)
            hits, misses = sum(c.hits for c in self.caches), sum(c.misses for c in self.caches)
            extras["feature_cache"] = {"hits": hits, "misses": misses,
                                       "hit_rate": round(hits / max(hits + misses, 1), 4)}  # fmt: skip
            extras["adapter_sets"] = self.done
        return extras
