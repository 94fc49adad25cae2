"""Test-time adaptation protocol: stream settings and the source phase.

A TTA stream is a sequence of unlabelled test domains (one experience each, ``train`` None) plus a
clean source domain (:class:`~cl_bench.types.SourceDomain`). The runner first obtains the source model
(:func:`source_model`: trained on the clean source data, or loaded from a checkpoint; cached by spec hash
so every method on a stream starts from the same weights), then feeds each test batch to
``Method.adapt`` and counts errors on the predictions made before the update (online error).

Stream settings (:data:`TTA_SETTINGS`), as in the continual TTA literature:

* ``continual``: the domains in order, one severity (Wang et al. 2022, CoTTA; Döbler et al. 2023, RMT).
* ``gradual``: within each domain the severity goes 1, 2, 3, 4, 5, 4, 3, 2, 1 (one experience each).
* ``mixed_domains``: the images of every domain pooled and shuffled into one experience (RMT, Sec. 4).
* ``reset_each_shift``: ``continual``, but the runner resets the method at each domain shift.
* ``correlated``: ``continual`` with labels ordered by a Dirichlet process per domain (Yuan et al. 2023,
  RoTTA; Gong et al. 2022, NOTE): smaller ``concentration`` = longer runs of one class.

``insert_clean`` puts the clean source test images between corruption domains, to measure forgetting
online (``online_error_clean``); ``clean_acc_after`` is measured after the stream in every setting that
has clean test data.

References:
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022).
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
        (CVPR 2023); benchmark code https://github.com/mariodoebler/test-time-adaptation.
    Yuan, Xie & Li, "Robust Test-Time Adaptation in Dynamic Scenarios" (CVPR 2023).
    Gong et al., "NOTE: Robust Continual Test-time Adaptation Against Temporal Correlation" (NeurIPS 2022).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models import build_source_model
from .types import Experience, Scenario, SourceDomain, TensorData, spec_hash

TTA_SETTINGS: tuple[str, ...] = ("continual", "gradual", "mixed_domains", "reset_each_shift", "correlated")
#: Severities of one domain in the gradual setting (RMT, Sec. 4.1).
GRADUAL_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5, 4, 3, 2, 1)
#: Default TTA batch size (CoTTA / RMT on CIFAR-10-C).
TTA_BATCH_SIZE = 200
#: Source-phase optimiser: Adam at lr 1e-3, batches of 128 (a standard small-CNN recipe, not from a TTA paper).
SOURCE_LR, SOURCE_BATCH = 1e-3, 128

DomainData = Callable[[str, int, torch.Tensor], TensorData]
"""``(corruption, severity, kept indices) -> test data of that domain`` (the kept rows, in order)."""


def check_setting(setting: str, concentration: float, n_per_domain: int) -> None:
    """Raise :class:`ConfigError` for an unknown setting or out-of-range stream options."""
    if setting not in TTA_SETTINGS:
        raise ConfigError(f"unknown TTA stream setting {setting!r}; choose one of {', '.join(TTA_SETTINGS)} "
                          f"(--set scenario.setting=continual)")  # fmt: skip
    if not concentration > 0:
        raise ConfigError(f"concentration (of the Dirichlet label order) must be > 0, got {concentration}")
    if n_per_domain < 0:
        raise ConfigError(f"n_per_domain must be >= 0 (0 = every image), got {n_per_domain}")


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *parts]))


def dirichlet_order(y: np.ndarray, n_classes: int, concentration: float, rng: np.random.Generator) -> np.ndarray:
    """A label-correlated order of ``y``'s indices (Dirichlet slots, as RoTTA's non-i.i.d. sampler).

    Each class's examples are split over ``min(n_classes, 100)`` time slots in proportions drawn from
    Dirichlet(concentration); slots are shuffled inside and played in order.
    """
    n_slots = min(n_classes, 100)
    slots: list[list[int]] = [[] for _ in range(n_slots)]
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = (np.cumsum(rng.dirichlet([concentration] * n_slots))[:-1] * len(idx)).astype(int)
        for s, part in enumerate(np.split(idx, cuts)):
            slots[s].extend(part.tolist())
    return np.array([i for s in slots for i in rng.permutation(s)], dtype=np.int64)


def _reorder(data: TensorData, order: np.ndarray) -> TensorData:
    return data.subset(torch.from_numpy(order))


def tta_experiences(
    setting: str,
    corruptions: tuple[str, ...],
    severity: int,
    domain_data: DomainData,
    n_test: int,
    n_classes: int,
    *,
    clean: TensorData | None,
    insert_clean: bool,
    n_per_domain: int,
    concentration: float,
    seed: int,
) -> list[Experience]:
    """The experiences of a TTA stream in ``setting`` (test-only; ``meta`` = corruption and severity).

    Args:
        setting: One of :data:`TTA_SETTINGS`.
        corruptions: Domains, in order.
        severity: Severity of the non-gradual settings.
        domain_data: Builds one domain's test data from the kept indices.
        n_test: Number of test images available per domain.
        n_classes: Label-space size.
        clean: Clean test data (needed by ``insert_clean``).
        insert_clean: Insert the clean test images after each corruption domain (severity 0).
        n_per_domain: Images per domain (0 = all); the same seeded subset in every domain.
        concentration: Dirichlet concentration of the ``correlated`` setting.
        seed: Seeds the subset, the mixed order and the correlated order (i.i.d. settings keep the stored
            order of the test images).

    Raises:
        ConfigError: For bad options, or ``insert_clean`` without clean test data.
    """
    check_setting(setting, concentration, n_per_domain)
    if insert_clean and clean is None:
        raise ConfigError("insert_clean needs the clean test images of the source domain, which this stream "
                          "does not have (for cifar10_c/cifar100_c pass the clean CIFAR folder with "
                          "--set scenario.clean_root=DIR)")  # fmt: skip
    keep = torch.arange(n_test)
    if n_per_domain and n_per_domain < n_test:
        keep = torch.from_numpy(np.sort(_rng(seed, 0).permutation(n_test)[:n_per_domain]))
    plan = [(c, s) for c in corruptions for s in (GRADUAL_SEVERITIES if setting == "gradual" else (severity,))]
    domains: list[tuple[str, int, TensorData]] = []
    for i, (c, s) in enumerate(plan):
        data = domain_data(c, s, keep)
        if setting == "correlated":
            data = _reorder(data, dirichlet_order(data.y.numpy(), n_classes, concentration, _rng(seed, 1, i)))
        # Otherwise the stored order stays (released CIFAR-10-C and MNIST test files are not class-sorted),
        # as RobustBench's CIFAR-10-C loader does by default.
        domains.append((c, s, data))
    if setting == "mixed_domains":
        pooled = TensorData(torch.cat([d.x for _, _, d in domains]), torch.cat([d.y for _, _, d in domains]),
                            domains[0][2].transform)  # fmt: skip
        mixed = _reorder(pooled, _rng(seed, 2).permutation(len(pooled)))
        domains = [("mixed", severity, mixed)]
    clean_kept = None if clean is None else clean.subset(keep[keep < len(clean)])
    experiences: list[Experience] = []
    for k, (c, s, data) in enumerate(domains):
        meta: dict[str, Any] = {"corruption": c, "severity": s}
        if c == "mixed":
            meta["domains"] = list(corruptions)
        experiences.append(Experience(len(experiences), None, data, tuple(range(n_classes)), None, meta))
        last_of_domain = k + 1 == len(domains) or domains[k + 1][0] != c
        if insert_clean and last_of_domain and clean_kept is not None and k + 1 < len(domains):
            experiences.append(Experience(len(experiences), None, clean_kept, tuple(range(n_classes)), None,
                                          {"corruption": "none", "severity": 0}))  # fmt: skip
    return experiences


def tta_spec(setting: str, n_per_domain: int, concentration: float, insert_clean: bool, seed: int,
             source: SourceDomain) -> dict[str, Any]:  # fmt: skip
    """What a TTA stream's spec says about its setting and source phase."""
    return {"tta_setting": setting, "n_per_domain": n_per_domain,
            "concentration": concentration if setting == "correlated" else None, "insert_clean": insert_clean,
            "order_seed": seed, "source_model": source.model, "source_epochs": source.epochs,
            "source_weights": None if source.weights is None else str(source.weights),
            "source_weights_sha256": _weights_digest(source.weights),
            "source_free": source.free, "reset_each_shift": source.reset_each_shift,
            "gradual_severities": list(GRADUAL_SEVERITIES) if setting == "gradual" else None}  # fmt: skip


