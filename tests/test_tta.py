"""Test-time adaptation: streams and settings, source phase, runner path, metrics, conformance, bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from cl_bench.errors import ConfigError, UserError
from cl_bench.method import Caps, Method
from cl_bench.metrics import AccuracyMatrix, compute_all
from cl_bench.metrics.tta import online_errors
from cl_bench.models import WideResNet, build_source_model
from cl_bench.record import load_record
from cl_bench.registry import SCENARIOS
from cl_bench.runner import RunSpec, resume, run
from cl_bench.testing import check_method
from cl_bench.tta import GRADUAL_SEVERITIES, dirichlet_order, source_model
from cl_bench.types import PredictContext, StreamInfo

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_cifar_c(root: Path, corruptions: tuple[str, ...], rows: int = 4) -> dict[str, np.ndarray]:
    """Released CIFAR-10-C layout with fewer rows: ``<corruption>.npy`` (5 * rows, 32, 32, 3) and labels."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": rng.integers(0, 10, 5 * rows).astype(np.uint8)}
    np.save(root / "labels.npy", arrays["labels"])
    for name in corruptions:
        arrays[name] = rng.integers(0, 256, (5 * rows, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", arrays[name])
    return arrays


# -- metrics -----------------------------------------------------------------------------------------------------------
def _online(rows: list[tuple[int, int]], severity: list[int], clean: list[int]) -> AccuracyMatrix:
    m = AccuracyMatrix(len(rows), online=True, severity=severity, clean_after=clean)
    for e, (c, t) in enumerate(rows):
        correct, total = [0] * len(rows), [0] * len(rows)
        correct[e], total[e] = c, t
        m.mark_boundary(m.add_point(e + 1, correct, total))
    return m


def test_tta_metrics_by_hand() -> None:
    # gradual-like: severities 1, 5, 3 then a clean experience; errors 0.1, 0.5, 0.3, 0.05
    m = _online([(90, 100), (50, 100), (70, 100), (19, 20)], [1, 5, 3, 0], [45, 50])
    got = compute_all(m, ["online_error", "online_error_max_severity", "online_error_clean", "clean_acc_after"])
    assert got["online_error"] == pytest.approx((0.1 + 0.5 + 0.3) / 3)  # clean experiences not counted
    assert got["online_error_max_severity"] == pytest.approx(0.5)
    assert got["online_error_clean"] == pytest.approx(0.05)
    assert got["clean_acc_after"] == pytest.approx(0.9)
    assert online_errors(m) == pytest.approx([0.1, 0.5, 0.3, 0.05])
    # an unfinished stream is scored on the finished experiences
    part = _online([(90, 100), (50, 100)], [5, 5], [])
    part.n_experiences = 3
    part.severity = [5, 5, 5]
    assert compute_all(part, ["online_error"])["online_error"] == pytest.approx(0.3)
    assert compute_all(part, ["clean_acc_after"])["clean_acc_after"] is None
    back = AccuracyMatrix.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m


def test_tta_metrics_are_undefined_for_continual_learning_matrices() -> None:
    m = AccuracyMatrix(2)
    m.add_point(0, [5, 5], [10, 10])
    m.mark_boundary(m.add_point(3, [9, 5], [10, 10]))
    assert "online" not in m.to_dict()  # old records keep their form
    got = compute_all(m, ["online_error", "online_error_max_severity", "online_error_clean", "clean_acc_after"])
    assert set(got.values()) == {None}


# -- stream settings ---------------------------------------------------------------------------------------------------
def test_settings_shape_the_stream() -> None:
    cont = SCENARIOS.create("toy_tta")
    assert len(cont) == 3 and all(e.train is None for e in cont) and cont.source is not None
    assert [e.meta for e in cont] == [{"corruption": f"shift{d}", "severity": 5} for d in range(3)]
    grad = SCENARIOS.create("toy_tta", setting="gradual")
    assert len(grad) == 27 and [e.meta["severity"] for e in grad[:9]] == list(GRADUAL_SEVERITIES)
    assert {e.meta["corruption"] for e in grad[9:18]} == {"shift1"}
    mixed = SCENARIOS.create("toy_tta", setting="mixed_domains")
    assert len(mixed) == 1 and len(mixed[0].test) == 3 * len(cont[0].test)
    assert sorted(mixed[0].test.x.flatten().tolist()) == sorted(torch.cat([e.test.x for e in cont]).flatten().tolist())
    clean = SCENARIOS.create("toy_tta", insert_clean=True)
    assert [e.meta["corruption"] for e in clean] == ["shift0", "none", "shift1", "none", "shift2"]
    assert torch.equal(clean[1].test.x, clean.source.test.x)  # type: ignore[union-attr]
    assert SCENARIOS.create("toy_tta", setting="reset_each_shift").source.reset_each_shift  # type: ignore[union-attr]
    assert not cont.source.reset_each_shift  # type: ignore[union-attr]
    few = SCENARIOS.create("toy_tta", n_per_domain=10)
    assert [len(e.test) for e in few] == [10, 10, 10] and torch.equal(few[0].test.y, few[1].test.y)
    assert len({cont.spec_hash, grad.spec_hash, mixed.spec_hash, clean.spec_hash, few.spec_hash}) == 5


def test_correlated_setting_orders_labels_by_a_dirichlet_process() -> None:
    y = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0)
    iid = rng.permutation(y)

    def switches(labels: np.ndarray) -> int:
        return int((labels[1:] != labels[:-1]).sum())

    strong = dirichlet_order(y, 10, 0.01, np.random.default_rng(1))
    weak = dirichlet_order(y, 10, 100.0, np.random.default_rng(1))
    assert sorted(strong.tolist()) == list(range(1000))  # a permutation: every example once
    # classes drawn into the same time slot are shuffled together, so runs are long but not pure
    assert switches(y[strong]) < 0.7 * switches(iid) < 0.7 * 1.3 * switches(y[weak])
    sc = SCENARIOS.create("toy_tta", setting="correlated", n_test=40, concentration=0.05)
    assert switches(sc[0].test.y.numpy()) < switches(SCENARIOS.create("toy_tta", n_test=40)[0].test.y.numpy())


def test_bad_stream_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="continual, gradual, mixed_domains, reset_each_shift, correlated"):
        SCENARIOS.create("toy_tta", setting="sudden")
    with pytest.raises(ConfigError, match="concentration"):
        SCENARIOS.create("digits_c", corruptions=("fog",), setting="correlated", concentration=0.0)
    with pytest.raises(ConfigError, match="1, 2, 3, 4, 5"):
        SCENARIOS.create("digits_c", severity=0, setting="gradual")
    with pytest.raises(ConfigError, match="valid corruptions"):
        SCENARIOS.create("digits_c", corruptions=("rain",), setting="gradual")
    with pytest.raises(ConfigError, match="unknown source model 'resnet9000'"):
        source_model(SCENARIOS.create("toy_tta", source_model="resnet9000"), 0)
    write_cifar_c(tmp_path, ("fog",))
    with pytest.raises(ConfigError, match="clean_root"):
        SCENARIOS.create("cifar10_c", root=str(tmp_path), corruptions=("fog",), insert_clean=True)


