"""Issue 6 evidence: a sweep on Ray's local cluster, a sweep surviving a killed worker, the golden
regression check rerunning real records, the two-phase tuning protocol, and the HTML leaderboard
rendered in a real headless Chromium.

Runs are on Split-Digits with few epochs and sparse evaluation, so each takes about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_bench.cli import main
from cl_bench.core.record import load_record
from cl_bench.report.leaderboard import build_board
from cl_bench.report.writers import write_board

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cl_bench.cli"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
IN_CI = bool(os.environ.get("CI"))


def _records(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if (p / "run.json").exists())


# Ray's local cluster starts in ~10 s; the same jobs on the local pool are in the inner loop (test_reports.py).
@pytest.mark.slow
def test_ray_sweep_then_leaderboard(tmp_path: Path) -> None:
    if not IN_CI:
        pytest.importorskip("ray")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"methods: [finetune, er]\nscenarios: [split_digits]\nseeds: [0, 1]\n"
                    f"protocol: {{eval_every: 30, epochs: 1}}\nout: {tmp_path / 'runs'}\n")  # fmt: skip
    proc = subprocess.run([*CLI, "sweep", str(spec), "--executor", "ray", "--workers", "2"], capture_output=True,
                          text=True, env=ENV, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done 4/4" in proc.stderr and "4 completed" in proc.stdout
    runs = _records(tmp_path / "runs")
    assert len(runs) == 4 and all(load_record(p)["status"] == "completed" for p in runs)
    # An unreadable record beside them is listed and skipped, not averaged in.
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "run.json").write_text("{not json")
    board = build_board([tmp_path / "runs"])
    assert [p for p, _ in board.skipped] == [str(tmp_path / "runs" / "broken" / "run.json")]
    (group,) = board.groups
    assert [r.method for r in group.rows] == ["er", "finetune"] and [r.rank for r in group.rows] == [1, 2]
    for row in group.rows:
        assert row.seeds == [0, 1]
        values = [load_record(p)["metrics"]["final_acc"] for p in runs if row.method in p.name]
        assert row.cell("final_acc").mean == pytest.approx(sum(values) / 2) and row.cell("final_acc").n == 2


def _kill_a_worker_mid_run(out: Path, proc: subprocess.Popen[str]) -> int:
    """SIGKILL the pool process that holds a run with a checkpoint; return its pid."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for lock in sorted((out / ".locks").glob("*.lock")) if (out / ".locks").exists() else []:
            run_dir = out / lock.stem
            if (run_dir / "checkpoint.pt").exists() and lock.read_text().strip().isdigit():
                pid = int(lock.read_text())
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.01)
    raise AssertionError(f"no run reached a checkpoint: {proc.communicate()}")


