"""The online matrix of a test-time adaptation run: counts per experience (domain), in stream order.

A TTA run has no "evaluation points": each test batch is predicted once, before the method adapts on
it, and those online predictions are the measurement. So this matrix holds, per finished experience,
the online ``[correct, total]`` counts and the adaptation iteration at which it ended, the declared
severity of every experience (0 = clean source images), and the accuracy on the clean source test
set after the stream. Its metric functions live in :mod:`cl_bench.metrics.tta`; the continual-learning
metrics read :class:`~cl_bench.metrics.matrix.AccuracyMatrix` only.

Stored form (a record's ``accuracy_matrix``; unchanged from when both kinds shared one type, so old
records load): the rows of an accuracy matrix whose point ``p`` holds experience ``p``'s online counts
in column ``p`` only, ``boundary = [0, 1, ...]``, plus ``online: true``, ``severity`` and
``clean_after``.

References:
    Wang, Fink, Van Gool & Dai, "Continual Test-Time Domain Adaptation" (CVPR 2022): accuracy on the
        clean source domain after the stream.
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
        (CVPR 2023): online error per domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class TTAMatrix:
    """Online counts of each finished experience of a test-time adaptation stream.

    Attributes:
        n_experiences: Experiences (domains) in the stream.
        severity: Declared corruption severity of every experience (0 = clean source images).
        n_correct: Online correct predictions of each finished experience, in stream order.
        n_total: Online predictions of each finished experience.
        iteration: Adaptation iteration (cumulative over the stream) at which each finished experience ended.
        clean_after: ``[correct, total]`` on the clean source test set after the stream (empty when not measured).
    """

    kind: ClassVar[str] = "tta"

    n_experiences: int
    severity: list[int] = field(default_factory=list)
    n_correct: list[int] = field(default_factory=list)
    n_total: list[int] = field(default_factory=list)
    iteration: list[int] = field(default_factory=list)
    clean_after: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.severity:
            self.severity = [0] * self.n_experiences
        if len(self.severity) != self.n_experiences:
            raise ValueError(f"a TTA matrix needs one severity per experience ({self.n_experiences}), "
                             f"got {len(self.severity)}")  # fmt: skip

    @property
    def n_finished(self) -> int:
        """Experiences whose online counts are recorded."""
        return len(self.n_total)

    @property
    def complete(self) -> bool:
        """True when every experience of the stream is finished."""
        return self.n_finished == self.n_experiences

    def end_experience(self, iteration: int, correct: int, total: int) -> int:
        """Record the online counts of the next experience, finished at ``iteration``; return its index."""
        if self.complete:
            raise ValueError("every experience already has its online counts")
        if not 0 <= correct <= total:
            raise ValueError(f"online counts must satisfy 0 <= correct <= total, got {correct}/{total}")
        if self.iteration and iteration < self.iteration[-1]:
            raise ValueError(f"iterations must not decrease: {iteration} after {self.iteration[-1]}")
        self.n_correct.append(int(correct))
        self.n_total.append(int(total))
        self.iteration.append(int(iteration))
        return self.n_finished - 1

    def set_clean_after(self, correct: int, total: int) -> None:
        """Record the accuracy counts on the clean source test set after the stream."""
        if not 0 <= correct <= total:
            raise ValueError(f"clean counts must satisfy 0 <= correct <= total, got {correct}/{total}")
        self.clean_after = [int(correct), int(total)]

    def acc(self, e: int) -> float:
        """Online accuracy of experience ``e`` (NaN while unfinished or empty)."""
        if e >= self.n_finished or not self.n_total[e]:
            return math.nan
        return self.n_correct[e] / self.n_total[e]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a run record's ``accuracy_matrix`` (see the module docstring)."""
        rows_c, rows_t = [], []
        for e in range(self.n_finished):
            c, t = [0] * self.n_experiences, [0] * self.n_experiences
            c[e], t[e] = self.n_correct[e], self.n_total[e]
            rows_c.append(c)
            rows_t.append(t)
        return {"n_correct": rows_c, "n_total": rows_t, "iteration": list(self.iteration),
                "boundary": list(range(self.n_finished)), "online": True, "severity": list(self.severity),
                "clean_after": list(self.clean_after)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any], n_experiences: int | None = None) -> TTAMatrix:
        """Rebuild a matrix from :meth:`to_dict` output, checking its shape.

        Raises:
            ValueError: Missing keys, or rows that are not one experience's online counts each.
        """
        try:
            correct, total = data["n_correct"], data["n_total"]
            iteration, boundary, severity = data["iteration"], data["boundary"], data["severity"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"TTA matrix is missing {err}") from None
        if n_experiences is None:
            n_experiences = len(severity)
        m = cls(n_experiences, [int(s) for s in severity])
        if not (len(correct) == len(total) == len(iteration) == len(boundary)) or list(boundary) != list(
                range(len(boundary))):  # fmt: skip
            raise ValueError("a TTA matrix has one row per finished experience, each its own boundary")
        for e, (it, c, t) in enumerate(zip(iteration, correct, total, strict=True)):
            if len(c) != n_experiences or len(t) != n_experiences:
                raise ValueError(f"row {e} of a TTA matrix needs {n_experiences} counts")
            if any(c[j] or t[j] for j in range(n_experiences) if j != e):
                raise ValueError(f"row {e} of a TTA matrix holds counts of another experience")
            m.end_experience(it, c[e], t[e])
        clean = data.get("clean_after") or []
        if clean:
            if len(clean) != 2:
                raise ValueError(f"clean_after must be [correct, total], got {clean}")
            m.set_clean_after(clean[0], clean[1])
        return m


__all__ = ["TTAMatrix"]