def test_cifar10_c_gradual_reads_every_severity(tmp_path: Path) -> None:
    arrays = write_cifar_c(tmp_path, ("fog", "snow"), rows=6)
    sc = SCENARIOS.create("cifar10_c", root=str(tmp_path), corruptions=("fog", "snow"), setting="gradual",
                          n_per_domain=4)  # fmt: skip
    assert len(sc) == 18 and sc.protocol_defaults["batch_size"] == 200
    exp = sc[10]  # snow, second step: severity 2 = rows 6..12
    assert exp.meta == {"corruption": "snow", "severity": 2} and len(exp.test) == 4
    kept = [r for r in range(6) if any(np.array_equal(exp.test.x[i].permute(1, 2, 0).numpy(), arrays["snow"][6 + r])
                                       for i in range(4))]  # fmt: skip
    assert len(kept) == 4
    assert sc.source is not None and sc.source.train is None and sc.source.model == "wrn28_10"


# -- source models and checkpoints -------------------------------------------------------------------------------------
def test_wrn28_10_has_robustbench_key_names() -> None:
    net = WideResNet(28, 10)
    keys = net.state_dict().keys()
    assert sum(p.numel() for p in net.parameters()) == 36_479_194
    for k in ("conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.3.bn2.running_var", "bn1.weight",
              "fc.weight", "fc.bias"):
        assert k in keys
    assert "block1.layer.1.convShortcut.weight" not in keys  # identity shortcut inside a group
    assert build_source_model("auto", (1, 28, 28), 10).__class__.__name__ == "LeNetBN"


