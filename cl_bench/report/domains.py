"""Names of a test-time adaptation stream's domains (corruption and severity), for tables and plot axes.

A TTA record stores the stream's spec (corruptions, setting, gradual severities, ``insert_clean``) and
each experience's severity; :func:`domain_names` rebuilds the order in which
:func:`cl_bench.data.tta_streams.tta_experiences` laid the domains out, and falls back to the
experience index (with its severity) when the spec does not say or the rebuilt order disagrees with
the recorded severities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def domain_names(spec: Mapping[str, Any], severities: Sequence[int]) -> list[str]:
    """``"<corruption> s<severity>"`` per experience (``"clean"`` for inserted clean images).

    Args:
        spec: The scenario spec of the record (``record["scenario"]["spec"]``).
        severities: The recorded severity of each experience (0 = clean source images).

    Returns:
        One name per experience; ``"exp <i> s<severity>"`` where the spec cannot name it.
    """
    fallback = [f"exp {i} s{s}" if s else f"exp {i} clean" for i, s in enumerate(severities)]
    corruptions = spec.get("corruptions")
    if not corruptions:
        return fallback
    setting = spec.get("tta_setting") or "continual"
    if setting == "mixed_domains":
        plan = [("mixed", spec.get("severity"))]
    else:
        per = spec.get("gradual_severities") if setting == "gradual" else None
        plan = [(c, s) for c in corruptions for s in (per or [spec.get("severity")])]
    names: list[str] = []
    for k, (c, s) in enumerate(plan):
        names.append(f"{c} s{s}")
        last_of_domain = k + 1 == len(plan) or plan[k + 1][0] != c
        if spec.get("insert_clean") and last_of_domain and k + 1 < len(plan):
            names.append("clean")
    expected = [0 if n == "clean" else int(n.rsplit(" s", 1)[1]) for n in names]
    return names if expected == list(severities) else fallback
