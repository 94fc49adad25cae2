"""Toy: a tiny synthetic stream of Gaussian blobs, the conformance suite's stream.

Each class is an isotropic Gaussian blob around its own random centre in a
1x4x4 input space; the centres are far apart relative to the noise, so a small
network separates the classes of an experience within a few dozen steps. The
whole stream is generated in memory from ``seed`` in milliseconds, which makes
it the stream of ``cl_bench.testing.check_method`` and of fast tests.
"""

from __future__ import annotations

import torch

from cl_bench.errors import ConfigError
from cl_bench.registry import SCENARIOS
from cl_bench.streams import split_by_class
from cl_bench.types import Scenario, TensorData

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
        spec=spec, protocol_defaults={"batch_size": 16, "epochs": 4},
    )  # fmt: skip
