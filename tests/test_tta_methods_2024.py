"""The newer TTA methods (bn_ema, lame, t3a, shot_im) through the runner, and the frozen-parameter contract."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from cl_bench import RunSpec, run
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Caps
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.methods.lame import LAMEConfig, affinity, laplacian_adjust
from cl_bench.methods.tent import Tent
from cl_bench.testing import ConformanceError, check_method

MNIST_DIR = Path("/work/shared/data/mnist")
NEW = ("bn_ema", "lame", "t3a", "shot_im")
DIGITS = {"corruptions": ("gaussian_noise", "contrast"), "n_per_domain": 120, "source_epochs": 3}


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("setting", ["continual", "mixed_domains", "correlated"])
def test_new_method_runs_on_digits_c_streams(name: str, setting: str, tmp_path: Path) -> None:
    rec = run(RunSpec(method=name, scenario="digits_c", scenario_config={**DIGITS, "setting": setting}), tmp_path)
    assert rec["status"] == "completed"
    assert 0 <= rec["metrics"]["online_error"] < 0.9  # 10 classes: chance is 0.9


MNIST_C = {"root": str(MNIST_DIR), "download": False, "corruptions": ("contrast", "fog"), "n_per_domain": 1000,
           "train_domains": False, "source_epochs": 1}  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not any(MNIST_DIR.glob("t10k-images*")), reason="real MNIST test set not present")
def test_new_methods_on_mnist_c(tmp_path: Path) -> None:
    err = {n: run(RunSpec(method=n, scenario="mnist_c", scenario_config=MNIST_C), tmp_path)["metrics"]["online_error"]
           for n in ("source", *NEW)}  # fmt: skip
    # Methods that renormalise or adapt features undo the contrast/fog shift the source model collapses under.
    assert err["bn_ema"] < err["source"] - 0.1 and err["shot_im"] < err["source"] - 0.5
    # Output-only methods keep the source's (collapsed) features: they run, but cannot fix this shift.
    assert all(0 <= err[n] <= 1 for n in ("lame", "t3a"))


@pytest.mark.parametrize("name", ["lame", "t3a", "bn_ema"])
def test_output_only_methods_leave_parameters_untouched(name: str) -> None:
    assert METHODS.get(name).obj.caps.updates_parameters is False
    report = check_method(name, checks=["check_parameters_frozen", "check_protocol"])
    assert report["check_parameters_frozen"].status == "passed"
    assert "not applicable" not in report["check_parameters_frozen"].message


def test_parameter_updating_methods_declare_it() -> None:
    assert METHODS.get("shot_im").obj.caps.updates_parameters is True
    assert Caps().updates_parameters is True


class LyingTent(Tent):
    """Tent that claims to be output-only."""

    caps: ClassVar[Caps] = Caps(adapts_at_test=True, updates_parameters=False)


def test_frozen_parameter_check_catches_a_method_that_updates() -> None:
    with pytest.raises(ConformanceError) as info:
        check_method(LyingTent, checks=["check_parameters_frozen"])
    report = info.value.report["check_parameters_frozen"]
    assert report.status == "failed" and "caps.updates_parameters=False" in report.message


def test_lame_without_affinity_returns_the_source_probabilities() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = laplacian_adjust(probs, torch.zeros(2, 2), 1.0, 100)
    assert torch.allclose(y, probs, atol=1e-6)


def test_lame_knn_affinity_pulls_neighbours_together() -> None:
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0]]), dim=1)
    w = affinity(z, LAMEConfig(affinity="knn", knn=2))
    assert w.sum(1).tolist() == [2.0, 2.0, 2.0, 2.0] and w.diagonal().sum() == 0
    assert w[0, 1] == 1 and w[0, 3] == 0
    # sample 0 is unsure; its two confident neighbours say class 1
    probs = torch.tensor([[0.55, 0.45], [0.1, 0.9], [0.1, 0.9], [0.9, 0.1]])
    assert laplacian_adjust(probs, w, 1.0, 100)[0].argmax() == 1


def test_lame_rbf_affinity_is_the_rmt_benchmarks_kernel() -> None:
    # rbf_affinity of mariodoebler/test-time-adaptation methods/lame.py (8b2ed63): every pair, self included; the
    # bandwidth is the batch mean of each row's k-th smallest distance, the sample's own 0 counted first
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]]), dim=1)
    k = 2
    rows = [[float(torch.dist(a, b)) for b in z] for a in z]
    kth = [sorted(r)[k - 1] for r in rows]
    s = sum(kth) / len(kth)
    expected = torch.tensor([[math.exp(-(d**2) / (2 * s**2)) for d in r] for r in rows])
    assert LAMEConfig().affinity == "rbf" and LAMEConfig().knn == 5  # conf.py: _C.LAME.AFFINITY "rbf", KNN 5
    w = affinity(z, LAMEConfig(knn=k))
    assert torch.allclose(w, expected, atol=1e-5) and torch.allclose(w.diagonal(), torch.ones(4))


def test_output_methods_need_features_and_head() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(72, 3))  # fmt: skip
    info = StreamInfo((1, 8, 8), 3, 1, "domain_il", "cpu", source_model=net, source_data=None)
    for name in ("lame", "t3a", "shot_im"):
        with pytest.raises(ConfigError, match="'features'"):
            METHODS.create(name).setup(info, 0)


@pytest.mark.parametrize(("name", "bad"), [("bn_ema", {"momentum": 0.0}), ("lame", {"knn": 0}),
                                           ("t3a", {"filter_k": 0}), ("lame", {"affinity": "cosine"})])  # fmt: skip
def test_bad_configs_are_config_errors(name: str, bad: dict) -> None:
    with pytest.raises((ConfigError, ValueError)):
        METHODS.config(name, bad)
