"""PODNet: pooled outputs distillation and a local-similarity classifier, for many small tasks.

The network's head is replaced by the local-similarity classifier (LSC, :class:`~cl_bench.components.
cosine_head.CosineHead` with ``kind="lsc"``): K proxies per class, proxy scores ``-||f^ - w^||^2``, a
class score that is the softmax-weighted mean of its proxies' scores, and a learnable scale eta. It is
trained with the NCA loss. Each experience trains on its data together with a herding exemplar memory of
fixed total size (``buffer_size // n_seen`` per class, as iCaRL). From the second experience on, with
the network of the previous experience as teacher and the adaptive factor ``sqrt(n_seen / n_new)``:

* **POD-spatial** (factor ``pod_spatial``): for the output map ``h`` of every stage of the network,
  ``h**2`` is summed over the height and over the width, the two are concatenated per example and
  L2-normalised, and the loss is the mean over examples of the Euclidean distance between student and
  teacher, averaged over stages;
* **POD-flat** (factor ``pod_flat``): ``mean(1 - cos(f, f_old))`` on the embeddings.

The new classes' proxies are imprinted before training: k-means (K clusters) of the normalised features
of each new class, times the existing rows' mean norm; the old classes' proxies are frozen (the official
``groupwise_factors: old_weights: 0``). Gradients are clamped to [-5, 5] element-wise. After each
experience past the first the classifier (every proxy, not the scale) is fine-tuned on the class-balanced
exemplar memory (``balanced_finetune``, on by default as in the official CIFAR-100 options), on the same
loss. Prediction is the LSC class score over the seen classes (the official ``eval_type: cnn``).

The NCA loss: the official code subtracts the margin from *every* similarity and, after its stability
shift, leaves ``exp(0)`` in the place of the true class in the denominator, so that
``loss = log(sum_{j != y} exp(eta s_j) + exp(max_j eta s_j)) - eta s_y`` and the margin cancels
(``lsc_loss="official"``, the default, since the defaults come from that code). The paper's formula,
``[-log(exp(eta (s_y - delta)) / sum_{j != y} exp(eta s_j))]_+``, is ``lsc_loss="paper"``.

Needs a network with spatial stages (the registry's ``cnn``, ``resnet32``, ``resnet18``,
``reduced_resnet18``); the MLP has none and is refused before training with one paragraph.

References:
    Douillard, Cord, Ollion, Robert & Valle. "PODNet: pooled outputs distillation for small-tasks
        incremental learning". ECCV 2020 (pooled outputs distillation; the local-similarity classifier, NCA).
    Official code github.com/arthurdouillard/incremental_learning.pytorch (commit c09fc54):
        ``options/podnet/podnet_cnn_cifar100.yaml`` (``proxy_per_class: 10`` l. 10,
        ``neg_stable_cosine_distance`` l. 11, learned scaling from 1.0 l. 13-15, ``pod_flat`` 1.0 l. 17-18,
        ``pod_spatial`` 3.0 l. 20-22, ``nca margin 0.6`` l. 24-27, ``old_weights: 0.`` l. 29-30,
        finetuning on the memory (undersampling), classifier only, lr 0.05, 20 epochs l. 32-37,
        ``weight_decay 0.0005`` l. 48, imprinted kmeans weights l. 50-52); ``inclearn/models/podnet.py``
        (gradient clamp l. 116-118, factor ``sqrt(n_classes / task_size)`` l. 336-353);
        ``inclearn/lib/losses/distillation.py`` (``pod`` l. 28-96), ``inclearn/lib/losses/base.py``
        (``nca`` l. 43-97, ``embeddings_similarity`` l. 100-103), ``inclearn/lib/factory.py``
        (SGD momentum 0.9 l. 19-20), ``inclearn/parser.py`` (memory 2000 l. 19, batch 128 l. 31).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import HerdingMemory, embed, frozen_copy, require_per_class_room
from cl_bench.components.cosine_head import CosineHead, embed_dim, require_stages, stage_outputs
from cl_bench.components.prototypes import rank_unseen_last
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo, TensorData
from cl_bench.families.schedules import LRSchedule
from cl_bench.families.supervised import SupervisedMethod, TrainConfig, build_optimizer


@dataclass(frozen=True)
class PODNetConfig(TrainConfig):
    """PODNet hyper-parameters (optimiser, epochs and batch size stay the run's, as for iCaRL).

    Attributes:
        model: A network with spatial stages ("cnn" here; the paper's CIFAR network is ResNet-32,
            ``--set model=resnet32``).
        buffer_size: Total exemplars over all classes (2000: official ``--memory-size``).
        weight_decay: L2 weight decay (5e-4: official options ``weight_decay``).
        proxies: Proxies per class of the LSC (10: ``proxy_per_class``).
        nca_margin: The NCA margin delta (0.6: ``nca.margin``).
        lsc_loss: "official" (the code's NCA, in which the margin cancels) or "paper" (the paper's formula; with the
            learnable scale it drives the scale negative and collapses, measured in docs/methods.md).
        pod_spatial: Factor of POD-spatial (3: ``pod_spatial.scheduled_factor``).
        pod_flat: Factor of POD-flat (1: ``pod_flat.scheduled_factor``).
        adaptive_factor: Multiply both by ``sqrt(n_seen / n_new)`` (the "scheduled" factors).
        grad_clip: Element-wise gradient clamp (5: ``podnet.py`` l. 118); 0 turns it off.
        imprint: Imprint the new classes' proxies by k-means (``weight_generation: imprinted, kmeans``).
        balanced_finetune: Fine-tune the classifier on the exemplar memory after each experience.
        finetune_epochs: Its epochs (20: ``finetuning_config.epochs``).
        finetune_lr: Its learning rate (0.05, constant: ``finetuning_config.lr``).
        finetune_batch_size: Its mini-batch (128: official ``--batch-size``).
    """

    model: str = "cnn"
    buffer_size: int = 2000
    weight_decay: float = 5e-4
    proxies: int = 10
    nca_margin: float = 0.6
    lsc_loss: Literal["official", "paper"] = "official"
    pod_spatial: float = 3.0
    pod_flat: float = 1.0
    adaptive_factor: bool = True
    grad_clip: float = 5.0
    imprint: bool = True
    balanced_finetune: bool = True
    finetune_epochs: int = 20
    finetune_lr: float = 0.05
    finetune_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.proxies < 1 or self.pod_spatial < 0 or self.pod_flat < 0:
            raise ValueError("need buffer_size >= 0, proxies >= 1, pod_spatial >= 0 and pod_flat >= 0")
        if self.grad_clip < 0 or self.finetune_epochs < 0 or self.finetune_lr <= 0 or self.finetune_batch_size < 1:
            raise ValueError("need grad_clip >= 0, finetune_epochs >= 0, finetune_lr > 0, finetune_batch_size >= 1")
        if self.lsc_loss not in ("official", "paper"):
            raise ValueError(f"lsc_loss must be 'official' or 'paper', got {self.lsc_loss!r}")


def pod_spatial_loss(maps: list[torch.Tensor], old_maps: list[torch.Tensor]) -> torch.Tensor:
    """POD-spatial: width and height pooling of squared maps, L2-normalised, Euclidean distance, mean.

    For each stage, ``h**2`` is summed over the width (giving ``C x H`` values) and over the height
    (``C x W``), concatenated and L2-normalised per example; the stage's loss is the batch mean of
    ``||student - teacher||_2``; the result averages the stages (official ``pod``, ``spatial``).
    """
    total = maps[0].new_zeros(())
    for a, b in zip(maps, old_maps, strict=True):
        a, b = a.pow(2), b.detach().pow(2)
        pa = torch.cat([a.sum(3).flatten(1), a.sum(2).flatten(1)], 1)
        pb = torch.cat([b.sum(3).flatten(1), b.sum(2).flatten(1)], 1)
        total = total + (F.normalize(pa, dim=1) - F.normalize(pb, dim=1)).norm(dim=1).mean()
    return total / len(maps)


def pod_flat_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """POD-flat: ``mean(1 - cos(f, f_old))`` on the embeddings (official ``embeddings_similarity``)."""
    return (1 - F.cosine_similarity(features, old_features.detach(), dim=1)).mean()


def nca_loss(sims: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, margin: float,
             allowed: torch.Tensor | None = None, variant: str = "official") -> torch.Tensor:  # fmt: skip
    """The LSC's NCA loss on class similarities ``sims`` ``(N, C)``.

    Args:
        sims: Unscaled class similarities.
        y: Labels.
        scale: The learnable scale eta.
        margin: The margin delta.
        allowed: Boolean ``(N, C)`` or ``(C,)`` mask of the classes that compete (the seen ones); None = all.
        variant: "official" (the code: margin on every similarity, exp(0) in the true class's place of the
            denominator after the max shift) or "paper" (the paper's formula: margin on the true class, hinge at 0).
    """
    rows = torch.arange(len(y), device=y.device)
    if variant == "paper":
        z = scale * sims
        if allowed is not None:
            z = z.masked_fill(~allowed.expand_as(z), float("-inf"))
        pos = scale * (sims[rows, y] - margin)
        others = z.clone()
        others[rows, y] = float("-inf")
        return F.relu(torch.logsumexp(others, dim=1) - pos).mean()
    z = scale * (sims - margin)
    if allowed is not None:
        z = z.masked_fill(~allowed.expand_as(z), float("-inf"))
    z = z - z.max(1, keepdim=True).values  # not detached, as the official code (the shift is in the gradient)
    pos = z[rows, y]
    den = z.clone()
    den[rows, y] = 0.0
    return (torch.logsumexp(den, dim=1) - pos).mean()


def adaptive_factor(base: float, n_seen: int, n_new: int) -> float:
    """``base * sqrt(n_seen / n_new)`` (official ``scheduled_factor``)."""
    return base * math.sqrt(n_seen / n_new)


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 50) -> torch.Tensor:
    """``k`` centres of the rows of ``x``: k-means++ seeding from ``gen``, then Lloyd iterations."""
    if len(x) <= k:  # too few points: every point is a centre (repeated to k)
        return x[torch.arange(k) % len(x)].clone()
    first = int(torch.randint(len(x), (1,), generator=gen))
    centres = [x[first]]
    for _ in range(1, k):
        d = torch.cdist(x, torch.stack(centres)).pow(2).min(1).values
        centres.append(x[int(torch.multinomial(d.cpu() + 1e-12, 1, generator=gen))])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return c


@METHODS.register(
    "podnet",
    reference="Douillard et al., 'PODNet: pooled outputs distillation for small-tasks incremental learning' "
    "(ECCV 2020)",
)
class PODNet(SupervisedMethod):
    """Local-similarity classifier with NCA, POD-spatial and POD-flat distillation, herding exemplars."""

    Config: ClassVar[type] = PODNetConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        require_per_class_room("podnet", self.config.buffer_size, info.n_classes)
        self.memory = HerdingMemory(self.config.buffer_size)  # first: a refused network still gets a record
        super().setup(info, seed)
        require_stages(self.net, "podnet")
        dim = embed_dim(self.net, info.input_shape, self.device)
        self.net.head = CosineHead(dim, info.n_classes, self.config.proxies, kind="lsc").to(self.device)
        self.opt = build_optimizer(self.config, self.net)
        self.lr_schedule = LRSchedule(self.opt, self.config.schedule())
        self.teacher: torch.nn.Module | None = None
        self.old_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.factor = 1.0
        self.transform: Any = None

    @property
    def head(self) -> CosineHead:
        """The network's local-similarity classifier."""
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
        n_seen, n_new = int(self.seen_classes.sum()), int(new.sum())
        self.factor = adaptive_factor(1.0, n_seen, n_new) if self.config.adaptive_factor and n_new else 1.0
        self.head.frozen.copy_(self.old_classes)
        if not first and self.config.imprint and exp.train is not None and len(exp.train) and n_new:
            self.imprint(exp.train, new, exp.index)

    @torch.no_grad()
    def imprint(self, data: TensorData, new: torch.Tensor, exp_index: int) -> None:
        """K-means proxies of each new class's normalised features, times the existing rows' mean norm."""
        norm = self.head.weight[self.head.rows(self.old_classes)].norm(dim=1).mean()
        f = F.normalize(embed(self.net, data, self.device).flatten(1), dim=1)
        y = data.y.to(self.device)
        gen = torch.Generator().manual_seed(self.seed * 1000 + exp_index)
        for c in torch.nonzero(new).flatten().tolist():
            if (y == c).any():
                self.head.imprint_(c, kmeans(f[y == c], self.head.proxies, gen) * norm)

    def train_data(self, exp: Experience) -> TensorData | None:
        if exp.train is None:
            return None
        self.transform = exp.train.transform
        return self.memory.extend(exp.train, exp.task_id)

    def _allowed(self, task_ids: torch.Tensor | None) -> torch.Tensor:
        return self.seen_classes if task_ids is None else self.task_classes[task_ids]

    def loss(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        """NCA on the LSC, plus the factor-weighted POD-spatial and POD-flat terms once there is a teacher."""
        cfg = self.config
        f, maps = stage_outputs(self.net, x, "podnet")
        loss = nca_loss(self.head.similarities(f), y, self.head.scale, cfg.nca_margin, self._allowed(task_ids),
                        cfg.lsc_loss)  # fmt: skip
        if self.teacher is None:
            return loss
        with torch.no_grad():
            old_f, old_maps = stage_outputs(self.teacher, x, "podnet")
        if cfg.pod_flat:
            loss = loss + cfg.pod_flat * self.factor * pod_flat_loss(f, old_f)
        if cfg.pod_spatial:
            loss = loss + cfg.pod_spatial * self.factor * pod_spatial_loss(maps, old_maps)
        return loss

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, schedule: LRSchedule | None) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            for p in self.net.parameters():
                if p.grad is not None:
                    p.grad.clamp_(-self.config.grad_clip, self.config.grad_clip)
        if schedule is not None:
            schedule.apply()
        self.head.keep_frozen()
        opt.step()
        self.head.restore_frozen()

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.net.train()
        loss = self.loss(batch.x, batch.y, batch.task_ids)
        self._step(loss, self.opt, self.lr_schedule)
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if exp.train is None or len(exp.train) == 0:
            return
        data = exp.train
        t = data.t if data.t is not None else torch.full_like(data.y, -1 if exp.task_id is None else exp.task_id)
        self.memory.update(data.x, data.y, t, embed(self.net, data, self.device))
        if self.config.balanced_finetune and self.teacher is not None and self.config.finetune_epochs:
            self.balanced_finetune(exp.index)

    def balanced_finetune(self, exp_index: int) -> None:
        """Train every proxy (not the scale) on the exemplar memory, on the training loss (official finetuning)."""
        mem = self.memory.tensors()
        if mem is None:
            return
        cfg = self.config
        mx, my, mt = (v.to(self.device) for v in mem)
        task_ids = None if bool((mt < 0).any()) else mt
        opt = torch.optim.SGD([self.head.weight], lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(self.seed * 1000 + exp_index + 1)
        self.head.frozen.zero_()
        self.net.train()  # as the official loop: BatchNorm statistics follow the memory batches
        for _ in range(cfg.finetune_epochs):
            perm = torch.randperm(len(my), generator=gen).to(self.device)
            for i in range(0, len(my), cfg.finetune_batch_size):
                idx = perm[i : i + cfg.finetune_batch_size]
                xb = mx[idx] if self.transform is None else self.transform(mx[idx])
                loss = self.loss(xb, my[idx], None if task_ids is None else task_ids[idx])
                self._step(loss, opt, None)
        self.head.frozen.copy_(self.old_classes)

    # -- prediction ------------------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():  # unscaled class scores: the ranking cannot flip with the scale's sign
                out = self.head.similarities(self.net.features(x).flatten(1))
        finally:
            self.net.train(was_training)
        return rank_unseen_last(out, self.seen_classes)

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
                "old_classes": self.old_classes, "seen_classes": self.seen_classes, "factor": self.factor}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.old_classes = state["old_classes"].clone()
        self.seen_classes = state["seen_classes"].clone()
        self.factor = float(state["factor"])
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = frozen_copy(self.net, state["teacher"])