def _weights_digest(path: str | None) -> str | None:
    # The checkpoint's content, not its path, identifies the stream's source model in records and boards.
    if path is None or not Path(path).is_file():
        return None
    from .backbones import weights_sha256

    return weights_sha256(path)


# -- the source phase ------------------------------------------------------------------------------------------------
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
    net = build_source_model(src.model, scenario.input_shape, scenario.n_classes)
    if src.weights is not None:
        from .backbones import load_weights, read_state_dict

        load_weights(net, read_state_dict(src.weights), source=f"source checkpoint {src.weights}",
                     hint=f"The source architecture is {src.model!r} (--set scenario.source_model=...); a "
                          f"RobustBench CIFAR-10 'Standard' file needs wrn28_10.")  # fmt: skip
        return net.to(device).eval()
    if src.train is None:
        raise ConfigError(f"scenario {scenario.name!r} has no clean source training data: pass a source "
                          f"checkpoint with --set scenario.source_weights=FILE")  # fmt: skip
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
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, tmp)
            tmp.replace(path)
        except OSError:  # an unwritable cache only costs retraining
            pass
    net.load_state_dict(_MEMORY[key])
    return copy.deepcopy(net).to(device).eval()


__all__ = ["GRADUAL_SEVERITIES", "TTA_BATCH_SIZE", "TTA_SETTINGS", "check_setting", "dirichlet_order",
           "source_model", "tta_experiences", "tta_spec"]  # fmt: skip
