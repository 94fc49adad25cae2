"""A model registry in the style of timm: ``create_model(name, n_classes=..., input_shape=...)``.

Every registered network exposes ``features(x)`` (input -> embedding) and ``head`` (embedding -> logits).
Methods pick one by name (``--set model=resnet18``; the supervised family's
:func:`~cl_bench.families.supervised.build_network` calls :func:`create_model`), and
``cl-bench list models -v`` prints each with its parameter count, input size and reference.

Register a new network with the decorator::

    @register_model("my_net", input_shape=(3, 32, 32), reference="Author et al. (2024)")
    def my_net(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module: ...

References:
    Wightman, "PyTorch Image Models" (timm): ``register_model`` / ``create_model`` / ``list_models``.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cl_bench.core.errors import ConfigError
from cl_bench.nets import models, resnet, resnext

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered network.

    Attributes:
        name: Registry name (``--set model=NAME``).
        builder: ``builder(n_classes, input_shape, **options) -> nn.Module``.
        input_shape: The input shape (C, H, W) the reference uses; ``None`` for any shape.
        description: One line for ``cl-bench list models``.
        reference: Paper and code the architecture (and its parameter count) follows.
        options: Keyword options the builder accepts beyond ``n_classes`` and ``input_shape``.
    """

    name: str
    builder: Builder
    input_shape: tuple[int, ...] | None
    description: str
    reference: str
    options: tuple[str, ...] = ()


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, input_shape: tuple[int, ...] | None = None, description: str = "",
                   reference: str = "") -> Callable[[Builder], Builder]:  # fmt: skip
    """Decorator registering ``builder(n_classes, input_shape, **options)`` under ``name``.

    Raises:
        ValueError: If ``name`` is already registered (two networks under one name would make records ambiguous).
    """

    def wrap(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        params = inspect.signature(builder).parameters
        options = tuple(p for p in params if p not in ("n_classes", "input_shape"))
        doc = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(name, builder, input_shape, description or (doc[0] if doc else ""), reference,
                                   options)  # fmt: skip
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered networks matching the shell-style ``pattern`` (timm's ``list_models``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        ConfigError: For an unknown name, listing the known ones.
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())} (--set model=mlp; "
                          f"`cl-bench list models -v` shows them)")  # fmt: skip
    return _MODELS[name]