def test_robustbench_format_checkpoint_loads_and_bad_keys_are_named(tmp_path: Path) -> None:
    sc = SCENARIOS.create("toy_tta", source_model="cnn_bn")
    trained = source_model(sc, seed=0)
    # RobustBench files nest the weights under 'model_state_dict' with DataParallel's 'module.' prefix.
    nested = {"model_state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 10}
    torch.save(nested, tmp_path / "Standard.pt")
    loaded = source_model(SCENARIOS.create("toy_tta", source_weights=str(tmp_path / "Standard.pt")), seed=5)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values(),
                                                  strict=True))  # fmt: skip
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"does not fit the architecture SmallCNN: .*missing.*unexpected.*wrn28_10"):
        source_model(SCENARIOS.create("toy_tta", source_weights=str(tmp_path / "bad.pt")), seed=0)
    wrn = {k: v for k, v in WideResNet(10, 1).state_dict().items() if "block3" not in k}
    torch.save(wrn, tmp_path / "wrn10.pt")
    with pytest.raises(ConfigError, match="missing"):
        source_model(SCENARIOS.create("toy_tta", source_weights=str(tmp_path / "wrn10.pt")), seed=0)


def test_source_model_is_cached_and_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path))
    sc = SCENARIOS.create("toy_tta", n_domains=1)
    a = source_model(sc, seed=3)
    assert len(list((tmp_path / "source_models").glob("*.pt"))) == 1
    from cl_bench import tta

    tta._MEMORY.clear()  # the disk cache alone must give the same weights
    b = source_model(sc, seed=3)
    c = source_model(sc, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.state_dict()["head.weight"], c.state_dict()["head.weight"])
    assert not a.training and a is not b


# -- the runner's TTA path ---------------------------------------------------------------------------------------------
def test_source_and_bn_adapt_runs_record_tta_metrics(tmp_path: Path) -> None:
    recs = {}
    for name in ("source", "bn_adapt"):
        spec = RunSpec(method=name, scenario="toy_tta", scenario_config={"insert_clean": True, "shift": 3.0})
        recs[name] = load_record(Path(tmp_path) / run(spec, tmp_path)["run_id"])
    src, bn = recs["source"], recs["bn_adapt"]
    assert src["protocol"]["batch_size"] == 16 and src["accuracy_matrix"]["online"] is True
    assert src["accuracy_matrix"]["severity"] == [5, 0, 5, 0, 5]
    for r in (src, bn):
        assert r["metrics"]["final_acc"] is None and 0 <= r["metrics"]["online_error"] <= 1
        assert r["metrics"]["clean_acc_after"] is not None and r["metrics"]["online_error_clean"] is not None
        assert r["cost"]["source_seconds"] >= 0
    # BN statistics of the shifted batches undo most of the shift; the source model's stay wrong
    assert bn["metrics"]["online_error"] < src["metrics"]["online_error"]
    assert src["metrics"]["clean_acc_after"] > 0.9
    from cl_bench.leaderboard import TTA_METRICS, build_board, to_markdown

    board = build_board([tmp_path])
    assert board.metrics == TTA_METRICS and "online_error" in to_markdown(board)
    assert (Path(tmp_path) / src["run_id"] / "accuracy.png").stat().st_size > 0


