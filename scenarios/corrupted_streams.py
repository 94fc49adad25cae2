"""Corruption streams: one experience per corruption domain (domain-incremental, 10 or 100 classes).

* ``digits_c`` and ``mnist_c`` generate the corruptions here (:mod:`cl_bench.data.corruptions`,
  CIFAR-scale parameters) on the held-out and training parts of Split-Digits' and MNIST's data. Each
  experience carries the corrupted training split as ``train`` (so supervised continual methods run them as
  a domain-incremental stream) and the corrupted held-out split as ``test``.
* ``cifar10_c`` and ``cifar100_c`` (:mod:`cl_bench.scenarios.cifar_c`) read the released files.

The default order is :data:`~cl_bench.data.corruptions.BENCHMARK_ORDER` (the continual TTA order of
RMT / CoTTA) at severity 5.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, Standardize, TensorData
from cl_bench.data import corruptions as C
from cl_bench.data.cifar_c import check_stream as _check_stream
from cl_bench.data.streams import with_data
from cl_bench.data.tta_streams import TTA_BATCH_SIZE, TTAOptions, tta_experiences, tta_spec


def _domain_seed(seed: int, index: int, part: int) -> int:
    return int(np.random.SeedSequence([seed, index, part]).generate_state(1)[0])


def _corrupt_nchw(x: torch.Tensor, name: str, severity: int, seed: int, frost_dir: str | None) -> torch.Tensor:
    out = C.corrupt(x.permute(0, 2, 3, 1).numpy(), name, severity, seed=seed, frost_dir=frost_dir)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


def corrupted_stream(
    name: str,
    train: TensorData,
    test: TensorData,
    *,
    corruptions: tuple[str, ...],
    severity: int,
    seed: int,
    frost_dir: str | None,
    spec: dict[str, object],
    protocol_defaults: dict[str, object] | None = None,
    tta: TTAOptions | None = None,
    flip_invariant: bool = True,
) -> Scenario:
    """A domain-incremental stream of ``train``/``test`` (uint8 NCHW, 0-255) under each corruption in turn.

    The stream is also a test-time adaptation stream (its clean ``train``/``test`` are the source domain);
    ``tta`` chooses its setting. Only the ``continual`` setting with ``tta.train_domains`` corrupts the
    training split too (for supervised continual methods); every other setting is test-only.

    Args:
        name: Scenario name.
        train: Clean training data (stored uint8 images with values 0-255).
        test: Clean held-out data.
        corruptions: Corruption names, one experience each, in this order.
        severity: 1-5.
        seed: Seeds the corruptions (each domain and split gets its own derived seed).
        frost_dir: Folder with the original frost textures, or None (procedural, non-canonical).
        spec: What the clean data is (dataset, split, transform).
        protocol_defaults: Training-protocol defaults of the stream.
        tta: The test-time adaptation options (setting, source phase).
        flip_invariant: The clean images' :attr:`~cl_bench.core.types.Scenario.flip_invariant`.

    Raises:
        ConfigError: Unknown corruption or severity outside 1-5.

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
    """
    _check_stream(corruptions, severity)
    tta = tta or TTAOptions()
    n_classes = int(max(train.y.max(), test.y.max())) + 1

    def domain_data(corruption: str, sev: int, keep: torch.Tensor) -> TensorData:
        i = corruptions.index(corruption)
        seed_ = _domain_seed(seed, i, 1) if sev == severity else _domain_seed(seed, i, 10 + sev)
        sx = _corrupt_nchw(test.x[keep], corruption, sev, seed_, frost_dir)
        return TensorData(sx, test.y[keep], test.transform)

    experiences = tta_experiences(tta.setting, corruptions, severity, domain_data, len(test), n_classes,
                                  clean=test, insert_clean=tta.insert_clean, n_per_domain=tta.n_per_domain,
                                  concentration=tta.concentration, seed=seed)  # fmt: skip
    if tta.setting == "continual" and tta.train_domains:
        # Supervised continual methods train on the corrupted training split of each domain.
        for k, exp in enumerate(experiences):
            assert exp.shift is not None  # tta_experiences declares every experience's domain
            c = exp.shift.domain
            if c == "none":
                experiences[k] = dataclasses.replace(exp, train=train)
                continue
            i = corruptions.index(c)
            tx = _corrupt_nchw(train.x, c, severity, _domain_seed(seed, i, 0), frost_dir)
            experiences[k] = dataclasses.replace(exp, train=TensorData(tx, train.y, train.transform))
    full_spec = {**spec, "corruptions": list(corruptions), "severity": severity, "seed": seed,
                 "corruption_impl": "cl_bench.data.corruptions (make_cifar_c.py CIFAR-scale parameters)",
                 "frost": C.describe("frost", frost_dir) if "frost" in corruptions else None,
                 "train_domains": tta.setting == "continual" and tta.train_domains,
                 **tta_spec(tta.setting, tta.n_per_domain, tta.concentration, tta.insert_clean, seed,
                            tta.source(train, test))}  # fmt: skip
    defaults = {**(protocol_defaults or {}), "tta_batch_size": TTA_BATCH_SIZE}
    return Scenario(name, experiences, full_spec, n_classes, "domain_il", defaults, tta.source(train, test),
                    flip_invariant=flip_invariant)


@SCENARIOS.register(
    "digits_c",
    reference="Hendrycks & Dietterich, 'Benchmarking Neural Network Robustness to Common Corruptions and "
    "Perturbations' (ICLR 2019), CIFAR-scale parameters, on scikit-learn's 8x8 digits (Alpaydin & Kaynak 1998)",
)
def digits_c(
    severity: int = 5,
    corruptions: tuple[str, ...] = C.BENCHMARK_ORDER,
    seed: int = 0,
    frost_dir: str | None = None,
    test_fraction: float = 0.2,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    insert_clean: bool = False,
    source_model: str = "auto",
    source_weights: str | None = None,
    source_epochs: int = 30,
    source_free: bool = False,
    train_domains: bool = True,
) -> Scenario:
    """Digits-C: sklearn's 8x8 digits under one corruption per experience (domain-incremental, 10 classes).

    Pixel values 0-16 are rescaled to 0-255 before corrupting. The CIFAR-scale parameters are meant for
    32 x 32 images, so on 8 x 8 digits the blurs are relatively much stronger.

    Args:
        severity: Corruption severity, 1-5.
        corruptions: One experience per name, in order (default: the 15 benchmark corruptions).
        seed: Seeds the corruptions.
        frost_dir: Folder with frost1.png ... frost6.jpg; unset = procedural (non-canonical) frost.
        test_fraction: Share of each class held out (the split of ``split_digits``).
        setting: TTA stream setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        insert_clean: Insert the clean test images between corruption domains.
        source_model: Source architecture: auto, lenet_bn, cnn_bn or wrn28_10.
        source_weights: Source checkpoint (state dict or RobustBench file); unset = train on the clean data.
        source_epochs: Epochs of the source phase. 30 (measured here: the auto SmallCNN reaches 96.4% clean
            held-out accuracy, mean max-probability 0.79, against 75.8% / 0.21 after 5 epochs, seed 0).
        source_free: Give TTA methods no source data.
        train_domains: In the continual setting, also corrupt the training split (supervised methods).

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
        Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits" (UCI, 1998).
    """
    from sklearn.datasets import load_digits

    from cl_bench.data.streams import stratified_split

    data = load_digits()
    x = torch.tensor(np.round(data.images * 255.0 / 16.0), dtype=torch.uint8).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    tr, te = stratified_split(y, test_fraction, 0)
    transform = Standardize(scale=255.0, mean=(0.3,), std=(0.4,))
    spec = {"dataset": "sklearn_digits", "n_train": len(tr), "n_test": len(te), "test_fraction": test_fraction,
            "split_seed": 0, "pixels": "0-16 rescaled to 0-255 (rounded)",
            "transform": "x/255, standardize(0.3, 0.4)"}  # fmt: skip
    return corrupted_stream("digits_c", TensorData(x[tr], y[tr], transform), TensorData(x[te], y[te], transform),
                            corruptions=tuple(corruptions), severity=severity, seed=seed, frost_dir=frost_dir,
                            spec=spec, protocol_defaults={"batch_size": 10, "epochs": 1},
                            tta=TTAOptions(setting, n_per_domain, concentration, insert_clean, source_model,
                                           source_weights, source_epochs, source_free, train_domains),
                            flip_invariant=False)  # fmt: skip


@SCENARIOS.register(
    "mnist_c",
    reference="Mu & Gilmer, 'MNIST-C: A Robustness Benchmark for Computer Vision' (ICML-W 2019) for the idea; "
    "corruptions and CIFAR-scale parameters of Hendrycks & Dietterich (ICLR 2019), generated here",
)
def mnist_c(
    root: str | None = None,
    severity: int = 5,
    corruptions: tuple[str, ...] = C.BENCHMARK_ORDER,
    seed: int = 0,
    frost_dir: str | None = None,
    download: bool | None = None,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    insert_clean: bool = False,
    source_model: str = "auto",
    source_weights: str | None = None,
    source_epochs: int = 5,
    source_free: bool = False,
    train_domains: bool = True,
) -> Scenario:
    """MNIST under one generated corruption per experience (domain-incremental, 10 classes).

    Not the released MNIST-C files (Mu & Gilmer use their own corruption set): this applies Hendrycks &
    Dietterich's 15 corruptions at CIFAR-scale parameters to MNIST.

    Args:
        root: Folder with the MNIST IDX files (see ``split_mnist``).
        severity: Corruption severity, 1-5.
        corruptions: One experience per name, in order (default: the 15 benchmark corruptions).
        seed: Seeds the corruptions.
        frost_dir: Folder with frost1.png ... frost6.jpg; unset = procedural (non-canonical) frost.
        download: None = download only when no MNIST file at all is found; True / False = always try / never.
        setting: TTA stream setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        insert_clean: Insert the clean test images between corruption domains.
        source_model: Source architecture: auto, lenet_bn, cnn_bn or wrn28_10.
        source_weights: Source checkpoint (state dict or RobustBench file); unset = train on the clean data.
        source_epochs: Epochs of the source phase.
        source_free: Give TTA methods no source data.
        train_domains: In the continual setting, also corrupt the training split (supervised methods).

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
        Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision" (ICML Workshop 2019).
    """
    from cl_bench.data.mnist import load_mnist

    _check_stream(tuple(corruptions), severity)
    train, test, spec = load_mnist(root, download)
    data = spec.pop("data")
    sc = corrupted_stream("mnist_c", train, test, corruptions=tuple(corruptions), severity=severity, seed=seed,
                          frost_dir=frost_dir, spec=spec, protocol_defaults={"batch_size": 32, "epochs": 1},
                          tta=TTAOptions(setting, n_per_domain, concentration, insert_clean, source_model,
                                         source_weights, source_epochs, source_free, train_domains),
                          flip_invariant=False)  # fmt: skip
    return with_data(sc, data)


@SCENARIOS.register(
    "corrupted",
    reference="Hendrycks & Dietterich, 'Benchmarking Neural Network Robustness to Common Corruptions and "
    "Perturbations' (ICLR 2019), corruptions generated on any image scenario's data",
)
def corrupted(
    base: str = "split_cifar10",
    root: str | None = None,
    severity: int = 5,
    corruptions: tuple[str, ...] = C.BENCHMARK_ORDER,
    seed: int = 0,
    frost_dir: str | None = None,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    insert_clean: bool = False,
    source_model: str = "auto",
    source_weights: str | None = None,
    source_epochs: int = 5,
    source_free: bool = False,
    train_domains: bool = False,
) -> Scenario:
    """Any image scenario as a corruption stream: its pooled clean data is the source domain.

    The training sets of every experience of ``base`` form the clean source training data, their test sets
    the clean test data that each corruption domain corrupts. The images must be stored as uint8 0-255
    (N, C, H, W), as ``split_cifar10``, ``split_cifar100`` and ``split_mnist`` store them.

    Args:
        base: Registered image scenario to wrap (e.g. split_cifar10).
        root: Data folder passed to ``base`` (its ``root``), if set.
        severity: Corruption severity, 1-5.
        corruptions: One domain per name, in order (default: the 15 benchmark corruptions).
        seed: Seeds the corruptions, the image subset and the mixed/correlated orders.
        frost_dir: Folder with frost1.png ... frost6.jpg; unset = procedural (non-canonical) frost.
        setting: TTA stream setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        insert_clean: Insert the clean test images between corruption domains.
        source_model: Source architecture: auto, lenet_bn, cnn_bn or wrn28_10.
        source_weights: Source checkpoint (state dict or RobustBench file); unset = train on the clean data.
        source_epochs: Epochs of the source phase.
        source_free: Give TTA methods no source data.
        train_domains: In the continual setting, also corrupt the training data (supervised methods).

    Raises:
        ConfigError: Unknown base, corruption or severity, or a base whose data are not 0-255 images.

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
    """
    if base == "corrupted":
        raise ConfigError("corrupted cannot wrap itself; pass an image scenario, e.g. scenario.base=split_cifar10")
    _check_stream(tuple(corruptions), severity)
    inner = SCENARIOS.create(base, **({"root": root} if root is not None else {}))
    trains = [e.train for e in inner if e.train is not None]
    tests = [e.test for e in inner]
    if not trains:
        raise ConfigError(f"corrupted needs a base scenario with training data (the clean source); {base!r} has none")
    sample = tests[0]
    scale = getattr(sample.transform, "scale", 255.0)
    if sample.x.dtype != torch.uint8 or sample.x.dim() != 4 or sample.x.shape[1] not in (1, 3) or scale != 255.0:
        raise ConfigError(
            f"corrupted wraps image scenarios whose images are stored as uint8 0-255 (N, C, H, W) with C = 1 or 3; "
            f"{base!r} stores {sample.x.dtype} {tuple(sample.x.shape)} scaled by 1/{scale:g}. Use split_cifar10, "
            f"split_cifar100 or split_mnist (or digits_c for the 8x8 digits)."
        )

    def pool(parts: list[TensorData]) -> TensorData:
        return TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), parts[0].transform)

    # Class-split experiences pool into class-sorted data: shuffle once so the i.i.d. settings are i.i.d.
    clean_test = pool(tests)
    clean_test = clean_test.subset(torch.randperm(len(clean_test), generator=torch.Generator().manual_seed(seed)))
    spec = {"base": base, "base_spec_hash": inner.spec_hash, "base_spec": inner.spec, "test_order": "seeded shuffle"}
    return corrupted_stream("corrupted", pool(trains), clean_test, corruptions=tuple(corruptions), severity=severity,
                            seed=seed, frost_dir=frost_dir, spec=spec,
                            protocol_defaults={"batch_size": 32, "epochs": 1},
                            tta=TTAOptions(setting, n_per_domain, concentration, insert_clean, source_model,
                                           source_weights, source_epochs, source_free, train_domains),
                            flip_invariant=inner.flip_invariant)  # fmt: skip
