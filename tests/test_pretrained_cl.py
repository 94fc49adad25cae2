"""Class Gaussians, FeCAM, SimpleCIL, PETL modules, APER and RanPAC's first session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cl_bench.components.gaussians import ClassGaussians, correlation, shrink_covariance, tukey
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.nets.backbones import create_backbone


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "test_resnet.pth"
    torch.save(create_backbone("test_resnet").state_dict(), path)
    return path


def _fit(name: str, cfg: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    """``name`` trained on the toy stream in batches of 16, and the scenario."""
    scenario = SCENARIOS.create("toy")
    method = METHODS.get(name).obj(METHODS.config(name, cfg))
    info = StreamInfo(scenario.input_shape, scenario.n_classes, len(scenario), scenario.setting,
                      input_transform=scenario[0].test.transform)  # fmt: skip
    method.setup(info, seed=seed)
    for exp in scenario:
        method.begin_experience(exp)
        x, y = exp.train.batch(slice(None))
        for i in range(0, len(x), 16):
            method.observe(Batch(x[i : i + 16], y[i : i + 16], None, exp.index))
        method.end_experience(exp)
    return method, scenario


# -- class Gaussians -------------------------------------------------------------------------------------------------
def test_class_gaussians_equal_numpy_cov_whatever_the_batching() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    g = ClassGaussians(4, 5)
    for i in range(0, 60, 7):
        g.update(x[i : i + 7], y[i : i + 7])
    for c in range(3):
        xc = x[y == c].double().numpy()
        np.testing.assert_allclose(g.mean(c).numpy(), xc.mean(0), atol=1e-10)
        np.testing.assert_allclose(g.covariance(c).numpy(), np.cov(xc.T), atol=1e-10)
    assert g.seen.tolist() == [True, True, True, False]


def test_shrinkage_and_correlation_follow_the_official_formulas() -> None:
    cov = torch.tensor([[4.0, 1.0, 0.0], [1.0, 2.0, 3.0], [0.0, 3.0, 6.0]], dtype=torch.float64)
    # mean diagonal 4; mean of the non-zero off-diagonal entries (1, 1, 3, 3) = 2
    expected = cov + 0.5 * 4 * torch.eye(3) + 2.0 * 2 * (1 - torch.eye(3))
    torch.testing.assert_close(shrink_covariance(cov, 0.5, 2.0), expected.double())
    r = correlation(cov)
    torch.testing.assert_close(torch.diagonal(r), torch.ones(3, dtype=torch.float64))
    assert r[0, 1].item() == pytest.approx(1 / (2 * 2**0.5))
    assert torch.equal(tukey(torch.tensor([4.0, -9.0]), 0.5), torch.tensor([2.0, -3.0]))


# -- FeCAM -----------------------------------------------------------------------------------------------------------
def test_fecam_logits_are_minus_the_official_mahalanobis_distance(tiny_weights: Path) -> None:
    cfg = {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16, "feature_cache": False}
    method, scenario = _fit("fecam", cfg)
    x_all = torch.cat([e.train.x for e in scenario])
    y_all = torch.cat([e.train.y for e in scenario])
    f = method.encoder.features(x_all).double()
    x_test = scenario[0].test.x[:10]
    q = method.encoder.features(x_test).double()

    def norm(v: torch.Tensor) -> torch.Tensor:
        return v / v.norm(dim=-1, keepdim=True)

    expected = []
    for c in range(scenario.n_classes):  # the official pipeline, written out with numpy
        fc = f[y_all == c]
        cov = torch.from_numpy(np.cov(fc.sqrt().numpy().T))
        for _ in range(2):
            cov = shrink_covariance(cov, 1.0, 1.0)
        prec = torch.from_numpy(np.linalg.pinv(correlation(cov).numpy()))
        diff = norm(norm(q).sqrt()) - norm(fc.mean(0).sqrt())
        expected.append(-torch.einsum("nd,de,ne->n", diff, prec, diff))
    got = method.predict(x_test, None)
    torch.testing.assert_close(got.double(), torch.stack(expected, 1), atol=2e-3, rtol=2e-3)


# -- SimpleCIL -------------------------------------------------------------------------------------------------------
def test_simplecil_is_ncm_on_raw_means_and_rejects_other_settings(tiny_weights: Path) -> None:
    cfg = {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16, "feature_cache": False}
    simple, scenario = _fit("simplecil", cfg)
    raw, _ = _fit("ncm", {**cfg, "normalize": False})
    normed, _ = _fit("ncm", cfg)
    x = torch.cat([e.test.x for e in scenario])
    torch.testing.assert_close(simple.predict(x, None), raw.predict(x, None))
    assert not torch.allclose(simple.predict(x, None), normed.predict(x, None))  # ncm's default is another rule
    with pytest.raises(ValueError, match="simplecil is ncm"):
        METHODS.config("simplecil", {**cfg, "normalize": True})
