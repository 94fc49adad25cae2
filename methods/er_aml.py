"""ER-AML: experience replay with an asymmetric metric-learning loss on the incoming data.

Once the memory holds anything, the incoming batch no longer gets a cross-entropy: each incoming
example is an anchor for a supervised-contrastive loss on L2-normalised penultimate features, against
one positive (an example of its label, drawn from memory + incoming batch, not itself) and one negative
(an example of another label among the incoming batch's labels, drawn from the same pool; the official
task-free variant's notion of "same task"). Anchors without a valid positive or negative are left out.
Replayed memory examples (a reservoir sample) get the plain cross-entropy; the two terms are summed.
Before any memory exists the incoming batch gets the cross-entropy.

The official code also swaps the output layer for a cosine classifier (``distLinear``, scale 10) for
ER-ACE and ER-AML; like ``er_ace``, this file keeps the network's own head.

References:
    Caccia, Aljundi, Asadi, Tuytelaars, Pineau & Belilovsky. "New insights on reducing abrupt
        representation change in online continual learning". ICLR 2022 (Sec. 4, ER-AML).
    Official code: github.com/pclucas14/AML ``methods/er_aml.py`` (``process_inc``, ``sup_con_loss`` with
        ``base_temperature=0.07``), ``buffer.py`` (``sample_pos_neg``), ``methods/er.py`` (summed terms,
        reservoir ``add`` after the step), ``main.py`` (``--supcon_temperature 0.2``,
        ``--buffer_batch_size 10``, ``--mem_size 20`` per class), ``sweeps/hparam_search/er_aml.yaml``
        (``task_free: 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import ReservoirBuffer
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.families.supervised import SupervisedMethod, TrainConfig


@dataclass(frozen=True)
class ERAMLConfig(TrainConfig):
    """ER-AML hyper-parameters.

    Attributes:
        buffer_size: Memory capacity in examples (200: official ``--mem_size 20`` per class, times the
            10 classes of Split-CIFAR-10 / Split-MNIST).
        replay_batch_size: Memory examples replayed per step (10: official ``--buffer_batch_size``).
        temperature: Temperature of the metric loss (0.2: official ``--supcon_temperature``).
        base_temperature: Its reference temperature; the loss is scaled by ``temperature /
            base_temperature`` (0.07: official ``sup_con_loss`` default).
    """

    buffer_size: int = 200
    replay_batch_size: int = 10
    temperature: float = 0.2
    base_temperature: float = 0.07

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.buffer_size < 0 or self.replay_batch_size < 1:
            raise ValueError("need buffer_size >= 0 and replay_batch_size >= 1")
        if self.temperature <= 0 or self.base_temperature <= 0:
            raise ValueError("temperature and base_temperature must be > 0")


def normalize(h: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm plus 1e-5 (the official ``model.normalize``)."""
    return h / (h.norm(dim=1, keepdim=True) + 1e-5)


def aml_loss(anchor: torch.Tensor, anchor_labels: torch.Tensor, contrast: torch.Tensor,
             contrast_labels: torch.Tensor, temperature: float, base_temperature: float) -> torch.Tensor:  # fmt: skip
    """The asymmetric supervised-contrastive loss of ER-AML, mean over anchors.

    Each anchor is contrasted with every row of ``contrast`` (no self-pair to mask: anchors are not in the
    contrast set); its positives are the contrast rows of its label. Loss per anchor:
    ``-(temperature / base_temperature) * mean_{p in positives} log softmax(anchor . contrast / T)_p``.

    Args:
        anchor: Normalised features ``[a, d]`` (the incoming examples).
        anchor_labels: ``[a]``.
        contrast: Normalised features ``[c, d]`` (the drawn positives and negatives).
        contrast_labels: ``[c]``.
        temperature: Softmax temperature.
        base_temperature: Reference temperature of the scale factor.
    """
    logits = anchor @ contrast.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()  # numerical stability only
    mask = (anchor_labels[:, None] == contrast_labels[None, :]).float()
    log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True))
    mean_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base_temperature) * mean_pos).mean()


