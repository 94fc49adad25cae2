"""SAR: sharpness-aware and reliable entropy minimisation, with model recovery.

Per test batch: samples with entropy below ``e_margin`` are kept; their mean entropy is minimised
with sharpness-aware minimisation (SAM: climb to ``theta + rho * g / ||g||``, take the gradient of
the again-filtered entropy there, and apply it at ``theta`` with SGD); a moving average (0.9) of
that second loss below ``reset_constant`` signals collapse to a trivial solution, and the model and
optimiser are reset to their initial state.

Adapted parameters, as the reference's ``collect_params`` (mr-eggplant/SAR ``sar.py`` l. 109-138; the RMT
benchmark's ``methods/sar.py`` l. 82-111): the scale and shift of the normalisation layers (batch norm on
test-batch statistics, GroupNorm, LayerNorm) outside the network's last stage, which the reference leaves
as trained ("skip top layers for adaptation: layer4 for ResNets and blocks9-11 for Vit-Base"):

* ResNets (a ``layer4`` stage): everything under ``layer4``;
* ViTs (a ``blocks`` sequence beside a final ``norm``): the last quarter of the blocks (9-11 of ViT-B's
  12, the reference's names; for other depths the reference's names would still pick 9-11) and the final
  ``norm``;
* other networks (the WRN-28-10 of the CIFAR benchmarks, our ``lenet_bn`` and ``cnn_bn``): no stage is
  skipped, as the reference's name rule skips none on its CIFAR WRN-28-10 either.

References:
    Niu, Wu, Zhang, Wen, Chen, Zhao & Tan. "Towards Stable Test-Time Adaptation in Dynamic Wild
    World". ICLR 2023. Code: github.com/mr-eggplant/SAR.
    Foret, Kleiner, Mobahi & Neyshabur. "Sharpness-Aware Minimization for Efficiently Improving
    Generalization". ICLR 2021.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cl_bench.components import adapt_only, norm_affine_params, softmax_entropy
from cl_bench.components.window_bn import store_in_window, window_buffers
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps, Method
from cl_bench.core.registry import METHODS
from cl_bench.core.types import PredictContext, StreamInfo
from cl_bench.families.tta import WindowTTAConfig, adaptable_copy, make_optimizer


@dataclass(frozen=True)
class SARConfig(WindowTTAConfig):
    """SAR hyper-parameters.

    Defaults: SAM over SGD, lr 1e-3, momentum 0.9 (RMT benchmark's CIFAR-10-C sar.yaml: SAR
    always wraps SGD); ``rho`` 0.05, ``e_margin`` 0.4 ln C and ``reset_constant`` 0.2 (SAR, Sec. 5).

    Attributes:
        e_margin: Entropy threshold as a fraction of ln(n_classes).
        rho: SAM neighbourhood radius.
        reset_constant: Reset when the moving average of the entropy loss falls below this.
    """

    optimizer: Literal["adam", "sgd"] = "sgd"
    e_margin: float = 0.4
    rho: float = 0.05
    reset_constant: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.e_margin <= 0 or self.rho < 0 or self.reset_constant < 0:
            raise ValueError("e_margin must be > 0, rho and reset_constant >= 0")


def last_stage(model: nn.Module) -> Callable[[str], bool]:
    """Whether a module (by name in ``model``) belongs to the last stage SAR leaves unadapted (module docstring)."""
    skipped: list[str] = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        children = dict(m.named_children())
        if "layer4" in children:  # torchvision / timm ResNets
            skipped.append(prefix + "layer4")
        blocks = children.get("blocks")
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and "norm" in children:  # timm ViTs
            n = len(blocks)
            skipped += [f"{prefix}blocks.{i}" for i in range(n - n // 4, n)] + [prefix + "norm"]
    return lambda name: any(name == s or name.startswith(s + ".") for s in skipped)


@METHODS.register(
    "sar", reference="Niu et al., 'Towards Stable Test-Time Adaptation in Dynamic Wild World' (ICLR 2023)"
)
class SAR(Method):
    """SAR: reliable entropy minimisation with sharpness-aware steps and reset on collapse."""

    Config: ClassVar[type] = SARConfig
    caps: ClassVar[Caps] = Caps(adapts_at_test=True)

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.model, _ = adaptable_copy(info, self.name, "norm", self.config.window)
        named = dict(norm_affine_params(self.model, last_stage(self.model)))
        if not named:
            raise ConfigError(
                f"Method {self.name!r} adapts the normalisation layers (BatchNorm, GroupNorm, LayerNorm) outside "
                f"the network's last stage, but the source model ({type(self.model).__name__}) has none there. Use "
                "a source model with normalisation layers before its last stage, or another method (e.g. 'tent')."
            )
        self.param_names = list(named)
        self.params = adapt_only(self.model, list(named.values()))
        self.opt = make_optimizer(self.params, self.config)
        self.margin = self.config.e_margin * math.log(info.n_classes)
        self.initial = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()))
        self.ema: float | None = None
        self.n_resets = 0

    def _filtered_entropy(
        self, out: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ent = softmax_entropy(out)
        if keep is not None:
            ent = ent[keep]
        reliable = ent < self.margin
        # sum / count (not .mean()) so that an empty selection gives 0 and zero gradients, not NaN
        return ent[reliable].sum() / reliable.sum().clamp_min(1), reliable

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = self.model(x)
            loss, keep = self._filtered_entropy(out)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
            steps = [g * (self.config.rho / (norm + 1e-12)) for g in grads]
            old = [p.detach().clone() for p in self.params]
            with torch.no_grad():
                for p, e in zip(self.params, steps, strict=True):
                    p.add_(e)
            self.opt.zero_grad(set_to_none=True)
            loss2, reliable2 = self._filtered_entropy(self.model(x), keep)
            if reliable2.any():
                value = float(loss2.detach())
                self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
            loss2.backward()
            with torch.no_grad():  # back to theta exactly (not theta + e - e) before the SGD step
                for p, o in zip(self.params, old, strict=True):
                    p.copy_(o)
            self.opt.step()
        store_in_window(x, self.model)
        if self.ema is not None and self.ema < self.config.reset_constant:
            self.reset()
        return out.detach()

    def reset(self) -> None:
        """Back to the source model and a fresh optimiser (SAR's model recovery); a window stays."""
        self.model.load_state_dict({**self.initial[0], **window_buffers(self.model)})
        self.opt.load_state_dict(self.initial[1])
        self.ema = None
        self.n_resets += 1

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema,
                "n_resets": self.n_resets}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.ema = state["ema"]
        self.n_resets = state["n_resets"]