class _Counting(Method):
    """Adapts by counting batches; setup counts resets (the runner's job in reset_each_shift)."""

    caps: ClassVar[Caps] = Caps(adapts_at_test=True)
    setups: ClassVar[list[int]] = []

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        assert info.source_model is not None and info.source_data is not None
        self.net = copy.deepcopy(info.source_model)
        self.seen = torch.zeros(())
        _Counting.setups.append(1)

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        return self.net(x) + 0 * self.seen

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        out = self.predict(x, ctx=PredictContext())
        self.seen += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"].clone()


def test_reset_each_shift_resets_the_method_at_every_domain(tmp_path: Path) -> None:
    _Counting.setups.clear()
    run(RunSpec(method="counting", scenario="toy_tta", scenario_config={"setting": "reset_each_shift"}),
        tmp_path, method_cls=_Counting)  # fmt: skip
    assert len(_Counting.setups) == 3
    _Counting.setups.clear()
    run(RunSpec(method="counting", scenario="toy_tta", scenario_config={"setting": "gradual"}), tmp_path,
        method_cls=_Counting)  # fmt: skip
    assert len(_Counting.setups) == 1


def test_tta_run_resumes_mid_domain_to_the_same_record(tmp_path: Path) -> None:
    spec = RunSpec(method="counting", scenario="toy_tta", scenario_config={"setting": "reset_each_shift"})
    whole = run(spec, tmp_path / "a", method_cls=_Counting)
    with pytest.raises(Exception, match="stop_after"):
        run(spec, tmp_path / "b", checkpoint_every=1, method_cls=_Counting, stop_after=5)
    again = resume(next((tmp_path / "b").iterdir()), method_cls=_Counting)
    assert again["accuracy_matrix"] == whole["accuracy_matrix"] and again["metrics"] == whole["metrics"]


def test_tta_method_needs_a_tta_stream(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="adapts at test time"):
        run(RunSpec(method="bn_adapt", scenario="toy"), tmp_path)


# -- conformance: the TTA path can fail ----------------------------------------------------------------------------
class _PostUpdate(_Counting):
    """Returns the prediction made after updating (a real mistake: the error is then optimistic)."""

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        with torch.no_grad():
            for p in self.net.parameters():
                p.add_(0.01)
        return self.predict(x, PredictContext())

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen.clone(), "net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"].clone()
        self.net.load_state_dict(state["net"])


class _NoCopy(_Counting):
    """Adapts the shared source model in place instead of a copy."""

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.net = info.source_model  # type: ignore[assignment]

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        out = self.predict(x, PredictContext())
        with torch.no_grad():
            next(self.net.parameters()).add_(1e-3)
        return out


def test_tta_conformance_catches_broken_methods() -> None:
    ok = check_method(_Counting)
    assert ok.ok and "online accuracies" in ok["check_beats_chance"].message
    post = check_method(_PostUpdate, raise_on_failure=False, checks=["check_pre_update"])
    assert post["check_pre_update"].status == "failed" and "before updating" in post["check_pre_update"].message
    shared = check_method(_NoCopy, raise_on_failure=False, checks=["check_protocol"])
    assert shared["check_protocol"].status == "failed" and "deep-copy" in shared["check_protocol"].message


# -- real data ---------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="real MNIST not available")
def test_bn_adapt_beats_source_on_corrupted_mnist(tmp_path: Path) -> None:
    config = {"root": str(MNIST_DIR), "download": False, "corruptions": ("contrast", "fog"), "n_per_domain": 400,
              "train_domains": False, "source_epochs": 1}  # fmt: skip
    err = {}
    for name in ("source", "bn_adapt"):
        rec = run(RunSpec(method=name, scenario="mnist_c", scenario_config=config), tmp_path)
        err[name] = rec["metrics"]["online_error"]
        assert rec["protocol"]["batch_size"] == 200 and rec["metrics"]["clean_acc_after"] > 0.9
    assert err["bn_adapt"] < err["source"] - 0.05


def test_cli_bad_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "w.pt")
    out = subprocess.run([sys.executable, "-m", "cl_bench.cli", "run", "--scenario", "toy_tta", "--method", "source",
                          "--set", f"scenario.source_weights={tmp_path / 'w.pt'}", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "does not fit the architecture" in out.stderr and "Traceback" not in out.stderr