def create_model(name: str, n_classes: int, input_shape: tuple[int, ...] | None = None, **options: object) -> nn.Module:
    """Build the network registered as ``name`` for ``n_classes`` outputs and inputs of ``input_shape``.

    Args:
        name: A name of :func:`list_models`.
        n_classes: Number of outputs of ``head``.
        input_shape: Input shape (C, H, W) or (D,); defaults to the entry's reference shape.
        **options: Builder options (e.g. ``hidden_size`` for ``mlp``); unknown ones are an error.

    Raises:
        ConfigError: For an unknown name or option, or a shape the network does not take.
    """
    entry = model_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ConfigError(f"model {name!r} takes no option {', '.join(unknown)}; its options are "
                          f"{', '.join(entry.options) or '(none)'}")  # fmt: skip
    shape = tuple(input_shape) if input_shape is not None else entry.input_shape
    if shape is None:
        raise ConfigError(f"model {name!r} needs input_shape (it has no reference input size)")
    return entry.builder(n_classes=n_classes, input_shape=shape, **options)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``, as the reference implementations count them."""
    return sum(p.numel() for p in model.parameters())


def _image(name: str, input_shape: tuple[int, ...], size: tuple[int, int] | None = None) -> int:
    """Channels of an image ``input_shape``; a clear error for flat inputs or (if given) the wrong size."""
    if len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got shape {input_shape}; use model=mlp")
    if size is not None and tuple(input_shape[1:]) != size:
        raise ConfigError(f"model {name!r} takes {size[0]}x{size[1]} inputs, got {input_shape}; use model=cnn "
                          f"for other sizes")  # fmt: skip
    return input_shape[0]


# -- the registered networks -------------------------------------------------------------------------------------
_DE_LANGE = "De Lange et al., 'Continual evaluation for lifelong learning' (ICLR 2023): MLP 2x400 on MNIST"
_CIFAR = (3, 32, 32)


@register_model("mlp", input_shape=(1, 28, 28), reference=_DE_LANGE)
def _mlp(n_classes: int, input_shape: tuple[int, ...], hidden_size: int = 400, hidden_layers: int = 2) -> nn.Module:
    """Fully connected ReLU network on flattened inputs (any shape)."""
    return models.MLP(math.prod(input_shape), n_classes, hidden_size, hidden_layers)


@register_model("cnn", input_shape=_CIFAR, reference="cl_bench's own small CNN (two conv blocks, BatchNorm)")
def _cnn(n_classes: int, input_shape: tuple[int, ...], hidden_size: int = 400, hidden_layers: int = 2) -> nn.Module:
    """Two conv blocks and a linear head, width hidden_size // 8 (images of any size >= 8x8)."""
    del hidden_layers  # accepted so every supervised config builds any model; the CNN's depth is fixed
    return models.SmallCNN(_image("cnn", input_shape), n_classes, width=max(8, hidden_size // 8))


@register_model("lenet_bn", input_shape=(1, 28, 28),
                reference="LeCun et al. (1998) LeNet-5 with BatchNorm (Ioffe & Szegedy, ICML 2015)")  # fmt: skip
def _lenet_bn(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """LeNet-5 with BatchNorm, for 28x28 images (source model of the MNIST TTA streams)."""
    return models.LeNetBN(_image("lenet_bn", input_shape, (28, 28)), n_classes)


@register_model("wrn28_10", input_shape=_CIFAR,
                reference="Zagoruyko & Komodakis (BMVC 2016); RobustBench's CIFAR-10 'Standard' key names")  # fmt: skip
def _wrn28_10(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """WideResNet-28-10 for 32x32 images (source model of CoTTA / RMT's CIFAR-C benchmarks)."""
    return models.WideResNet(28, 10, n_classes, _image("wrn28_10", input_shape, (32, 32)))


@register_model("resnet18", input_shape=_CIFAR,
                reference="Buzzega et al., DER (NeurIPS 2020), mammoth backbone/ResNet18.py (nf=64)")  # fmt: skip
def _resnet18(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stem at stride 1, no max-pool, [2,2,2,2] basic blocks (mammoth, DER, ER-ACE)."""
    return resnet.resnet18(n_classes, _image("resnet18", input_shape))


@register_model("reduced_resnet18", input_shape=_CIFAR,
                reference="Lopez-Paz & Ranzato, GEM (NeurIPS 2017), model/common.py ResNet18(nf=20)")  # fmt: skip
def _reduced_resnet18(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Reduced ResNet-18 with nf = 20 (GEM, A-GEM, ER-ACE)."""
    return resnet.reduced_resnet18(n_classes, _image("reduced_resnet18", input_shape))


@register_model("resnet32", input_shape=_CIFAR,
                reference="Zhou et al., PyCIL (2023), convs/cifar_resnet.py resnet32 + a linear head")  # fmt: skip
def _resnet32(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """CIFAR ResNet-32, 16-32-64 channels, option-A shortcuts (iCaRL, PODNet, PyCIL)."""
    return resnet.resnet32(n_classes, _image("resnet32", input_shape))


@register_model("resnext29", input_shape=_CIFAR,
                reference="Hendrycks et al., AugMix (ICLR 2020) ResNeXt-29 (cardinality 4, base width 32); "
                          "RobustBench Hendrycks2020AugMix_ResNeXt key names (CIFAR-100-C source model)")  # fmt: skip
def _resnext29(n_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """CIFAR ResNeXt-29 of AugMix: grouped bottlenecks, 1024-d embedding (CoTTA / RMT's CIFAR-100-C source)."""
    return resnext.ResNeXt29(n_classes, _image("resnext29", input_shape, (32, 32)))


# -- ImageNet-scale networks: the reference architectures, weights only from local files ----------------------------
_IMAGENET = (3, 224, 224)


class PretrainedNet(nn.Module):
    """A reference ImageNet network split into ``features`` (its pooled embedding) and a new linear ``head``.

    The body keeps the reference implementation's module names, so the published state dict loads key for key
    (its classifier is dropped: the stream has its own classes). ``weights_sha256`` names the file loaded (None
    for random initialisation).
    """

    def __init__(self, body: nn.Module, dim: int, n_classes: int, weights_sha256: str | None) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(dim, n_classes)
        self.weights_sha256 = weights_sha256

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _load_body(name: str, body: nn.Module, weights: str | None, fmt: str) -> str | None:
    """Load a local weight file into ``body`` (checked key for key); its SHA-256, or None without weights."""
    from cl_bench.nets.backbones import load_weights, read_state_dict, weights_sha256

    if weights is None:
        return None
    load_weights(body, read_state_dict(weights), source=f"{name} weight file {weights}",
                 hint=f"pass {fmt} with --set model_weights=PATH (runs never download weights)")  # fmt: skip
    return weights_sha256(weights)


@register_model("resnet50", input_shape=_IMAGENET,
                reference="He et al., 'Deep Residual Learning for Image Recognition' (CVPR 2016); torchvision "
                          "models/resnet.py resnet50 (IMAGENET1K_V1 weights load key for key)")  # fmt: skip
def _resnet50(n_classes: int, input_shape: tuple[int, ...], weights: str | None = None) -> nn.Module:
    """torchvision's ResNet-50 (bottleneck [3,4,6,3]) with a new head; weights from a local torchvision file."""
    from torchvision.models import resnet50

    if _image("resnet50", input_shape) != 3:
        raise ConfigError(f"model 'resnet50' takes RGB inputs, got {input_shape}; use model=cnn")
    body = resnet50(weights=None)
    body.fc = nn.Identity()  # the embedding is the pooled 2048-d output; the published 1000-class fc is dropped
    return PretrainedNet(body, 2048, n_classes,
                         _load_body("resnet50", body, weights, "a torchvision ResNet-50 state dict"))  # fmt: skip


@register_model("vit_b_16", input_shape=_IMAGENET,
                reference="Dosovitskiy et al., 'An Image is Worth 16x16 Words' (ICLR 2021); timm "
                          "vit_base_patch16_224 (token pooling, 768-d), the backbone of L2P / DualPrompt / "
                          "CODA-Prompt / RanPAC")  # fmt: skip
def _vit_b_16(n_classes: int, input_shape: tuple[int, ...], weights: str | None = None) -> nn.Module:
    """timm's ViT-B/16 at 224 px with a new head; weights from a local timm file (.pth/.safetensors)."""
    from cl_bench.nets.backbones import create_backbone

    if tuple(input_shape) != _IMAGENET:
        raise ConfigError(f"model 'vit_b_16' takes 3x224x224 inputs, got {input_shape}; resize the stream "
                          f"(e.g. --set scenario.image_size=224) or use model=resnet18")  # fmt: skip
    body = create_backbone("vit_base_patch16_224")  # architecture only; the file is checked and loaded below
    return PretrainedNet(body, 768, n_classes,
                         _load_body("vit_b_16", body, weights, "a timm vit_base_patch16_224 state dict"))  # fmt: skip
