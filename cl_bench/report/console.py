"""What a run prints when it ends: its metric table and, for test-time adaptation, the online error per domain."""

from __future__ import annotations

from typing import Any


def format_metrics(record: dict[str, Any]) -> str:
    """The metric table printed after a run."""
    from cl_bench.core.record import record_kind
    from cl_bench.core.registry import METRICS
    from cl_bench.metrics import METRIC_SPECS
    from cl_bench.metrics.source_curve import SOURCE_CURVE_METRICS

    rows = []
    kind = record_kind(record)
    for name, value in record["metrics"].items():
        if name in METRIC_SPECS and METRIC_SPECS[name].kind != kind:
            continue  # undefined for this kind of run (e.g. forgetting curves of a TTA run)
        entry = METRICS.get(name) if name in METRICS else None
        higher = _higher(name) if entry is not None else SOURCE_CURVE_METRICS.get(name, (None,))[0]
        arrow = "" if higher is None else ("(higher is better)" if higher else "(lower is better)")
        if value is None:
            shown = "n/a"
        elif kind == "tta":  # errors and accuracies in %, the unit of the per-domain errors printed with them
            shown = f"{100 * value:.1f} %"
        else:
            shown = f"{value:.1f}" if name.endswith("recovery") else f"{value:.4f}"
        rows.append(f"  {name:<24} {shown:>10}  {arrow}")
    return "\n".join(rows)


def format_online(record: dict[str, Any]) -> str:
    """Online error of each experience of a TTA record, with its severity (0 = clean source images)."""
    from cl_bench.metrics import TTAMatrix
    from cl_bench.metrics.tta import online_errors
    from cl_bench.report.domains import domain_names

    m = TTAMatrix.from_dict(record["accuracy_matrix"])
    names = domain_names(record["scenario"].get("spec") or {}, m.severity)
    cells = [f"{names[e]}: {100 * err:.1f}" for e, err in enumerate(online_errors(m))]
    lines = ["  online error (%) per domain (corruption, severity), in stream order:"]
    lines += ["    " + "   ".join(cells[i : i + 5]) for i in range(0, len(cells), 5)]
    return "\n".join(lines)


def _higher(name: str) -> bool:
    from cl_bench.metrics import METRIC_SPECS

    return METRIC_SPECS[name].higher_is_better


__all__ = ["format_metrics", "format_online"]
