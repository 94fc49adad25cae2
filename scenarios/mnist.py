"""MNIST streams: Split-, Permuted- and Rotated-MNIST, on the IDX files read by :mod:`cl_bench.data.mnist`.

When only the 10,000-image test files are present, the loader splits them per class into 8,000 train /
2,000 test images with a fixed seed and says so in the scenario spec; ``Scenario.data`` names the files.
"""

from __future__ import annotations

import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario, Shift, TensorData
from cl_bench.data.mnist import FILES, TRANSFORM, load_mnist, read_idx  # noqa: F401  (FILES, read_idx: public here)
from cl_bench.data.streams import split_by_class, with_data

_PROTOCOL = {"batch_size": 32, "epochs": 1}


@SCENARIOS.register(
    "split_mnist",
    reference="LeCun et al., 'Gradient-based learning applied to document recognition' (1998); Split-MNIST "
    "protocol of Zenke, Poole & Ganguli, 'Continual learning through synaptic intelligence' (ICML 2017)",
)
def split_mnist(
    root: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    download: bool | None = None,
) -> Scenario:
    """Split-MNIST: the 10 digits dealt into experiences (default 5 x 2 classes).

    Args:
        root: Folder with the MNIST IDX files (default ``$CL_BENCH_DATA/mnist``).
        n_experiences: Number of experiences.
        seed: Seeds the class order.
        class_order: "seeded", "identity" or an explicit list of the 10 classes.
        setting: "class_il" or "task_il".
        download: None = download only when no MNIST file at all is found; True / False = always try / never.
    """
    train, test, spec = load_mnist(root, download)
    data = spec.pop("data")  # a path: recorded beside the spec (Scenario.data), not hashed into the stream's identity
    return with_data(split_by_class("split_mnist", train, test, n_experiences=n_experiences, class_order=class_order,
                                    seed=seed, setting=setting, spec=spec,
                                    protocol_defaults=_PROTOCOL, flip_invariant=False), data)  # fmt: skip


def _domain_stream(name: str, train: TensorData, test: TensorData, views: list[tuple[torch.Tensor, torch.Tensor,
                   dict[str, object]]], spec: dict[str, object], data: object) -> Scenario:  # fmt: skip
    experiences = [
        Experience(i, TensorData(tx, train.y, TRANSFORM), TensorData(sx, test.y, TRANSFORM), tuple(range(10)),
                   None, meta, Shift("_".join(f"{k}{v}" for k, v in meta.items())))
        for i, (tx, sx, meta) in enumerate(views)
    ]  # fmt: skip
    return with_data(Scenario(name, experiences, spec, 10, "domain_il", _PROTOCOL, flip_invariant=False), data)


@SCENARIOS.register(
    "permuted_mnist",
    reference="Goodfellow et al., 'An empirical investigation of catastrophic forgetting in gradient-based "
    "neural networks' (ICLR 2014); Kirkpatrick et al., 'Overcoming catastrophic forgetting' (PNAS 2017)",
)
def permuted_mnist(
    root: str | None = None, n_experiences: int = 5, seed: int = 0, download: bool | None = None
) -> Scenario:
    """Permuted-MNIST: each experience applies its own fixed pixel permutation (domain-incremental).

    Args:
        root: Folder with the MNIST IDX files.
        n_experiences: Number of permutations (experiences).
        seed: Seeds the permutations.
        download: None = download only when no MNIST file at all is found; True / False = always try / never.
    """
    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
    train, test, spec = load_mnist(root, download)
    data = spec.pop("data")
    gen = torch.Generator().manual_seed(seed)
    views = []
    for i in range(n_experiences):
        perm = torch.randperm(28 * 28, generator=gen)
        views.append((train.x.flatten(1)[:, perm].view_as(train.x), test.x.flatten(1)[:, perm].view_as(test.x),
                      {"permutation": i}))  # fmt: skip
    spec = {**spec, "n_experiences": n_experiences, "seed": seed, "permutation": "torch.randperm(784) per experience"}
    return _domain_stream("permuted_mnist", train, test, views, spec, data)


@SCENARIOS.register(
    "rotated_mnist",
    reference="Lopez-Paz & Ranzato, 'Gradient Episodic Memory for continual learning' (NeurIPS 2017); 20 "
    "rotations of 0-171 degrees as in De Lange et al. (ICLR 2023)",
)
def rotated_mnist(
    root: str | None = None, n_experiences: int = 20, seed: int = 0, download: bool | None = None
) -> Scenario:
    """Rotated-MNIST: experience i rotates every digit by i * 180 / n degrees (20 -> 0, 9, ..., 171).

    Args:
        root: Folder with the MNIST IDX files.
        n_experiences: Number of rotations (experiences).
        seed: Recorded for symmetry with other streams; the angles are fixed.
        download: None = download only when no MNIST file at all is found; True / False = always try / never.
    """
    from torchvision.transforms.v2 import functional as TF

    if n_experiences < 1:
        raise ConfigError(f"n_experiences must be >= 1, got {n_experiences}")
    train, test, spec = load_mnist(root, download)
    data = spec.pop("data")
    angles = [i * 180.0 / n_experiences for i in range(n_experiences)]
    views = [(TF.rotate(train.x, a), TF.rotate(test.x, a), {"angle": a}) for a in angles]
    spec = {**spec, "n_experiences": n_experiences, "seed": seed, "angles": angles}
    return _domain_stream("rotated_mnist", train, test, views, spec, data)