# Three sweep processes and a real SIGKILL (~40 s idle); the in-process resume a restart relies on is checked
# fast by every method's check_resume (tests/test_conformance.py) and the skip of completed runs by test_reports.py.
@pytest.mark.slow
def test_killed_worker_then_restart_completes_every_run_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"methods: [finetune, er]\nscenarios: [split_digits]\nseeds: [0, 1]\ncheckpoint_every: 20\n"
                    f"protocol: {{eval_every: 50, epochs: 4}}\nout: {out}\n")  # fmt: skip
    cmd = [*CLI, "sweep", str(spec), "--workers", "2", "--max-retries", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _kill_a_worker_mid_run(out, proc)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "worker died" in stderr + stdout
    finished_first = {p.name: p.joinpath("run.json").stat().st_mtime_ns for p in _records(out)
                      if load_record(p)["status"] == "completed"}  # fmt: skip
    assert len(finished_first) < 4
    again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stderr  # the killed run continued from its checkpoint
    runs = _records(out)
    assert len(runs) == 4  # one directory per grid point: nothing lost, nothing duplicated
    assert all(load_record(p)["status"] == "completed" for p in runs)
    assert not list(out.glob("*/checkpoint.pt")) and not list(out.glob("*/.*.tmp"))
    for name, mtime in finished_first.items():  # runs completed before the kill were not run again
        assert (out / name / "run.json").stat().st_mtime_ns == mtime
    # A third start finds nothing to do.
    third = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert third.returncode == 0 and "4 already completed, 0 to run" in third.stderr


# Reruns two full golden runs three times in subprocesses; regress on fresh records is checked fast in
# tests/test_reports.py (a moved metric is named) and by test_update_golden_shows_the_diff below.
@pytest.mark.slow
def test_regress_reruns_golden_records_and_names_a_corrupted_value(tmp_path: Path, mnist_root: Path) -> None:
    golden = tmp_path / "golden"
    picks = ["split_digits-er-s0", "split_mnist-finetune-s0"]
    for src in _records(REPO / "results" / "golden"):
        if any(src.name.startswith(p) for p in picks):
            (golden / src.name).mkdir(parents=True)
            shutil.copy(src / "run.json", golden / src.name / "run.json")
    assert len(_records(golden)) == 2
    args = [*CLI, "regress", "--against", str(golden), "--set", f"scenario.root={mnist_root}", "--out",
            str(tmp_path / "fresh")]  # fmt: skip
    ok = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "regress OK" in ok.stdout
    # Corrupt one golden value consistently (matrix and metrics, so the record still loads).
    from cl_bench.metrics import AccuracyMatrix, compute_all

    victim = next(golden.glob("split_digits-er-*/run.json"))
    record = json.loads(victim.read_text())
    m = record["accuracy_matrix"]
    last = m["boundary"][-1]
    m["n_correct"][last] = [c // 2 for c in m["n_correct"][last]]  # halve the final accuracy
    record["metrics"] = compute_all(AccuracyMatrix.from_dict(m))
    victim.write_text(json.dumps(record))
    bad = subprocess.run([*args[:-2], "--fresh", str(tmp_path / "fresh")], capture_output=True, text=True, env=ENV,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    table = bad.stdout
    assert "REGRESSION" in table and "direction" in table and "golden" in table and "delta" in table
    line = next(ln for ln in table.splitlines() if " final_acc " in ln)
    assert line.startswith("er on split_digits") and "better" in line  # fresh is above the corrupted golden
    # An edited value whose matrix disagrees makes the golden record invalid: a user error naming it.
    record["metrics"]["final_acc"] = 0.5
    victim.write_text(json.dumps(record))
    invalid = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert invalid.returncode == 2 and "final_acc" in invalid.stderr and "Traceback" not in invalid.stderr


def test_update_golden_shows_the_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden, fresh = tmp_path / "golden", tmp_path / "fresh"
    src = next(p for p in _records(REPO / "results" / "golden") if p.name.startswith("split_digits-er-s0"))
    for d in (golden, fresh):
        (d / src.name).mkdir(parents=True)
        shutil.copy(src / "run.json", d / src.name / "run.json")
    from cl_bench.metrics import AccuracyMatrix, compute_all

    record = json.loads((fresh / src.name / "run.json").read_text())
    m = record["accuracy_matrix"]
    m["n_correct"][m["boundary"][-1]] = list(m["n_total"][m["boundary"][-1]])
    record["metrics"] = compute_all(AccuracyMatrix.from_dict(m))
    (fresh / src.name / "run.json").write_text(json.dumps(record))
    assert main(["regress", "--against", str(golden), "--update", "--fresh", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "golden values that change" in out and " final_acc " in out
    assert load_record(golden / src.name)["metrics"]["final_acc"] == 1.0
    assert main(["regress", "--against", str(golden), "--fresh", str(fresh)]) == 0


@pytest.mark.usefixtures("inline_executor")
def test_tune_two_phase_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str], mnist_root: Path) -> None:
    spec = tmp_path / "tune.yaml"
    spec.write_text(f"""\
methods: [er]
tune_scenario: {{name: split_digits}}
eval_scenario: {{name: split_mnist, root: {mnist_root}}}
search: {{er: {{lr: [0.001, 0.1]}}}}
strategy: grid
budget: 2
seeds: [0]
eval_seeds: [0]
protocol: {{eval_every: 0, epochs: 1, max_iterations: 8}}
out: {tmp_path / 'tune'}
""")
    assert main(["tune", str(spec), "--workers", "2"]) == 0
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())
    (m,) = summary["methods"]
    scores = {c["config"]["lr"]: c["score"]["mean"] for c in m["candidates"]}
    assert m["chosen"] == {"lr": max(scores, key=scores.get)}
    (eval_run,) = m["eval_run_ids"]
    record = load_record(tmp_path / "tune" / "phase2" / eval_run)
    assert record["scenario"]["name"] == "split_mnist" and record["method"]["config"]["lr"] == m["chosen"]["lr"]
    assert m["eval_score"]["mean"] == record["metrics"]["final_acc"]
    capsys.readouterr()
    assert main(["leaderboard", str(tmp_path / "tune"), "-q"]) == 0
    md = (tmp_path / "tune" / "leaderboard" / "leaderboard.md").read_text()
    assert "Two-phase tuning: split_digits -> split_mnist" in md and "## split_mnist" in md and "## split_digits" in md
    # Different structures are rejected before anything runs, with every problem at once.
    spec.write_text(spec.read_text().replace("{name: split_digits}", "{name: split_digits, n_experiences: 2}")
                    .replace("lr: [0.001, 0.1]", "lr: {uniform: [0.001, 0.1]}, buffer_sise: [5]"))  # fmt: skip
    assert main(["tune", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "only strategy: random" in err and "buffer_sise" in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow  # a real browser; the HTML itself is checked fast in tests/test_reports.py
def test_html_leaderboard_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if IN_CI:
            pytest.fail("chromium is missing; .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    files = write_board(build_board([REPO / "results" / "golden"]), tmp_path / "board")
    page = files["html"].read_text()
    assert "src=" not in page and "<link" not in page  # self-contained: no external assets
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    # Sort by the forgetting column through the page's own script: ?sort=COLUMN clicks that header.
    url = files["html"].as_uri() + "?sort=forgetting"
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr  # no script errors in the console
    assert dom.stdout.count("<svg") == 6 and dom.stdout.count('class="curve"') >= 6
    # One accuracy-versus-compute view per table (the golden tables have 3 rows each), its Pareto front drawn.
    assert dom.stdout.count('class="chart scatter"') == 2 and dom.stdout.count('class="point"') == 6
    assert 'class="pareto"' in dom.stdout or dom.stdout.count("Pareto front") == 2
    table = dom.stdout.split('<table class="board"', 1)[1].split("</table>", 1)[0]
    assert 'class="asc"' in table.split("</thead>")[0]
    col = [json.loads(cell.split('data-v="')[1].split('"')[0]) for cell in
           [row.split("<td")[6] for row in table.split("<tbody>")[1].split("<tr")[1:]]]  # fmt: skip
    assert col == sorted(col) and len(col) == 3  # forgetting ascending after the click
    shot = Path(os.environ.get("CL_BENCH_SHOT", tmp_path / "shot.png"))
    done = subprocess.run([*flags, "--window-size=1280,1000", f"--screenshot={shot}", files["html"].as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG"
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[:, :, :3].reshape(-1, 3)
    colored = ((abs(pixels[:, 0] - pixels[:, 1]) > 0.2) | (abs(pixels[:, 1] - pixels[:, 2]) > 0.2)).mean()
    assert colored > 0.001  # the coloured curves were painted, not just text


@pytest.mark.slow
def test_tune_tta_chooses_on_some_corruptions_and_evaluates_on_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "tune_tta.yaml"
    spec.write_text(
        "methods: [tent]\n"
        "tune_scenario: {name: digits_c, corruptions: [gaussian_noise, fog]}\n"
        "eval_scenario: {name: digits_c, corruptions: [shot_noise, brightness]}\n"
        "search: {tent: {lr: [0.0001, 0.01]}}\nstrategy: grid\nbudget: 2\nseeds: [0]\neval_seeds: [0]\n"
        f"metric: online_error\nout: {tmp_path / 'tune'}\n"
    )
    assert main(["tune", str(spec)]) == 0
    summary = json.loads((tmp_path / "tune" / "tune.json").read_text())
    (m,) = summary["methods"]
    phase1 = [load_record(p) for p in (tmp_path / "tune" / "phase1").glob("*/run.json")]
    best = min(phase1, key=lambda r: r["metrics"]["online_error"])  # lower is better: the metric's direction
    assert m["chosen"]["lr"] == best["method"]["config"]["lr"]
    (evaluated,) = [load_record(p) for p in (tmp_path / "tune" / "phase2").glob("*/run.json")]
    assert evaluated["scenario"]["spec"]["corruptions"] == ["shot_noise", "brightness"]
    assert evaluated["method"]["config"]["lr"] == m["chosen"]["lr"]
    capsys.readouterr()
    assert main(["leaderboard", str(tmp_path / "tune"), "-q"]) == 0
    md = (tmp_path / "tune" / "leaderboard" / "leaderboard.md").read_text()
    assert "Two-phase tuning: digits_c -> digits_c" in md
