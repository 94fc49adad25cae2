"""Per-experience accuracy curves of a run record, with experience boundaries marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: records are plotted on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from cl_bench.metrics import AccuracyMatrix  # noqa: E402


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
    m = AccuracyMatrix.from_dict(record["accuracy_matrix"])
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    cmap = plt.get_cmap("tab10" if m.n_experiences <= 10 else "tab20")
    for e in range(m.n_experiences):
        pts = [(m.iteration[p], m.acc(p, e)) for p in range(m.n_points) if m.n_total[p][e]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, lw=1.2, color=cmap(e % cmap.N), label=f"exp {e}")
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
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")  # then rename: a reader never sees half a PNG
    plt.close(fig)
    tmp.replace(path)
    return path
