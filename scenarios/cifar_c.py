"""CIFAR-10-C and CIFAR-100-C: the released corruption files as test-only TTA streams (``train`` is None).

The files are read by :mod:`cl_bench.data.cifar_c`; the clean source data (``clean_root``), when given, by
:mod:`cl_bench.data.cifar`.
"""

from __future__ import annotations

import torch

from cl_bench.core.errors import DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, TensorData
from cl_bench.data import corruptions as C
from cl_bench.data.cifar_c import CIFAR_C_TRANSFORM as _CIFAR_TRANSFORM
from cl_bench.data.cifar_c import load_cifar_c
from cl_bench.data.streams import with_data
from cl_bench.data.tta_streams import TTA_BATCH_SIZE, TTAOptions, tta_experiences, tta_spec


def _cifar_c(name: str, n_classes: int, root: str | None, severity: int, corruptions: tuple[str, ...],
             clean_root: str | None, seed: int, tta: TTAOptions) -> Scenario:  # fmt: skip
    corruptions = tuple(corruptions)
    _, spec = load_cifar_c(root, name, corruptions, severity)  # validates every file once, up front
    data = str(spec.pop("data"))
    n_rows = int(spec["rows_per_severity"])  # type: ignore[call-overload]

    def domain_data(corruption: str, sev: int, keep: torch.Tensor) -> TensorData:
        data = load_cifar_c(root, name, (corruption,), sev)[0][0]
        if len(data.y) and int(data.y.max()) >= n_classes:
            raise DataError(f"labels.npy of {name} goes up to {int(data.y.max())}; expected labels "
                            f"0-{n_classes - 1}")  # fmt: skip
        return data.subset(keep)

    train = test = None
    if clean_root is not None:
        from cl_bench.data.cifar import CIFAR10, CIFAR100, load_cifar

        tr, te, clean_spec = load_cifar(CIFAR10 if n_classes == 10 else CIFAR100, clean_root, download=False)
        data += f"; clean source: {clean_spec['data']}"
        # The source side must see what the corrupted side sees: x/255, RobustBench's convention.
        train, test = TensorData(tr.x, tr.y, _CIFAR_TRANSFORM), TensorData(te.x, te.y, _CIFAR_TRANSFORM)
        spec["clean"] = {k: clean_spec[k] for k in ("dataset", "split")}
    source = tta.source(train, test)
    experiences = tta_experiences(tta.setting, corruptions, severity, domain_data, n_rows, n_classes,
                                  clean=test, insert_clean=tta.insert_clean, n_per_domain=tta.n_per_domain,
                                  concentration=tta.concentration, seed=seed)  # fmt: skip
    spec = {**spec, "corruptions": list(corruptions), "severity": severity,
            **tta_spec(tta.setting, tta.n_per_domain, tta.concentration, tta.insert_clean, seed, source)}  # fmt: skip
    return with_data(Scenario(name, experiences, spec, n_classes, "domain_il", {"batch_size": TTA_BATCH_SIZE},
                              source), data)  # fmt: skip


@SCENARIOS.register(
    "cifar10_c",
    reference="Hendrycks & Dietterich, 'Benchmarking Neural Network Robustness to Common Corruptions and "
    "Perturbations' (ICLR 2019); released CIFAR-10-C files",
)
def cifar10_c(
    root: str | None = None,
    severity: int = 5,
    corruptions: tuple[str, ...] = C.BENCHMARK_ORDER,
    clean_root: str | None = None,
    seed: int = 0,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    insert_clean: bool = False,
    source_model: str = "wrn28_10",
    source_weights: str | None = None,
    source_epochs: int = 5,
    source_free: bool = False,
) -> Scenario:
    """CIFAR-10-C from the released files: one test-only experience per corruption (10,000 images each).

    Args:
        root: Folder with ``labels.npy`` and ``<corruption>.npy`` (50,000 x 32 x 32 x 3 uint8).
        severity: Severity 1-5 (rows (s-1)*10,000 .. s*10,000).
        corruptions: One experience per name, in order (default: the benchmark order).
        clean_root: Folder with the clean CIFAR python batches: source data for training a source model,
            for source-based methods, ``insert_clean`` and ``clean_acc_after`` (unset = checkpoint only).
        seed: Seeds the image subset and the order inside each domain.
        setting: TTA stream setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        insert_clean: Insert the clean test images between corruption domains.
        source_model: Source architecture (default wrn28_10, RobustBench's 'Standard'; cnn_bn trains on a CPU).
        source_weights: Source checkpoint (state dict or RobustBench file); unset = train on the clean data.
        source_epochs: Epochs of the source phase.
        source_free: Give TTA methods no source data.

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
    """
    tta = TTAOptions(setting, n_per_domain, concentration, insert_clean, source_model, source_weights,
                     source_epochs, source_free)
    return _cifar_c("cifar10_c", 10, root, severity, corruptions, clean_root, seed, tta)


@SCENARIOS.register(
    "cifar100_c",
    reference="Hendrycks & Dietterich, 'Benchmarking Neural Network Robustness to Common Corruptions and "
    "Perturbations' (ICLR 2019); released CIFAR-100-C files",
)
def cifar100_c(
    root: str | None = None,
    severity: int = 5,
    corruptions: tuple[str, ...] = C.BENCHMARK_ORDER,
    clean_root: str | None = None,
    seed: int = 0,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    insert_clean: bool = False,
    source_model: str = "resnext29",
    source_weights: str | None = None,
    source_epochs: int = 5,
    source_free: bool = False,
) -> Scenario:
    """CIFAR-100-C from the released files: one test-only experience per corruption (10,000 images each).

    Args:
        root: Folder with ``labels.npy`` and ``<corruption>.npy`` (50,000 x 32 x 32 x 3 uint8).
        severity: Severity 1-5 (rows (s-1)*10,000 .. s*10,000).
        corruptions: One experience per name, in order (default: the benchmark order).
        clean_root: Folder with the clean CIFAR python batches: source data for training a source model,
            for source-based methods, ``insert_clean`` and ``clean_acc_after`` (unset = checkpoint only).
        seed: Seeds the image subset and the order inside each domain.
        setting: TTA stream setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        insert_clean: Insert the clean test images between corruption domains.
        source_model: Source architecture (default resnext29, RobustBench's Hendrycks2020AugMix_ResNeXt, the
            RMT benchmark's CIFAR-100-C source; cnn_bn trains on a CPU).
        source_weights: Source checkpoint (state dict or RobustBench file); unset = train on the clean data.
        source_epochs: Epochs of the source phase.
        source_free: Give TTA methods no source data.

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
    """
    tta = TTAOptions(setting, n_per_domain, concentration, insert_clean, source_model, source_weights,
                     source_epochs, source_free)
    return _cifar_c("cifar100_c", 100, root, severity, corruptions, clean_root, seed, tta)
