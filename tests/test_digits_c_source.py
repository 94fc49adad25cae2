"""digits_c's default source model is competent, so the entropy-filtering TTA methods act as designed (issue 14).

With the old 5-epoch source (75.8 % clean accuracy, near-uniform outputs) EATA's, SAR's and RDumb's filters
passed no sample and all three equalled BN adaptation exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec


@pytest.mark.slow
def test_default_digits_c_source_is_competent_and_filters_let_samples_through(tmp_path: Path) -> None:
    records = {m: run(RunSpec(m, scenario="digits_c", protocol=Protocol(eval_every=0)), tmp_path)
               for m in ("source", "bn_adapt", "eata", "sar", "rdumb")}  # fmt: skip
    err = {m: r["metrics"]["online_error"] for m, r in records.items()}
    assert records["source"]["metrics"]["clean_acc_after"] >= 0.95  # the unadapted source on clean held-out digits
    for m in ("eata", "sar", "rdumb"):
        assert err[m] != err["bn_adapt"], (m, err)  # their filters pass samples, so they update
    assert err["bn_adapt"] < err["source"]
