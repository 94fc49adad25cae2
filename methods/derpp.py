"""DER++: dark experience replay plus replay of stored labels.

Adds to DER's logit term a cross-entropy on a second, independent memory
sample: ``CE(x_in) + alpha * MSE(net(x'), z') + beta * CE(net(x''), y'')``.

References:
    Buzzega et al. "Dark experience for general continual learning: a strong, simple baseline". NeurIPS 2020.
    Official code: github.com/aimagelab/mammoth, ``models/derpp.py`` (loss) and ``utils/best_args.py``
        (defaults, seq-mnist, buffer 200: alpha 0.2, beta 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from cl_bench.core.registry import METHODS
from cl_bench.methods.der import DER, DERConfig


@dataclass(frozen=True)
class DERPPConfig(DERConfig):
    """DER++ hyper-parameters (DER's, plus the label-replay weight).

    Attributes:
        alpha: Weight of the logit-replay MSE (0.2: mammoth ``utils/best_args.py``, seq-mnist, buffer 200).
        beta: Weight of the label-replay CE (1.0: mammoth ``utils/best_args.py``, seq-mnist, buffer 200).
    """

    alpha: float = 0.2
    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise ValueError("beta must be >= 0")


@METHODS.register(
    "derpp",
    reference="Buzzega et al., 'Dark experience for general continual learning: a strong, simple baseline' "
    "(NeurIPS 2020), DER++",
)
class DERPP(DER):
    """DER++: DER's logit replay plus cross-entropy on a second memory sample's stored labels."""

    Config: ClassVar[type] = DERPPConfig

    def replay_loss(self) -> torch.Tensor | float:
        loss = super().replay_loss()
        if not len(self.buffer) or self.config.beta == 0:
            return loss
        # A second draw, independent of the logit term's, as mammoth's derpp.py does.
        mx, my, mt = self.buffer.sample(self._n)
        out = self.net(mx)
        if (mt >= 0).all():
            out = self.mask_logits(out, mt)
        return loss + self.config.beta * F.cross_entropy(out, my)
