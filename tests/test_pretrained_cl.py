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


# -- PETL modules and APER -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "size", "kind"), [("test_vit", 32, "adapter"), ("test_vit", 32, "vpt"),
                                                    ("test_resnet", 16, "adapter"), ("test_efficientnet", 16, "ssf")])
def test_petl_trains_only_new_modules_and_adapter_starts_as_identity(arch: str, size: int, kind: str) -> None:
    from cl_bench.components.petl import attach_petl

    torch.manual_seed(0)
    m = create_backbone(arch, None).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        ref = m(x)
    pretrained = {k: v.clone() for k, v in m.state_dict().items()}
    params = attach_petl(m, kind, ffn_num=8)
    out = m(x)
    if kind == "adapter":
        torch.testing.assert_close(out, ref)  # the zero-initialised up-projection: the pretrained function
    (out * torch.randn_like(out)).sum().backward()  # a random direction: LayerNorm makes out.sum() constant
    # Every module is wired in (gets a gradient); an adapter's down-projection only once up is non-zero.
    grads = {n: p.grad for n, p in m.petl.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if kind != "adapter" or ".up." in n)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"petl.{n}" for n in grads} and len(params) == len(grads)
    assert all(torch.equal(pretrained[k], v) for k, v in m.state_dict().items() if k in pretrained)


def test_vpt_on_a_cnn_is_a_clear_error_before_any_model_is_built() -> None:
    from cl_bench.components.petl import attach_petl

    with pytest.raises(ValueError, match="needs a timm VisionTransformer"):
        attach_petl(create_backbone("test_resnet", None), "vpt")
    for method in ("aper", "ranpac"):
        with pytest.raises(ValueError, match="needs a timm VisionTransformer"):
            METHODS.config(method, {"petl": "vpt"})  # the default backbone is EfficientNet-Lite0
    assert METHODS.config("ranpac", {"petl": "vpt", "first_session": False}).petl == "vpt"  # Phase 2 ignores it


def test_first_session_lr_follows_the_official_per_epoch_cosine() -> None:
    from cl_bench.components.petl import FirstSessionTuner

    lin = torch.nn.Linear(4, 4)
    tuner = FirstSessionTuner(lin, list(lin.parameters()), 4, 3, lr=0.01, weight_decay=0.0, tuned_epochs=20,
                              min_lr=0.0, seed=0)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD(lin.parameters(), lr=0.01), T_max=20)
    for epoch in range(20):
        assert tuner.lr_at(epoch) == pytest.approx(sched.get_last_lr()[0], rel=1e-9)
        sched.optimizer.step()
        sched.step()


@pytest.mark.parametrize("petl", ["adapter", "ssf"])
def test_aper_prototypes_are_means_of_frozen_and_adapted_features(tiny_weights: Path, petl: str) -> None:
    cfg = {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16, "feature_cache": False,
           "petl": petl, "lr": 0.1, "ffn_num": 8}  # fmt: skip
    method, scenario = _fit("aper", cfg)
    before = {n: p.clone() for n, p in method.adapted.backbone.petl.named_parameters()}
    fresh = METHODS.get("aper").obj(METHODS.config("aper", cfg))
    fresh.setup(StreamInfo(scenario.input_shape, scenario.n_classes, len(scenario), scenario.setting,
                           input_transform=scenario[0].test.transform), seed=0)  # fmt: skip
    moved = [not torch.equal(p, dict(fresh.adapted.backbone.petl.named_parameters())[n]) for n, p in before.items()]
    assert any(moved)  # the first session tuned the PETL modules
    x, y = scenario[2].train.x, scenario[2].train.y
    merged = torch.cat([method.frozen.extract(x), method.adapted.extract(x)], dim=1)
    c = int(y[0])
    torch.testing.assert_close(method.head.means()[c], merged[y == c].mean(0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(method.adapted.extract(x), method.frozen.extract(x))


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [{"petl": "ssf"}, {"petl": "vpt", "backbone": "test_vit", "image_size": 32},
                                 {"petl": "adapter", "backbone": "test_vit", "image_size": 32}])
def test_aper_variants_pass_the_conformance_suite(cfg: dict[str, Any]) -> None:
    from cl_bench.methods.aper import APER
    from cl_bench.testing import check_method

    assert check_method("aper", config={**APER.conformance_config, **cfg}).ok


# -- RanPAC Phase 1 --------------------------------------------------------------------------------------------------
def test_ranpac_phase1_is_on_by_default_and_tunes_before_the_projection(tiny_weights: Path) -> None:
    assert METHODS.config("ranpac").first_session is True  # the paper's default
    cfg = {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16, "feature_cache": False,
           "projection_dim": 32, "lr": 0.1, "ffn_num": 8}  # fmt: skip
    tuned, scenario = _fit("ranpac", cfg)
    plain, _ = _fit("ranpac", {**cfg, "first_session": False})
    assert not hasattr(plain.encoder.backbone, "petl") and plain.tuner is None
    assert tuned.tuned and not any(p.requires_grad for p in tuned.encoder.backbone.parameters())
    x = scenario[1].test.x
    pretrained = plain.encoder.extract(x)
    assert not torch.allclose(tuned.encoder.extract(x), pretrained)  # Phase 1 changed the features
    torch.testing.assert_close(tuned.encoder.features(x), tuned.encoder.extract(x))  # memoised after the freeze


def test_records_report_the_feature_cache_hit_rate(tiny_weights: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cl_bench.engine.runner import run
    from cl_bench.engine.spec import RunSpec

    monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path / "cache"))
    cfg = {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16}

    def stats(method: str, out: str) -> dict[str, Any]:
        spec = RunSpec(method=method, method_config=cfg, scenario="toy", scenario_config={}, seed=0)
        return run(spec, out=tmp_path / out)["method"]["feature_cache"]

    first, second = stats("ncm", "a"), stats("fecam", "b")
    assert first["misses"] == 6 * (40 + 20) and 0 < first["hit_rate"] < 1  # each row extracted once, then reused
    assert second["misses"] == 0 and second["hit_rate"] == 1.0  # another method, the same frozen features
