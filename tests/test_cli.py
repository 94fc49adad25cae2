"""The command line, end to end: default run, list, config files, and user errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cl_bench.cli import main, parse_sets
from cl_bench.core.errors import UserError


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``cl-bench`` entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "cl_bench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def _main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Run ``cl_bench.cli.main(argv)`` in this process: (exit code, stderr). An exception escaping ``main``
    (what would print a traceback) fails the test with it."""
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.slow  # interpreter start-up and the torch import: > 2 s even on an idle machine
def test_console_entry_point_reports_a_user_error_in_one_paragraph(tmp_path: Path) -> None:
    # The one subprocess of the inner loop: the real entry point, its exit code and its stderr (the other
    # bad-input rows call main() in-process, which is the same code path minus interpreter start-up).
    proc = cli("run", "--method", "ewcc", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Did you mean 'ewc'" in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a real training run in a subprocess
def test_default_run_writes_record_and_plot(tmp_path: Path) -> None:
    proc = cli("--epochs", "2", cwd=tmp_path)  # bare flags mean `run`; fewer epochs keep the test quick
    assert proc.returncode == 0, proc.stderr
    assert "er on split_digits" in proc.stdout and "min_acc" in proc.stdout
    record_path = tmp_path / proc.stdout.split("record: ")[1].split()[0]
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed"
    assert record["method"]["name"] == "er" and record["scenario"]["name"] == "split_digits"
    assert record["protocol"]["eval_every"] == 1 and record["protocol"]["setting"] == "class_il"
    m = record["accuracy_matrix"]
    assert len(m["boundary"]) == 5 and m["iteration"][0] == 0
    assert len(m["iteration"]) == m["iteration"][-1] + 1  # before training + one point per iteration
    png = record_path.parent / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(record_path.parent.glob(".*tmp"))


def test_list_shows_names_descriptions_references(capsys: pytest.CaptureFixture[str]) -> None:
    for what, expected in [("methods", "ewc"), ("scenarios", "split_mnist"), ("metrics", "wc_acc")]:
        assert main(["list", what]) == 0
        out = capsys.readouterr().out
        assert expected in out and "ref:" in out
    assert main(["list", "methods", "-v"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "buffer_size: int = 200" in out and "lambda: float = 100.0" in out  # er's and ewc's defaults
    assert main(["list", "scenarios", "-v"]) == 0
    assert "n_experiences: int = 5" in " ".join(capsys.readouterr().out.split())


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# Files the table's rows refer to as {tmp}/NAME: a tiny CIFAR-10-C layout (5 rows = 1 per severity) in c10c/,
# and one whose fog.npy is text in badnpy/.
FILES: dict[str, str | bytes] = {
    "seed_float.yaml": "seed: 1.7\n", "seed_bool.yaml": "seed: true\n", "seed_word.yaml": "seed: zero\n",
    "ckpt_neg.yaml": "checkpoint_every: -3\n", "a_file": "not a directory\n",
    "c10c/labels.npy": _npy(np.arange(5, dtype=np.uint8)), "c10c/fog.npy": _npy(np.zeros((5, 32, 32, 3), np.uint8)),
    "badnpy/labels.npy": _npy(np.arange(5, dtype=np.uint8)), "badnpy/fog.npy": "not an array\n",
    "garbage.pt": "not a state dict\n",
}  # fmt: skip
C10C = ["--scenario", "cifar10_c", "--method", "tent", "--set", "scenario.corruptions=[fog]"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--method", "ewcc"], "Did you mean 'ewc'"),
        (["--scenario", "split_mnst"], "Did you mean 'split_mnist'"),
        (["--method", "ewc", "--set", "lamda=3"], "Did you mean 'lambda'"),
        (["--set", "lr=abc"], "'lr' of method 'er' must be float"),
        (["--set", "buffer_size=1.5"], "must be int"),
        (["--set", "scenario.n_experiences=11"], "n_experiences must be 1..10"),
        (["--set", "bogus.x=1"], "prefix must be"),
        (["--scenario", "split_mnist", "--set", "scenario.root=/nonexistent/dir"], "MNIST not found"),
        (["--eval-every", "-1"], "eval_every must be >= 0"),
        (["--resume", "/nonexistent/run"], "holds no run record"),
        (["--config", "{tmp}/seed_float.yaml"], "seed: in {tmp}/seed_float.yaml must be int, got 1.7"),
        (["--config", "{tmp}/seed_bool.yaml"], "must be int, got True (bool)"),
        (["--config", "{tmp}/seed_word.yaml"], "must be int, got 'zero' (str)"),
        (["--config", "{tmp}/ckpt_neg.yaml"], "checkpoint_every: in {tmp}/ckpt_neg.yaml must be >= 0"),
        (["--out", "{tmp}/a_file"], "is a file; give a directory"),
        (["--out", "{tmp}/a_file/sub"], "lies under {tmp}/a_file, which is a file"),
        (["sweep", "{tmp}/seed_float.yaml", "--workers", "0"], "--workers must be >= 1"),
        (["sweep", "{tmp}/seed_float.yaml", "--workers", "-2"], "--workers must be >= 1"),
        (["regress", "--against", "{tmp}", "--workers", "0"], "--workers must be >= 1"),
        (["--set", "hidden_size=0"], "'hidden_size' of method 'er' must be >= 1 (it is a size), got 0"),
        (["--method", "der", "--set", "replay_batch_size=-1"], "'replay_batch_size' of method 'der' must be >= 0"),
        (["--set", "buffer_size=9223372036854775808"], "does not fit in a 64-bit integer"),
        (["--set", "buffer_size=100000000000000000000000"], "does not fit in a 64-bit integer"),
        (["--set", "protocol.epochs=abc"], "Pass e.g. --epochs <int or null> or --set protocol.epochs="),
        (["--scenario", "split_mnist", "--set", "scenario.seed=x"], "--set scenario.seed=<int>"),
        ([*C10C, "--set", "scenario.root={tmp}/badnpy"], "fog.npy (it is not a NumPy .npy array)"),
        (["--method", "l2p"], "runs on a pretrained backbone (vit_base_patch16_224) and was given no weights"),
        (["--method", "ncm", "--set", "weights=null"], "--set weights=random"),
        (["--method", "l2p", "--set", "weights={tmp}/missing.pt"], "weight file {tmp}/missing.pt does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_paragraph(tmp_path: Path, args: list[str], needle: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    for name, content in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    cmd = args if args[0] in ("sweep", "regress") else ["run", "--out", str(tmp_path / "out"), *args]
    code, err = _main(capsys, cmd)
    assert code == 2, err
    assert needle.replace("{tmp}", str(tmp_path)) in err
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()  # nothing half-written


# Errors found once the run has started (its directory exists): exit 2, one paragraph, and a `failed` record.
@pytest.mark.parametrize(
    "args, needle",
    [
        ([*C10C, "--set", "scenario.root={tmp}/c10c"], "--set scenario.clean_root=DIR"),
        (["--method", "l2p", "--set", "weights={tmp}/garbage.pt", "--set", "depth=1"], "cannot read weight file"),
    ],
)
def test_user_errors_at_setup_exit_2_and_leave_a_failed_record(tmp_path: Path, args: list[str], needle: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    for name, content in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, err = _main(capsys, ["run", "--out", str(tmp_path / "out"), *args])
    assert code == 2, err
    assert needle in err and "Traceback" not in err and "weights_only" not in err
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    (record,) = (tmp_path / "out").glob("*/run.json")
    assert json.loads(record.read_text())["status"] == "failed"


def test_unwritable_out_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A read-only --out (simulated: these tests may run as root, who can write anywhere) is exit 2 and one
    paragraph, before any data is read."""
    from cl_bench.engine import rundir

    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)
    assert main(["run", "--out", str(tmp_path / "ro" / "runs"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not writable" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "ro").exists()


def test_corrupt_mnist_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mnist"
    root.mkdir()
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x01" * 7)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x01" * 10)
    code, err = _main(capsys, ["run", "--scenario", "split_mnist", "--set", f"scenario.root={root}", "--out",
                               str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "truncated or corrupt" in err and "t10k-images-idx3-ubyte" in err and "Traceback" not in err


def test_yaml_config_and_flag_precedence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "method: {name: finetune, lr: 0.05}\n"
        "scenario: {name: split_digits, n_experiences: 2}\n"
        "protocol: {eval_every: 5, epochs: 1}\n"
        "seed: 4\n"
    )
    out = tmp_path / "runs"
    argv = ["run", "--config", str(cfg), "--seed", "5", "--set", "protocol.eval_subset=50", "--out", str(out)]
    assert main(argv) == 0
    (run_dir,) = [p for p in out.iterdir() if not p.name.startswith(".")]  # .locks holds the run locks
    record = json.loads((run_dir / "run.json").read_text())
    assert record["method"]["name"] == "finetune" and record["method"]["config"]["lr"] == 0.05
    assert record["seed"] == 5  # the flag wins over the file
    assert record["protocol"]["eval_every"] == 5 and record["protocol"]["eval_subset"] == 50
    assert len(record["accuracy_matrix"]["boundary"]) == 2
    assert "finetune on split_digits" in capsys.readouterr().out


def test_bad_yaml_config_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("methods: er\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "unknown top-level keys ['methods']" in capsys.readouterr().err


def test_parse_sets_sections() -> None:
    sets = parse_sets(["lr=1e-3", "scenario.root=/data", "protocol.eval_every=10", "method.buffer_size=50"])
    assert sets["method"] == {"lr": "1e-3", "buffer_size": 50}  # "1e-3" becomes a float when checked
    assert sets["scenario"] == {"root": "/data"} and sets["protocol"] == {"eval_every": 10}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_sets(["novalue"])


@pytest.mark.slow  # a real Split-MNIST training run in a subprocess
def test_issue_command_on_real_mnist(tmp_path: Path, mnist_root: Path) -> None:
    """The documented MNIST command, shortened to 2 experiences to stay quick."""
    proc = cli("run", "--scenario", "split_mnist", "--method", "ewc", "--set", "lambda=100",
               "--set", f"scenario.root={mnist_root}", "--set", "scenario.n_experiences=2", "--eval-every", "1",
               "--seed", "3", "--out", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    record = json.loads((run_dir / "run.json").read_text())
    assert "only the 10k test files were found" in record["scenario"]["spec"]["split"]
    assert record["method"]["config"]["lambda"] == 100.0 and record["seed"] == 3
    assert record["metrics"]["final_acc"] > 0.4  # two binary experiences: well above 1/4 chance


@pytest.mark.slow  # a whole (1-iteration) run with its plot: ~30 s on a loaded 2-core machine
def test_progress_bar_shows_from_the_first_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar opens before the method's setup (a large backbone can take minutes to build and
    to evaluate before training) and names each phase (issue 13)."""
    import tqdm

    from cl_bench.engine.runner import run
    from cl_bench.engine.spec import RunSpec

    shown: list[str] = []

    class Bar(tqdm.tqdm):  # type: ignore[type-arg]
        def __init__(self, *args: object, **kwargs: object) -> None:
            shown.append(str(kwargs["desc"]))
            super().__init__(*args, **{**kwargs, "disable": True})

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            shown.append(str(desc))

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    spec = RunSpec.from_mapping({"method": {"name": "finetune"}, "scenario": {"name": "split_digits"},
                                 "protocol": {"epochs": 1, "max_iterations": 1}}, "test")  # fmt: skip
    assert run(spec, tmp_path, progress=True)["status"] == "completed"
    assert shown[:3] == ["finetune on split_digits (setting up the method)",
                         "finetune on split_digits (evaluating before training)", "finetune on split_digits"]
