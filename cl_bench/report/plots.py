"""Per-experience accuracy curves of a run record, with experience boundaries marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: records are plotted on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from cl_bench.core import atomic  # noqa: E402
from cl_bench.metrics import AccuracyMatrix, TTAMatrix, matrix_from_dict  # noqa: E402


def plot_accuracy_curves(record: dict[str, Any], path: str | Path) -> Path:
    """Draw accuracy on every experience against training iteration and save a PNG.

    Dotted vertical lines mark the iteration at which each experience's training
    ended; the dip of an old experience's curve just after a line is the
    stability gap (De Lange et al., ICLR 2023).

    Args:
        record: A run record (see DESIGN.md).
        path: Where the PNG is written.

    Returns:
        The path written.
    """
    m = matrix_from_dict(record["accuracy_matrix"], kind=record.get("kind"))
    if isinstance(m, TTAMatrix):
        return _plot_online_error(record, m, Path(path))
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10" if m.n_experiences <= 10 else "tab20")
    from cl_bench.report.curves import experience_accuracy

    for e in range(m.n_experiences):
        # NaN where e was not evaluated: the line breaks there (an isolated point gets a marker)
        xs, ys = experience_accuracy(m, e, gaps=True)
        if any(y == y for y in ys):
            ax.plot(xs, ys, lw=1.2, color=cmap(e % cmap.N), label=f"exp {e}", marker=".", ms=3,
                    markevery=_isolated(ys))  # fmt: skip
    for b in m.boundary:
        ax.axvline(m.iteration[b], color="0.5", ls=":", lw=1)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{record['method']['name']} on {record['scenario']['name']} (seed {record['seed']})")
    ax.legend(loc="lower left", fontsize=8, ncol=min(5, max(1, m.n_experiences)))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic.replacing(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_overlay(
    records: list[dict[str, Any]],
    path: str | Path,
    experience: int | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Overlay the per-iteration accuracy curves of several runs in one PNG.

    Each run contributes one line: its mean accuracy over the experiences seen
    so far (default), or its accuracy on one ``experience`` from the end of that
    experience's training on, where the stability gap of De Lange et al. (ICLR
    2023) shows. Dotted lines mark the experience boundaries: grey when every run shares them, else each
    run's own in its line's colour (runs of different protocols end their experiences at different
    iterations; the title says so).

    Args:
        records: Run records (see DESIGN.md).
        path: Where the PNG is written.
        experience: Plot this experience's accuracy instead of the seen-experience mean.
        labels: Legend entries (default: method, seed and scenario of each record).

    Returns:
        The path written.
    """
    from cl_bench.report.curves import boundary_iterations, experience_accuracy, overlay_boundaries, seen_accuracy

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10" if len(records) <= 10 else "tab20")
    matrices = [matrix_from_dict(r["accuracy_matrix"], kind=r.get("kind")) for r in records]
    for record, m in zip(records, matrices, strict=True):
        if not isinstance(m, AccuracyMatrix):
            raise ValueError(f"record {record.get('run_id')} is a test-time adaptation run: it has no per-iteration "
                             f"curves to overlay (its plot shows the online error per domain)")  # fmt: skip
    own = overlay_boundaries(matrices)  # type: ignore[arg-type]
    for k, (record, m) in enumerate(zip(records, matrices, strict=True)):
        if experience is None:
            xs, ys = seen_accuracy(m)
        else:
            xs, ys = experience_accuracy(m, experience, from_boundary=True, gaps=True)
        label = labels[k] if labels else f"{record['method']['name']} s{record['seed']} ({record['scenario']['name']})"
        ax.plot(xs, ys, lw=1.3, color=cmap(k % cmap.N), label=label)
        if own is not None:
            for it in own[k]:
                ax.axvline(it, color=cmap(k % cmap.N), ls=":", lw=1, alpha=0.8)
        elif k == 0:
            for it in boundary_iterations(m):
                ax.axvline(it, color="0.5", ls=":", lw=1)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("test accuracy" + ("" if experience is None else f" on experience {experience}"))
    ax.set_ylim(-0.02, 1.02)
    title = ("accuracy on the experiences seen so far" if experience is None
             else f"experience {experience} after it was learnt (stability gap)")  # fmt: skip
    ax.set_title(title + ("\n(runs end their experiences at different iterations: each run's boundaries in its "
                          "colour)" if own is not None else ""), fontsize=10 if own is not None else None)  # fmt: skip
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic.replacing(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _isolated(ys: list[float]) -> list[int]:
    """Indices of finite values with no finite neighbour (a broken line would not show them)."""

    def ok(i: int) -> bool:
        return 0 <= i < len(ys) and ys[i] == ys[i]  # NaN != NaN

    return [i for i in range(len(ys)) if ok(i) and not ok(i - 1) and not ok(i + 1)]


def _plot_online_error(record: dict[str, Any], m: TTAMatrix, path: Path) -> Path:
    """Test-time adaptation records: online error of each experience (domain) in stream order."""
    from cl_bench.metrics.tta import online_errors
    from cl_bench.report.domains import domain_names

    errs = online_errors(m)
    curve = record.get("source_curve") or []
    if curve:  # a second panel: clean-source accuracy during the stream (Protocol.tta_source_every)
        fig, (ax, ax_src) = plt.subplots(2, 1, figsize=(9, 7), dpi=110)
        its, accs = [p[0] for p in curve if p[2]], [p[1] / p[2] for p in curve if p[2]]
        ax_src.plot(its, accs, marker=".", lw=1.2, color="tab:purple", label="clean source accuracy")
        for it in m.iteration[:-1]:  # domain changes: the iteration each finished experience ended at
            ax_src.axvline(it, color="0.8", lw=0.8)
        ax_src.set_xlabel("adaptation iteration (test batch)")
        ax_src.set_ylabel("clean source accuracy")
        ax_src.set_ylim(-0.02, 1.02)
        ax_src.legend(loc="lower left", fontsize=8)
        ax_src.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    xs = list(range(len(errs)))
    ax.plot(xs, errs, marker="o", ms=3, lw=1.2, label="online error")
    clean = [e for e in xs if m.severity[e] == 0]
    if clean:
        ax.plot(clean, [errs[e] for e in clean], "s", color="tab:green", ms=5, label="clean source images")
    names = domain_names(record["scenario"].get("spec") or {}, m.severity)
    ax.set_xticks(xs, names if len(names) == len(xs) else [str(x) for x in xs], rotation=90,
                  fontsize=7 if len(xs) <= 30 else 5)  # fmt: skip
    ax.set_xlabel("domain (corruption, severity) in stream order")
    ax.set_ylabel("online error (fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{record['method']['name']} on {record['scenario']['name']} (seed {record['seed']})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic.replacing(path) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
