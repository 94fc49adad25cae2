"""iCaRL: herding exemplars, sigmoid distillation, and a nearest-mean-of-exemplars classifier.

Each experience trains on its data together with every stored exemplar. The loss is a binary
cross-entropy over the classes seen so far, whose targets are the one-hot labels for the classes of
the new experience and the previous network's *sigmoid* outputs for the old classes (Rebuffi et al.,
Alg. 3). At the end of the experience the memory is cut to ``buffer_size // n_seen_classes``
exemplars per class (dropping the last-chosen ones) and the new classes get theirs by herding on
L2-normalised features (Alg. 4, 5; :class:`~cl_bench.components.HerdingMemory`). Prediction assigns
the class whose exemplar mean (of normalised features, re-normalised) is nearest (Alg. 1).

Class means are recomputed from the current network on the stored exemplars whenever the network has
changed since the last prediction, so per-iteration evaluation sees the means the network has now; a
class without exemplars yet (the classes of the running experience) cannot be predicted by the NME
classifier, exactly as in the paper and mammoth. Before any exemplar exists (the first experience)
the network's own outputs are used.

References:
    Rebuffi, Kolesnikov, Sperl & Lampert. "iCaRL: Incremental classifier and representation learning".
        CVPR 2017 (Alg. 1-5; K = 2000 exemplars on CIFAR-100; weight decay 1e-5, Sec. 4).
    Official-code reimplementations: github.com/aimagelab/mammoth ``models/icarl.py`` (BCE with
        ``sigmoid(old_net(x))`` targets, l. 115-158; ``--opt_wd 1e-5`` l. 57; class means of normalised
        features averaged with their horizontal flip, l. 183-221) and github.com/G-U-N/PyCIL
        ``exps/icarl.json`` (``memory_size`` 2000, fixed total memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from cl_bench.components import HerdingMemory, embed, frozen_copy, require_per_class_room
from cl_bench.components.prototypes import rank_unseen_last
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, PredictContext, StreamInfo, TensorData
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class ICaRLConfig(TrainConfig):
    """iCaRL hyper-parameters.

    Attributes:
        buffer_size: Total exemplars over all classes, K (2000: Rebuffi et al. Sec. 4 and PyCIL
            ``exps/icarl.json`` ``memory_size``), split evenly over the classes seen so far.
        weight_decay: L2 weight decay of the optimiser (1e-5: Rebuffi et al. Sec. 4; mammoth ``--opt_wd``).
        classifier: "nme" (nearest mean of exemplars, the paper's) or "cnn" (the network's outputs,
            the paper's "hybrid1" ablation).
        nme_flip: Average each exemplar's features with those of its horizontal flip when computing
            class means (mammoth l. 209-218, from the original code). Off by default: digits are not
            flip-invariant; turn on for natural images.
        bce_classes: "seen": the binary cross-entropy covers the classes seen so far (mammoth's); "all":
            every output unit, not-yet-seen classes with target 0, averaged over all of them (Avalanche's
            ``ICaRLLossPlugin``, ``avalanche/training/losses.py``: one-hot over ``logits.shape[1]``).
    """

    buffer_size: int = 2000
    weight_decay: float = 1e-5
    classifier: Literal["nme", "cnn"] = "nme"
    nme_flip: bool = False
    bce_classes: Literal["seen", "all"] = "seen"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {self.buffer_size}")
        if self.classifier not in ("nme", "cnn"):
            raise ValueError(f"classifier must be 'nme' or 'cnn', got {self.classifier!r}")
        if self.bce_classes not in ("seen", "all"):
            raise ValueError(f"bce_classes must be 'seen' or 'all', got {self.bce_classes!r}")


@METHODS.register(
    "icarl",
    reference="Rebuffi et al., 'iCaRL: Incremental classifier and representation learning' (CVPR 2017)",
)
class ICaRL(SupervisedMethod):
    """Herding exemplar memory of fixed total size, sigmoid distillation, nearest-mean-of-exemplars classifier."""

    Config: ClassVar[type] = ICaRLConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")

    def setup(self, info: StreamInfo, seed: int) -> None:
        # Equal split of a fixed total: fewer slots than classes would leave classes without exemplars.
        require_per_class_room("icarl", self.config.buffer_size, info.n_classes)
        super().setup(info, seed)
        self.memory = HerdingMemory(self.config.buffer_size)
        self.teacher: torch.nn.Module | None = None
        self.old_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.seen_classes = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.transform: Any = None
        self._means: tuple[torch.Tensor, torch.Tensor] | None = None  # (means, has-exemplars mask), a cache

    # -- training --------------------------------------------------------------------------------------------
    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        if self.seen_classes.any():  # the network as it left the previous experience is the teacher
            self.teacher = frozen_copy(self.net)
        self.old_classes = self.seen_classes.clone()
        self.seen_classes[list(exp.classes)] = True

    def train_data(self, exp: Experience) -> TensorData | None:
        if exp.train is None:
            return None
        self.transform = exp.train.transform  # exemplars are kept in stored form; NME needs model inputs
        return self.memory.extend(exp.train, exp.task_id)

    def observe(self, batch: Batch) -> dict[str, Any]:
        self._means = None  # the network changes: class means are stale
        self.net.train()
        out = self.net(batch.x)
        targets = F.one_hot(batch.y, self.info.n_classes).to(out.dtype)
        if self.teacher is not None and self.old_classes.any():
            with torch.no_grad():
                soft = torch.sigmoid(self.teacher(batch.x))
            targets = torch.where(self.old_classes, soft, targets)
        if self.config.bce_classes == "seen":
            out, targets = out[:, self.seen_classes], targets[:, self.seen_classes]
        loss = F.binary_cross_entropy_with_logits(out, targets)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        return {"loss": loss.detach()}

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if exp.train is None or len(exp.train) == 0:
            return
        data = exp.train
        t = data.t if data.t is not None else torch.full_like(data.y, -1 if exp.task_id is None else exp.task_id)
        self.memory.update(data.x, data.y, t, embed(self.net, data, self.device))
        self._means = None

    # -- prediction ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.features(x).flatten(1), dim=1)

    @torch.no_grad()
    def class_means(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Normalised exemplar means ``(n_classes, dim)`` under the current network, and which classes have any."""
        if self._means is not None:
            return self._means
        mem = self.memory.tensors()
        if mem is None:
            return None
        x, y, _ = mem
        was_training = self.net.training
        self.net.eval()
        try:
            feats = []
            for i in range(0, len(y), 256):
                xb = x[i : i + 256].to(self.device)
                xb = self.transform(xb) if self.transform is not None else xb
                f = self._features(xb)
                if self.config.nme_flip:
                    f = (f + self._features(torch.flip(xb, dims=(-1,)))) / 2
                feats.append(f)
        finally:
            self.net.train(was_training)
        f = torch.cat(feats).double()
        y = y.to(self.device)
        sums = torch.zeros(self.info.n_classes, f.shape[1], dtype=torch.float64, device=self.device)
        sums.index_add_(0, y, f)
        has = torch.bincount(y, minlength=self.info.n_classes) > 0
        self._means = (F.normalize(sums, dim=1).float(), has)
        return self._means

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        means = self.class_means() if self.config.classifier == "nme" else None
        if means is None:  # no exemplar yet, or the "cnn" classifier: the network's outputs over seen classes
            return rank_unseen_last(super().predict(x, ctx), self.seen_classes)
        mu, has = means
        was_training = self.net.training
        self.net.eval()
        try:
            scores = -torch.cdist(self._features(x), mu).pow(2)
        finally:
            self.net.train(was_training)
        return rank_unseen_last(scores, has)

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
                "old_classes": self.old_classes, "seen_classes": self.seen_classes}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
        self.old_classes = state["old_classes"].clone()
        self.seen_classes = state["seen_classes"].clone()
        self._means = None
        if state["teacher"] is None:
            self.teacher = None
        else:
            self.teacher = frozen_copy(self.net, state["teacher"])
