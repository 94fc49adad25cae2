"""The accuracy matrix: integer counts per evaluation point and experience.

Everything cl_bench reports is a pure function of this object. It stores counts
rather than accuracies so that experience-averaged and sample-pooled accuracy
are both exact, and so that evaluation points measured on a subsample mix
harmlessly with full-test-set boundary points.

References:
    De Lange, van de Ven, Tuytelaars. "Continual evaluation for lifelong
    learning: identifying the stability gap". ICLR 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class AccuracyMatrix:
    """Counts ``n_correct[p][e]`` / ``n_total[p][e]`` for eval point p, experience e.

    Attributes:
        n_experiences: Number of experiences in the stream (columns).
        n_correct: Correct predictions, one row per evaluation point.
        n_total: Evaluated examples; 0 means "experience e not evaluated at p".
        iteration: Training iteration (cumulative over the stream) of each
            evaluation point. Point 0 is the evaluation before training.
        boundary: ``boundary[e]`` is the eval point at which training on
            experience e ended. Shorter than ``n_experiences`` while (or if) the
            run has not finished every experience.

    Test-time adaptation runs have their own type, :class:`cl_bench.metrics.tta_matrix.TTAMatrix`.
    """

    kind: ClassVar[str] = "cl"

    n_experiences: int
    n_correct: list[list[int]] = field(default_factory=list)
    n_total: list[list[int]] = field(default_factory=list)
    iteration: list[int] = field(default_factory=list)
    boundary: list[int] = field(default_factory=list)

    @property
    def n_points(self) -> int:
        """Number of evaluation points recorded so far."""
        return len(self.iteration)

    @property
    def complete(self) -> bool:
        """True when every experience has a boundary evaluation."""
        return len(self.boundary) == self.n_experiences

    def add_point(self, iteration: int, correct: list[int], total: list[int]) -> int:
        """Append an evaluation point and return its index.

        Args:
            iteration: Training iteration at which the evaluation happened.
            correct: Correct predictions per experience (length ``n_experiences``).
            total: Evaluated examples per experience (0 = not evaluated).

        Returns:
            The index p of the new evaluation point.
        """
        if len(correct) != self.n_experiences or len(total) != self.n_experiences:
            raise ValueError(
                f"an eval point needs {self.n_experiences} counts per row, got "
                f"{len(correct)} correct and {len(total)} total"
            )
        if self.iteration and iteration < self.iteration[-1]:
            raise ValueError(f"eval iterations must not decrease: {iteration} after {self.iteration[-1]}")
        self.n_correct.append([int(c) for c in correct])
        self.n_total.append([int(t) for t in total])
        self.iteration.append(int(iteration))
        return self.n_points - 1

    def mark_boundary(self, point: int) -> None:
        """Record that the training of the next experience ended at ``point``."""
        if len(self.boundary) >= self.n_experiences:
            raise ValueError("every experience already has a boundary")
        if not 0 <= point < self.n_points:
            raise ValueError(f"boundary point {point} does not exist")
        self.boundary.append(point)

    def acc(self, p: int, e: int) -> float:
        """Accuracy on experience e at eval point p (NaN if not evaluated)."""
        total = self.n_total[p][e]
        return self.n_correct[p][e] / total if total else math.nan

    def acc_row(self, p: int) -> list[float]:
        """Accuracies of every experience at eval point p (NaN where not evaluated)."""
        return [self.acc(p, e) for e in range(self.n_experiences)]

    def pooled_acc(self, p: int, experiences: list[int] | None = None) -> float:
        """Sample-pooled accuracy at eval point p over ``experiences`` (default: all evaluated)."""
        cols = range(self.n_experiences) if experiences is None else experiences
        correct = sum(self.n_correct[p][e] for e in cols)
        total = sum(self.n_total[p][e] for e in cols)
        return correct / total if total else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a run record's ``accuracy_matrix``."""
        return {
            "n_correct": [list(r) for r in self.n_correct],
            "n_total": [list(r) for r in self.n_total],
            "iteration": list(self.iteration),
            "boundary": list(self.boundary),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], n_experiences: int | None = None) -> AccuracyMatrix:
        """Rebuild a matrix from :meth:`to_dict` output, checking its shape.

        Args:
            data: Mapping with ``n_correct``, ``n_total``, ``iteration``, ``boundary``.
            n_experiences: Column count; inferred from the rows when omitted.

        Raises:
            ValueError: If the mapping is missing keys, the shapes disagree, or it is the online matrix of a
                test-time adaptation run (read those with ``TTAMatrix.from_dict`` or ``matrix_from_dict``).
        """
        if isinstance(data, dict) and data.get("online"):
            raise ValueError("this is the online matrix of a test-time adaptation run, not an accuracy matrix "
                             "(read it with cl_bench.metrics.matrix_from_dict)")  # fmt: skip
        try:
            correct, total = data["n_correct"], data["n_total"]
            iteration, boundary = data["iteration"], data["boundary"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"accuracy matrix is missing {err}") from None
        if n_experiences is None:
            n_experiences = len(correct[0]) if correct else 0
        m = cls(n_experiences)
        if not (len(correct) == len(total) == len(iteration)):
            raise ValueError("accuracy matrix rows disagree in length")
        for it, c, t in zip(iteration, correct, total, strict=True):
            m.add_point(it, c, t)
        for b in boundary:
            m.mark_boundary(b)
        return m
