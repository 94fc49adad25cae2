"""Test-time adaptation streams: the settings that turn test domains into a TTA stream.

A TTA stream is a sequence of unlabelled test domains (one experience each, ``train`` None) plus a
clean source domain (:class:`~cl_bench.core.types.SourceDomain`). The source phase (training or
loading the source model) is :mod:`cl_bench.engine.source`; the TTA loop is :mod:`cl_bench.engine.tta_loop`.

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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.types import Experience, Shift, SourceDomain, TensorData

TTA_SETTINGS: tuple[str, ...] = ("continual", "gradual", "mixed_domains", "reset_each_shift", "correlated")
#: Severities of one domain in the gradual setting (RMT, Sec. 4.1).
GRADUAL_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5, 4, 3, 2, 1)
#: Default TTA batch size (CoTTA / RMT on CIFAR-10-C).
TTA_BATCH_SIZE = 200

DomainData = Callable[[str, int, torch.Tensor], TensorData]
"""``(corruption, severity, kept indices) -> test data of that domain`` (the kept rows, in order)."""



@dataclass(frozen=True)
class TTAOptions:
    """The test-time adaptation options every corruption stream takes (see :mod:`cl_bench.engine.source`).

    Attributes:
        setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting (RoTTA's default 0.1).
        insert_clean: Insert the clean test images between corruption domains.
        source_model: Source architecture ("auto": lenet_bn for 1x28x28, cnn_bn otherwise; wrn28_10).
        source_weights: Source checkpoint file (a state dict or RobustBench file); None = train it.
        source_epochs: Epochs of the source phase when training.
        source_free: Methods get no source data.
        train_domains: In the continual setting, also corrupt the training split (for supervised methods).
    """

    setting: str = "continual"
    n_per_domain: int = 0
    concentration: float = 0.1
    insert_clean: bool = False
    source_model: str = "auto"
    source_weights: str | None = None
    source_epochs: int = 5
    source_free: bool = False
    train_domains: bool = True

    def source(self, train: TensorData | None, test: TensorData | None) -> SourceDomain:
        """The source domain of a stream whose clean data is ``train``/``test``."""
        if self.source_epochs < 1:
            raise ConfigError(f"source_epochs must be >= 1, got {self.source_epochs}")
        return SourceDomain(train, test, self.source_model, self.source_weights, self.source_epochs,
                            self.source_free, self.setting == "reset_each_shift")  # fmt: skip


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
        # concat of the data's own type: file-backed domains (ImageNet-C) stay file-backed.
        pooled = type(domains[0][2]).concat([d for _, _, d in domains])
        mixed = _reorder(pooled, _rng(seed, 2).permutation(len(pooled)))
        domains = [("mixed", severity, mixed)]
    clean_kept = None if clean is None else clean.subset(keep[keep < len(clean)])
    experiences: list[Experience] = []
    for k, (c, s, data) in enumerate(domains):
        meta: dict[str, Any] = {"corruption": c, "severity": s}
        if c == "mixed":
            meta["domains"] = list(corruptions)
        experiences.append(Experience(len(experiences), None, data, tuple(range(n_classes)), None, meta, Shift(c, s)))
        last_of_domain = k + 1 == len(domains) or domains[k + 1][0] != c
        if insert_clean and last_of_domain and clean_kept is not None and k + 1 < len(domains):
            experiences.append(Experience(len(experiences), None, clean_kept, tuple(range(n_classes)), None,
                                          {"corruption": "none", "severity": 0}, Shift("none", 0)))  # fmt: skip
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
    from cl_bench.nets.backbones import weights_sha256

    return weights_sha256(path)


__all__ = ["GRADUAL_SEVERITIES", "TTA_BATCH_SIZE", "TTA_SETTINGS", "check_setting", "dirichlet_order",
           "tta_experiences", "tta_spec"]  # fmt: skip
