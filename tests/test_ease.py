"""EASE: the adapter bank, the semantic-guided prototype complement and the reweighted subspace ensemble."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cl_bench.components.petl import AdapterBank, attach_petl
from cl_bench.core.registry import METHODS, SCENARIOS
from cl_bench.core.types import Batch, StreamInfo
from cl_bench.nets.backbones import create_backbone


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "test_resnet.pth"
    torch.save(create_backbone("test_resnet").state_dict(), path)
    return path


def _fit(cfg: dict[str, Any], seed: int = 0, stop_before_last_end: bool = False) -> tuple[Any, Any]:
    """``ease`` trained on the toy stream (3 experiences x 2 classes) in batches of 16, and the scenario."""
    scenario = SCENARIOS.create("toy")
    method = METHODS.get("ease").obj(METHODS.config("ease", cfg))
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


#: float32 features of the random toy backbone: the same sums in another order differ in the last bits.
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _cfg(tiny_weights: Path, **extra: Any) -> dict[str, Any]:
    return {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16, "feature_cache": False,
            "lr": 0.1, "ffn_num": 8, **extra}  # fmt: skip


# -- adapter bank ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "size"), [pytest.param("test_vit", 32, marks=pytest.mark.slow), ("test_resnet", 16)])
def test_a_bank_set_computes_what_aper_adapter_computes(arch: str, size: int) -> None:
    torch.manual_seed(0)
    single, banked = create_backbone(arch, None).eval(), create_backbone(arch, None).eval()
    banked.load_state_dict(single.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        pretrained = single(x)
    params = attach_petl(single, "adapter", seed=3, ffn_num=8)
    bank = AdapterBank(banked, ffn_num=8)
    first = bank.add(seed=3)
    assert [p.shape for p in first] == [p.shape for p in params]
    for p, q in zip(first, params, strict=True):
        assert torch.equal(p, q)  # the same seeded initialisation, block by block
    with torch.no_grad():
        for p, q in zip(first, params, strict=True):
            noise = torch.randn_like(q)
            p.add_(noise)
            q.add_(noise)
        torch.testing.assert_close(banked(x), single(x), rtol=0, atol=0)
        second = bank.add(seed=4)  # a new set becomes the active one; it starts as the identity
        torch.testing.assert_close(banked(x), pretrained)
        for p in second:
            p.add_(torch.randn_like(p))
        out2 = banked(x)
        bank.select(0)
        torch.testing.assert_close(banked(x), single(x), rtol=0, atol=0)
        bank.select(None)
        torch.testing.assert_close(banked(x), pretrained)
    assert not torch.allclose(out2, single(x))
    bank.freeze()
    assert not any(p.requires_grad for p in banked.parameters())
    with pytest.raises(IndexError, match="adapter set 2 does not exist"):
        bank.select(2)


# -- prototype complement --------------------------------------------------------------------------------------------
def test_complement_by_hand() -> None:
    from cl_bench.methods.ease import complement

    # Own subspace: class 0 (old, the target) points where class 1 does, orthogonal to class 2.
    means = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    real = torch.tensor([True, True, True, False])  # class 3 unseen: never a reference
    new_means = torch.tensor([[9.0, 9.0, 9.0], [2.0, 0.0, 0.0], [0.0, 0.0, 4.0], [7.0, 7.0, 7.0]])
    new_real = torch.tensor([False, True, True, True])
    targets = torch.tensor([True, False, False, False])
    got = complement(means, real, targets, new_means, new_real)
    w1 = math.e / (math.e + 1)  # softmax over the cosines (1, 0) to classes 1 and 2, temperature 1
    torch.testing.assert_close(got, torch.tensor([[2.0 * w1, 0.0, 4.0 * (1 - w1)]]))
    none = complement(means, real, targets, new_means, torch.zeros(4, dtype=torch.bool))
    assert none.shape == (1, 3) and not none.any()


# -- the method ------------------------------------------------------------------------------------------------------
def test_defaults_are_the_official_cifar_config() -> None:
    cfg = METHODS.config("ease")
    assert (cfg.lr, cfg.weight_decay, cfg.tuned_epochs, cfg.min_lr, cfg.ffn_num, cfg.adapter_scale) == \
        (0.025, 5e-4, 20, 0.0, 64, 0.1)
    assert (cfg.alpha, cfg.beta, cfg.use_init_ptm, cfg.use_reweight, cfg.recalc_sim) == (0.1, 0.0, False, True, True)
    for bad in ({"alpha": -1.0}, {"lr": 0.0}, {"ffn_num": 0}):
        with pytest.raises(ValueError):
            METHODS.config("ease", bad)


def test_prototypes_complement_and_reweighted_logits(tiny_weights: Path) -> None:
    method, scenario = _fit(_cfg(tiny_weights))
    assert method.done == len(method.bank) == 3
    order = [list(exp.classes) for exp in scenario]  # the toy stream's class order is seeded
    for k, classes in enumerate(order):
        assert method.home[classes].tolist() == [k, k]
    moved = [p.abs().sum() > 0 for k in range(3) for p in method.bank.parameters(k) if p.dim() and p.shape[0] > 8]
    assert all(moved)  # every set's up-projections left zero: each experience trained its own adapters

    def feats(k: int, x: torch.Tensor) -> torch.Tensor:
        method.bank.select(k)
        return method.net.extract(x)

    # Real prototypes: a class of experience 1 in subspaces 0 and 1 is the mean of its features there.
    x1, y1 = scenario[1].train.x, scenario[1].train.y
    c1 = order[1][0]
    for k in (0, 1):
        torch.testing.assert_close(method.prototypes(k)[c1], feats(k, x1)[y1 == c1].mean(0), atol=1e-4, rtol=1e-4)
    # Complement: a class of experience 0 in subspaces 1 and 2, from its similarity in subspace 0 to every class
    # with real prototypes in both (those of experiences 1 and 2; subspace 1 recomputed at the last boundary).
    c0, own = order[0][0], method.prototypes(0)
    refs = order[1] + order[2]
    sim = (F.normalize(own[[c0]], dim=1) @ F.normalize(own[refs], dim=1).T).softmax(1)
    for d in (1, 2):
        torch.testing.assert_close(method.prototypes(d)[c0], (sim @ method.prototypes(d)[refs])[0], **TOL)
    # ...and a class of experience 1 in subspace 2 from the classes of experience 2, compared in subspace 1.
    own1 = method.prototypes(1)
    sim = (F.normalize(own1[[c1]], dim=1) @ F.normalize(own1[order[2]], dim=1).T).softmax(1)
    torch.testing.assert_close(method.prototypes(2)[c1], (sim @ method.prototypes(2)[order[2]])[0], **TOL)

    # Logits: own subspace at weight 1, the other two at alpha / t = 0.1 / 2 each.
    x = scenario[0].test.x[:7]
    cos = [F.normalize(feats(k, x), dim=1) @ F.normalize(method.prototypes(k), dim=1).T for k in range(3)]
    home = method.home
    expected = sum(torch.where(home == k, 1.0, 0.05) * cos[k] for k in range(3))
    torch.testing.assert_close(method.predict(x, None), expected, atol=1e-5, rtol=1e-5)


def test_recalc_sim_off_keeps_each_complement_from_its_own_boundary(tiny_weights: Path) -> None:
    on, _ = _fit(_cfg(tiny_weights))
    off, scenario = _fit(_cfg(tiny_weights, recalc_sim=False))
    torch.testing.assert_close(off.prototypes(2), on.prototypes(2))  # the newest subspace: the same rule
    order = [list(exp.classes) for exp in scenario]
    own = off.prototypes(0)
    sim = (F.normalize(own[order[0]], dim=1) @ F.normalize(own[order[1]], dim=1).T).softmax(1)
    # Subspace 1 was complemented at the end of experience 1 from that experience's classes only
    # (solve_similarity), and kept.
    torch.testing.assert_close(off.prototypes(1)[order[0]], sim @ off.prototypes(1)[order[1]], **TOL)
    assert not torch.allclose(off.prototypes(1)[order[0]], on.prototypes(1)[order[0]])


def test_init_ptm_and_plain_cosine_variants(tiny_weights: Path) -> None:
    method, scenario = _fit(_cfg(tiny_weights, use_init_ptm=True, beta=0.5, use_reweight=False))
    x = scenario[2].test.x[:5]
    parts = [method.ptm.extract(x)]
    protos = [method.ptm_protos.means()]
    for k in range(3):
        method.bank.select(k)
        parts.append(method.net.extract(x))
        protos.append(method.prototypes(k))
    expected = F.normalize(torch.cat(parts, 1), dim=1) @ F.normalize(torch.cat(protos, 1), dim=1).T
    torch.testing.assert_close(method.predict(x, None), expected, atol=1e-5, rtol=1e-5)

    weighted, _ = _fit(_cfg(tiny_weights, use_init_ptm=True, beta=0.5))
    plain, _ = _fit(_cfg(tiny_weights))
    ptm_cos = F.normalize(weighted.ptm.extract(x), dim=1) @ F.normalize(weighted.ptm_protos.means(), dim=1).T
    torch.testing.assert_close(weighted.predict(x, None), plain.predict(x, None) + 0.5 * ptm_cos, atol=1e-5,
                               rtol=1e-5)  # fmt: skip


@pytest.mark.slow
def test_init_ptm_variant_passes_the_conformance_suite() -> None:
    from cl_bench.methods.ease import EASE
    from cl_bench.testing import check_method

    assert check_method("ease", config={**EASE.conformance_config, "use_init_ptm": True, "beta": 1.0}).ok
