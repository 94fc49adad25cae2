"""LUCIR: a cosine-normalised classifier, the less-forget constraint and inter-class separation.

The network's linear head is replaced by a cosine classifier with a learnable scale sigma
(:class:`~cl_bench.components.cosine_head.CosineHead`): logits ``sigma * cos(f, w_c)``. The first
experience trains it with cross-entropy. On every later experience (trained on its data together with a
herding exemplar memory of fixed total size, ``buffer_size // n_seen`` per class, as iCaRL):

* the new classes' weights are *imprinted* before training: the normalised mean of the normalised
  features of each new class, times the old weights' mean norm;
* the old classes' weights are frozen (the official code's learning rate 0 for ``fc1``), sigma and the
  feature extractor train;
* the loss is ``CE + lambda * L_dis + L_mr``. ``L_dis = mean(1 - cos(f(x), f_old(x)))`` is the
  less-forget constraint on the embedding (every example of the batch), with the adaptive weight
  ``lambda = lambda_base * sqrt(n_old / n_new)``. ``L_mr`` is the margin ranking loss on the
  batch's old-class examples: their ground-truth cosine must exceed each of the top-K new-class
  cosines by ``margin``, ``mean(max(0, margin - cos_y + cos_k))`` over those examples and their K
  hardest new classes.

With ``balanced_finetune=True``, after each experience past the first the classifier weights (old and
new, not sigma) are fine-tuned on the class-balanced exemplar memory with the feature extractor
frozen (BatchNorm statistics too), on ``CE + L_mr`` (the constraint's gradient reaches no classifier
weight once the features are frozen). Prediction is the cosine classifier over the seen classes
(``classifier="cnn"``) or the nearest mean of exemplars (``"nme"``, as iCaRL).

Deviation: the official ResNet-32 drops the last block's ReLU so embeddings can be negative; the
registry's networks keep theirs (a network change would change every other method's records).

References:
    Hou, Pan, Loy, Wang & Lin. "Learning a unified classifier incrementally via rebalancing". CVPR 2019
        (cosine normalisation and imprinting; the less-forget constraint and its adaptive weight;
        inter-class separation by margin ranking; class-balanced finetuning).
    Official code github.com/hshustc/CVPR19_Incremental_Learning (commit e5a90ae): ``cifar100-class-incremental/
        class_incremental_cosine_cifar100.py`` (``--lamda 5`` l. 73, ``--dist 0.5`` l. 81, ``--K 2`` l. 83,
        ``--lw_mr 1`` l. 85; weight decay 5e-4 l. 101; lambda = lamda * sqrt(n_old / n_new) l. 191, 207-211;
        imprinting l. 262-292; old weights at lr 0 l. 325-331; 20 exemplars per class, ``--nb_protos``
        l. 44, with the run.sh flags ``--less_forget --lamda 5 --adapt_lamda --mr_loss --dist 0.5 --K 2``),
        ``utils_incremental/incremental_train_and_eval_MR_LF.py`` (``CosineEmbeddingLoss`` on the
        classifier inputs l. 93-94; margin ranking on the scores before scaling, old-class examples,
        top-K new classes l. 98-123), ``imagenet-class-incremental/cbf_class_incremental_cosine_imagenet.py``
        (``--ft_epochs 20``, ``--ft_base_lr 0.01``, ``--ft_lr_strat 10``, ``--ft_flag 2`` l. 96-105;
        the flag-2 finetuning of both weight groups with the extractor fixed, l. 642-659).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import HerdingMemory, embed, frozen_copy, require_per_class_room
from cl_bench.components.cosine_head import CosineHead, embed_dim
from cl_bench.components.prototypes import rank_unseen_last
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo, TensorData
from cl_bench.families.schedules import LRSchedule
from cl_bench.families.supervised import SupervisedMethod, TrainConfig, build_optimizer


@dataclass(frozen=True)
class LUCIRConfig(TrainConfig):
    """LUCIR hyper-parameters (optimiser, epochs and batch size stay the run's, as for iCaRL).

    Attributes:
        buffer_size: Total exemplars over all classes (2000: the official 20 per class, ``--nb_protos 20``,
            on CIFAR-100), split evenly over the classes seen so far.
        weight_decay: L2 weight decay (5e-4: official ``custom_weight_decay``).
        lambda_base: Base weight of the less-forget constraint (5: official ``--lamda``).
        adaptive_lambda: Scale it by ``sqrt(n_old / n_new)`` (official ``--adapt_lamda``, used in run.sh).
        margin: Margin of the ranking loss (0.5: official ``--dist``).
        top_k: Hard new classes per old-class example (2: official ``--K``).
        mr_weight: Weight of the ranking loss (1: official ``--lw_mr``).
        imprint: Imprint the new classes' weights (official ``--imprint_weights``).
        classifier: "cnn" (the cosine classifier) or "nme" (nearest mean of exemplars).
        balanced_finetune: Class-balanced finetuning of the classifier after each experience (off: the
            paper's CIFAR-100 results are without it).
        finetune_epochs: Its epochs (20: official ``--ft_epochs``).
        finetune_lr: Its learning rate (0.01: official ``--ft_base_lr``), divided by 10 after
            ``finetune_milestone`` epochs (10: ``--ft_lr_strat``).
        finetune_batch_size: Its mini-batch (128: official ``train_batch_size``).
    """

    buffer_size: int = 2000
    weight_decay: float = 5e-4
    lambda_base: float = 5.0
    adaptive_lambda: bool = True
    margin: float = 0.5
    top_k: int = 2
    mr_weight: float = 1.0
    imprint: bool = True
    classifier: Literal["cnn", "nme"] = "cnn"
    balanced_finetune: bool = False
    finetune_epochs: int = 20
    finetune_lr: float = 0.01
    finetune_milestone: int = 10
    finetune_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.lambda_base < 0 or self.margin < 0 or self.mr_weight < 0:
            raise ValueError("buffer_size, lambda_base, margin and mr_weight must be >= 0")
        if self.top_k < 1 or self.finetune_epochs < 0 or self.finetune_lr <= 0 or self.finetune_batch_size < 1:
            raise ValueError("need top_k >= 1, finetune_epochs >= 0, finetune_lr > 0, finetune_batch_size >= 1")
        if self.classifier not in ("cnn", "nme"):
            raise ValueError(f"classifier must be 'cnn' or 'nme', got {self.classifier!r}")


def less_forget_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(f, f_old))`` over the batch (``nn.CosineEmbeddingLoss`` with target 1)."""
    return (1 - F.cosine_similarity(features, old_features.detach(), dim=1)).mean()


def margin_ranking_loss(cos: torch.Tensor, y: torch.Tensor, old: torch.Tensor, new: torch.Tensor, k: int,
                        margin: float) -> torch.Tensor:  # fmt: skip
    """Margin ranking: ``mean(max(0, margin - cos_y + cos_j))`` over old-class examples and their top-``k`` new classes.

    Args:
        cos: Cosine scores before the scale, ``(N, n_classes)``.
        y: Labels.
        old: Boolean mask of the old classes (the "hard" examples are those labelled with one).
        new: Boolean mask of the classes of the current experience.
        k: Hard new classes per example (at most the number of new classes).
        margin: The margin.

    Returns:
        The loss (0 when the batch holds no old-class example).
    """
    hard = old[y]
    if not hard.any() or not new.any():
        return cos.sum() * 0
    gt = cos[hard].gather(1, y[hard, None])
    top = cos[hard][:, new].topk(min(k, int(new.sum())), dim=1).values
    return F.relu(margin - gt + top).mean()


def adaptive_lambda(base: float, n_old: int, n_new: int) -> float:
    """``base * sqrt(n_old / n_new)`` (the less-forget constraint's adaptive weight)."""
    return base * math.sqrt(n_old / n_new)


@METHODS.register(
    "lucir",
    reference="Hou et al., 'Learning a unified classifier incrementally via rebalancing' (CVPR 2019)",
)
class LUCIR(SupervisedMethod):
    """Cosine classifier, imprinted new weights, less-forget constraint, margin ranking, herding exemplars."""

    Config: ClassVar[type] = LUCIRConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        require_per_class_room("lucir", self.config.buffer_size, info.n_classes)
        super().setup(info, seed)
        dim = embed_dim(self.net, info.input_shape, self.device)
        self.net.head = CosineHead(dim, info.n_classes).to(self.device)
        self.opt = build_optimizer(self.config, self.net)
        self.lr_schedule = LRSchedule(self.opt, self.config.schedule())
        self.memory = HerdingMemory(self.config.buffer_size)
        self.teacher: torch.nn.Module | None = None
        self.old_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.lam = 0.0
        self.transform: Any = None
        self._means: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def head(self) -> CosineHead:
        """The network's cosine classifier."""
        return self.net.head

    # -- training --------------------------------------------------------------------------------------------
    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        first = not self.seen_classes.any()
        if not first:
            self.teacher = frozen_copy(self.net)
        self.old_classes = self.seen_classes.clone()
        self.seen_classes[list(exp.classes)] = True
        new = self.seen_classes & ~self.old_classes
        n_old, n_new = int(self.old_classes.sum()), int(new.sum())
        lam = self.config.lambda_base
        self.lam = adaptive_lambda(lam, n_old, n_new) if self.config.adaptive_lambda and n_old and n_new else lam
        self.head.frozen.copy_(self.old_classes)  # the first experience trains every row
        if not first and self.config.imprint and exp.train is not None and len(exp.train) and n_new:
            self.imprint(exp.train, new)

    @torch.no_grad()
    def imprint(self, data: TensorData, new: torch.Tensor) -> None:
        """Set each new class's weight to its normalised mean normalised feature times the old rows' mean norm."""
        norm = self.head.weight[self.head.rows(self.old_classes)].norm(dim=1).mean()
        f = F.normalize(embed(self.net, data, self.device).flatten(1), dim=1)
        y = data.y.to(self.device)
        for c in torch.nonzero(new).flatten().tolist():
            if (y == c).any():
                self.head.imprint_(c, F.normalize(f[y == c].mean(0), dim=0)[None] * norm)

    def train_data(self, exp: Experience) -> TensorData | None:
        if exp.train is None:
            return None
        self.transform = exp.train.transform
        return self.memory.extend(exp.train, exp.task_id)

    def _seen_only(self, out: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        if task_ids is not None:
            return self.mask_logits(out, task_ids)
        return out.masked_fill(~self.seen_classes, torch.finfo(out.dtype).min)

    def loss(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor | None,
             with_distillation: bool = True) -> torch.Tensor:  # fmt: skip
        """``CE + lambda L_dis + w_mr L_mr`` on one batch (CE alone in the first experience)."""
        f = self.net.features(x).flatten(1)
        cos = self.head.similarities(f)
        loss = F.cross_entropy(self._seen_only(self.head.scale * cos, task_ids), y)
        if self.teacher is None:
            return loss
        if with_distillation:
            with torch.no_grad():
                old_f = self.teacher.features(x).flatten(1)
            loss = loss + self.lam * less_forget_loss(f, old_f)
        new = self.seen_classes & ~self.old_classes
        mr = margin_ranking_loss(cos, y, self.old_classes, new, self.config.top_k, self.config.margin)
        return loss + self.config.mr_weight * mr

    def observe(self, batch: Batch) -> dict[str, Any]:
        self._means = None
        self.net.train()
        loss = self.loss(batch.x, batch.y, batch.task_ids)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.head.keep_frozen()
        self.opt.step()
        self.head.restore_frozen()
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if exp.train is None or len(exp.train) == 0:
            return
        data = exp.train
        t = data.t if data.t is not None else torch.full_like(data.y, -1 if exp.task_id is None else exp.task_id)
        self.memory.update(data.x, data.y, t, embed(self.net, data, self.device))
        self._means = None
        if self.config.balanced_finetune and self.teacher is not None and self.config.finetune_epochs:
            self.balanced_finetune(exp.index)

    def balanced_finetune(self, exp_index: int) -> None:
        """Fine-tune the classifier weights on the exemplar memory, the feature extractor (and BN) frozen."""
        mem = self.memory.tensors()
        if mem is None:
            return
        cfg = self.config
        mx, my, mt = (v.to(self.device) for v in mem)
        task_ids = None if bool((mt < 0).any()) else mt
        opt = torch.optim.SGD([self.head.weight], lr=cfg.finetune_lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)  # fmt: skip
        gen = torch.Generator().manual_seed(self.seed * 1000 + exp_index + 1)
        self.head.frozen.zero_()
        self.net.eval()  # BatchNorm statistics stay those of the main training
        for epoch in range(cfg.finetune_epochs):
            for g in opt.param_groups:
                g["lr"] = cfg.finetune_lr * (0.1 if epoch >= cfg.finetune_milestone else 1.0)
            perm = torch.randperm(len(my), generator=gen).to(self.device)
            for i in range(0, len(my), cfg.finetune_batch_size):
                idx = perm[i : i + cfg.finetune_batch_size]
                xb = mx[idx] if self.transform is None else self.transform(mx[idx])
                with torch.no_grad():
                    f = self.net.features(xb).flatten(1)
                cos = self.head.similarities(f)
                yb = my[idx]
                loss = F.cross_entropy(
                    self._seen_only(self.head.scale.detach() * cos, None if task_ids is None else task_ids[idx]), yb
                )
                new = self.seen_classes & ~self.old_classes
                loss = loss + cfg.mr_weight * margin_ranking_loss(cos, yb, self.old_classes, new, cfg.top_k,
                                                                  cfg.margin)  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net.train()
        self.head.frozen.copy_(self.old_classes)
        self._means = None

    # -- prediction ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def class_means(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Normalised exemplar means ``(n_classes, dim)`` under the current network, and which classes have any."""
        if self._means is not None:
            return self._means
        mem = self.memory.tensors()
        if mem is None:
            return None
        x, y, t = mem
        f = F.normalize(embed(self.net, TensorData(x, y, self.transform, t), self.device).flatten(1), dim=1)
        y = y.to(self.device)
        sums = torch.zeros(self.info.n_classes, f.shape[1], dtype=torch.float64, device=self.device)
        sums.index_add_(0, y, f.double())
        has = torch.bincount(y, minlength=self.info.n_classes) > 0
        self._means = (F.normalize(sums, dim=1).float(), has)
        return self._means

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        means = self.class_means() if self.config.classifier == "nme" else None
        if means is None:
            return rank_unseen_last(super().predict(x, ctx), self.seen_classes)
        mu, has = means
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                f = F.normalize(self.net.features(x).flatten(1), dim=1)
        finally:
            self.net.train(was_training)
        return rank_unseen_last(-torch.cdist(f, mu).pow(2), has)

    # -- memory and state ------------------------------------------------------------------------------------
    def memory_size(self) -> int:
        return len(self.memory)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.memory.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memory": self.memory.state_dict(),
                "teacher": None if self.teacher is None else self.teacher.state_dict(),
                "old_classes": self.old_classes, "seen_classes": self.seen_classes, "lam": self.lam}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.old_classes = state["old_classes"].clone()
        self.seen_classes = state["seen_classes"].clone()
        self.lam = float(state["lam"])
        self._means = None
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = frozen_copy(self.net, state["teacher"])
