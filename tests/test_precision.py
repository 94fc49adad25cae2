"""``Protocol.precision`` / ``channels_last`` / ``compile``: CLI flags, YAML fields, records, refusals, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cl_bench.cli import main
from cl_bench.core.errors import UserError
from cl_bench.core.record import load_record
from cl_bench.engine.runner import CHECKPOINT_FILE, run
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for


def quick(**protocol: Any) -> RunSpec:
    return RunSpec(method="er", scenario="split_digits", method_config={"hidden_size": 32},
                   protocol=Protocol(epochs=1, eval_every=0, **protocol))  # fmt: skip


def test_defaults_leave_the_protocol_dict_and_run_ids_unchanged() -> None:
    d = Protocol().to_dict()
    assert not {"precision", "channels_last", "compile"} & set(d)
    assert run_id_for(quick()) == run_id_for(quick(precision="fp32", channels_last=False, compile=False))
    assert run_id_for(quick(precision="bf16")) != run_id_for(quick())
    assert Protocol(precision="bf16").to_dict()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        Protocol(precision="fp8")


@pytest.mark.slow
def test_bf16_run_on_cpu_completes_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dtypes: list[torch.dtype] = []
    original = torch.nn.Linear.forward

    def spy(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        out = original(self, x)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    spec = RunSpec(method="er", scenario="split_digits", method_config={"hidden_size": 32, "lr": 0.1},
                   protocol=Protocol(epochs=2, eval_every=0, precision="bf16"))  # fmt: skip
    record = run(spec, tmp_path)
    assert record["status"] == "completed"
    assert record["request"]["protocol"]["precision"] == "bf16"
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)  # training and evaluation ran under autocast
    assert record["metrics"]["final_acc"] > 0.6  # it still learns: observed 0.79 (fp32: 0.78; chance 0.1)


@pytest.mark.slow
def test_cli_flags_and_yaml_fields_reach_the_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--scenario", "split_digits", "--method", "er", "--set", "hidden_size=32", "--epochs", "1",
            "--eval-every", "0", "-q"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a"), "--precision", "bf16", "--channels-last"]) == 0
    (rec_file,) = (tmp_path / "a").glob("*/run.json")
    rec_dir = rec_file.parent
    p = load_record(rec_dir)["request"]["protocol"]
    assert p["precision"] == "bf16" and p["channels_last"] is True and "compile" not in p
    cfg = tmp_path / "run.yaml"
    cfg.write_text("protocol: {precision: bf16, channels_last: true}\n")
    assert main([*base, "--out", str(tmp_path / "b"), "--config", str(cfg)]) == 0
    # the same spec, the same run id
    assert [f.parent.name for f in (tmp_path / "b").glob("*/run.json")] == [rec_dir.name]
    capsys.readouterr()


def test_fp16_on_cpu_is_refused_in_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--scenario", "split_digits", "--method", "er", "--precision", "fp16", "--out",
                 str(tmp_path), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--precision bf16" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 and not any(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(UserError, match="needs a CUDA device"):
        run(quick(precision="fp16"), tmp_path)


def test_compile_compiles_the_network_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[type] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self)))
    record = run(quick(compile=True), tmp_path)
    assert record["status"] == "completed" and record["request"]["protocol"]["compile"] is True
    assert len(compiled) == 1


def test_resume_with_another_precision_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = quick()
    with pytest.raises(Exception, match="stop_after"):
        run(spec, tmp_path, checkpoint_every=5, stop_after=7)
    run_dir = tmp_path / run_id_for(spec)
    assert (run_dir / CHECKPOINT_FILE).exists()
    for flags in (["--precision", "bf16"], ["--channels-last"], ["--compile"]):
        assert main(["run", "--resume", str(run_dir), *flags, "-q"]) == 2
        err = capsys.readouterr().err
        assert flags[0] in err and "describe another configuration" in err
    assert (run_dir / CHECKPOINT_FILE).exists()
