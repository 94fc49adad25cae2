"""Prototype head, feature cache, and the pretrained-backbone methods (ncm, ranpac, slca)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl_bench.components import FeatureCache, PrototypeHead
from cl_bench.components.feature_cache import row_hashes
from cl_bench.engine.runner import run
from cl_bench.engine.spec import RunSpec
from cl_bench.nets.backbones import create_backbone


# -- PrototypeHead ---------------------------------------------------------------------------------------------------
def test_prototypes_are_exact_class_means_whatever_the_batching() -> None:
    gen = torch.Generator().manual_seed(0)
    f, y = torch.randn(50, 4, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    head = PrototypeHead(5, 4)
    for i in range(0, 50, 7):
        head.update(f[i : i + 7], y[i : i + 7])
    for c in range(3):
        torch.testing.assert_close(head.means()[c], f[y == c].mean(0))
    assert head.seen.tolist() == [True, True, True, False, False]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_mean_logits_pick_the_closest_seen_class_and_stay_finite(metric: str) -> None:
    head = PrototypeHead(4, 2)
    assert torch.equal(head.logits(torch.ones(3, 2), metric), torch.zeros(3, 4))  # nothing seen yet
    head.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 2]))
    logits = head.logits(torch.tensor([[0.9, 0.1], [0.2, 3.0]]), metric)
    assert torch.isfinite(logits).all() and logits.argmax(1).tolist() == [0, 2]
    assert (logits[:, [1, 3]] < logits[:, [0, 2]].min(1, keepdim=True).values).all()  # unseen classes rank last


# -- FeatureCache ----------------------------------------------------------------------------------------------------
def test_row_hashes_tell_rows_apart_and_ignore_batch_context() -> None:
    x = torch.randn(100, 1, 4, 4)
    h = row_hashes(x)
    assert len({tuple(r) for r in h.tolist()}) == 100
    assert torch.equal(row_hashes(x[10:20]), h[10:20])
    y = x.clone()
    y[5, 0, 3, 3] += 1e-6  # one changed value changes the key
    assert not torch.equal(row_hashes(y)[5], h[5])


def test_cache_computes_each_row_once_and_persists_across_instances(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1)[:, :3] * 2

    x = torch.randn(20, 1, 2, 2)
    cache = FeatureCache({"backbone": "b"}, directory=tmp_path)
    first = cache.lookup(x[:12], compute)
    mixed = cache.lookup(x[8:], compute)  # 4 cached rows, 8 new
    assert calls == [12, 8] and cache.hits == 4
    torch.testing.assert_close(mixed, compute(x[8:]))
    torch.testing.assert_close(first, compute(x[:12]))
    cache.flush()
    again = FeatureCache({"backbone": "b"}, directory=tmp_path)
    assert len(again) == 20
    calls.clear()
    torch.testing.assert_close(again.lookup(x, compute), x.flatten(1)[:, :3] * 2)
    assert calls == []
    other = FeatureCache({"backbone": "c"}, directory=tmp_path)  # another encoder: another file
    assert len(other) == 0


def test_flush_merges_rows_written_by_another_process(tmp_path: Path) -> None:
    x = torch.randn(10, 3)
    a, b = FeatureCache({"k": 1}, directory=tmp_path), FeatureCache({"k": 1}, directory=tmp_path)
    a.lookup(x[:5], lambda t: t)
    b.lookup(x[5:], lambda t: t)
    a.flush()
    b.flush()
    assert len(FeatureCache({"k": 1}, directory=tmp_path)) == 10


def test_corrupt_cache_file_is_only_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache({"k": 2}, directory=tmp_path)
    assert cache.path is not None
    cache.path.write_bytes(b"not a torch file")
    fresh = FeatureCache({"k": 2}, directory=tmp_path)
    assert len(fresh) == 0
    fresh.lookup(torch.randn(3, 2), lambda t: t)
    fresh.flush()
    assert len(FeatureCache({"k": 2}, directory=tmp_path)) == 3


# -- methods on a tiny real weight file ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "test_resnet.pth"
    torch.save(create_backbone("test_resnet").state_dict(), path)
    return path


def _run(method: str, cfg: dict, out: Path) -> dict:
    spec = RunSpec(method=method, method_config=cfg, scenario="toy", scenario_config={}, seed=0)
    return run(spec, out=out)


def test_cached_run_equals_uncached_run_and_reuses_features(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path / "cache"))
    base = {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16}
    plain = _run("ncm", {**base, "feature_cache": False}, tmp_path / "a")
    first = _run("ncm", base, tmp_path / "b")
    files = list((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(files) == 1
    stored = torch.load(files[0], weights_only=True)
    assert len(stored["hashes"]) == 6 * (40 + 20)  # every toy train and test row, once
    second = _run("ncm", {**base, "metric": "euclidean"}, tmp_path / "c")  # another method config, same features
    assert first["accuracy_matrix"] == plain["accuracy_matrix"]
    assert second["metrics"]["final_acc"] > 0.5
    assert first["method"]["backbone"]["weights_sha256"] == second["method"]["backbone"]["weights_sha256"]


# -- RanPAC ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 400])  # fewer rows than features (dual form) and more (primal form)
def test_ridge_search_prefers_small_ridge_for_signal_and_large_for_noise(n: int) -> None:
    from cl_bench.methods.ranpac import RIDGES, select_ridge

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, 50, generator=gen, dtype=torch.float64)
    signal = torch.nn.functional.one_hot((h @ torch.randn(50, 3, generator=gen, dtype=torch.float64)).argmax(1), 3)
    noise = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=gen), 3)
    small = select_ridge(h, signal.double(), RIDGES, torch.Generator().manual_seed(1))
    large = select_ridge(h, noise.double(), RIDGES, torch.Generator().manual_seed(1))
    assert small < large and large >= 1.0


@pytest.mark.parametrize("first_session", [True, False])
def test_ranpac_readout_is_the_ridge_solution_over_all_experiences(tiny_weights: Path, first_session: bool) -> None:
    from cl_bench.core.registry import METHODS, SCENARIOS
    from cl_bench.core.types import Batch, StreamInfo
    from cl_bench.methods.ranpac import RanPAC

    scenario = SCENARIOS.create("toy")
    cfg = METHODS.config("ranpac", {"backbone": "test_resnet", "weights": str(tiny_weights), "image_size": 16,
                                    "projection_dim": 32, "feature_cache": False, "first_session": first_session,
                                    "lr": 0.1, "ffn_num": 8})  # fmt: skip
    method = RanPAC(cfg)
    info = StreamInfo(scenario.input_shape, scenario.n_classes, len(scenario), scenario.setting,
                      input_transform=scenario[0].test.transform)  # fmt: skip
    method.setup(info, seed=0)
    hs, ys = [], []
    for exp in scenario:
        method.begin_experience(exp)
        x, y = exp.train.batch(slice(None))
        for i in range(0, len(x), 16):
            method.observe(Batch(x[i : i + 16], y[i : i + 16], None, exp.index))
        method.end_experience(exp)
        hs.append(method._project(x).double())
        ys.append(y)
    h, onehot = torch.cat(hs), torch.nn.functional.one_hot(torch.cat(ys), scenario.n_classes).double()
    expected = torch.linalg.solve(h.T @ h + method.ridge * torch.eye(32, dtype=torch.float64), h.T @ onehot)
    torch.testing.assert_close(method.readout, expected.float(), atol=1e-4, rtol=1e-3)


# -- SLCA ------------------------------------------------------------------------------------------------------------
def test_slca_alignment_logits_are_divided_by_the_mean_per_task_norm() -> None:
    from cl_bench.methods.slca import SLCA

    method = SLCA.__new__(SLCA)
    method.config = SLCA.Config(backbone="test_resnet", weights=None, ca_temperature=0.5)
    method.head = torch.nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        method.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]]))
    method.seen = torch.tensor([True, True, True, False])
    method.task_of = torch.tensor([0, 0, 1, -1])
    f = torch.tensor([[3.0, 4.0]])
    # logits of seen classes 3, 4, 6; task norms 5 and 6 -> mean 5.5; then / 0.5
    torch.testing.assert_close(method._normalised_logits(f), torch.tensor([[3.0, 4.0, 6.0]]) / 5.5 / 0.5)


def test_slca_samples_old_classes_around_shrunk_means_as_the_official_code() -> None:
    from cl_bench.methods.slca import SLCA

    method = SLCA.__new__(SLCA)
    method.config = SLCA.Config(backbone="test_resnet", weights=None, ca_samples_per_class=4000, ca_mean_decay=True)
    method.encoder = type("E", (), {"dim": 2})()
    method.means = torch.tensor([[10.0, 0.0], [0.0, 10.0], [5.0, 5.0]])
    method.covs = torch.eye(2).repeat(3, 1, 1) * 0.01
    method.seen = torch.tensor([True, True, True])
    method.task_of = torch.tensor([0, 1, 2])
    method.gen = torch.Generator().manual_seed(0)
    f, y = method._sample()
    got = torch.stack([f[y == c].mean(0) for c in range(3)])
    # models/slca.py l.201-202: mean * (0.9 + (t_c + 1) / (t + 1) * 0.1) at experience t = 2.
    scale = torch.tensor([0.9 + 0.1 / 3, 0.9 + 0.2 / 3, 1.0])
    torch.testing.assert_close(got, method.means * scale[:, None], atol=0.01, rtol=0)


def test_slca_next_experience_trains_from_the_head_before_alignment() -> None:
    from cl_bench.core.registry import METHODS
    from cl_bench.core.types import Batch, StreamInfo
    from cl_bench.testing import toy_scenario

    for restore in (True, False):
        cls = METHODS.get("slca").obj
        method = METHODS.create("slca", **{**cls.conformance_config, "ca_restore": restore})
        s = toy_scenario()
        method.setup(StreamInfo(s.input_shape, s.n_classes, len(s), s.setting), 0)
        for exp in list(s)[:2]:
            method.begin_experience(exp)
            x, y = exp.train.batch(torch.arange(8))
            method.observe(Batch(x, y, None, exp.index))
            before = method.head.weight.detach().clone()
            method.end_experience(exp)
        aligned = method.head.weight.detach().clone()
        assert not torch.equal(aligned, before)  # the alignment moved the head
        method.begin_experience(list(s)[2])
        assert torch.equal(method.head.weight, before if restore else aligned)


def test_slca_rejects_a_feature_cache() -> None:
    from cl_bench.core.errors import ConfigError
    from cl_bench.core.registry import METHODS

    with pytest.raises(ConfigError, match="cannot be cached"):
        METHODS.config("slca", {"feature_cache": True})