@METHODS.register(
    "er_aml",
    reference="Caccia et al., 'New insights on reducing abrupt representation change in online continual "
    "learning' (ICLR 2022), ER-AML",
)
class ERAML(SupervisedMethod):
    """Experience replay whose incoming data learn through a metric loss against memory positives/negatives."""

    Config: ClassVar[type] = ERAMLConfig
    caps: ClassVar[Caps] = Caps(memory="bounded")
    # The toy stream gives 3 steps per experience: too few at lr 0.01 (the official default is 0.1).
    conformance_config: ClassVar[dict[str, Any]] = {"lr": 0.1}

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        if not callable(getattr(self.net, "features", None)):
            raise ConfigError(
                f"er_aml computes its metric loss on the network's penultimate features, but the model "
                f"{self.config.model!r} has no `features` method. Use a network of the model registry that "
                f"has one (mlp, cnn, resnet18, resnet32; `cl-bench list models -v`)."
            )
        self.buffer = ReservoirBuffer(self.config.buffer_size, seed)
        self.gen = torch.Generator().manual_seed(seed)  # positive / negative draws

    def positives_negatives(self, raw: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One positive and one negative per incoming example, from memory + incoming batch.

        Returns ``(pos_raw, neg_raw, pos_y, neg_y, invalid)``; ``invalid`` marks the incoming examples
        without a positive (another example of their label) or a negative (an example of another label
        among the batch's labels), whose draws are meaningless (official ``Buffer.sample_pos_neg``,
        task-free).
        """
        assert self.buffer.x is not None and self.buffer.y is not None
        n_mem, n = len(self.buffer), len(y)
        pool_x = torch.cat([self.buffer.x[:n_mem], raw])
        pool_y = torch.cat([self.buffer.y[:n_mem], y])
        same_label = pool_y[:, None] == y[None, :]  # [pool, n]
        itself = torch.zeros_like(same_label)
        itself[n_mem + torch.arange(n, device=y.device), torch.arange(n, device=y.device)] = True
        batch_labels = torch.isin(pool_y, y.unique())[:, None]
        valid_pos = same_label & ~itself
        valid_neg = ~same_label & batch_labels
        invalid = ~(valid_pos.any(0) & valid_neg.any(0))
        valid_pos[:, invalid] = True  # so that the draw cannot fail; these anchors are dropped
        valid_neg[:, invalid] = True
        pos = torch.multinomial(valid_pos.T.float().cpu(), 1, generator=self.gen).squeeze(1).to(y.device)
        neg = torch.multinomial(valid_neg.T.float().cpu(), 1, generator=self.gen).squeeze(1).to(y.device)
        return pool_x[pos], pool_x[neg], pool_y[pos], pool_y[neg], invalid

    def observe(self, batch: Batch) -> dict[str, Any]:
        cfg, x, y, t = self.config, batch.x, batch.y, batch.task_ids
        self.net.train()
        if not len(self.buffer):  # nothing to contrast with yet: the official code's "regular training"
            loss = F.cross_entropy(self.mask_logits(self.net(x), t), y)
        else:
            pos_x, neg_x, pos_y, neg_y, invalid = self.positives_negatives(batch.stored, y)
            ok = ~invalid
            loss = torch.zeros((), device=x.device)
            if bool(ok.any()):
                anchor = normalize(self.net.features(x))[ok]
                both = normalize(self.net.features(batch.replay(torch.cat([pos_x, neg_x]), self.gen)))
                n = len(y)
                contrast = torch.cat([both[:n][ok], both[n:][ok]])
                loss = aml_loss(anchor.repeat(2, 1), y[ok].repeat(2), contrast, torch.cat([pos_y[ok], neg_y[ok]]),
                                cfg.temperature, cfg.base_temperature)  # fmt: skip
            mx, my, mt = self.buffer.sample(cfg.replay_batch_size)
            mout = self.net(batch.replay(mx, self.buffer.gen))  # raw memory, freshly augmented
            loss = loss + F.cross_entropy(self.mask_logits(mout, None if t is None else mt), my)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.lr_schedule.apply()
        self.opt.step()
        self.buffer.add(batch.stored, batch.y, batch.task_ids)
        return {"loss": loss.detach()}

    def memory_size(self) -> int:
        return len(self.buffer)

    def memory_budget(self) -> int | None:
        return self.config.buffer_size

    def memory_bytes(self) -> int | None:
        return self.buffer.nbytes()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self.gen.set_state(state["gen"])
