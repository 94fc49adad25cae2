"""X-DER: eXtended dark experience replay (future-logit updates, secondary-head pretext terms).

DER++ (logit and label replay), changed as the official code does it:

* **Heads.** The output layer is read as one head per experience: the classes of the current experience
  (present head), those of earlier ones (past heads) and the classes not seen yet, split in label order
  into heads of ``n_classes // n_experiences`` (future heads; mammoth's ``cpt`` blocks). The incoming
  batch's cross-entropy sees the present head only; the label replay of DER++ sees the past heads only.
* **Memory.** Class-balanced, filled at each experience's end (mammoth's ``end_task``): the new examples
  keep the logits the trained network gives them, their past-head logits first scaled down by the
  *past update* below, so no past class outscores the example's own.
* **Logit update** (``update_logits``): for an example of label ``y`` with stored logits ``old``, the
  columns ``cols`` are replaced by the network's current ones ``new[cols]``, multiplied by
  ``gamma * old[y] / max(new[cols])`` when ``max(new[cols]) > old[y]`` (unchanged otherwise), so the
  transplanted logits stay below the stored ground-truth logit. *Future-past update*: when an
  experience ends, every memory example of an earlier experience gets the columns of the present and
  future heads from the trained network; during training, a replayed memory example gets the same with
  probability ``1 / k`` at its ``k``-th replay in the experience (mammoth's ``update_counter``).
* **Pretext terms on the future heads.** ``lambd`` x a supervised-contrastive (SimCLR-style) loss on
  each future head over ``simclr_num_aug`` augmented views of the first ``simclr_batch_size`` incoming
  examples and as many memory examples (mammoth's ``SupConLoss``, temperature ``simclr_temp``, summed
  reduction, divided by heads x examples); the *future constraint* ``eta * mean(relu(max future logit
  + m - max own-head logit))`` over incoming and replayed examples, and the *past constraint* ``eta *
  mean(relu(max past prob (detached) + m - max present prob))`` on the softmax over seen classes.

Views come from the stream's training augmentation (``Batch.replay``); mammoth draws its own strong
augmentation (random resized crop, flip, colour jitter, grayscale), so on a stream without augmentation
the views coincide and the pretext term contrasts examples by label only. BatchNorm statistics are not
updated by the memory-filling and pretext forward passes (mammoth's ``bn_track_stats(self, False)``).
Not reproduced: mammoth's later ``align_bn`` and ``dp_weight`` options (off in the paper's code).
The incoming batch's CE moves the present head only within itself, so an experience's classes are lifted
over the past ones by later replay of their stored logits; the last experience never gets it, and on short
schedules its classes stay under the past heads (docs/methods.md, "X-DER against mammoth, line by line").

References:
    Boschini, Bonicelli, Buzzega, Porrello & Calderara. "Class-incremental continual learning into the
        eXtended DER-verse". TPAMI 2022.
    Official code: github.com/aimagelab/mammoth commit 0d727a7 ("added code for x-der"), ``models/xder.py``
        (``update_logits``, ``observe``, ``end_task``) and ``utils/best_args.py`` (``seq-cifar100``, ``xder``,
        buffer 500: alpha 0.3, beta 0.8, gamma 0.85, lambd 0.05, eta 0.001, m 0.7, simclr_temp 5,
        simclr_batch_size 64, simclr_num_aug 2); ``utils/simclrloss.py`` (``SupConLoss``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components import LogitClassBalancedBuffer, batch_norm_layers, require_per_class_room
from cl_bench.components.buffer import replay_inputs, stored_examples
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, Experience, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class XDERConfig(TrainConfig):
    """X-DER hyper-parameters (mammoth ``utils/best_args.py`` at 0d727a7, seq-cifar100, buffer 500).

    Attributes:
        buffer_size: Memory capacity in examples (500: the best_args row these defaults come from).
        alpha: Weight of the logit-replay MSE (0.3).
        beta: Weight of the label-replay CE on the past heads (0.8).
        gamma: Scale of transplanted logits relative to the stored ground-truth logit (0.85).
        lambd: Weight of the supervised-contrastive term on the future heads (0.05).
        eta: Weight of the past and future margin constraints (0.001).
        m: Margin of both constraints (0.7).
        simclr_temp: Temperature of the contrastive loss (5).
        simclr_batch_size: Incoming and memory examples each entering the contrastive term (64).
        simclr_num_aug: Augmented views per example in the contrastive term (2).
        past_constraint: Apply the past constraint (on in 0d727a7's code; an option in later mammoth).
        future_constraint: Apply the future constraint (on in 0d727a7's code).
        replay_batch_size: Memory examples per replay draw (0 = as many as the incoming batch; mammoth's
            ``minibatch_size``).
    """

    buffer_size: int = 500
    alpha: float = 0.3
    beta: float = 0.8
    gamma: float = 0.85
    lambd: float = 0.05
    eta: float = 0.001
    m: float = 0.7
    simclr_temp: float = 5.0
    simclr_batch_size: int = 64
    simclr_num_aug: int = 2
    past_constraint: bool = True
    future_constraint: bool = True
    replay_batch_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.buffer_size, self.replay_batch_size, self.alpha, self.beta, self.lambd, self.eta) < 0:
            raise ValueError("buffer_size, replay_batch_size, alpha, beta, lambd and eta must be >= 0")
        if not 0 < self.gamma <= 1 or self.simclr_temp <= 0:
            raise ValueError("need 0 < gamma <= 1 and simclr_temp > 0")
        if self.simclr_num_aug < 2 or self.simclr_batch_size < 1:
            raise ValueError("need simclr_num_aug >= 2 (each view's positive is another view) and "
                             "simclr_batch_size >= 1")  # fmt: skip


def update_logits(old: torch.Tensor, new: torch.Tensor, gt: torch.Tensor, cols: torch.Tensor,
                  gamma: float) -> torch.Tensor:  # fmt: skip
    """``old`` with its columns ``cols`` replaced by ``new``'s, scaled to stay below ``gamma * old[y]``.

    Row ``i``: ``new[i, cols]`` is multiplied by ``gamma * old[i, gt[i]] / max(new[i, cols])`` when that
    maximum exceeds ``old[i, gt[i]]``, and copied unchanged otherwise (mammoth ``XDer.update_logits``).

    Args:
        old: Stored logits, ``[n, classes]``.
        new: The network's logits for the same examples.
        gt: Labels, ``[n]``.
        cols: Boolean mask over classes of the columns to transplant.
        gamma: Ratio of the largest transplanted logit to the ground-truth one.
    """
    out = old.clone()
    if not len(gt) or not bool(cols.any()):
        return out
    transplant = new[:, cols]
    gt_values = old[torch.arange(len(gt), device=old.device), gt]
    max_values = transplant.max(1).values
    scale = torch.where(max_values > gt_values, gamma * gt_values / max_values, torch.ones_like(max_values))
    out[:, cols] = transplant * scale[:, None]
    return out


def supcon_sum(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss summed over examples (mammoth's ``SupConLoss(reduction='sum')``).

    Every view is an anchor; its positives are the other views of the same label (its own other views
    included), its contrast set every other view. With ``base_temperature == temperature`` (as X-DER
    builds it) the ``temperature / base_temperature`` factor is 1.

    Args:
        features: L2-normalised features ``[n, views, d]``.
        labels: ``[n]``.
        temperature: Softmax temperature.

    References:
        Khosla et al. "Supervised contrastive learning". NeurIPS 2020.
    """
    n, v, _ = features.shape
    contrast = torch.cat(torch.unbind(features, dim=1))  # view-major: row j*n + i is view j of example i
    lab = labels.repeat(v)
    sim = contrast @ contrast.T / temperature
    sim = sim - sim.max(1, keepdim=True).values.detach()  # numerical stability only
    not_self = ~torch.eye(n * v, dtype=torch.bool, device=features.device)
    positive = (lab[:, None] == lab[None, :]) & not_self
    log_prob = sim - torch.log((sim.exp() * not_self).sum(1, keepdim=True))
    mean_pos = (log_prob * positive).sum(1) / positive.sum(1)
    return -mean_pos.view(v, n).mean(0).sum()


@contextmanager
def frozen_bn_stats(net: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but leave their running ones unchanged."""
    layers = [m for _, m in batch_norm_layers(net) if hasattr(m, "momentum")]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, mom in zip(layers, saved, strict=True):
            m.momentum = mom


@METHODS.register(
    "xder",
    reference="Boschini et al., 'Class-incremental continual learning into the eXtended DER-verse' (TPAMI 2022)",
)
class XDER(SupervisedMethod):
    """DER++ with per-experience heads, future-logit updates of the memory and future-head pretext terms."""

    Config: ClassVar[type] = XDERConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")
    # The toy stream gives 3 steps per experience: too few at lr 0.01 on the present head alone; a budget
    # below its 240 examples makes the suite see the memory shrink old classes at each rebuild.
    conformance_config: ClassVar[dict[str, Any]] = {"lr": 0.1, "buffer_size": 60}

    def setup(self, info: StreamInfo, seed: int) -> None:
        if info.setting == "domain_il":
            raise ConfigError(
                "xder reads the output layer as one head per experience (present, past and future classes), "
                "which a domain-incremental stream, where every experience has the same classes, does not "
                "have. Use it on a class- or task-incremental stream, or use derpp here."
            )
        require_per_class_room("xder", self.config.buffer_size, info.n_classes)
        super().setup(info, seed)
        self.buffer = LogitClassBalancedBuffer(self.config.buffer_size, seed)
        self.gen = torch.Generator().manual_seed(seed)  # views, update coin flips, memory candidates
        self.cpt = max(1, info.n_classes // info.n_experiences)  # future head width (mammoth's cpt)
        c = info.n_classes
        self.class_head = torch.full((c,), -1, dtype=torch.long, device=self.device)  # experience; -1 unseen
        self.current = torch.zeros(c, dtype=torch.bool, device=self.device)
        self.past = torch.zeros(c, dtype=torch.bool, device=self.device)
        self.exp_index = 0
        self.update_counter = torch.zeros(self.config.buffer_size, device=self.device)
        self.view: Any = None  # raw memory -> training inputs (filled at experience ends)

    def begin_experience(self, exp: Experience) -> None:
        super().begin_experience(exp)
        self.exp_index = exp.index
        classes = torch.tensor(list(exp.classes), dtype=torch.long, device=self.device)
        self.class_head[classes[self.class_head[classes] < 0]] = exp.index
        self.current.zero_()
        self.current[classes] = True
        self.past = (self.class_head >= 0) & (self.class_head < exp.index) & ~self.current

    def future_heads(self) -> list[torch.Tensor]:
        """Column indices of each future head: unseen classes in label order, ``cpt`` at a time."""
        unseen = torch.nonzero(self.class_head < 0).flatten()
        return list(unseen.split(self.cpt)) if len(unseen) else []

    @staticmethod
    def _head_ce(out: torch.Tensor, y: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | float:
        """Cross-entropy over the columns ``cols`` (a boolean class mask) for the labels among them."""
        idx = torch.nonzero(cols).flatten()
        pos = torch.full((len(cols),), -1, dtype=torch.long, device=out.device)
        pos[idx] = torch.arange(len(idx), device=out.device)
        target = pos[y]
        keep = target >= 0
        if not bool(keep.any()):
            return 0.0
        return F.cross_entropy(out[keep][:, idx], target[keep])

    def observe(self, batch: Batch) -> dict[str, Any]:
        cfg, x, y = self.config, batch.x, batch.y
        self.net.train()
        out = self.net(x)
        loss = self._head_ce(out, y, self.current)  # present head only
        buf: tuple[torch.Tensor, torch.Tensor] | None = None  # (memory rows, their outputs), deduplicated
        if len(self.buffer):
            assert self.buffer.x is not None and self.buffer.y is not None and self.buffer.logits is not None
            n = cfg.replay_batch_size or len(x)
            i1 = self.buffer.sample_indices(n)
            o1 = self.net(batch.replay(self.buffer.x[i1], self.buffer.gen))
            loss = loss + cfg.alpha * F.mse_loss(o1, self.buffer.logits[i1])
            i2 = self.buffer.sample_indices(n)  # a second, independent draw (DER++)
            o2 = self.net(batch.replay(self.buffer.x[i2], self.buffer.gen))
            loss = loss + cfg.beta * self._head_ce(o2, self.buffer.y[i2], self.past)  # past heads only
            idx, outs = torch.cat([i1, i2]), torch.cat([o1, o2])
            first = torch.zeros(len(idx), dtype=torch.bool, device=idx.device)
            _, inverse = torch.unique(idx, return_inverse=True)
            where = torch.full((int(inverse.max()) + 1,), len(idx), device=idx.device)
            first[where.scatter_reduce(0, inverse, torch.arange(len(idx), device=idx.device), "amin")] = True
            buf = (idx[first], outs[first])
            self._update_replayed(*buf)
        heads = self.future_heads()
        if heads and cfg.lambd > 0:
            loss = loss + cfg.lambd * self._consistency(batch, heads)
        if cfg.future_constraint and heads:
            loss = loss + self._future_constraint(out, buf)
        if cfg.past_constraint and bool(self.past.any()):
            seen = self.past | self.current
            prob = F.softmax(out[:, seen], 1)
            present = self.current[seen]
            gap = prob[:, ~present].max(1).values.detach() + cfg.m - prob[:, present].max(1).values
            if bool((gap > 0).any()):
                loss = loss + cfg.eta * gap[gap > 0].mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        return {"loss": loss.detach()}

    def _update_replayed(self, rows: torch.Tensor, outs: torch.Tensor) -> None:
        """Future-past update of replayed memory examples of earlier experiences, w.p. 1/k at the k-th replay."""
        assert self.buffer.y is not None and self.buffer.logits is not None
        with torch.no_grad():
            labels = self.buffer.y[rows]
            chosen = self.class_head[labels] < self.exp_index
            self.update_counter[rows[chosen]] += 1
            coin = torch.rand(len(rows), generator=self.gen).to(rows.device) * self.update_counter[rows] < 1
            chosen &= coin
            if bool(chosen.any()):
                sel = rows[chosen]
                self.buffer.logits[sel] = update_logits(self.buffer.logits[sel], outs[chosen].detach(),
                                                        labels[chosen], ~self.past, self.config.gamma)  # fmt: skip

    def _consistency(self, batch: Batch, heads: list[torch.Tensor]) -> torch.Tensor:
        """The supervised-contrastive term on the future heads, divided by heads x examples."""
        k, v = self.config.simclr_batch_size, self.config.simclr_num_aug
        raw, labels = batch.stored[:k], batch.y[:k]
        if len(self.buffer):
            assert self.buffer.x is not None and self.buffer.y is not None
            rows = self.buffer.sample_indices(k)
            raw, labels = torch.cat([self.buffer.x[rows], raw]), torch.cat([self.buffer.y[rows], labels])
        with torch.no_grad():
            views = batch.replay(raw.repeat_interleave(v, 0), self.gen)
        with frozen_bn_stats(self.net):
            feats = self.net(views).reshape(len(labels), v, -1)
        total = sum(supcon_sum(F.normalize(feats[:, :, h], dim=2), labels, self.config.simclr_temp) for h in heads)
        return total / (len(heads) * len(labels))

    def _future_constraint(self, out: torch.Tensor, buf: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``eta`` x mean hinge between the best future-head logit (+ m) and the best own-head logit."""
        future = self.class_head < 0
        bad, good = out[:, future].max(1).values, out[:, self.current].max(1).values
        if buf is not None:
            assert self.buffer.y is not None
            rows, bout = buf
            own = self.class_head[None, :] == self.class_head[self.buffer.y[rows]][:, None]
            bad = torch.cat([bad, bout[:, future].max(1).values])
            good = torch.cat([good, bout.masked_fill(~own, torch.finfo(bout.dtype).min).max(1).values])
        gap = bad + self.config.m - good
        return self.config.eta * gap[gap > 0].mean() if bool((gap > 0).any()) else out.sum() * 0.0

    def end_experience(self, exp: Experience) -> None:
        super().end_experience(exp)
        if exp.train is None or not len(exp.train):
            self.update_counter.zero_()
            return
        x, y, self.view = stored_examples(exp.train, slice(None), self.device)
        t = exp.train.t if exp.train.t is not None else torch.full_like(y, -1 if exp.task_id is None else exp.task_id)
        # Candidates: at most `capacity` random examples per class (more can never be kept), so logits are
        # computed only for those; a uniform subset of a uniform subset is uniform.
        pick = []
        for c in y.unique():
            idx = torch.nonzero(y == c).flatten()
            pick.append(idx[torch.randperm(len(idx), generator=self.gen)[: self.buffer.capacity].to(idx.device)])
        sel = torch.cat(pick)
        x, y, t = x[sel], y[sel], t.to(self.device)[sel]
        was_training = self.net.training
        self.net.train()  # mammoth fills the memory in train mode, BatchNorm statistics frozen
        with torch.no_grad(), frozen_bn_stats(self.net):
            logits = self._outputs(x)
            if bool(self.past.any()):  # past update: no past class outscores the example's own
                logits = update_logits(logits, logits, y, self.past, self.config.gamma)
            self.buffer.rebuild_with_logits(x, y, logits, t)
            assert self.buffer.x is not None and self.buffer.y is not None and self.buffer.logits is not None
            earlier = self.class_head[self.buffer.y] < exp.index
            if bool(earlier.any()):  # future-past update: the trained present head reaches the old examples
                new = self._outputs(self.buffer.x[earlier])
                self.buffer.logits[earlier] = update_logits(self.buffer.logits[earlier], new, self.buffer.y[earlier],
                                                            ~self.past, self.config.gamma)  # fmt: skip
        self.net.train(was_training)
        self.update_counter.zero_()  # slots were reordered; mammoth resets the counter at task end

    def _outputs(self, raw: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Network outputs on freshly augmented views of stored examples, in chunks."""
        return torch.cat([self.net(replay_inputs(self.view, raw[i : i + chunk], self.gen))
                          for i in range(0, len(raw), chunk)])  # fmt: skip

    def memory_size(self) -> int:
        return len(self.buffer)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.buffer.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict(), "view": self.view,
                "gen": self.gen.get_state(), "class_head": self.class_head, "current": self.current,
                "past": self.past, "exp_index": self.exp_index, "update_counter": self.update_counter}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.view = state.get("view")
        self.gen.set_state(state["gen"])
        self.class_head.copy_(state["class_head"])
        self.current.copy_(state["current"])
        self.past.copy_(state["past"])
        self.exp_index = int(state["exp_index"])
        self.update_counter.copy_(state["update_counter"])
