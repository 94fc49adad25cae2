"""Cosine classifiers with a learnable scale (LUCIR, PODNet) and the intermediate feature maps PODNet distils.

* :class:`CosineHead` replaces a network's linear ``head``: ``K`` proxies (weight rows) per class, scores
  from the L2-normalised embedding and proxies, and one learnable scale. ``kind="cosine"`` scores a class
  by ``scale * cos(f, w_c)`` (LUCIR's ``CosineLinear``, K = 1); ``kind="lsc"`` is PODNet's local-similarity
  classifier: each proxy scores ``-||f^ - w^||^2 = 2 cos - 2`` and a class takes the softmax-weighted mean
  of its proxies' scores. Rows can be *frozen* (LUCIR and PODNet train only the new classes' weights):
  :meth:`CosineHead.restore_frozen` puts their values back after an optimiser step, which is the reference
  codes' learning rate of 0 for that parameter group, whatever the optimiser's momentum or weight decay.
* :func:`stage_outputs` returns the embedding and the outputs of the network's stages (the maps
  POD-spatial pools), for the CIFAR ResNets and the small CNN; fully connected networks have none
  and get a one-paragraph error.

References:
    Hou, Pan, Loy, Wang & Lin. "Learning a unified classifier incrementally via rebalancing". CVPR 2019;
        official code github.com/hshustc/CVPR19_Incremental_Learning ``cifar100-class-incremental/
        modified_linear.py`` (``CosineLinear`` l. 8-37: uniform(-1/sqrt(d), 1/sqrt(d)) init l. 21-22,
        sigma initialised to 1 l. 24, ``sigma * linear(normalize(x), normalize(w))`` l. 33-36).
    Douillard, Cord, Ollion, Robert & Valle. "PODNet: pooled outputs distillation for small-tasks
        incremental learning". ECCV 2020 (the local-similarity classifier); official code
        github.com/arthurdouillard/incremental_learning.pytorch ``inclearn/lib/network/classifiers.py``
        (``CosineClassifier``: ``neg_stable_cosine_distance`` l. 283-287, softmax merging of proxies
        l. 350-353 with gamma 1 l. 210), ``inclearn/lib/network/postprocessors.py`` (``FactorScalar``,
        the learned scale, l. 27-33).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.errors import ConfigError

#: Stage attributes of the registry's ResNets (PyCIL-style ResNet-32, mammoth / GEM ResNet-18), in order.
_STAGE_NAMES = (("stage_1", "stage_2", "stage_3"), ("layer1", "layer2", "layer3", "layer4"))


class CosineHead(nn.Module):
    """``n_classes * proxies`` weight rows scored by cosine against the embedding, times a learnable scale.

    Args:
        dim: Embedding size.
        n_classes: Number of classes.
        proxies: Weight rows per class (K; 1 for LUCIR, 10 for PODNet's LSC). Rows ``c*K .. c*K+K-1``
            belong to class ``c``.
        kind: "cosine" (LUCIR) or "lsc" (PODNet's local-similarity classifier).
        scale: Initial value of the learnable scale (1: both official codes).
    """

    def __init__(self, dim: int, n_classes: int, proxies: int = 1, kind: Literal["cosine", "lsc"] = "cosine",
                 scale: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if proxies < 1 or kind not in ("cosine", "lsc"):
            raise ValueError(f"CosineHead needs proxies >= 1 and kind 'cosine' or 'lsc', got {proxies}, {kind!r}")
        self.n_classes, self.proxies, self.kind = n_classes, proxies, kind
        bound = 1 / math.sqrt(dim)  # LUCIR's CosineLinear.reset_parameters
        self.weight = nn.Parameter(torch.empty(n_classes * proxies, dim).uniform_(-bound, bound))
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.register_buffer("frozen", torch.zeros(n_classes, dtype=torch.bool))
        self._kept: torch.Tensor | None = None

    def cosine(self, f: torch.Tensor) -> torch.Tensor:
        """Cosine of the embedding with every weight row, ``(N, n_classes * proxies)``."""
        return F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).t()

    def similarities(self, f: torch.Tensor) -> torch.Tensor:
        """Unscaled class scores ``(N, n_classes)``: the cosine ("cosine") or the merged proxy scores ("lsc")."""
        cos = self.cosine(f)
        if self.kind == "cosine":
            return cos if self.proxies == 1 else cos.view(len(f), self.n_classes, self.proxies).amax(-1)
        per_proxy = (2 * cos - 2).view(len(f), self.n_classes, self.proxies)  # -||f^ - w^||^2
        return (torch.softmax(per_proxy, dim=-1) * per_proxy).sum(-1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Scaled class scores, the network's logits."""
        return self.scale * self.similarities(f)

    def rows(self, classes: torch.Tensor) -> torch.Tensor:
        """Boolean mask over the weight rows of the classes in the boolean mask ``classes``."""
        return classes.repeat_interleave(self.proxies)

    @torch.no_grad()
    def imprint_(self, c: int, vectors: torch.Tensor) -> None:
        """Set class ``c``'s ``proxies`` weight rows to ``vectors`` (``(proxies, dim)``)."""
        self.weight[c * self.proxies : (c + 1) * self.proxies] = vectors.to(self.weight)

    def keep_frozen(self) -> None:
        """Remember the frozen rows' values (call before the optimiser step)."""
        self._kept = self.weight.detach()[self.rows(self.frozen)].clone() if self.frozen.any() else None

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Put the frozen rows back to the values :meth:`keep_frozen` saw (call after the step)."""
        if self._kept is not None:
            self.weight[self.rows(self.frozen)] = self._kept
            self._kept = None


def _stages(net: nn.Module, name: str) -> list[nn.Module]:
    # Read by attribute so components need not import the networks (a lower layer may not import a peer).
    for names in _STAGE_NAMES:
        if all(isinstance(getattr(net, n, None), nn.Module) for n in names):
            return [getattr(net, n) for n in names]
    feats = getattr(net, "features", None)
    if isinstance(feats, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in feats):
        return [m for m in feats if isinstance(m, nn.ReLU)]  # the small CNN: each conv block ends in its ReLU
    raise ConfigError(
        f"{name} distils the spatial feature maps of a network's intermediate stages (POD-spatial), but "
        f"model {type(net).__name__} has no such stages (a fully connected network has no spatial maps, and "
        f"faking them would not be the method). Use a convolutional network of the model registry: "
        f"--set model=cnn, or model=resnet32 / resnet18 for 32x32 images (`cl-bench list models -v`)."
    )


def require_stages(net: nn.Module, name: str) -> None:
    """Raise a one-paragraph :class:`ConfigError` unless :func:`stage_outputs` can read ``net``'s stages."""
    _stages(net, name)


@contextmanager
def _capture(modules: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    maps: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: maps.append(out)) for m in modules]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


def stage_outputs(net: nn.Module, x: torch.Tensor, name: str = "this method"
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
    """The embedding ``net.features(x)`` and the output map of every stage, first stage first.

    Hooks are registered for this call only, so copies of the network (a teacher) carry none.

    Raises:
        ConfigError: For a network without spatial stages (the MLP).
    """
    with _capture(_stages(net, name)) as maps:
        f = net.features(x).flatten(1)
    return f, list(maps)


@torch.no_grad()
def embed_dim(net: nn.Module, input_shape: tuple[int, ...], device: torch.device | str) -> int:
    """Size of ``net.features`` for inputs of ``input_shape`` (one zero input, eval mode)."""
    was_training = net.training
    net.eval()
    try:
        return int(net.features(torch.zeros(1, *input_shape, device=device)).flatten(1).shape[1])
    finally:
        net.train(was_training)
