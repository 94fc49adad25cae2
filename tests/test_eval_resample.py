"""Protocol.resample_eval_subset: a fresh evaluation subset at every periodic point, recorded; fixed by default."""

from __future__ import annotations

import torch

from cl_bench.core.registry import SCENARIOS
from cl_bench.engine.evaluator import Evaluator
from cl_bench.engine.spec import Protocol, RunSpec


def _subsets_at_points(resample: bool, n_points: int = 3) -> list[list[torch.Tensor]]:
    sc = SCENARIOS.create("toy", seed=0)
    ev = Evaluator(sc, eval_every=1, eval_subset=5, seed=0, device="cpu", resample=resample)

    def predict(x: torch.Tensor, ctx: object) -> torch.Tensor:
        return torch.zeros(len(x), sc.n_classes)

    seen = []
    for it in range(n_points):
        ev.evaluate(predict, it, 1, full=False)
        seen.append([s.clone() for s in ev._subsets])
    return seen


def test_fixed_by_default_fresh_when_asked_and_reproducible() -> None:
    fixed = _subsets_at_points(False)
    assert all(torch.equal(fixed[0][0], p[0]) for p in fixed)
    fresh = _subsets_at_points(True)
    assert not torch.equal(fresh[0][0], fresh[1][0]) or not torch.equal(fresh[1][0], fresh[2][0])
    again = _subsets_at_points(True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fresh, again, strict=True))  # seeded by point: resumable
    assert all(len(p[0]) == 5 for p in fresh)


def test_recorded_only_when_set_so_run_ids_do_not_change() -> None:
    assert "resample_eval_subset" not in Protocol().to_dict()
    assert Protocol(resample_eval_subset=True).to_dict()["resample_eval_subset"] is True
    a = RunSpec.from_mapping({"method": "er", "scenario": "toy"})
    b = RunSpec.from_mapping({"method": "er", "scenario": "toy", "protocol": {"resample_eval_subset": True}})
    assert a.protocol.to_dict() != b.protocol.to_dict()
