"""Sweeps, leaderboards, overlay plots and regression checks, through the CLI on real runs.

Ray, the HTML check in Chromium and worker-kill tests are not here yet (issue 6 stays open).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cl_bench.cli import main

SPEC = """\
methods: [finetune, er]
scenarios: [split_digits]
seeds: [0, 1]
overrides: {er: {buffer_size: [50]}}
protocol: {eval_every: 20, epochs: 1}
out: runs
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, inline_executor_module: None) -> Path:
    # Runs in this process (tests/conftest.py); the spawned pool is test_sweep_on_the_process_pool's (slow).
    root = tmp_path_factory.mktemp("sweep")
    (root / "spec.yaml").write_text(SPEC.replace("out: runs", f"out: {root / 'runs'}"))
    assert main(["sweep", str(root / "spec.yaml"), "--workers", "2"]) == 0
    return root


@pytest.mark.slow  # a spawned worker starts an interpreter and imports torch: > 2 s even on an idle machine
def test_sweep_on_the_process_pool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The real spawned pool (one worker: one interpreter start) on two short runs (2 iterations per experience).
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"methods: [finetune]\nscenarios: [split_digits]\nseeds: [0, 1]\n"
                    f"protocol: {{eval_every: 0, epochs: 1, max_iterations: 2}}\n"
                    f"out: {tmp_path / 'runs'}\n")  # fmt: skip
    assert main(["sweep", str(spec), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "done 2/2" in err
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert len(records) == 2 and {r["status"] for r in records} == {"completed"}
    assert {r["seed"] for r in records} == {0, 1}


def test_sweep_runs_the_grid_once_and_restart_skips(swept: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = sorted(p.name for p in (swept / "runs").iterdir() if (p / "run.json").exists())
    assert len(runs) == 4  # 2 methods x 2 seeds (one er override value)
    for name in runs:
        assert json.loads((swept / "runs" / name / "run.json").read_text())["status"] == "completed"
    mtimes = {n: (swept / "runs" / n / "run.json").stat().st_mtime_ns for n in runs}
    capsys.readouterr()
    assert main(["sweep", str(swept / "spec.yaml")]) == 0
    assert "4 already completed, 0 to run" in capsys.readouterr().err
    assert mtimes == {n: (swept / "runs" / n / "run.json").stat().st_mtime_ns for n in runs}


def test_sweep_rejects_bad_spec_with_all_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("methods: [finetune, ewcc]\nscenarios: [split_digits]\nseeds: [0]\n"
                    "overrides: {finetune: {lrr: [0.1]}}\nout: runs\n")  # fmt: skip
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "ewcc" in err and "lrr" in err
    assert not (tmp_path / "runs").exists()


def test_leaderboard_groups_ranks_and_writes_files(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "board"
    assert main(["leaderboard", str(swept / "runs"), "--out", str(out), "-q"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "| 1 | er" in md and "finetune" in md  # replay ranks above fine-tuning on final_acc
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert {r["method"] for r in rows} == {"er", "finetune"}
    assert all(r["n_seeds"] == "2" for r in rows)
    html = (out / "leaderboard.html").read_text()
    assert "<table" in html and "<svg" in html and "http://" not in html.replace("http://www.w3.org", "")


def test_leaderboard_skips_invalid_records(swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(swept / "runs", runs)
    victim = next(p for p in runs.iterdir() if (p / "run.json").exists()) / "run.json"
    record = json.loads(victim.read_text())
    record["metrics"]["final_acc"] = 0.999  # no longer what its matrix gives
    victim.write_text(json.dumps(record))
    assert main(["leaderboard", str(runs), "--out", str(tmp_path / "b"), "-q"]) == 0
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out and "final_acc" in captured.err


def test_plot_overlays_runs(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    assert main(["plot", *[str(p) for p in (swept / "runs").iterdir() if (p / "run.json").exists()],
                 "--out", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_regress_passes_on_itself_and_names_a_moved_metric(swept: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    golden = tmp_path / "golden"
    for p in (swept / "runs").iterdir():
        if (p / "run.json").exists():
            (golden / p.name).mkdir(parents=True)
            shutil.copy(p / "run.json", golden / p.name / "run.json")
    assert main(["regress", "--against", str(golden), "--fresh", str(swept / "runs")]) == 0
    # Corrupt the golden final accuracy of every run consistently (matrix and metrics), so the golden set
    # stays loadable and its seed spread stays small: final_acc must be reported as moved.
    from cl_bench.metrics import AccuracyMatrix, compute_all

    for victim in golden.glob("*/run.json"):
        record = json.loads(victim.read_text())
        matrix = record["accuracy_matrix"]
        last = matrix["boundary"][-1]
        matrix["n_correct"][last] = list(matrix["n_total"][last])  # perfect final accuracy
        record["metrics"] = compute_all(AccuracyMatrix.from_dict(matrix))
        victim.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["regress", "--against", str(golden), "--fresh", str(swept / "runs")]) == 1
    out = capsys.readouterr().out
    moved = [line for line in out.splitlines() if " final_acc " in line]
    assert moved and all("worse" in line for line in moved), out


def test_regress_cell_ignores_config_fields_added_later_with_their_default(swept: Path) -> None:
    from cl_bench.ops.regress import cell_key

    record = json.loads(next((swept / "runs").glob("*/run.json")).read_text())
    older = json.loads(json.dumps(record))
    config = older["method"]["config"]
    dropped = next(iter(config))  # a record written before this field existed
    config.pop(dropped)
    assert cell_key(older) == cell_key(record)
    changed = json.loads(json.dumps(record))
    changed["method"]["config"][dropped] = "not-the-default"
    assert cell_key(changed) != cell_key(record)


def test_a_lone_row_shows_its_non_default_parameters() -> None:
    from cl_bench import METHODS
    from cl_bench.report.leaderboard import run_labels

    config = dict(METHODS.defaults("er") or {})
    assert config, "er has a default configuration"
    record = {"method": {"name": "er", "config": config}, "scenario": {"name": "s", "spec_hash": "h"}, "seed": 0}
    assert run_labels([record]) == ["er s0"]
    changed = {**record, "method": {"name": "er", "config": {**config, "lr": 0.5}}}
    assert run_labels([changed]) == ["er (lr=0.5) s0"]


def test_sweep_dry_run_spells_the_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"methods: [er]\nscenarios: [split_digits]\nseeds: [0]\n"
                    f"overrides: {{er: {{buffer_size: [50, 200]}}}}\nout: {tmp_path / 'runs'}\n")  # fmt: skip
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("new")]
    assert len(lines) == 2
    assert "er: buffer_size=50" in lines[0] and "er: buffer_size=200" in lines[1]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_pareto_front_keeps_the_rows_no_other_beats_with_less_compute() -> None:
    from cl_bench.report.leaderboard import pareto_front

    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (0.5, 0.2), (3.0, 0.8), (4.0, 0.9)]
    assert pareto_front(pts) == [3, 0, 2]  # sorted by compute; (2, 0.4), (3, 0.8), (4, 0.9) are dominated
    assert pareto_front([(1.0, 0.1), (2.0, 0.05), (3.0, 0.3)], higher=False) == [0, 1]


def test_board_shows_compute_and_the_pareto_view(swept: Path, tmp_path: Path) -> None:
    out = tmp_path / "board"
    assert main(["leaderboard", str(swept / "runs"), "--out", str(out), "-q"]) == 0
    header = (out / "leaderboard.md").read_text().split("\n| 1 |")[0]
    assert "train s" in header and "eval s" in header and "params" in header
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert all(float(r["cost_train_seconds_mean"]) > 0 and int(float(r["cost_n_params_mean"])) > 1000 for r in rows)
    html = (out / "leaderboard.html").read_text()
    assert "against compute" in html and "Pareto front" in html


def test_count_flops_records_training_and_evaluation_flops(tmp_path: Path) -> None:
    args = ["run", "-q", "--method", "finetune", "--scenario", "split_digits", "--epochs", "1", "--eval-every", "0",
            "--set", "protocol.max_iterations=10", "--out", str(tmp_path)]  # fmt: skip
    assert main([*args, "--count-flops"]) == 0
    (record_file,) = tmp_path.glob("*/run.json")
    rec = json.loads(record_file.read_text())
    cost, batch = rec["cost"], rec["protocol"]["batch_size"]
    seen = rec["accuracy_matrix"]["iteration"][-1] * batch  # examples trained on (the last batches may be partial)
    # A dense network's training step costs ~6 FLOPs per parameter and example (2 forward, 4 backward).
    ratio = cost["train_flops"] / (cost["n_params"] * seen)
    assert 5.0 < ratio < 6.5, ratio
    assert cost["eval_flops"] > 0 and cost["data_seconds"] >= 0
    # Counting is measurement only: the same run without it has the same run id and the same metrics.
    again = tmp_path / "again"
    assert main([*args[:-1], str(again)]) == 0
    (plain,) = again.glob("*/run.json")
    assert plain.parent.name == record_file.parent.name
    assert json.loads(plain.read_text())["metrics"] == rec["metrics"]
    assert "train_flops" not in json.loads(plain.read_text())["cost"]


@pytest.mark.slow
def test_plot_of_runs_under_different_protocols_draws_each_runs_boundaries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cl_bench.metrics import matrix_from_dict
    from cl_bench.report.curves import overlay_boundaries
    from cl_bench.report.leaderboard import run_labels

    for epochs in ("1", "2"):
        assert main(["run", "--scenario", "toy", "--method", "finetune", "--epochs", epochs, "--out",
                     str(tmp_path / "runs"), "-q"]) == 0  # fmt: skip
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*/run.json"))]
    matrices = [matrix_from_dict(r["accuracy_matrix"], kind=r["kind"]) for r in records]
    own = overlay_boundaries(matrices)
    assert own is not None and len(own) == 2 and own[0] != own[1]
    assert sorted(len(b) for b in own) == [len(own[0])] * 2  # the same experiences, ending elsewhere
    assert overlay_boundaries([matrices[0], matrices[0]]) is None  # one protocol: one set of lines
    labels = run_labels(records)
    assert sorted(lab.split()[1] for lab in labels) == ["epochs=1", "epochs=2"], labels
    capsys.readouterr()
    out = tmp_path / "overlay.png"
    assert main(["plot", str(tmp_path / "runs"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "different iterations" in err and all(", ".join(map(str, b)) in err for b in own), err
    assert out.read_bytes()[:4] == b"\x89PNG"
