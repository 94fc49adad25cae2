"""The source phase of a test-time adaptation run: the source model, trained or loaded, cached.

:func:`source_model` trains the stream's source architecture on the clean source data (or loads a
checkpoint), cached by :func:`source_key` in memory and on disk, so every method (and every resumed
run) on a stream starts from exactly the same weights.

References:
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
        (CVPR 2023): the source-model-then-adapt protocol.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core import atomic
from cl_bench.core.errors import ConfigError
from cl_bench.core.types import Scenario, TensorData, spec_hash
from cl_bench.nets.models import build_source_model, restrict_outputs

#: Source-phase optimiser: Adam at lr 1e-3, batches of 128 (a standard small-CNN recipe, not from a TTA paper).
SOURCE_LR, SOURCE_BATCH = 1e-3, 128

_MEMORY: dict[str, dict[str, torch.Tensor]] = {}


def cache_dir() -> Path:
    """Where trained source models are cached: ``$CL_BENCH_CACHE`` or ``~/.cache/cl_bench``."""
    return Path(os.environ.get("CL_BENCH_CACHE") or Path.home() / ".cache" / "cl_bench") / "source_models"


def _data_digest(data: TensorData) -> str:
    h = hashlib.sha256()
    for t in (data.x, data.y):
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(data.transform).encode())
    return h.hexdigest()


def source_key(scenario: Scenario, seed: int) -> str:
    """Identity of a trained source model: the clean training data itself (not the stream around it: every
    setting of a stream shares its source model), the architecture, the recipe and the seed."""
    src = scenario.source
    assert src is not None and src.train is not None
    return spec_hash({"data": _data_digest(src.train), "input_shape": list(scenario.input_shape),
                      "n_classes": scenario.n_classes, "model": src.model, "seed": seed, "epochs": src.epochs,
                      "lr": SOURCE_LR, "batch": SOURCE_BATCH, "torch": torch.__version__})  # fmt: skip


def train_source(net: nn.Module, data: TensorData, epochs: int, seed: int) -> None:
    """Train ``net`` on labelled clean source ``data`` (Adam, cross-entropy), seeded, on ``data``'s device."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=SOURCE_LR)
    net.train()
    n = len(data)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for b in range(math.ceil(n / SOURCE_BATCH)):
            idx = perm[b * SOURCE_BATCH : (b + 1) * SOURCE_BATCH]
            if len(idx) < 2:  # BatchNorm needs two examples in training mode
                continue
            x, y = data.batch(idx)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()


def source_model(scenario: Scenario, seed: int, device: str = "cpu") -> nn.Module:
    """The source model of a TTA stream, in eval mode: loaded from its checkpoint or trained (cached).

    Trained models are cached in memory and under :func:`cache_dir` by :func:`source_key`, so every
    method (and every resumed run) on a stream starts from exactly the same weights.

    Raises:
        ConfigError: Unknown architecture, a checkpoint that does not fit it, or neither source data nor
            a checkpoint.
    """
    src = scenario.source
    if src is None:
        raise ConfigError(f"scenario {scenario.name!r} has no source domain; it is not a TTA stream")
    if src.weights is not None:
        from cl_bench.nets.backbones import load_weights, read_state_dict

        # The checkpoint's own width (e.g. ImageNet-1k's 1000); an output mask then keeps the stream's classes.
        net = build_source_model(src.model, scenario.input_shape, src.checkpoint_classes or scenario.n_classes)
        load_weights(net, read_state_dict(src.weights), source=f"source checkpoint {src.weights}",
                     hint=f"The source architecture is {src.model!r} (--set scenario.source_model=...); a "
                          f"RobustBench CIFAR-10 'Standard' file needs wrn28_10.")  # fmt: skip
        if src.output_rows is not None:
            restrict_outputs(net, src.output_rows)
        return net.to(device).eval()
    net = build_source_model(src.model, scenario.input_shape, scenario.n_classes)
    if src.train is None:
        from cl_bench.core.config import field_types
        from cl_bench.core.registry import SCENARIOS

        cls = SCENARIOS.get(scenario.name).config_cls if scenario.name in SCENARIOS.names() else None
        params = field_types(cls) if cls is not None else {}
        clean = (" or the clean training data with --set scenario.clean_root=DIR (the folder holding the "
                 "CIFAR python batches)" if "clean_root" in params else "")  # fmt: skip
        raise ConfigError(f"scenario {scenario.name!r} has no clean source training data to train its source model "
                          f"on: pass a source checkpoint with --set scenario.source_weights=FILE{clean}")  # fmt: skip
    key = source_key(scenario, seed)
    path = cache_dir() / f"{key}.pt"
    if key not in _MEMORY and path.is_file():
        try:
            _MEMORY[key] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache entry is retrained below
            path.unlink(missing_ok=True)
    if key not in _MEMORY:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # seeded initialisation, independent of whatever ran before
            net = build_source_model(src.model, scenario.input_shape, scenario.n_classes)
            train_source(net, src.train, src.epochs, seed)
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        _MEMORY[key] = state
        try:
            atomic.torch_save(state, path)
        except OSError:  # an unwritable cache only costs retraining
            pass
    net.load_state_dict(_MEMORY[key])
    return copy.deepcopy(net).to(device).eval()


__all__ = ["SOURCE_BATCH", "SOURCE_LR", "cache_dir", "source_key", "source_model", "train_source"]
