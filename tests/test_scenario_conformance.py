"""The scenario conformance suite (cl_bench.testing.check_scenario) over every registered scenario."""

from __future__ import annotations

from typing import Any

import pytest

from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario
from cl_bench.testing import SCENARIO_CHECKS, ConformanceError, check_scenario

MNIST = "mnist"  # marker for configs that need the bundled MNIST test set (the mnist_root fixture)
NPZ = "npz"  # marker for configs that need a small .npz file in the real format (the npz_file fixture)
HF = "hf"  # marker for configs that need a small save_to_disk dataset (the hf_dir fixture; needs `datasets`)
#: Small configs of the scenarios whose data is available here; ``None``: needs files this checkout lacks.
CONFIGS: dict[str, dict[str, Any] | None] = {
    "toy": {},
    "toy_tta": {"insert_clean": True},
    "split_digits": {},
    "digits_c": {"corruptions": ["gaussian_noise", "fog"], "n_per_domain": 50},
    "blurry": {"base_args": {"n_experiences": 3}},
    "power_law": {},
    "split_mnist": {"root": MNIST, "download": False},
    "permuted_mnist": {"root": MNIST, "download": False, "n_experiences": 2},
    "rotated_mnist": {"root": MNIST, "download": False, "n_experiences": 2},
    "mnist_c": {"root": MNIST, "download": False, "corruptions": ["gaussian_noise"], "n_per_domain": 100},
    "split_cifar10": None, "split_cifar100": None, "cifar10_c": None, "cifar100_c": None, "corrupted": None,
    "split_imagenet_r": None, "split_tinyimagenet": None,
    "tensor_split": {"path": NPZ, "n_experiences": 2},
    "hf_split": {"path": HF, "n_experiences": 2, "image_size": 8},
}  # fmt: skip
#: File-backed builders (FileData, decoded per batch): check_scenario reads stored tensors, so they are covered
#: by their own tests on trees written in the real layouts instead.
FILE_BACKED = {
    "folder_split": "tests/test_own_data.py", "folder_domains": "tests/test_own_data.py",
    "imagenet_c": "tests/test_imagenet_c.py", "domainnet126": "tests/test_domainnet126.py",
    "imagenet_shift": "tests/test_imagenet_shift.py",
    **{n: "tests/test_pilot_datasets.py" for n in ("split_cub200", "split_imagenet_a", "split_objectnet",
                                                    "split_omnibenchmark", "split_vtab", "split_cars")},
}  # fmt: skip
SLOW = {"rotated_mnist", "blurry"}  # > ~5 s each on a busy 2-core box


def _params() -> list[Any]:
    out = []
    for name in SCENARIOS.names():
        marks = [pytest.mark.slow] if name in SLOW else []
        if name in FILE_BACKED:
            marks.append(pytest.mark.skip(reason=f"{name}: file-backed, covered by {FILE_BACKED[name]}"))
        elif CONFIGS.get(name, None) is None:
            why = ("needs dataset files not in this checkout (see `cl-bench data list`)" if name in CONFIGS
                   else "no small config listed in tests/test_scenario_conformance.py")  # fmt: skip
            marks.append(pytest.mark.skip(reason=f"{name}: {why}"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_registered_scenario_conforms(name: str, request: pytest.FixtureRequest) -> None:
    config = dict(CONFIGS[name] or {})
    if config.get("root") == MNIST:
        config["root"] = str(request.getfixturevalue("mnist_root"))
    if config.get("path") == NPZ:
        config["path"] = str(request.getfixturevalue("npz_file"))
    if config.get("path") == HF:
        config["path"] = str(request.getfixturevalue("hf_dir"))
    report = check_scenario(name, config)
    assert report.ok and [r.name for r in report.results] == list(SCENARIO_CHECKS)


@pytest.fixture
def npz_file(tmp_path: Any) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=rng.integers(0, 256, (40, 6, 6), dtype=np.uint8), y=np.arange(40) % 4)
    return path


@pytest.fixture
def hf_dir(tmp_path: Any) -> Any:
    import io

    import numpy as np
    from PIL import Image

    datasets = pytest.importorskip("datasets", reason="hf_split needs the hf extra: pip install 'cl_bench[hf]'")
    rng = np.random.default_rng(0)
    images = []
    for _ in range(24):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    data = datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(24)]}, features=features)
    data.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_every_listed_scenario_is_registered() -> None:
    # A renamed scenario must not leave the suite silently; an unlisted one shows as a skip naming this file.
    assert set(CONFIGS) | set(FILE_BACKED) <= set(SCENARIOS.names())


def _nondeterministic(seed: int = 0) -> Scenario:
    import torch

    from cl_bench.core.types import TensorData

    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))  # unseeded on purpose
    x = torch.randint(0, 255, (8, 1, 2, 2), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    d = TensorData(x, y)
    # Also overlapping test classes in a class-incremental stream and a class never trained on.
    return Scenario("broken", [Experience(0, d, d, (0, 1)), Experience(1, d, d, (0, 1, 2))], {"seed": seed}, 3,
                    "class_il")  # fmt: skip


def test_each_scenario_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # The toy config stays valid (config round trip passes); the builds come from the broken builder.
    monkeypatch.setattr(SCENARIOS, "create", lambda name, **kw: _nondeterministic())
    with pytest.raises(ConformanceError) as err:
        check_scenario("toy")
    failed = {r.name for r in err.value.report.failures}
    assert {"check_deterministic", "check_classes", "check_class_il_disjoint"} <= failed
    assert "check_iteration" not in failed and "check_spec" not in failed
