"""Blurry and power-law stream wrappers and the single-pass online protocol, on Split-Digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cl_bench.cli import main
from cl_bench.core.registry import SCENARIOS
from cl_bench.engine.spec import Protocol, RunSpec, run_id_for


def _record(out: str) -> dict:
    return json.loads(Path(out.split("record: ")[1].split()[0]).read_text())


def test_blurry_sharp_window_is_the_base_stream() -> None:
    base = SCENARIOS.create("split_digits", n_experiences=5, seed=1)
    sharp = SCENARIOS.create("blurry", base_args={"n_experiences": 5, "seed": 1}, window=0.0)
    assert sharp.n_classes == 10 and sharp.setting == "class_il" and len(sharp) == 5
    for b, s in zip(base, sharp, strict=True):
        assert s.classes == b.classes and len(s.train) == len(b.train)
        assert sorted(s.train.y.tolist()) == sorted(b.train.y.tolist())
        assert torch.equal(s.test.x, b.test.x) and torch.equal(s.test.y, b.test.y)


def test_blurry_blends_neighbours_and_keeps_every_example_once() -> None:
    base = SCENARIOS.create("split_digits")
    s = SCENARIOS.create("blurry", window=1.0, seed=3)
    sizes = [len(e.train) for e in base]
    comp = s.spec["composition"]
    assert [sum(row) for row in comp] == sizes  # experiences keep their sizes
    assert [sum(col) for col in zip(*comp, strict=True)] == sizes  # each base example used exactly once
    for i, row in enumerate(comp):
        assert row[i] == max(row)  # an experience is still mostly its own
        assert all(c == 0 for j, c in enumerate(row) if abs(j - i) > 1)  # window 1.0 reaches one neighbour
    assert 0 < comp[0][1] < sizes[0] // 2  # a real blend, not a shuffle
    assert len(s[0].classes) > 2
    assert s.ordered and not base.ordered and all(e.shift is None for e in s)
    x_all = torch.cat([e.train.x for e in s]).flatten(1)
    x_base = torch.cat([e.train.x for e in base]).flatten(1)
    assert sorted(map(tuple, x_all.tolist())) == sorted(map(tuple, x_base.tolist()))
    # the ramp: within experience 0, examples of experience 1 sit towards its end
    pos = (s[0].train.y.unsqueeze(1) == torch.tensor(base[1].classes)).any(1).nonzero().flatten().float()
    assert pos.mean() > 0.75 * len(s[0].train)
    again = SCENARIOS.create("blurry", window=1.0, seed=3)
    assert again.spec_hash == s.spec_hash and torch.equal(again[2].train.x, s[2].train.x)
    assert SCENARIOS.create("blurry", window=1.0, seed=4).spec_hash != s.spec_hash


def test_power_law_schedule_follows_exponent() -> None:
    every = SCENARIOS.create("power_law", exponent=0.0, rehearsal_fraction=0.2)
    base = SCENARIOS.create("split_digits")
    for k, exp in enumerate(every):
        assert [j for j, _ in every.spec["schedule"][k]] == list(range(k))  # exponent 0: p = 1 for all
        extra = sum(round(0.2 * len(base[j].train)) for j in range(k))
        assert len(exp.train) == len(base[k].train) + extra
        assert set(exp.classes) == {c for j in range(k + 1) for c in base[j].classes}
        assert torch.equal(exp.test.y, base[k].test.y)
    never = SCENARIOS.create("power_law", exponent=60.0)  # p = 2^-60: no recurrence
    assert all(row == [] for row in never.spec["schedule"])
    mid = [SCENARIOS.create("power_law", base_args={"n_experiences": 10}, exponent=1.0, seed=s).spec["schedule"]
           for s in range(4)]  # fmt: skip
    n_recur = sum(len(row) for sched in mid for row in sched)
    assert 0 < n_recur < 4 * 45  # some but not all of the 45 possible (k, j) pairs per stream
    # the gap since last seen drives it: the immediately preceding experience recurs most often
    recent = sum(any(j == k - 1 for j, _ in row) for sched in mid for k, row in enumerate(sched) if k)
    oldest = sum(any(j == 0 for j, _ in row) for sched in mid for k, row in enumerate(sched) if k > 5)
    assert recent / 36 > oldest / 16


def test_wrappers_reject_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = [
        (["--set", "scenario.base_args={setting: task_il}"], "class- or domain-incremental"),
        (["--set", "scenario.window=-1"], "window must be >= 0"),
        (["--set", "scenario.base=blurry"], "cannot wrap itself"),
        (["--set", "scenario.base=split_digts"], "Did you mean 'split_digits'"),
        (["--set", "scenario.base_args=5"], "must be mapping"),
    ]
    for extra, needle in cases:
        assert main(["run", "--scenario", "blurry", "--out", str(tmp_path), *extra]) == 2
        assert needle in capsys.readouterr().err
    assert main(["run", "--scenario", "power_law", "--set", "scenario.rehearsal_fraction=0", "--out",
                 str(tmp_path)]) == 2  # fmt: skip
    assert "rehearsal_fraction" in capsys.readouterr().err
    assert main(["run", "--online", "--epochs", "3", "--out", str(tmp_path)]) == 2
    assert "single pass" in capsys.readouterr().err


def test_online_blurry_and_power_law_run_from_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["run", "--scenario", "blurry", "--set", "scenario.base_args={n_experiences: 3}", "--set",
            "scenario.window=0.5", "--online", "--eval-every", "5", "--method", "finetune", "--out", str(tmp_path),
            "-q"]  # fmt: skip
    assert main(args) == 0
    rec = _record(capsys.readouterr().out)
    assert rec["status"] == "completed" and rec["protocol"]["online"] is True and rec["protocol"]["epochs"] == 1
    assert rec["scenario"]["spec"]["base"] == "split_digits" and rec["scenario"]["spec"]["window"] == 0.5
    n_train = sum(map(sum, rec["scenario"]["spec"]["composition"]))
    iters = rec["accuracy_matrix"]["iteration"]
    bs = rec["protocol"]["batch_size"]
    assert iters[-1] == sum(-(-sum(row) // bs) for row in rec["scenario"]["spec"]["composition"])
    assert iters[-1] * bs >= n_train > (iters[-1] - 3) * bs  # one pass: each example seen once
    assert all(i % 5 == 0 for i in iters[1:-1] if i not in (iters[b] for b in rec["accuracy_matrix"]["boundary"]))
    assert main(["run", "--scenario", "power_law", "--set", "scenario.exponent=0.5", "--epochs", "1",
                 "--eval-every", "0", "--out", str(tmp_path), "-q"]) == 0  # fmt: skip
    rec = _record(capsys.readouterr().out)
    assert rec["scenario"]["name"] == "power_law" and "online" not in rec["protocol"]
    assert len(rec["scenario"]["spec"]["schedule"]) == 5


def test_online_default_leaves_run_ids_and_records_unchanged() -> None:
    spec = RunSpec(protocol=Protocol(epochs=2))
    assert "online" not in Protocol(epochs=2).to_dict()
    assert run_id_for(spec) == run_id_for(RunSpec(protocol=Protocol(epochs=2, online=False)))
    assert run_id_for(spec) != run_id_for(RunSpec(protocol=Protocol(online=True)))
    assert Protocol(online=True).to_dict()["online"] is True


def test_list_shows_the_new_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "scenarios", "-v"]) == 0
    out = capsys.readouterr().out
    for name in ("blurry", "power_law", "split_imagenet_r", "split_tinyimagenet"):
        assert name in out
    assert "Gandhi" in out and "CODA-Prompt" in out and "base_args: mapping" in out


def test_online_blurry_is_consumed_in_stream_order(tmp_path: Path) -> None:
    from cl_bench.core.registry import METHODS
    from cl_bench.engine.runner import run

    seen: list[list[int]] = []

    class Recorder(METHODS.get("finetune").obj):  # type: ignore[misc, name-defined]
        def observe(self, batch):  # type: ignore[no-untyped-def]
            seen.append(batch.y.tolist())
            return super().observe(batch)

    cfg = {"base_args": {"n_experiences": 3, "class_order": "identity"}, "window": 1.0}
    spec = RunSpec(method="finetune", scenario="blurry", scenario_config=cfg,
                   protocol=Protocol(online=True, eval_every=0, batch_size=20))  # fmt: skip
    run(spec, tmp_path, method_cls=Recorder)
    s = SCENARIOS.create("blurry", **cfg)
    first = sum(seen[: -(-len(s[0].train) // 20)], [])
    assert first == s[0].train.y.tolist()  # the stored (blended) order, not a shuffle
    late = sum(c >= 3 for c in first[-60:])
    early = sum(c >= 3 for c in first[:60])
    assert early == 0 and late > 10  # experience 1 (classes 3-5) arrives towards the boundary
