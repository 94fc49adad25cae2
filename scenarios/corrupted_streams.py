"""Corruption streams: one experience per corruption domain (domain-incremental, 10 or 100 classes).

* ``digits_c`` and ``mnist_c`` generate the corruptions here (:mod:`cl_bench.data.corruptions`,
  CIFAR-scale parameters) on the held-out and training parts of Split-Digits' and MNIST's data. Each
  experience carries the corrupted training split as ``train`` (so supervised continual methods run them as
  a domain-incremental stream) and the corrupted held-out split as ``test``.
* ``cifar10_c`` and ``cifar100_c`` read the released CIFAR-10-C / CIFAR-100-C files: test-only experiences
  (``train`` is None), as used by continual test-time adaptation.

The default order is :data:`~cl_bench.data.corruptions.BENCHMARK_ORDER` (the continual TTA order of
RMT / CoTTA) at severity 5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, SourceDomain, Standardize, TensorData
from cl_bench.data import corruptions as C
from cl_bench.data.tta_streams import TTA_BATCH_SIZE, tta_experiences, tta_spec

_TITLE = {"cifar10_c": "CIFAR-10-C", "cifar100_c": "CIFAR-100-C"}
_CIFAR_TRANSFORM = Standardize(scale=255.0)  # [0, 1] inputs, the RobustBench convention for CIFAR-10-C models


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


def _check_stream(corruptions: tuple[str, ...], severity: int) -> None:
    if not corruptions:
        raise ConfigError(f"corruptions must name at least one of: {', '.join(C.CORRUPTIONS)}")
    for name in corruptions:
        C.check(name, severity)


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
    return Scenario(name, experiences, full_spec, n_classes, "domain_il", defaults, tta.source(train, test))


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
    source_epochs: int = 5,
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
        source_epochs: Epochs of the source phase.
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
                                           source_weights, source_epochs, source_free, train_domains))  # fmt: skip


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
    download: bool = True,
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
        download: Try torchvision's download when the files are missing.
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
    from cl_bench.scenarios.mnist import load_mnist

    _check_stream(tuple(corruptions), severity)
    train, test, spec = load_mnist(root, download)
    return corrupted_stream("mnist_c", train, test, corruptions=tuple(corruptions), severity=severity, seed=seed,
                            frost_dir=frost_dir, spec=spec,
                            protocol_defaults={"batch_size": 32, "epochs": 1},
                            tta=TTAOptions(setting, n_per_domain, concentration, insert_clean, source_model,
                                           source_weights, source_epochs, source_free, train_domains))  # fmt: skip


# -- released CIFAR-10-C / CIFAR-100-C files -------------------------------------------------------------------------
def load_cifar_c(
    root: str | None, dataset: str, corruptions: tuple[str, ...], severity: int
) -> tuple[list[TensorData], dict[str, object]]:
    """Test sets of the released ``<corruption>.npy`` files at one severity, plus a spec.

    The released files hold 50,000 x 32 x 32 x 3 uint8 images (severities 1-5 stacked, 10,000 each, severity
    s in rows (s-1)*10,000 .. s*10,000) and ``labels.npy``. Generally any 5 * k rows are accepted (severity s
    = rows (s-1)*k .. s*k), so subsets written in the same layout load too.

    Raises:
        ConfigError: No root, unknown corruption or severity outside 1-5.
        DataError: A missing file, or an array of the wrong shape or dtype (the message names what was expected).
    """
    _check_stream(corruptions, severity)
    if root is None:
        raise ConfigError(
            f"{dataset} needs the released files: pass the folder holding labels.npy and <corruption>.npy with "
            f"--set scenario.root=DIR (the {_TITLE[dataset]} files are on Hendrycks & Dietterich's Zenodo record)"
        )
    folder = Path(root).expanduser()
    labels = _load(folder / "labels.npy", dataset)
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % 5:
        raise DataError(
            f"{folder / 'labels.npy'} has shape {labels.shape}; expected (50000,) (5 severities x 10,000 labels, or "
            f"generally 5 * k)"
        )
    rows = len(labels) // 5
    part = slice((severity - 1) * rows, severity * rows)
    y = torch.from_numpy(np.asarray(labels[part]).astype(np.int64))
    out = []
    for name in corruptions:
        path = folder / f"{name}.npy"
        arr = _load(path, dataset)
        if arr.shape != (len(labels), 32, 32, 3) or arr.dtype != np.uint8:
            raise DataError(
                f"{path} holds {arr.dtype} {arr.shape}; expected uint8 ({len(labels)}, 32, 32, 3) to match "
                f"labels.npy (the released files are 50,000 x 32 x 32 x 3 uint8)"
            )
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(arr[part]).transpose(0, 3, 1, 2)))
        out.append(TensorData(x, y, _CIFAR_TRANSFORM))
    spec: dict[str, object] = {"dataset": dataset, "source": "released .npy files", "rows_per_severity": rows,
                               "transform": "x/255 (RobustBench convention, no normalisation)"}  # fmt: skip
    return out, spec


def _load(path: Path, dataset: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(
            f"{path} not found: the {dataset} root must hold labels.npy and one <corruption>.npy per corruption "
            f"({', '.join(C.CORRUPTIONS)}), as released by Hendrycks & Dietterich"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} ({err}); the file is corrupt — fetch it again") from None


def _cifar_c(name: str, n_classes: int, root: str | None, severity: int, corruptions: tuple[str, ...],
             clean_root: str | None, seed: int, tta: TTAOptions) -> Scenario:  # fmt: skip
    corruptions = tuple(corruptions)
    _, spec = load_cifar_c(root, name, corruptions, severity)  # validates every file once, up front
    n_rows = int(spec["rows_per_severity"])  # type: ignore[call-overload]

    def domain_data(corruption: str, sev: int, keep: torch.Tensor) -> TensorData:
        data = load_cifar_c(root, name, (corruption,), sev)[0][0]
        if len(data.y) and int(data.y.max()) >= n_classes:
            raise DataError(f"labels.npy of {name} goes up to {int(data.y.max())}; expected labels "
                            f"0-{n_classes - 1}")  # fmt: skip
        return data.subset(keep)

    train = test = None
    if clean_root is not None:
        from cl_bench.scenarios.cifar import CIFAR10, CIFAR100, load_cifar

        tr, te, clean_spec = load_cifar(CIFAR10 if n_classes == 10 else CIFAR100, clean_root, download=False)
        # The source side must see what the corrupted side sees: x/255, RobustBench's convention.
        train, test = TensorData(tr.x, tr.y, _CIFAR_TRANSFORM), TensorData(te.x, te.y, _CIFAR_TRANSFORM)
        spec["clean"] = {k: clean_spec[k] for k in ("dataset", "split")}
    source = tta.source(train, test)
    experiences = tta_experiences(tta.setting, corruptions, severity, domain_data, n_rows, n_classes,
                                  clean=test, insert_clean=tta.insert_clean, n_per_domain=tta.n_per_domain,
                                  concentration=tta.concentration, seed=seed)  # fmt: skip
    spec = {**spec, "corruptions": list(corruptions), "severity": severity,
            **tta_spec(tta.setting, tta.n_per_domain, tta.concentration, tta.insert_clean, seed, source)}  # fmt: skip
    return Scenario(name, experiences, spec, n_classes, "domain_il", {"batch_size": TTA_BATCH_SIZE}, source)


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
    source_model: str = "wrn28_10",
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
    return _cifar_c("cifar100_c", 100, root, severity, corruptions, clean_root, seed, tta)


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
                                           source_weights, source_epochs, source_free, train_domains))  # fmt: skip
