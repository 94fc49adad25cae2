"""Split-CIFAR-10 and Split-CIFAR-100, on the batches read by :mod:`cl_bench.data.cifar`."""

from __future__ import annotations

from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario
from cl_bench.data.cifar import AUGMENT, CIFAR10, CIFAR100, CifarFormat, load_cifar, read_batch  # noqa: F401
from cl_bench.data.streams import split_by_class, with_data

_PROTOCOL = {"batch_size": 128, "epochs": 1}


def _build(
    name: str, fmt: CifarFormat, root: str | None, n_experiences: int, seed: int,
    class_order: str | tuple[int, ...], setting: str, augment: bool, download: bool | None,
) -> Scenario:  # fmt: skip
    train, test, spec = load_cifar(fmt, root, download)
    data = spec.pop("data")  # a path: recorded beside the spec (Scenario.data), not hashed
    if not augment:
        train.augment = None
    spec["train_augment"] = AUGMENT.describe() if augment else "none"
    spec["class_order_name"] = class_order if isinstance(class_order, str) and "," not in class_order else "explicit"
    return with_data(split_by_class(name, train, test, n_experiences=n_experiences, class_order=class_order,
                                    seed=seed, setting=setting, spec=spec,
                                    protocol_defaults=_PROTOCOL), data)  # fmt: skip


@SCENARIOS.register(
    "split_cifar10",
    reference="Krizhevsky, 'Learning multiple layers of features from tiny images' (tech. report, 2009); "
    "class-split protocol of Rebuffi et al., 'iCaRL: Incremental classifier and representation learning' "
    "(CVPR 2017)",
)
def split_cifar10(
    root: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    augment: bool = True,
    download: bool | None = None,
) -> Scenario:
    """Split-CIFAR-10: the 10 classes dealt into experiences (default 5 x 2).

    Args:
        root: Folder holding ``cifar-10-batches-py/`` (or that folder itself);
            default ``$CL_BENCH_DATA/cifar``.
        n_experiences: Number of experiences.
        seed: Seeds the "seeded" class order.
        class_order: "seeded", "identity", "pycil1993" or an explicit list of the 10 classes.
        setting: "class_il" or "task_il".
        augment: Random crop (padding 4) + horizontal flip on training batches.
        download: None = download only when no file of it is found; True / False = always try / never.
    """
    return _build("split_cifar10", CIFAR10, root, n_experiences, seed, class_order, setting, augment, download)


@SCENARIOS.register(
    "split_cifar100",
    reference="Krizhevsky, 'Learning multiple layers of features from tiny images' (tech. report, 2009); "
    "class-split protocol of Rebuffi et al., 'iCaRL: Incremental classifier and representation learning' "
    "(CVPR 2017); the 'pycil1993' order is PyCIL's (Zhou et al., 2023)",
)
def split_cifar100(
    root: str | None = None,
    n_experiences: int = 10,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    augment: bool = True,
    download: bool | None = None,
) -> Scenario:
    """Split-CIFAR-100: the 100 fine classes dealt into experiences (default 10 x 10; 20 gives 20 x 5).

    Args:
        root: Folder holding ``cifar-100-python/`` (or that folder itself);
            default ``$CL_BENCH_DATA/cifar``.
        n_experiences: Number of experiences.
        seed: Seeds the "seeded" class order.
        class_order: "seeded", "identity", "pycil1993" or an explicit list of the 100 classes.
        setting: "class_il" or "task_il".
        augment: Random crop (padding 4) + horizontal flip on training batches.
        download: None = download only when no file of it is found; True / False = always try / never.
    """
    return _build("split_cifar100", CIFAR100, root, n_experiences, seed, class_order, setting, augment, download)
