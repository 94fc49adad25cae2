"""The ``window`` option (sliding window of test statistics) of tent, eata and sar."""

from __future__ import annotations

import pytest
import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.nets.models import build_source_model

METHODS_WITH_WINDOW = {"tent": {}, "eata": {"fisher_alpha": 0.0}, "sar": {}}


def _method(name: str, **kw: object):  # noqa: ANN202
    torch.manual_seed(0)
    model = build_source_model("cnn_bn", (3, 8, 8), 5).eval()
    info = StreamInfo((3, 8, 8), 5, 1, "domain_il", "cpu", source_model=model, source_data=None)
    m = METHODS.create(name, **{**METHODS_WITH_WINDOW[name], **kw})
    m.setup(info, 0)
    return m


@pytest.mark.parametrize("name", list(METHODS_WITH_WINDOW))
def test_a_window_no_larger_than_the_batch_is_test_batch_norm(name: str) -> None:
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain, windowed = _method(name), _method(name, window=8)
    assert torch.allclose(plain.adapt(x), windowed.adapt(x), atol=1e-5)  # the first batch: its own statistics
    assert any(k.endswith("win_mean") for k in windowed.state_dict()["model"])  # the window is in checkpoints


@pytest.mark.parametrize("name", list(METHODS_WITH_WINDOW))
def test_single_samples_are_normalised_with_the_window(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(1, 3, 8, 8, generator=g) for _ in range(6)]
    plain, windowed = _method(name), _method(name, window=4)
    for x in xs[:-1]:
        windowed.adapt(x)
        plain.adapt(x)
    probe = xs[-1]
    out_w, out_p = windowed.predict(probe, None), plain.predict(probe, None)
    assert torch.isfinite(out_w).all() and not torch.allclose(out_w, out_p, atol=1e-4)
    # predict peeks: it stores nothing, so asking twice gives the same answer
    assert torch.equal(windowed.predict(probe, None), out_w)
    before = {k: v.clone() for k, v in windowed.state_dict()["model"].items() if "win_" in k}
    windowed.predict(probe, None)
    after = {k: v for k, v in windowed.state_dict()["model"].items() if "win_" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_negative_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="window must be >= 0"):
        _method("tent", window=-1)
