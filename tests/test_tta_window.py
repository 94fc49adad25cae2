"""The ``window`` setting (sliding window of test statistics) of every TTA method that normalises with test batches.

The methods under test are found, not listed: every registered method that adapts at test time and declares
``window`` in its config. The others (own normalisation, frozen source statistics) do not declare it and
refuse it on the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.nets.models import build_source_model
from cl_bench.testing import parametrize_with_checks


def _adapts(name: str) -> bool:
    return bool(METHODS.get(name).obj.caps.adapts_at_test)


def _fields(name: str) -> set[str]:
    cls = METHODS.get(name).config_cls
    return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()


WINDOWED = [n for n in METHODS.names() if _adapts(n) and "window" in _fields(n)]
REFUSING = [n for n in METHODS.names() if _adapts(n) and "window" not in _fields(n)]
#: Settings that make a method's prediction depend on the window only: no source data on these streams
#: (fisher_alpha 0), the teacher's clean pass instead of data-dependent augmentation averaging
#: (confidence_threshold 0, so the generator is drawn alike whatever the data).
TEST_CONFIG: dict[str, dict[str, Any]] = {"eata": {"fisher_alpha": 0.0}, "cotta": {"confidence_threshold": 0.0},
                                          "psmt": {"fisher_alpha": 0.0, "confidence_threshold": 0.0}}  # fmt: skip


def test_the_windowed_and_the_refusing_methods_are_the_expected_ones() -> None:
    # the RMT benchmark honours TEST.WINDOW_LENGTH in its base class (every method); here only where batch
    # statistics are used: a new TTA method must take a side, and this list says which
    assert set(WINDOWED) >= {"bn_adapt", "tent", "eata", "sar", "rdumb", "cotta", "rmt", "psmt", "roid", "deyo",
                             "cmf", "shot_im", "adacontrast"}  # fmt: skip
    assert set(REFUSING) >= {"source", "bn_ema", "note", "rotta", "lame", "t3a"}


def _one_bn_source() -> nn.Module:
    """The toy CNN with its second BatchNorm removed: with one BN layer the stored moments of a sample do not
    depend on what the window held when it was stored, so "only the last W samples matter" is exact."""
    torch.manual_seed(0)
    model = build_source_model("cnn_bn", (3, 8, 8), 5)
    model.features[5] = nn.Identity()
    return model.eval()


def _method(name: str, model: nn.Module | None = None, **kw: Any):  # noqa: ANN202
    model = model if model is not None else build_source_model("cnn_bn", (3, 8, 8), 5).eval()
    info = StreamInfo((3, 8, 8), 5, 1, "domain_il", "cpu", source_model=model, source_data=None,
                      flip_invariant=False)  # fmt: skip
    cls = METHODS.get(name).obj
    m = METHODS.create(name, **{**getattr(cls, "conformance_config", {}), **TEST_CONFIG.get(name, {}), **kw})
    m.setup(info, 0)
    return m


def _windows(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every window buffer in a method's (nested) ``state_dict``, by path."""
    if isinstance(state, dict):
        out: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            out.update(_windows(v, f"{prefix}{k}/"))
        return out
    if isinstance(state, torch.Tensor) and "win_" in prefix:
        return {prefix: state.clone()}
    return {}


