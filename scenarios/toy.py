"""Toy: a tiny synthetic stream of Gaussian blobs, the conformance suite's stream.

Each class is an isotropic Gaussian blob around its own random centre in a
1x4x4 input space; the centres are far apart relative to the noise, so a small
network separates the classes of an experience within a few dozen steps. The
whole stream is generated in memory from ``seed`` in milliseconds, which makes
it the stream of ``cl_bench.testing.check_method`` and of fast tests.
"""

from __future__ import annotations

import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, TensorData
from cl_bench.data.streams import split_by_class

_SHAPE = (1, 4, 4)


@SCENARIOS.register(
    "toy",
    reference="synthetic Gaussian blobs (not a published benchmark): cl_bench's conformance stream, "
    "class-split as in van de Ven & Tolias, 'Three scenarios for continual learning' (2019)",
)
def toy(
    n_experiences: int = 3,
    seed: int = 0,
    setting: str = "class_il",
    classes_per_experience: int = 2,
    n_train: int = 40,
    n_test: int = 20,
    separation: float = 1.0,
) -> Scenario:
    """Toy: Gaussian blobs in 1x4x4 inputs, ``classes_per_experience`` classes per experience.

    Args:
        n_experiences: Number of experiences.
        seed: Seeds the class centres, the samples and the class order.
        setting: "class_il" or "task_il".
        classes_per_experience: Classes in each experience.
        n_train: Training examples per class.
        n_test: Test examples per class.
        separation: Scale of the class centres relative to unit noise (larger = easier).
    """
    if n_experiences < 1 or classes_per_experience < 1 or n_train < 1 or n_test < 1:
        raise ConfigError("n_experiences, classes_per_experience, n_train and n_test must be >= 1")
    if separation <= 0:
        raise ConfigError(f"separation must be positive, got {separation}")
    n_classes = n_experiences * classes_per_experience
    gen = torch.Generator().manual_seed(seed)
    centres = separation * torch.randn(n_classes, *_SHAPE, generator=gen)

    def sample(per_class: int) -> TensorData:
        y = torch.arange(n_classes).repeat_interleave(per_class)
        x = centres[y] + torch.randn(len(y), *_SHAPE, generator=gen)
        return TensorData(x, y)

    train, test = sample(n_train), sample(n_test)
    spec = {"dataset": "toy_gaussian_blobs", "input_shape": list(_SHAPE), "n_train_per_class": n_train,
            "n_test_per_class": n_test, "separation": separation, "data_seed": seed}  # fmt: skip
    return split_by_class(
        "toy", train, test, n_experiences=n_experiences, class_order="seeded", seed=seed, setting=setting,
        spec=spec, protocol_defaults={"batch_size": 16, "epochs": 4}, flip_invariant=False,
    )  # fmt: skip


@SCENARIOS.register(
    "toy_tta",
    reference="synthetic Gaussian blobs under affine domain shifts (not a published benchmark): cl_bench's "
    "test-time adaptation conformance stream; settings of Wang et al., 'Continual Test-Time Domain "
    "Adaptation' (CVPR 2022) and Döbler et al., 'Robust Mean Teacher ...' (CVPR 2023)",
)
def toy_tta(
    n_domains: int = 3,
    n_classes: int = 4,
    seed: int = 0,
    n_train: int = 50,
    n_test: int = 12,
    separation: float = 3.0,
    shift: float = 1.5,
    severity: int = 5,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    insert_clean: bool = False,
    source_model: str = "cnn_bn",
    source_weights: str | None = None,
    source_epochs: int = 10,
    source_free: bool = False,
) -> Scenario:
    """Toy TTA stream: Gaussian blobs (1x4x4) whose test domains are shifted and rescaled versions.

    Domain d maps x to ``x * (1 + 0.1 * severity * u_d) + shift * severity / 5 * o_d`` with a random
    scale ``u_d`` in [0, 1] and a random offset direction ``o_d``: a shift that BatchNorm statistics
    partly absorb. Generated in milliseconds; the source model (a small BN CNN) trains in well under
    a second, which makes it the stream of the conformance suite's TTA path.

    Args:
        n_domains: Number of shifted test domains.
        n_classes: Number of classes.
        seed: Seeds centres, samples, domain shifts and the order inside domains.
        n_train: Clean source training examples per class.
        n_test: Test examples per class (each domain shifts the same test examples).
        separation: Scale of the class centres relative to unit noise.
        shift: Size of the domain offsets.
        severity: Severity (1-5) of the non-gradual settings.
        setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Test images per domain (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        insert_clean: Insert the clean test examples between domains.
        source_model: Source architecture (cnn_bn: two conv blocks with BatchNorm).
        source_weights: Source checkpoint; unset = train on the clean data.
        source_epochs: Epochs of the source phase.
        source_free: Give TTA methods no source data.
    """
    from cl_bench.core.types import SourceDomain
    from cl_bench.data.tta_streams import TTA_SETTINGS, tta_experiences, tta_spec

    if n_domains < 1 or n_classes < 2 or n_train < 1 or n_test < 1:
        raise ConfigError("toy_tta needs n_domains >= 1, n_classes >= 2, n_train >= 1 and n_test >= 1")
    if severity not in (1, 2, 3, 4, 5):
        raise ConfigError(f"severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
    if setting not in TTA_SETTINGS:
        raise ConfigError(f"unknown TTA stream setting {setting!r}; choose one of {', '.join(TTA_SETTINGS)}")
    gen = torch.Generator().manual_seed(seed)
    centres = separation * torch.randn(n_classes, *_SHAPE, generator=gen)

    def sample(per_class: int) -> TensorData:
        y = torch.arange(n_classes).repeat_interleave(per_class)
        return TensorData(centres[y] + torch.randn(len(y), *_SHAPE, generator=gen), y)

    train, test = sample(n_train), sample(n_test)
    test = test.subset(torch.randperm(len(test), generator=gen))  # not class-sorted: i.i.d. settings keep order
    names = tuple(f"shift{d}" for d in range(n_domains))
    scales = torch.rand(n_domains, generator=gen)
    offsets = torch.randn(n_domains, *_SHAPE, generator=gen)

    def domain_data(name: str, sev: int, keep: torch.Tensor) -> TensorData:
        d = names.index(name)
        x = test.x[keep] * (1 + 0.1 * sev * scales[d]) + shift * sev / 5 * offsets[d]
        return TensorData(x, test.y[keep])

    source = SourceDomain(train, test, source_model, source_weights, source_epochs, source_free,
                          setting == "reset_each_shift")  # fmt: skip
    experiences = tta_experiences(setting, names, severity, domain_data, len(test), n_classes, clean=test,
                                  insert_clean=insert_clean, n_per_domain=n_per_domain,
                                  concentration=concentration, seed=seed)  # fmt: skip
    spec = {"dataset": "toy_gaussian_blobs_shifted", "input_shape": list(_SHAPE), "n_classes": n_classes,
            "n_train_per_class": n_train, "n_test_per_class": n_test, "separation": separation, "shift": shift,
            "data_seed": seed, "corruptions": list(names), "severity": severity,
            **tta_spec(setting, n_per_domain, concentration, insert_clean, seed, source)}  # fmt: skip
    # Gaussian-blob centres are not mirror-symmetric: a flipped input belongs to no class
    return Scenario("toy_tta", experiences, spec, n_classes, "domain_il",
                    {"batch_size": 16, "tta_batch_size": 16}, source, flip_invariant=False)  # fmt: skip
