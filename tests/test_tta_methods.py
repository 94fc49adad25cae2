"""Test-time adaptation methods on a small BN CNN trained on clean sklearn digits, adapted to corrupted digits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from cl_bench.components import (
    EMATeacher,
    ReliableEntropy,
    TTAugment,
    bn_affine_params,
    softmax_entropy,
    use_test_batch_stats,
)
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Standardize, StreamInfo, TensorData
from cl_bench.data.corruptions import corrupt

TRANSFORM = Standardize(scale=255.0, mean=(0.3,), std=(0.4,))


class SmallBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def digits() -> tuple[TensorData, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(np.round(d.images * 255.0 / 16.0), dtype=torch.uint8).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    src = TensorData(x[:1200], y[:1200], TRANSFORM)
    noisy = corrupt(x[1200:].permute(0, 2, 3, 1).numpy(), "gaussian_noise", 5, seed=0)
    test_x = TRANSFORM(torch.from_numpy(np.ascontiguousarray(noisy.transpose(0, 3, 1, 2))))
    return src, test_x, y[1200:]


@pytest.fixture(scope="module")
def source_model(digits: tuple[TensorData, torch.Tensor, torch.Tensor]) -> nn.Module:
    src, _, _ = digits
    torch.manual_seed(0)
    net = SmallBNNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        x, y = src.batch(torch.randint(len(src), (64,), generator=g))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def make_info(model: nn.Module, src: TensorData | None) -> StreamInfo:
    return StreamInfo((1, 8, 8), 10, 3, "domain_il", "cpu", source_model=model, source_data=src)


def build(name: str, model: nn.Module, src: TensorData | None, seed: int = 0, **overrides: object):  # noqa: ANN201
    method = METHODS.create(name, **overrides)
    method.setup(make_info(model, src), seed)
    return method


def batches(test_x: torch.Tensor, n: int, size: int = 64) -> list[torch.Tensor]:
    return [test_x[i * size : (i + 1) * size] for i in range(n)]


FAST = {"tent": {}, "eata": {"fisher_samples": 400}, "sar": {}, "rdumb": {}}
TEACHER = {"cotta": {"n_augmentations": 4, "flip": False},
           "rmt": {"warmup_samples": 400, "source_batch_size": 100, "flip": False},
           "psmt": {"n_augmentations": 4, "fisher_samples": 400, "flip": False}}  # fmt: skip
ALL = {**FAST, **TEACHER}


def test_source_model_is_good_on_clean_and_worse_on_corrupted(digits, source_model) -> None:
    src, test_x, test_y = digits
    with torch.no_grad():
        clean = (source_model(src.batch(slice(0, 500))[0]).argmax(1) == src.y[:500]).float().mean()
        noisy = (source_model(test_x).argmax(1) == test_y).float().mean()
    assert clean > 0.9 and noisy < clean


@pytest.mark.parametrize("name", sorted(FAST))
def test_adapt_returns_pre_update_prediction_and_changes_only_bn_affine(name, digits, source_model) -> None:
    src, test_x, _ = digits
    method = build(name, source_model, src, **FAST[name])
    x = test_x[:64]
    before = method.predict(x, None)
    ref = {k: v.clone() for k, v in method.model.state_dict().items()}
    out = method.adapt(x)
    torch.testing.assert_close(out, before)
    changed = {k for k, v in method.model.state_dict().items() if not torch.equal(v, ref[k])}
    bn_names = {f"features.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")}
    assert changed and changed <= bn_names, changed
    assert not torch.equal(method.predict(x, None), before)
    assert source_model.features[1].running_mean is not None  # the shared source model is untouched


def test_tent_lowers_entropy_on_a_corrupted_batch(digits, source_model) -> None:
    src, test_x, _ = digits
    tent = build("tent", source_model, src, lr=1e-2)  # a larger step so that few steps show the trend
    x = test_x[:128]
    start = softmax_entropy(tent.predict(x, None)).mean()
    for _ in range(10):
        tent.adapt(x)
    assert softmax_entropy(tent.predict(x, None)).mean() < start - 0.05


def test_tent_improves_accuracy_over_the_source_model(digits, source_model) -> None:
    src, test_x, test_y = digits
    tent = build("tent", source_model, src)
    correct = sum(int((tent.adapt(x).argmax(1) == test_y[i * 64 : (i + 1) * 64]).sum())
                  for i, x in enumerate(batches(test_x, 9)))  # fmt: skip
    with torch.no_grad():
        source_correct = int((source_model(test_x[: 9 * 64]).argmax(1) == test_y[: 9 * 64]).sum())
    assert correct > source_correct


def test_eata_counts_reliable_samples_and_its_fisher_term_holds_params(digits, source_model) -> None:
    src, test_x, _ = digits
    eata = build("eata", source_model, src, fisher_samples=400)
    x = test_x[:64]
    ent = softmax_entropy(eata.predict(x, None))
    eata.adapt(x)
    assert eata.n_reliable == int((ent < 0.4 * math.log(10)).sum()) and 0 < eata.n_reliable < 64
    # the first batch has no class-distribution history, so every reliable sample is used
    assert eata.n_used == eata.n_reliable
    assert eata.penalty.anchors and all((f >= 0).all() for f in eata.penalty.anchors[0][1].values())

    def drift(alpha: float) -> float:
        m = build("eata", source_model, src, fisher_samples=400, fisher_alpha=alpha, lr=1e-2)
        start = {k: p.detach().clone() for k, p in m.model.named_parameters()}
        for xb in batches(test_x, 6):
            m.adapt(xb)
        return sum(float((p.detach() - start[k]).pow(2).sum()) for k, p in m.model.named_parameters())

    assert drift(1e5) < 0.5 * drift(0.0)


def test_eata_needs_source_data_unless_eta(digits, source_model) -> None:
    _, test_x, _ = digits
    with pytest.raises(ConfigError, match="fisher_alpha=0"):
        build("eata", source_model, None)
    eta = build("eata", source_model, None, fisher_alpha=0.0)
    eta.adapt(test_x[:64])
    assert not eta.penalty.anchors


def test_sar_resets_when_the_entropy_average_collapses(digits, source_model) -> None:
    src, test_x, _ = digits
    sar = build("sar", source_model, src)
    init = {k: v.clone() for k, v in sar.model.state_dict().items()}
    sar.adapt(test_x[:64])
    assert sar.n_resets == 0 and sar.ema is not None and sar.ema > 0.2
    assert any(not torch.equal(v, init[k]) for k, v in sar.model.state_dict().items())
    eager = build("sar", source_model, src, reset_constant=10.0)  # any finite loss counts as collapse
    eager.adapt(test_x[:64])
    assert eager.n_resets == 1 and eager.ema is None
    assert all(torch.equal(v, init[k]) for k, v in eager.model.state_dict().items())


def test_rdumb_resets_after_its_period(digits, source_model) -> None:
    src, test_x, _ = digits
    rd = build("rdumb", source_model, src, reset_every=3)
    init = {k: v.clone() for k, v in rd.model.state_dict().items()}
    xs = batches(test_x, 4)
    for x in xs[:2]:
        rd.adapt(x)
    assert any(not torch.equal(v, init[k]) for k, v in rd.model.state_dict().items())
    rd.adapt(xs[2])
    assert rd.n_resets == 1 and rd.selector.mean_probs is None
    assert all(torch.equal(v, init[k]) for k, v in rd.model.state_dict().items())
    rd.adapt(xs[3])
    assert rd.n_resets == 1


@pytest.mark.parametrize("name", sorted(ALL))
def test_state_dict_resume_equals_uninterrupted(name, digits, source_model) -> None:
    src, test_x, _ = digits
    xs = batches(test_x, 4)
    a = build(name, source_model, src, seed=3, **ALL[name])
    for x in xs[:2]:
        a.adapt(x)
    state = copy.deepcopy(a.state_dict())
    expected = [a.adapt(x) for x in xs[2:]]
    b = build(name, source_model, src, seed=3, **ALL[name])
    b.load_state_dict(state)
    for x, e in zip(xs[2:], expected, strict=True):
        torch.testing.assert_close(b.adapt(x), e, rtol=0, atol=0)


def test_methods_reject_models_without_batch_norm_or_a_source_model(digits) -> None:
    src, _, _ = digits
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for name in ALL:
        with pytest.raises(ConfigError, match="BatchNorm"):
            build(name, plain, src, fisher_alpha=0.0) if name in ("eata", "psmt") else build(name, plain, src)
        with pytest.raises(ConfigError, match="source model"):
            build(name, None, src)  # type: ignore[arg-type]


def test_augmentation_is_seeded_and_flips_are_optional(digits) -> None:
    _, test_x, _ = digits
    x = test_x[:16]
    aug = TTAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert float(a.min()) >= float(x.min()) and float(a.max()) <= float(x.max())
    no_flip = TTAugment(hflip=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0), brightness=(1.0, 1.0),
                        contrast=(1.0, 1.0), gamma=(1.0, 1.0), blur_sigma=(1e-3, 1e-3), noise_std=0.0)  # fmt: skip
    torch.testing.assert_close(no_flip(x, torch.Generator().manual_seed(0)), x, atol=1e-4, rtol=0)
    always = TTAugment(hflip=1.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0), brightness=(1.0, 1.0),
                       contrast=(1.0, 1.0), gamma=(1.0, 1.0), blur_sigma=(1e-3, 1e-3), noise_std=0.0)  # fmt: skip
    torch.testing.assert_close(always(x, torch.Generator().manual_seed(0)), x.flip(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, threshold", [("cotta", 0.0), ("cotta", 1.0), ("rmt", None), ("psmt", 0.0),
                                             ("psmt", 1.0)])  # fmt: skip
def test_mean_teacher_methods_return_the_pre_update_prediction(name, threshold, digits, source_model) -> None:
    src, test_x, _ = digits
    extra = {} if threshold is None else {"confidence_threshold": threshold}  # 1.0: always augment-average
    method = build(name, source_model, src, **{**TEACHER[name], **extra})
    x = test_x[:64]
    state = copy.deepcopy(method.state_dict())
    before = method.predict(x, None)
    torch.testing.assert_close(method.state_dict(), state, rtol=0, atol=0)  # predict changed nothing
    teacher = [p.clone() for p in method.teacher.model.parameters()]
    torch.testing.assert_close(method.adapt(x), before)
    assert not torch.equal(method.predict(x, None), before)
    assert any(not torch.equal(p, q) for p, q in zip(method.teacher.model.parameters(), teacher, strict=True))


def test_cotta_restores_weights_at_its_rate_and_averages_augmentations_when_unsure(digits, source_model) -> None:
    src, test_x, _ = digits
    x = test_x[:64]
    source = dict(source_model.named_parameters())

    def restored_fraction(prob: float) -> float:
        m = build("cotta", source_model, src, restore_prob=prob, confidence_threshold=0.0)
        m.adapt(x)
        same = sum(int((p == source[k]).sum()) for k, p in m.model.named_parameters())
        return same / sum(p.numel() for p in m.model.parameters())

    assert restored_fraction(1.0) == 1.0
    assert restored_fraction(0.0) < 0.05
    assert 0.2 < restored_fraction(0.3) < 0.4
    sure = build("cotta", source_model, src, confidence_threshold=0.0, n_augmentations=4, flip=False)
    unsure = build("cotta", source_model, src, confidence_threshold=1.0, n_augmentations=4, flip=False)
    out_sure, out_unsure = sure.adapt(x), unsure.adapt(x)
    assert (sure.n_averaged, unsure.n_averaged) == (0, 1)
    assert not torch.allclose(out_sure, out_unsure)


def test_rmt_loss_components_warmup_and_source_free_variant(digits, source_model) -> None:
    src, test_x, _ = digits
    rmt = build("rmt", source_model, src, **TEACHER["rmt"])
    assert rmt.prototypes is not None and rmt.prototypes.shape == (10, 16)
    warmed = any(not torch.equal(p, q) for p, q in zip(rmt.model.parameters(), source_model.parameters(), strict=True))
    assert warmed  # the warm-up on source images already moved the student
    rmt.adapt(test_x[:64])
    assert set(rmt.last_losses) == {"sce", "contrastive", "ce_src"}
    assert all(math.isfinite(v) and v > 0 for v in rmt.last_losses.values())
    free = build("rmt", source_model, None, **TEACHER["rmt"])
    assert free.source_free and free.prototypes is None
    assert all(torch.equal(p, q) for p, q in zip(free.model.parameters(), source_model.parameters(), strict=True))
    free.adapt(test_x[:64])
    assert set(free.last_losses) == {"sce", "contrastive"}
    no_cont = build("rmt", source_model, src, **{**TEACHER["rmt"], "lambda_cont": 0.0, "warmup_samples": 0})
    no_cont.adapt(test_x[:64])
    assert set(no_cont.last_losses) == {"sce", "ce_src"}


def test_psmt_holds_the_low_fisher_quantile_of_teacher_weights(digits, source_model) -> None:
    src, test_x, _ = digits
    psmt = build("psmt", source_model, src, **TEACHER["psmt"], teacher_momentum=0.9)
    teacher = [p.clone() for p in psmt.teacher.model.parameters()]
    psmt.adapt(test_x[:64])
    assert 0.01 < psmt.last_mask_fraction < 0.06
    held = sum(int((p == q).sum()) for p, q in zip(psmt.teacher.model.parameters(), teacher, strict=True))
    total = sum(p.numel() for p in teacher)
    assert abs(held / total - psmt.last_mask_fraction) < 0.02
    with pytest.raises(ConfigError, match="fisher_alpha=0"):
        build("psmt", source_model, None, **TEACHER["psmt"])
    build("psmt", source_model, None, **{**TEACHER["psmt"], "fisher_alpha": 0.0}).adapt(test_x[:64])


def test_reliable_entropy_filters_uncertain_and_redundant_samples() -> None:
    sel = ReliableEntropy(n_classes=4, e_margin_fraction=0.4, d_margin=0.4)
    confident = torch.tensor([[8.0, 0, 0, 0], [0, 8.0, 0, 0]])
    uniform = torch.zeros(1, 4)  # entropy ln 4 > 0.4 ln 4: unreliable
    loss, n_reliable, n_used = sel(torch.cat([confident, uniform]))
    assert (n_reliable, n_used) == (2, 2) and loss > 0
    torch.testing.assert_close(sel.mean_probs, confident.softmax(1).mean(0))
    # a sample predicting class 0 again has cosine similarity ~0.7 > 0.4 to the running average: redundant
    _, n_reliable, n_used = sel(torch.tensor([[8.0, 0, 0, 0], [0, 0, 0, 8.0]]))
    assert (n_reliable, n_used) == (2, 1)


def test_ema_teacher_averages_and_holds_masked_weights() -> None:
    student = nn.Linear(2, 1)
    teacher = EMATeacher(student, momentum=0.75)
    start = student.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(4.0)
    teacher.update(student, hold=[torch.tensor([[True, False]]), torch.tensor([False])])
    expected = torch.stack([start[0, 0], start[0, 1] + 1.0]).view(1, 2)  # 0.75 * w + 0.25 * (w + 4)
    torch.testing.assert_close(teacher.model.weight, expected)
    assert not teacher.model.weight.requires_grad


def test_test_batch_norm_is_differentiable_like_training_mode_batch_norm() -> None:
    from cl_bench.components import PriorBatchNorm

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, track_running_stats=False)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    prior = PriorBatchNorm(bn)
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    bn(x).pow(2).sum().backward()
    prior(x2).pow(2).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(prior.weight.grad, bn.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(prior(x), bn(x))


def _sar_names(model: nn.Module) -> set[str]:
    info = StreamInfo((3, 32, 32), 10, 1, "domain_il", "cpu", source_model=model)
    sar = METHODS.create("sar")
    sar.setup(info, 0)
    trainable = {n for n, p in sar.model.named_parameters() if p.requires_grad}
    optimised = {id(p) for group in sar.opt.param_groups for p in group["params"]}
    assert {id(p) for n, p in sar.model.named_parameters() if n in trainable} == optimised
    assert trainable == set(sar.param_names)
    return trainable


def test_sar_adapts_the_reference_layers_of_a_resnet() -> None:
    from torchvision.models import resnet18

    names = _sar_names(resnet18(num_classes=10))
    bn = {f"{m}.{p}" for m, mod in resnet18().named_modules() if isinstance(mod, nn.BatchNorm2d)
          for p in ("weight", "bias")}  # fmt: skip
    assert names == {n for n in bn if not n.startswith("layer4.")}  # every BN affine outside layer4, nothing else
    assert "bn1.weight" in names and "layer3.1.bn2.bias" in names and "layer4.0.bn1.weight" not in names


def test_sar_adapts_the_reference_layers_of_a_vit() -> None:
    timm = pytest.importorskip("timm")
    from cl_bench.components import norm_affine_params
    from cl_bench.methods.sar import last_stage

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
    names = {n for n, _ in norm_affine_params(vit, last_stage(vit))}
    ln = {f"{m}.{p}" for m, mod in vit.named_modules() if isinstance(mod, nn.LayerNorm) for p in ("weight", "bias")}
    kept = {n for n in ln if not n.startswith(("blocks.9.", "blocks.10.", "blocks.11.", "norm."))}
    assert names == kept and "blocks.8.norm2.weight" in names and "norm.weight" not in names
    assert len(names) == 9 * 2 * 2  # blocks 0-8, two LayerNorms each, weight and bias


def test_sar_adapts_every_norm_layer_of_the_small_source_nets() -> None:
    from cl_bench.nets.models import LeNetBN, SmallCNN, WideResNet

    for net in (SmallCNN(3, 10), LeNetBN(1, 10), WideResNet(10, 1, 10)):
        expected = {n for n, _ in bn_affine_params(use_test_batch_stats(copy.deepcopy(net)))}
        info = StreamInfo((3, 32, 32), 10, 1, "domain_il", "cpu", source_model=net)
        sar = METHODS.create("sar")
        sar.setup(info, 0)
        assert set(sar.param_names) == expected and expected


def test_psmt_code_update_restores_masked_weights_and_applies_the_ema_twice(digits, source_model) -> None:
    src, test_x, _ = digits
    m = 0.9  # a low momentum, so one step moves the teacher measurably
    psmt = build("psmt", source_model, src, **{**TEACHER["psmt"], "update": "code", "teacher_momentum": m})
    source = [p.detach().clone() for p in psmt.model.parameters()]
    psmt.adapt(test_x[:64])
    held = total = 0
    for s, t, p0 in zip(psmt.model.parameters(), psmt.teacher.model.parameters(), source, strict=True):
        restored = (s == p0) & (t == p0)  # masked: student back to source, teacher = student's value
        double = torch.isclose(t, m * m * p0 + (1 - m * m) * s, atol=1e-6, rtol=1e-5)  # two EMA steps
        assert bool((restored | double).all())
        held += int(restored.sum())
        total += s.numel()
    assert 0.02 < held / total < 0.2  # about the 3 % quantile (plus weights with zero gradient)
    assert abs(psmt.last_mask_fraction - 0.03) < 0.03


def test_psmt_paper_update_holds_masked_teacher_weights(digits, source_model) -> None:
    src, test_x, _ = digits
    psmt = build("psmt", source_model, src, **{**TEACHER["psmt"], "teacher_momentum": 0.9})
    source = [p.detach().clone() for p in psmt.model.parameters()]
    psmt.adapt(test_x[:64])
    for s, t, p0 in zip(psmt.model.parameters(), psmt.teacher.model.parameters(), source, strict=True):
        held, once = t == p0, torch.isclose(t, 0.9 * p0 + 0.1 * s, atol=1e-6, rtol=1e-5)
        assert bool((held | once).all())  # one EMA step or held; the student is never restored
    assert 0 < psmt.last_mask_fraction < 0.1


def test_psmt_code_views_feed_the_clean_batch(digits, source_model) -> None:
    src, test_x, _ = digits
    psmt = build("psmt", source_model, src, **{**TEACHER["psmt"], "augmented_views": False,
                                                "confidence_threshold": 1.0})  # fmt: skip
    x = test_x[:64]
    state = psmt.gen.get_state()
    expected = psmt.model(x) + psmt.teacher(x)
    torch.testing.assert_close(psmt.adapt(x), expected.detach())
    assert torch.equal(psmt.gen.get_state(), state)  # no augmentation drawn


def test_rmt_reference_source_free_variant_replays_nothing_but_keeps_prototypes(digits, source_model) -> None:
    src, test_x, _ = digits
    rmt = build("rmt", source_model, src, **{**TEACHER["rmt"], "lambda_ce_src": 0.0})
    assert rmt.prototypes is not None and not rmt.source_free  # warm-up and prototypes from the source data
    warmed = any(not torch.equal(a, b) for a, b in zip(rmt.model.parameters(), source_model.parameters(), strict=True))
    assert warmed

    def no_replay() -> None:
        raise AssertionError("lambda_ce_src=0 must not draw source batches while adapting")

    rmt._source_batch = no_replay  # type: ignore[method-assign]
    rmt.adapt(test_x[:64])
    assert "ce_src" not in rmt.last_losses and "contrastive" in rmt.last_losses


def test_rmt_strict_source_free_variant_needs_no_source_data(digits, source_model) -> None:
    _, test_x, _ = digits
    assert METHODS.get("rmt").obj.caps.source_data == "optional"
    rmt = build("rmt", source_model, None, **TEACHER["rmt"])
    assert rmt.source_free and rmt.prototypes is None
    pairs = zip(rmt.model.parameters(), source_model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)  # no warm-up
    rmt.adapt(test_x[:64])
    assert set(rmt.last_losses) == {"sce", "contrastive"}


def test_methods_that_read_source_data_declare_it() -> None:
    import inspect

    for name in METHODS.names():
        cls = METHODS.get(name).obj
        if not cls.caps.adapts_at_test:
            continue
        reads = "source_data" in inspect.getsource(inspect.getmodule(cls))
        assert (cls.caps.source_data != "none") == reads, name
    assert {n for n in METHODS.names() if METHODS.get(n).obj.caps.source_data != "none"} >= {"rmt", "eata", "psmt"}
