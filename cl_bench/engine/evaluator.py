"""The evaluation schedule and the fused per-point forward pass.

At every eval point, all experiences due are evaluated in one batched forward
pass under ``torch.inference_mode()`` and the correct counts are split per
experience afterwards. Between experience boundaries each seen experience's
test set is subsampled to ``eval_subset`` examples (fixed per run, seeded; or drawn
afresh at every point with ``resample``); at
boundaries and before training every experience's full test set is used, so
boundary metrics are exact and forward transfer is measurable.

References:
    De Lange, van de Ven, Tuytelaars. "Continual evaluation for lifelong
    learning: identifying the stability gap". ICLR 2023.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cl_bench.core.types import PredictContext, Scenario
from cl_bench.metrics import AccuracyMatrix

Predict = Callable[[torch.Tensor, PredictContext], torch.Tensor]

# Above this many bytes of transformed inputs, test data is transformed chunk by
# chunk at every eval point instead of being cached on the device.
CACHE_BYTES = 1 << 30


@dataclass
class _Pack:
    """Test examples of several experiences, concatenated for one fused pass."""

    x: torch.Tensor | None  # transformed inputs on the device; None = too big to cache
    y: torch.Tensor
    exp_of: torch.Tensor  # experience index of each example
    totals: list[int]
    parts: list[tuple[int, torch.Tensor]]  # (experience, indices) for the uncached path


class Evaluator:
    """Runs the eval schedule of a run and fills its :class:`AccuracyMatrix`.

    Args:
        scenario: The stream; its experiences' test sets are evaluated.
        eval_every: Evaluate every k training iterations (1 = per iteration,
            0 = only at experience boundaries and before training).
        eval_subset: Examples per experience between boundaries (None = all).
        seed: Seeds the subsample, which is fixed for the run.
        device: Where the forward pass runs.
        batch_size: Examples per forward call.
        resample: Draw a new subsample at every periodic eval point, seeded by ``seed`` and the
            point's index (a resumed run draws the same ones).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        eval_every: int,
        eval_subset: int | None,
        seed: int,
        device: str | torch.device,
        batch_size: int = 1024,
        resample: bool = False,
    ) -> None:
        self.scenario = scenario
        self.seed, self.eval_subset, self.resample = seed, eval_subset, resample
        self.eval_every = eval_every
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.matrix = AccuracyMatrix(len(scenario))
        self._subsets = self._draw(torch.Generator().manual_seed(10_007 * seed + 1))
        self._full = [torch.arange(len(exp.test)) for exp in scenario]
        self._task_ids = torch.tensor(
            [exp.task_id if exp.task_id is not None else -1 for exp in scenario], device=self.device
        )
        self._task_il = scenario.setting == "task_il"
        if self._task_il:
            mask = torch.zeros(len(scenario), scenario.n_classes, dtype=torch.bool)
            for exp in scenario:
                mask[exp.index, list(exp.classes)] = True
            self._allowed = mask.to(self.device)
        self._packs: dict[tuple[int, bool], _Pack] = {}

    def _draw(self, gen: torch.Generator) -> list[torch.Tensor]:
        """One sorted subsample of every experience's test set."""
        subsets = []
        for exp in self.scenario:
            n = len(exp.test)
            k = n if self.eval_subset is None or self.eval_subset <= 0 else min(self.eval_subset, n)
            subsets.append(torch.randperm(n, generator=gen)[:k].sort().values)
        return subsets

    def due(self, iteration: int) -> bool:
        """Whether a periodic evaluation falls on training iteration ``iteration``."""
        return self.eval_every > 0 and iteration % self.eval_every == 0

    def end_experience(self) -> None:
        """Mark the latest eval point as the boundary of the experience whose training just ended."""
        self.matrix.mark_boundary(self.matrix.n_points - 1)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the evaluator: the matrix (subsets are re-derived from the seed)."""
        return self.matrix.to_dict()

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.matrix = AccuracyMatrix.from_dict(state, len(self.scenario))

    def _pack(self, n_exp: int, full: bool) -> _Pack:
        key = (n_exp, full)
        if key not in self._packs:
            # Only one subsampled pack is live at a time: the seen set grows monotonically.
            self._packs = {k: v for k, v in self._packs.items() if k[1]}
            idx = self._full if full else self._subsets
            parts = [(e, idx[e]) for e in range(n_exp)]
            ys, exps = [], []
            for e, i in parts:
                ys.append(self.scenario[e].test.y[i])
                exps.append(torch.full((len(i),), e, dtype=torch.long))
            y = torch.cat(ys).to(self.device)
            exp_of = torch.cat(exps).to(self.device)
            x = None
            first = self.scenario[0].test
            est_bytes = len(y) * 4 * int(torch.tensor(first.input_shape).prod())
            if est_bytes <= CACHE_BYTES:
                x = torch.cat([self.scenario[e].test.batch(i, self.device)[0] for e, i in parts])
            self._packs[key] = _Pack(x, y, exp_of, [len(i) for _, i in parts], parts)
        return self._packs[key]

    def _correct(self, predict: Predict, x: torch.Tensor, y: torch.Tensor, exp_of: torch.Tensor) -> torch.Tensor:
        task_ids = self._task_ids[exp_of] if self._task_il else None
        logits = predict(x, PredictContext(task_ids=task_ids))
        if self._task_il:
            logits = logits.masked_fill(~self._allowed[exp_of], torch.finfo(logits.dtype).min)
        return logits.argmax(dim=1) == y

    def evaluate(self, predict: Predict, iteration: int, n_seen: int, *, full: bool) -> int:
        """Add one eval point and return its index.

        Args:
            predict: The method's ``predict``.
            iteration: Training iterations done so far.
            n_seen: Experiences whose training has started (evaluated when not ``full``).
            full: Evaluate every experience on its full test set (boundaries, start).
        """
        n_exp = len(self.scenario) if full else n_seen
        if self.resample and not full:
            # A stream of its own per point (not the fixed subset's): points stay reproducible on resume.
            point_seed = 10_007 * self.seed + 2 + 7_919 * self.matrix.n_points
            self._subsets = self._draw(torch.Generator().manual_seed(point_seed))
            self._packs = {k: v for k, v in self._packs.items() if k[1]}
        pack = self._pack(n_exp, full)
        correct_mask = []
        with torch.inference_mode():
            if pack.x is not None:
                for s in range(0, len(pack.y), self.batch_size):
                    sl = slice(s, s + self.batch_size)
                    correct_mask.append(self._correct(predict, pack.x[sl], pack.y[sl], pack.exp_of[sl]))
            else:
                for e, idx in pack.parts:
                    test = self.scenario[e].test
                    for s in range(0, len(idx), self.batch_size):
                        x, y = test.batch(idx[s : s + self.batch_size], self.device)
                        exp_of = torch.full((len(y),), e, dtype=torch.long, device=self.device)
                        correct_mask.append(self._correct(predict, x, y, exp_of))
            correct = torch.bincount(pack.exp_of[torch.cat(correct_mask)], minlength=len(self.scenario))
        totals = pack.totals + [0] * (len(self.scenario) - n_exp)
        return self.matrix.add_point(iteration, correct.tolist(), totals)
