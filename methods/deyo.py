"""DeYO: destroy-your-object entropy minimisation, filtered by the pseudo-label probability difference.

Per test batch (own batch-norm statistics): samples with entropy below ``margin`` (x ln C) are kept;
each kept image is "destroyed" by shuffling a ``patch_len`` x ``patch_len`` grid of its patches, and
the drop of the predicted class's probability from the original to the shuffled image (PLPD) must
exceed ``plpd_threshold``: predictions that survive the loss of object shape relied on texture or
noise, not the object. The remaining samples' entropies, weighted by
``exp(-(H - margin_e0)) + exp(PLPD)``, are minimised over the batch-norm affine parameters; no step
when nothing survives.

References:
    Lee, Jung, Lee, Lee, Yoon, Kim & Hwang. "Entropy is not Enough for Test-Time Adaptation: From the
    Perspective of Disentangled Factors". ICLR 2024 (Eq. 5-8). Code: github.com/Jhyun17/DeYO.
    Defaults: the RMT benchmark's conf.py ``DEYO.*`` (margin 0.5 ln C, PLPD 0.2, patch aug, 4 x 4
    patches, both re-weightings on; ``EATA.MARGIN_E0`` 0.4 ln C) and cfgs/cifar10_c/deyo.yaml
    (Adam lr 1e-3). The reference leaves the last ResNet stage / ViT blocks out; cl_bench's small
    networks adapt every batch-norm layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cl_bench.components import softmax_entropy
from cl_bench.components.window_bn import store_in_window
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, generator, make_optimizer


@dataclass(frozen=True)
class DeYOConfig(WindowTTAConfig):
    """DeYO hyper-parameters (RMT benchmark conf.py ``DEYO.*``, deyo.yaml).

    Attributes:
        margin: Entropy filter threshold as a fraction of ln C (0.5).
        margin_e0: Entropy offset of the weight, as a fraction of ln C (0.4).
        plpd_threshold: Minimum probability drop of the pseudo-label under patch shuffling (0.2).
        patch_len: Patches per side of the shuffled grid (4).
        reweight_ent: Weight by ``exp(-(H - margin_e0))`` (on).
        reweight_plpd: Weight by ``exp(PLPD)`` (on).
    """

    margin: float = 0.5
    margin_e0: float = 0.4
    plpd_threshold: float = 0.2
    patch_len: int = 4
    reweight_ent: bool = True
    reweight_plpd: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.margin <= 0 or self.margin_e0 <= 0 or self.patch_len < 1:
            raise ConfigError("deyo needs margin > 0, margin_e0 > 0 and patch_len >= 1")


def shuffle_patches(x: torch.Tensor, patch_len: int, g: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` [B, C, H, W] with its ``patch_len`` x ``patch_len`` grid of patches permuted.

    The image is resized to the nearest multiple of ``patch_len`` first and back afterwards (as the
    reference); each image gets its own permutation drawn from ``g``.
    """
    b, c, h, w = x.shape
    p = patch_len
    ph, pw = max(h // p, 1), max(w // p, 1)
    grid = (ph * p, pw * p)
    y = F.interpolate(x, size=grid, mode="bilinear", align_corners=False) if (h, w) != grid else x
    tiles = y.reshape(b, c, p, ph, p, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, p * p, c, ph, pw)
    perm = torch.argsort(torch.rand(b, p * p, generator=g), dim=1).to(x.device)
    tiles = tiles[torch.arange(b, device=x.device).unsqueeze(1), perm]
    y = tiles.reshape(b, p, p, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, ph * p, pw * p)
    return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False) if (h, w) != y.shape[2:] else y


@METHODS.register(
    "deyo",
    reference="Lee et al., 'Entropy is not Enough for Test-Time Adaptation: From the Perspective of "
    "Disentangled Factors' (ICLR 2024)",
)
class DeYO(Method):
    """DeYO: entropy minimisation on confident samples whose prediction depends on the object's shape."""

    Config: ClassVar[type] = DeYOConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.model, named = adaptable_copy(info, self.name, "norm", cfg.window)
        self.opt = make_optimizer(named.values(), cfg)
        self.margin = cfg.margin * math.log(info.n_classes)
        self.margin_e0 = cfg.margin_e0 * math.log(info.n_classes)
        self.gen = generator(seed)
        self.n_used = 0

    def _loss(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        cfg = self.config
        ent = softmax_entropy(out)
        sel = ent < self.margin
        if not bool(sel.any()) or x.dim() != 4:
            return None  # nothing confident (or no image to destroy): the reference skips the step
        with torch.no_grad():
            out_prime = self.model(shuffle_patches(x[sel].detach(), cfg.patch_len, self.gen))
        probs = out[sel].softmax(1)
        cls = probs.argmax(1, keepdim=True)
        plpd = (probs.gather(1, cls) - out_prime.softmax(1).gather(1, cls)).squeeze(1).detach()
        keep = plpd > cfg.plpd_threshold
        if not bool(keep.any()):
            return None
        ent, plpd = ent[sel][keep], plpd[keep]
        self.n_used += len(ent)
        if cfg.reweight_ent or cfg.reweight_plpd:
            coeff = float(cfg.reweight_ent) * torch.exp(-(ent.detach() - self.margin_e0)) + float(
                cfg.reweight_plpd
            ) * torch.exp(plpd)
            ent = ent * coeff
        return ent.mean()

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.model(x)
            loss = self._loss(x, out)
            if loss is not None:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
        store_in_window(x, self.model)
        return out.detach()

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                "n_used": self.n_used}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.n_used = state["n_used"]
