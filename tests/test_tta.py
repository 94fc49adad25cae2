"""Test-time adaptation: streams and settings, source phase, runner path, metrics, conformance, bad input."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from cl_bench.core.errors import ConfigError, UserError
from cl_bench.core.method import Caps, Method
from cl_bench.core.record import RecordError, load_record, matrix_of, record_kind, validate_record
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import PredictContext, Shift, StreamInfo
from cl_bench.data.tta_streams import GRADUAL_SEVERITIES, dirichlet_order
from cl_bench.engine.runner import resume, run
from cl_bench.engine.source import source_model
from cl_bench.engine.spec import RunSpec
from cl_bench.metrics import AccuracyMatrix, TTAMatrix, compute_all, matrix_from_dict
from cl_bench.metrics.tta import online_errors
from cl_bench.nets.models import WideResNet, build_source_model
from cl_bench.testing import check_method

ROOT = Path(__file__).resolve().parents[1]


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
def _online(rows: list[tuple[int, int]], severity: list[int], clean: list[int]) -> TTAMatrix:
    m = TTAMatrix(len(severity), severity)
    for e, (c, t) in enumerate(rows):
        m.end_experience(e + 1, c, t)
    if clean:
        m.set_clean_after(*clean)
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
    everything = compute_all(m)  # continual-learning metrics are undefined on an online matrix
    assert everything["wf_10"] is None and everything["final_acc"] is None and everything["online_error"] is not None
    # an unfinished stream is scored on the finished experiences
    part = _online([(90, 100), (50, 100)], [5, 5, 5], [])
    assert not part.complete and compute_all(part, ["online_error"])["online_error"] == pytest.approx(0.3)
    assert compute_all(part, ["clean_acc_after"])["clean_acc_after"] is None
    back = TTAMatrix.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m and matrix_from_dict(m.to_dict()) == m and matrix_from_dict(part.to_dict()) == part


def test_tta_matrix_keeps_the_stored_form_of_old_records() -> None:
    # The form records had when TTA counts lived in an AccuracyMatrix(online=True): row p = experience p only.
    old = {"n_correct": [[9, 0], [0, 3]], "n_total": [[10, 0], [0, 4]], "iteration": [1, 2], "boundary": [0, 1],
           "online": True, "severity": [5, 0], "clean_after": [7, 8]}  # fmt: skip
    m = matrix_from_dict(old)
    assert isinstance(m, TTAMatrix) and m.kind == "tta" and m.to_dict() == old
    assert (m.acc(0), m.acc(1), m.clean_after) == (0.9, 0.75, [7, 8])
    assert isinstance(matrix_from_dict(old, kind="tta"), TTAMatrix)
    with pytest.raises(ValueError, match="kind 'cl'"):
        matrix_from_dict(old, kind="cl")
    with pytest.raises(ValueError, match="test-time adaptation"):
        AccuracyMatrix.from_dict(old)
    with pytest.raises(ValueError, match="another experience"):
        TTAMatrix.from_dict({**old, "n_total": [[10, 1], [0, 4]]})
    with pytest.raises(ValueError, match="one severity per experience"):
        TTAMatrix(3, [5, 5])
    cl = AccuracyMatrix(2)
    cl.mark_boundary(cl.add_point(0, [1, 1], [2, 2]))
    assert isinstance(matrix_from_dict(cl.to_dict()), AccuracyMatrix) and cl.kind == "cl"


def test_tta_metrics_are_undefined_for_continual_learning_matrices() -> None:
    m = AccuracyMatrix(2)
    m.add_point(0, [5, 5], [10, 10])
    m.mark_boundary(m.add_point(3, [9, 5], [10, 10]))
    assert "online" not in m.to_dict()  # records of continual-learning runs keep their form
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
    # The loops act on the declared shift, which agrees with the display meta.
    assert [e.shift for e in clean] == [Shift("shift0", 5), Shift("none", 0), Shift("shift1", 5), Shift("none", 0),
                                        Shift("shift2", 5)]  # fmt: skip
    assert [e.shift.severity for e in grad[:9]] == list(GRADUAL_SEVERITIES)  # type: ignore[union-attr]
    assert not cont.ordered
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
    with_file = SCENARIOS.create("toy_tta", source_weights=str(tmp_path / "Standard.pt"))
    assert len(with_file.spec["source_weights_sha256"]) == 64
    loaded = source_model(with_file, seed=5)
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
    from cl_bench.engine import source as tta

    tta._MEMORY.clear()  # the disk cache alone must give the same weights
    b = source_model(sc, seed=3)
    c = source_model(sc, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.state_dict()["head.weight"], c.state_dict()["head.weight"])
    assert not a.training and a is not b
    gradual = source_model(SCENARIOS.create("toy_tta", n_domains=1, setting="gradual"), seed=3)
    assert torch.equal(gradual.state_dict()["head.weight"], a.state_dict()["head.weight"])  # one per source data


# -- the runner's TTA path ---------------------------------------------------------------------------------------------
def test_source_and_bn_adapt_runs_record_tta_metrics(tmp_path: Path) -> None:
    recs = {}
    for name in ("source", "bn_adapt"):
        spec = RunSpec(method=name, scenario="toy_tta", scenario_config={"insert_clean": True, "shift": 3.0})
        recs[name] = load_record(Path(tmp_path) / run(spec, tmp_path)["run_id"])
    src, bn = recs["source"], recs["bn_adapt"]
    assert src["protocol"]["batch_size"] == 16 and src["accuracy_matrix"]["online"] is True and src["kind"] == "tta"
    assert src["accuracy_matrix"]["severity"] == [5, 0, 5, 0, 5]
    # Records written before records had a kind still load: it is inferred from the matrix.
    old = {k: v for k, v in src.items() if k != "kind"}
    validate_record(old)
    assert record_kind(old) == "tta" and isinstance(matrix_of(old), TTAMatrix)
    with pytest.raises(RecordError, match="kind 'cl'"):
        validate_record({**src, "kind": "cl"})
    for r in (src, bn):
        assert r["metrics"]["final_acc"] is None and 0 <= r["metrics"]["online_error"] <= 1
        assert r["metrics"]["clean_acc_after"] is not None and r["metrics"]["online_error_clean"] is not None
        assert r["cost"]["source_seconds"] >= 0
    # BN statistics of the shifted batches undo most of the shift; the source model's stay wrong
    assert bn["metrics"]["online_error"] < src["metrics"]["online_error"]
    assert src["metrics"]["clean_acc_after"] > 0.9
    from cl_bench.report.html import to_html
    from cl_bench.report.leaderboard import TTA_METRICS, build_board
    from cl_bench.report.plots import plot_accuracy_curves
    from cl_bench.report.writers import to_markdown

    board = build_board([tmp_path])
    assert board.metrics == TTA_METRICS and "online_error" in to_markdown(board)
    page = to_html(board)  # the TTA group charts online error per domain, not per-iteration accuracy
    assert "Online error per experience" in page and "Accuracy on the experiences seen so far" not in page
    assert plot_accuracy_curves(src, tmp_path / "src.png").stat().st_size > 0
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
    again = resume(next(p for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")), method_cls=_Counting)
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
@pytest.mark.slow  # real MNIST, a source phase and two streams; TTA conformance checks beat chance in the inner loop
def test_bn_adapt_beats_source_on_corrupted_mnist(tmp_path: Path, mnist_root: Path) -> None:
    config = {"root": str(mnist_root), "download": False, "corruptions": ("contrast", "fog"), "n_per_domain": 400,
              "train_domains": False, "source_epochs": 1}  # fmt: skip
    err = {}
    for name in ("source", "bn_adapt"):
        rec = run(RunSpec(method=name, scenario="mnist_c", scenario_config=config), tmp_path)
        err[name] = rec["metrics"]["online_error"]
        assert rec["protocol"]["batch_size"] == 200 and rec["metrics"]["clean_acc_after"] > 0.9
    assert err["bn_adapt"] < err["source"] - 0.05


def test_cli_bad_checkpoint_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cl_bench.cli import main

    torch.save({"nothing": torch.zeros(1)}, tmp_path / "w.pt")
    code = main(["run", "--scenario", "toy_tta", "--method", "source", "--set",
                 f"scenario.source_weights={tmp_path / 'w.pt'}", "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not fit the architecture SmallCNN" in err and "Traceback" not in err
    assert main(["run", "--scenario", "toy_tta", "--method", "bn_adapt", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "online_error " in table and "clean_acc_after" in table and "forgetting" not in table
    assert "test batch 16): 3 experiences" in table and "shift0 s5: " in table and "shift2 s5: " in table
    assert re.search(r"online_error +\d+\.\d %", table)  # the summary in %, as the per-domain errors


def test_corrupted_wraps_an_image_scenario(mnist_root: Path) -> None:
    sc = SCENARIOS.create("corrupted", base="split_mnist", root=str(mnist_root), corruptions=("fog", "contrast"),
                          n_per_domain=100, setting="gradual")  # fmt: skip
    assert len(sc) == 18 and sc[3].meta == {"corruption": "fog", "severity": 4} and sc.spec["base"] == "split_mnist"
    assert sc.source is not None and len(sc.source.train) == 8000 and len(sc.source.test) == 2000  # type: ignore[arg-type]
    labels = sc[0].test.y
    assert int((labels[1:] != labels[:-1]).sum()) > 50  # pooled class-split data is shuffled, not class-sorted
    with pytest.raises(ConfigError, match="uint8 0-255"):
        SCENARIOS.create("corrupted", base="split_digits")
    with pytest.raises(ConfigError, match="cannot wrap itself"):
        SCENARIOS.create("corrupted", base="corrupted")


def test_source_training_does_not_depend_on_the_global_rng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cl_bench.engine import source as tta

    weights = []
    for noise in (0, 1):
        monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path / str(noise)))
        tta._MEMORY.clear()
        torch.manual_seed(noise)  # whatever ran before in the process
        weights.append(source_model(SCENARIOS.create("toy_tta", n_domains=1), seed=0).state_dict()["head.weight"])
    assert torch.equal(weights[0], weights[1])


def test_prior_batch_norm_interpolates_between_batch_and_source_statistics() -> None:
    from cl_bench.components import PriorBatchNorm, use_test_batch_stats

    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.5]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, 0.5, 1.0]))
    x = torch.randn(8, 3, 5, 5) * 3 + 2
    batch = torch.nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True)
    assert torch.allclose(PriorBatchNorm(bn, 0.0)(x), batch, atol=1e-5)
    assert torch.allclose(PriorBatchNorm(bn, 1e9)(x), bn.eval()(x), atol=1e-4)
    net = use_test_batch_stats(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3)))
    before = copy.deepcopy(net.state_dict())
    net(torch.randn(4, 1, 6, 6))
    assert isinstance(net[1], PriorBatchNorm) and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="no BatchNorm"):
        use_test_batch_stats(torch.nn.Linear(2, 2))


class _SeesSource(_Counting):
    seen_data: ClassVar[list[bool]] = []

    """Records whether setup got the source data (no assertion on it, unlike _Counting)."""

    def setup(self, info: StreamInfo, seed: int) -> None:
        _SeesSource.seen_data.append(info.source_data is not None)
        Method.setup(self, info, seed)
        self.net = copy.deepcopy(info.source_model)
        self.seen = torch.zeros(())


@pytest.mark.parametrize("setting", ["mixed_domains", "correlated"])
def test_every_setting_runs_and_source_free_hides_the_source_data(setting: str, tmp_path: Path) -> None:
    _SeesSource.seen_data.clear()
    for free in (False, True):
        rec = run(RunSpec(method="sees", scenario="toy_tta", scenario_config={"setting": setting, "source_free": free}),
                  tmp_path, method_cls=_SeesSource)  # fmt: skip
        assert rec["status"] == "completed" and rec["metrics"]["online_error"] is not None
    assert _SeesSource.seen_data == [True, False]
    digits = run(RunSpec(method="bn_adapt", scenario="digits_c", scenario_config={
        "setting": setting, "corruptions": ("fog", "contrast"), "n_per_domain": 100, "source_epochs": 2}), tmp_path)
    assert digits["metrics"]["online_error"] is not None and digits["protocol"]["batch_size"] == 200
