"""Experiment trackers (``--log``): each writes what its own reader reads back, equal to the run's record."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from cl_bench.cli import main
from cl_bench.core.errors import ConfigError
from cl_bench.report.trackers import check_names

RUN = ["run", "--method", "er", "--epochs", "1", "--eval-every", "15", "--quiet"]


def _run(tmp_path: Path, *trackers: str) -> tuple[Path, dict[str, Any]]:
    args = [*RUN, "--out", str(tmp_path)]
    for name in trackers:
        args += ["--log", name]
    assert main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    return run_dir, json.loads((run_dir / "run.json").read_text())


def test_csv_tracker_holds_the_eval_points_losses_and_final_metrics(tmp_path: Path) -> None:
    run_dir, record = _run(tmp_path, "csv")
    rows = list(csv.DictReader((run_dir / "log" / "scalars.csv").open()))
    m = record["accuracy_matrix"]
    # every eval point's per-experience accuracy, exactly the matrix's
    for p, it in enumerate(m["iteration"]):
        for e, (c, t) in enumerate(zip(m["n_correct"][p], m["n_total"][p], strict=True)):
            if t:
                got = [float(r["value"]) for r in rows if r["key"] == f"acc/exp{e}" and int(r["step"]) == it]
                assert got and math.isclose(got[-1], c / t), (p, e)
    losses = [r for r in rows if r["key"] == "train/loss"]
    assert [int(r["step"]) for r in losses] == list(range(1, len(losses) + 1))  # one per training iteration
    assert {float(r["value"]) for r in rows if r["key"] == "train/lr"} == {record["method"]["config"]["lr"]}
    final = {r["metric"]: r["value"] for r in csv.DictReader((run_dir / "log" / "final.csv").open())}
    for name, value in record["metrics"].items():
        if value is not None:
            assert math.isclose(float(final[name]), value), name
    params = json.loads((run_dir / "log" / "params.json").read_text())
    assert params["method.name"] == "er" and params["run_id"] == run_dir.name


@pytest.mark.slow
def test_tensorboard_and_mlflow_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, record = _run(tmp_path, "tensorboard", "mlflow")
    m = record["accuracy_matrix"]
    expected = {it: m["n_correct"][p][0] / m["n_total"][p][0] for p, it in enumerate(m["iteration"])}

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tb = {ev.step: ev.value for ev in acc.Scalars("acc/exp0")}
    assert set(tb) == set(expected)
    assert all(math.isclose(tb[s], v, rel_tol=1e-6) for s, v in expected.items())  # float32 in event files
    assert len(acc.Scalars("train/loss")) == max(expected)

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("cl_bench").experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "er"
    history = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "acc/exp0")}
    assert history == pytest.approx(expected)
    assert run.data.metrics["final/final_acc"] == pytest.approx(record["metrics"]["final_acc"])


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B ``.wandb`` transaction log (LevelDB log framing: 32 KiB blocks,
    7-byte chunk headers; a 7-byte ``:W&B`` file header), read with W&B's own protobuf classes."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


@pytest.mark.slow
def test_wandb_offline_run_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, record = _run(tmp_path, "wandb")
    (log,) = (run_dir / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(log)
    history: dict[int, dict[str, float]] = {}
    summary: dict[str, float] = {}
    config: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[int(items["_step"])] = items
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
    m = record["accuracy_matrix"]
    for p, it in enumerate(m["iteration"]):
        assert history[it]["acc/exp0"] == pytest.approx(m["n_correct"][p][0] / m["n_total"][p][0])
    assert summary["final/final_acc"] == pytest.approx(record["metrics"]["final_acc"])
    assert config["method.name"] == "er" and config["run_id"] == run_dir.name


def test_unknown_tracker_is_one_paragraph_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*RUN, "--out", str(tmp_path / "out"), "--log", "tensorbored"]) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'tensorbored'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(ConfigError, match=r"cl-bench\[mlflow\]"):
        check_names(["csv", "mlflow"])


@pytest.mark.usefixtures("inline_executor")
def test_sweep_log_key_reaches_every_run_and_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"methods: [finetune]\nscenarios: [split_digits]\nseeds: [0, 1]\n"
                    f"protocol: {{epochs: 1, eval_every: 0, max_iterations: 3}}\n"
                    f"log: [csv]\nout: {tmp_path / 'runs'}\n")  # fmt: skip
    assert main(["sweep", str(spec), "--workers", "1"]) == 0
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").exists()]
    assert len(runs) == 2 and all((p / "log" / "final.csv").exists() for p in runs)
    spec.write_text(spec.read_text().replace("log: [csv]", "log: [csv, tensorbored]"))
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    assert "unknown tracker 'tensorbored'" in capsys.readouterr().err
