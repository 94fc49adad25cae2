"""Split-Digits: scikit-learn's bundled 8x8 handwritten digits as a class-split stream.

The embedded default: it needs no download, and a full per-iteration run takes
seconds on a CPU, so it is what ``cl-bench run`` uses with no arguments.
"""

from __future__ import annotations

import torch

from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, Standardize, TensorData
from cl_bench.data.streams import split_by_class, stratified_split

_SPLIT_SEED = 0  # the train/test split is part of the dataset, not of the run


@SCENARIOS.register(
    "split_digits",
    reference="Alpaydin & Kaynak, 'Optical Recognition of Handwritten Digits' (UCI, 1998), as bundled in "
    "scikit-learn; class-split protocol of van de Ven & Tolias, 'Three scenarios for continual learning' (2019)",
)
def split_digits(
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    test_fraction: float = 0.2,
) -> Scenario:
    """Split-Digits: sklearn's 1,797 8x8 digits, classes dealt into experiences (default 5 x 2).

    Args:
        n_experiences: Number of experiences.
        seed: Seeds the class order.
        class_order: "seeded", "identity" or an explicit list of the 10 classes.
        setting: "class_il" or "task_il".
        test_fraction: Share of each class held out for testing (stratified, fixed split).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.uint8).unsqueeze(1)  # pixel values 0..16
    y = torch.tensor(data.target, dtype=torch.int64)
    tr, te = stratified_split(y, test_fraction, _SPLIT_SEED)
    transform = Standardize(scale=16.0, mean=(0.3,), std=(0.4,))
    spec = {"dataset": "sklearn_digits", "n_train": len(tr), "n_test": len(te), "test_fraction": test_fraction,
            "split_seed": _SPLIT_SEED, "transform": "x/16, standardize(0.3, 0.4)"}  # fmt: skip
    return split_by_class(
        "split_digits", TensorData(x[tr], y[tr], transform), TensorData(x[te], y[te], transform),
        n_experiences=n_experiences, class_order=class_order, seed=seed, setting=setting, spec=spec,
        protocol_defaults={"batch_size": 10, "epochs": 10}, flip_invariant=False,
    )  # fmt: skip
