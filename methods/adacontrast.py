"""AdaContrast: contrastive test-time adaptation with nearest-neighbour refined pseudo-labels.

Per test batch the prediction of the current model on the clean batch is returned (made before the
update). Then, on three augmented views (one weak, two strong): the weak view's features look up their
``num_neighbors`` (10) nearest neighbours (cosine) in a bank of the momentum model's recent weak-view
features and average their stored predictions into a refined pseudo-label (plain argmax until 1,024
samples were seen); the model (all weights, batch norm on batch statistics) takes one SGD step on

    cross-entropy(strong view q, pseudo-label)
    + InfoNCE of q against the momentum model's key on the other strong view k, with a queue of past keys
      as negatives; negatives whose stored pseudo-label equals the sample's are masked out (class-aware)
    - entropy of the batch's mean prediction on q (diversity),

all weighted 1. The views are the reference's (``transforms_adacontrast.py``'s weak "plain" and strong
"moco-v2-light" pipelines, per image, :mod:`cl_bench.components.adacontrast_augment`). The momentum
(key) encoder is an EMA (0.999) of the model; the key queue holds 16,384 keys (randomly initialised, as
the reference). After the step the momentum model's weak-view features and predictions enter the bank.

References:
    Chen, Wang, Darrell & Ebrahimi. "Contrastive Test-Time Adaptation". CVPR 2022. Code:
    github.com/DianCh/AdaContrast. Facts and defaults from the RMT benchmark's port,
    github.com/mariodoebler/test-time-adaptation (commit 8b2ed63): classification/methods/adacontrast.py
    (``AdaMoCo``, ``loss_calculation``, ``refine_predictions``, ``instance_loss``, ``div``; refinement
    after 1,024 samples), classification/conf.py lines 195-207 (QUEUE_SIZE 16384, class_aware contrast,
    alpha = beta = eta = 1, cosine distance, weak_strong supervision, 10 neighbours) and line 149
    (M_TEACHER.MOMENTUM 0.999), cfgs/cifar10_c/adacontrast.yaml (SGD lr 2e-4, momentum 0.9, weight decay
    1e-4, Nesterov; CONTRAST.TEMPERATURE 0.07); the views from datasets/data_loading.py l. 58-64 and
    augmentations/transforms_adacontrast.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import adacontrast_augment, blend_parameters_
from cl_bench.components.tta_output import features_and_head
from cl_bench.components.window_bn import store_in_window
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method, held_bytes
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import adaptable_copy, generator


@dataclass(frozen=True)
class AdaContrastConfig:
    """AdaContrast hyper-parameters (RMT benchmark conf.py ``ADACONTRAST.*`` and cifar10_c/adacontrast.yaml).

    Attributes:
        lr: SGD learning rate (2e-4).
        momentum: SGD momentum (0.9, Nesterov).
        weight_decay: SGD weight decay (1e-4).
        queue_size: Keys in the contrastive queue and features in the pseudo-label bank (16,384).
        key_momentum: EMA momentum of the key encoder (0.999).
        temperature: InfoNCE temperature (0.07).
        num_neighbors: Neighbours averaged to refine a pseudo-label (10).
        refine_after: Samples seen before pseudo-labels are refined (1,024).
        alpha: Weight of the classification loss (1).
        beta: Weight of the instance (contrastive) loss (1).
        eta: Weight of the diversity loss (1).
        flip: Horizontal flips in the views (reference: p = 0.5 in each); None = the stream's
            ``flip_invariant`` (off on digits/MNIST streams, where a flip changes the class).
        window: 0 = off; W >= 1: the student and the key encoder normalise with the statistics of the last
            W test samples (:class:`~cl_bench.families.tta.WindowTTAConfig`'s ``window``, the RMT benchmark's
            ``TEST.WINDOW_LENGTH``).
    """

    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    queue_size: int = 16384
    key_momentum: float = 0.999
    temperature: float = 0.07
    num_neighbors: int = 10
    refine_after: int = 1024
    alpha: float = 1.0
    beta: float = 1.0
    eta: float = 1.0
    flip: bool | None = None
    window: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("adacontrast lr and temperature must be > 0")
        if self.queue_size < 1 or self.num_neighbors < 1 or self.refine_after < 0 or self.window < 0:
            raise ConfigError("adacontrast needs queue_size >= 1, num_neighbors >= 1, refine_after >= 0 and "
                              "window >= 0 (0 = off)")  # fmt: skip
        if not 0 <= self.key_momentum <= 1 or min(self.alpha, self.beta, self.eta, self.weight_decay) < 0:
            raise ConfigError("adacontrast needs key_momentum in [0, 1] and non-negative loss weights")


@METHODS.register("adacontrast", reference="Chen et al., 'Contrastive Test-Time Adaptation' (CVPR 2022)")
class AdaContrast(Method):
    """AdaContrast: kNN-refined pseudo-labels + class-aware MoCo contrast + diversity, all weights."""

    Config: ClassVar[type] = AdaContrastConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True, memory="bounded")
    # toy_tta's Gaussian-blob classes are not mirror-symmetric; a small queue keeps the suite fast
    conformance_config: ClassVar[dict[str, Any]] = {"flip": False, "queue_size": 64, "refine_after": 8}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model, params = adaptable_copy(info, self.name, "all", cfg.window)
        self.features, self.head = features_and_head(self.model, self.name)
        self.key_model = copy.deepcopy(self.model).requires_grad_(False)
        self.key_features, _ = features_and_head(self.key_model, self.name)
        self.opt = torch.optim.SGD(list(params.values()), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=True)  # fmt: skip
        self.gen = generator(seed)
        dim = self.head.in_features
        device = torch.device(info.device)
        # the reference initialises the key queue with random unit vectors and random labels
        self.queue = F.normalize(torch.randn(dim, cfg.queue_size, generator=self.gen), dim=0).to(device)
        self.queue_labels = torch.randint(0, info.n_classes, (cfg.queue_size,), generator=self.gen).to(device)
        self.queue_ptr = 0
        self.bank_feats = torch.zeros(0, dim, device=device)
        self.bank_probs = torch.zeros(0, info.n_classes, device=device)
        self.bank_ptr = 0
        self.seen = 0
        # the reference makes the views in its data loader (datasets/data_loading.py l. 58-64)
        self.augment = adacontrast_augment(info, cfg.flip)

    def memory_size(self) -> int:
        return len(self.bank_feats)  # test-sample features (and predictions) kept for the kNN refinement

    def memory_budget(self) -> int | None:
        return self.config.queue_size

    def memory_bytes(self) -> int | None:
        return held_bytes(len(self.bank_feats), self.bank_feats, self.bank_probs)

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    @torch.no_grad()
    def _pseudo_labels(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.seen < self.config.refine_after or not len(self.bank_feats):
            self.seen += len(feats)
            return logits.argmax(1)
        sim = F.normalize(feats, dim=1) @ F.normalize(self.bank_feats, dim=1).T
        k = min(self.config.num_neighbors, len(self.bank_feats))
        idx = sim.topk(k, dim=1).indices  # smallest cosine distance = largest similarity
        return self.bank_probs[idx].mean(1).argmax(1)

    @torch.no_grad()
    def _push(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        idx = torch.arange(self.queue_ptr, self.queue_ptr + len(keys), device=keys.device) % self.config.queue_size
        self.queue[:, idx] = keys.T
        self.queue_labels[idx] = labels
        self.queue_ptr = (self.queue_ptr + len(keys)) % self.config.queue_size

    @torch.no_grad()
    def _bank(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        size = self.config.queue_size
        if len(self.bank_feats) < size:
            self.bank_feats = torch.cat([self.bank_feats, feats])[-size:]
            self.bank_probs = torch.cat([self.bank_probs, probs])[-size:]
            self.bank_ptr = len(self.bank_feats) % size
            return
        idx = torch.arange(self.bank_ptr, self.bank_ptr + len(feats), device=feats.device) % size
        self.bank_feats[idx], self.bank_probs[idx] = feats, probs
        self.bank_ptr = (self.bank_ptr + len(feats)) % size

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        out = self.predict(x, PredictContext())
        x_w, x_q, x_k = self.augment(x, self.gen)
        with torch.enable_grad():
            feats_w = self.features(x_w)
            labels = self._pseudo_labels(feats_w.detach(), self.head(feats_w).detach())
            feats_q = self.features(x_q)
            logits_q = self.head(feats_q)
            q = F.normalize(feats_q, dim=1)
            with torch.no_grad():  # the key encoder moves before it encodes (reference AdaMoCo.forward)
                blend_parameters_(self.key_model, self.model, cfg.key_momentum, trainable_only=False)
                k = F.normalize(self.key_features(x_k), dim=1)
            logits_ins = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.clone()], dim=1) / cfg.temperature
            self._push(k, labels)  # the reference masks with the queue labels updated by this batch
            mask = torch.ones_like(logits_ins, dtype=torch.bool)
            mask[:, 1:] = labels.view(-1, 1) != self.queue_labels
            logits_ins = logits_ins.masked_fill(~mask, float("-inf"))
            loss_ins = F.cross_entropy(logits_ins, torch.zeros(len(x), dtype=torch.long, device=x.device))
            loss_cls = F.cross_entropy(logits_q, labels)
            mean_p = logits_q.softmax(1).mean(0)
            loss_div = (mean_p * torch.log(mean_p + 1e-8)).sum()  # = -H(mean prediction)
            loss = cfg.alpha * loss_cls + cfg.beta * loss_ins + cfg.eta * loss_div
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            feats = self.key_features(x_w)
            self._bank(feats, self.key_model.head(feats).softmax(1))
        store_in_window(x, self.model, self.key_model)  # each network keeps its own window
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "key_model": self.key_model.state_dict(),
                "opt": self.opt.state_dict(), "gen": self.gen.get_state(), "queue": self.queue.clone(),
                "queue_labels": self.queue_labels.clone(), "queue_ptr": self.queue_ptr,
                "bank_feats": self.bank_feats.clone(), "bank_probs": self.bank_probs.clone(),
                "bank_ptr": self.bank_ptr, "seen": self.seen}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.key_model.load_state_dict(state["key_model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.queue, self.queue_labels = state["queue"].clone(), state["queue_labels"].clone()
        self.bank_feats, self.bank_probs = state["bank_feats"].clone(), state["bank_probs"].clone()
        self.queue_ptr, self.bank_ptr, self.seen = int(state["queue_ptr"]), int(state["bank_ptr"]), int(state["seen"])