@pytest.mark.parametrize("name", WINDOWED)
def test_a_window_no_larger_than_the_batch_is_test_batch_norm(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = build_source_model("cnn_bn", (3, 8, 8), 5).eval()
    plain, windowed = _method(name, model), _method(name, model, window=8)
    assert torch.allclose(plain.adapt(x), windowed.adapt(x), atol=1e-5)  # the first batch: its own statistics
    assert _windows(windowed.state_dict())  # the window is in checkpoints


@pytest.mark.parametrize("name", WINDOWED)
def test_single_samples_are_normalised_with_the_last_w_samples(name: str) -> None:
    """Batch 1, window 4: the prediction on a probe depends on the last 3 adapted samples (with the probe: 4),
    not on older ones and not on the probe alone; ``predict`` stores nothing."""
    g = torch.Generator().manual_seed(2)
    old_a, old_b, recent = ([torch.randn(1, 3, 8, 8, generator=g) for _ in range(k)] for k in (3, 3, 3))
    probe = torch.randn(1, 3, 8, 8, generator=g)
    model = _one_bn_source()
    frozen = {"lr": 1e-12} if "lr" in _fields(name) else {}  # weights (almost) still: the window alone differs
    a, b, c = (_method(name, model, window=4, **frozen) for _ in range(3))
    plain = _method(name, model, **frozen)
    for x in old_a + recent:
        a.adapt(x)
        plain.adapt(x)
    for x in old_b + recent:
        b.adapt(x)
    for x in old_b + old_a:  # c's last three samples differ from a's
        c.adapt(x)
    out_a, out_b, out_c, out_p = (m.predict(probe, None) for m in (a, b, c, plain))
    assert torch.isfinite(out_a).all()
    assert torch.allclose(out_a, out_b, atol=1e-4), "samples older than the window changed the prediction"
    assert not torch.allclose(out_a, out_c, atol=1e-3), "the last samples of the window did not count"
    assert not torch.allclose(out_a, out_p, atol=1e-3), "the window had no effect on a single sample"
    # predict peeks: it stores nothing, so asking again gives the same answer and the same windows
    before = _windows(a.state_dict())
    assert torch.equal(a.predict(probe, None), out_a)
    after = _windows(a.state_dict())
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", [n for n in WINDOWED if n in ("cotta", "rmt", "psmt", "adacontrast")])
def test_every_network_of_a_teacher_student_method_keeps_its_own_window(name: str) -> None:
    m = _method(name, window=4)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        m.adapt(torch.randn(1, 3, 8, 8, generator=g))
    wins = _windows(m.state_dict())
    filled = {k: int(v) for k, v in wins.items() if k.endswith("win_filled/")}
    networks = {k.split("/")[0] for k in filled}
    assert len(networks) >= 2, networks  # student and teacher (and anchor / key encoder)
    assert set(filled.values()) == {3}, filled  # each saw the three samples
    means = {net: {k.split("/")[-2]: v for k, v in wins.items() if k.startswith(net + "/") and "win_mean" in k}
             for net in networks}  # fmt: skip
    student = means.pop("model")
    for net, layers in means.items():  # every stored sample's moments are this network's own, none copied
        assert layers.keys() == student.keys()
        for layer, mean in layers.items():
            assert all(not torch.equal(s, o) for s, o in zip(student[layer][:3], mean[:3], strict=True)), (net, layer)


@pytest.mark.parametrize("name", WINDOWED)
def test_the_windows_of_every_network_survive_a_checkpoint(name: str) -> None:
    g = torch.Generator().manual_seed(5)
    m, resumed = _method(name, window=4), _method(name, window=4)
    for _ in range(3):
        m.adapt(torch.randn(1, 3, 8, 8, generator=g))
    resumed.load_state_dict(m.state_dict())
    saved, loaded = _windows(m.state_dict()), _windows(resumed.state_dict())
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    probe = torch.randn(1, 3, 8, 8, generator=g)
    assert torch.allclose(m.adapt(probe), resumed.adapt(probe), atol=1e-6)


def test_a_reset_to_the_source_keeps_the_window() -> None:
    m = _method("rdumb", window=4, reset_every=2)
    g = torch.Generator().manual_seed(4)
    for _ in range(4):
        m.adapt(torch.randn(1, 3, 8, 8, generator=g))
    assert m.state_dict()["n_resets"] == 2
    assert {int(v) for k, v in _windows(m.state_dict()).items() if k.endswith("win_filled/")} == {4}


def test_negative_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="window must be >= 0"):
        _method("tent", window=-1)
    with pytest.raises(ConfigError, match="window >= 0"):
        _method("adacontrast", window=-1)


def _run(tmp_path: Any, method: str, *extra: str) -> int:
    return main(["run", "--scenario", "digits_c", "--method", method, "--set", "scenario.n_per_domain=4",
                 "--set", "scenario.corruptions=[gaussian_noise]", "--set", "scenario.source_epochs=3",
                 "--set", "protocol.batch_size=1", "--out", str(tmp_path), *extra])  # fmt: skip


@pytest.mark.slow  # trains digits_c's source model (~5 s); the window path itself is covered above
def test_cli_runs_cotta_with_a_window_on_single_samples(tmp_path: Any) -> None:
    assert _run(tmp_path, "cotta", "--set", "window=8", "--set", "n_augmentations=2") == 0


@pytest.mark.parametrize("name", REFUSING)
def test_methods_without_batch_statistics_refuse_a_window(name: str, tmp_path: Any, capsys: Any) -> None:
    assert _run(tmp_path, name, "--set", "window=8") == 2
    err = capsys.readouterr().err.strip()
    assert "has no parameter 'window'" in err and "\n" not in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@parametrize_with_checks(WINDOWED, config={"window": 32}, checks=["check_predict_pure", "check_deterministic",
                                                                  "check_resume"],
                         marks=lambda name: [] if name == "cotta" else [pytest.mark.slow])  # fmt: skip
def test_windowed_methods_conform(method: str, check: Any) -> None:
    # toy_tta's batches of 16 with a window of 32: every batch after the first pools with the previous one
    check(method)
