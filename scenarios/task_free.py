"""Stream wrappers over any registered scenario: blurry (task-free) boundaries and power-law recurrence.

Both take a base scenario by name (``base``) with its parameters (``base_args``), build it through the
registry, and rearrange its *training* data; every experience keeps its base test set, so accuracy is still
reported per base experience. From the CLI::

    cl-bench run --scenario blurry --set scenario.base=split_digits \\
        --set 'scenario.base_args={n_experiences: 5, seed: 1}' --set scenario.window=0.5 --online
"""

from __future__ import annotations

from typing import Any

import torch

from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario


def _base_scenario(wrapper: str, base: str, base_args: dict[str, Any] | None) -> Scenario:
    if base == wrapper:
        raise ConfigError(f"{wrapper} cannot wrap itself; set scenario.base to another scenario (e.g. split_digits)")
    scenario = SCENARIOS.create(base, **(base_args or {}))
    if scenario.setting == "task_il":
        raise ConfigError(
            f"{wrapper} mixes experiences, so its base stream must be class- or domain-incremental; {base} was "
            f"built as task_il. Drop setting=task_il from scenario.base_args."
        )
    missing = [e.index for e in scenario if e.train is None or len(e.train) == 0]
    if missing:
        raise ConfigError(
            f"{wrapper} rearranges training data, but experiences {missing} of {base} have none (a test-only "
            f"stream); choose a base scenario with training data"
        )
    return scenario


def _base_spec(base: str, scenario: Scenario, base_args: dict[str, Any] | None) -> dict[str, Any]:
    return {"base": base, "base_args": dict(base_args or {}), "base_spec": scenario.spec,
            "base_spec_hash": scenario.spec_hash}  # fmt: skip


def _classes(y: torch.Tensor) -> tuple[int, ...]:
    return tuple(torch.unique(y).tolist())


@SCENARIOS.register(
    "blurry",
    reference="blurry task boundaries: Aljundi et al., 'Gradient based sample selection for online continual "
    "learning' (NeurIPS 2019); Koh et al., 'Online Continual Learning on Class Incremental Blurry Task "
    "Configuration with Anytime Inference' (ICLR 2022); linear boundary blend over a window is cl_bench's",
)
def blurry(
    base: str = "split_digits",
    base_args: dict[str, Any] | None = None,
    window: float = 0.5,
    seed: int = 0,
) -> Scenario:
    """Blurry (task-free) stream: each boundary of a base stream blended over a window of training examples.

    The base experiences' training examples are laid out in order (each experience shuffled by ``seed``), every
    example's position is jittered by a uniform offset of width ``W = window * mean experience size``, the
    sequence is re-sorted, and it is cut again at the original boundaries. The share of the next experience's
    examples therefore rises linearly from 0 to 1 across a window of ``W`` examples centred on each boundary
    (a box-blurred step), and the experiences keep their sizes. Each experience keeps its base test set;
    ``meta["from_experience"]`` counts where its training examples came from. Experience data stays in the
    blended order and the scenario is ``ordered``: under the online protocol (``--online``) the runner
    feeds it in that order, so the boundary ramp happens in time; with epochs it shuffles within an
    experience as for any stream.

    Args:
        base: Registered scenario to blur (class- or domain-incremental).
        base_args: Parameters of the base scenario (e.g. ``{n_experiences: 5, seed: 1, class_order: identity}``).
        window: Blend width as a fraction of the mean experience's training size (0 = sharp boundaries;
            values above 1 blend with more than one neighbour). Ours: the papers mix a fixed share instead.
        seed: Seeds the within-experience shuffle and the jitter.

    References:
        Aljundi, Lin, Goujaud, Bengio, "Gradient based sample selection for online continual learning"
            (NeurIPS 2019).
        Koh, Kim, Ha, Yun, Choi, "Online Continual Learning on Class Incremental Blurry Task Configuration with
            Anytime Inference" (ICLR 2022).
    """
    if not window >= 0:
        raise ConfigError(f"window must be >= 0 (a fraction of the mean experience size), got {window}")
    scenario = _base_scenario("blurry", base, base_args)
    trains = [e.train for e in scenario]
    sizes = [len(t) for t in trains]  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed)
    source = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    local = torch.cat([torch.randperm(n, generator=gen) for n in sizes])
    width = window * sum(sizes) / len(sizes)
    key = torch.arange(len(source), dtype=torch.float64) + (torch.rand(len(source), generator=gen,
                                                                      dtype=torch.float64) - 0.5) * width
    order = torch.argsort(key, stable=True)
    experiences, composition, start = [], [], 0
    for i, exp in enumerate(scenario):
        take = order[start : start + sizes[i]]
        start += sizes[i]
        parts, counts = [], [0] * len(sizes)
        # Consecutive runs from the same source become one subset each, so the blended order survives.
        src = source[take]
        cuts = [0, *(torch.nonzero(src[1:] != src[:-1]).flatten() + 1).tolist(), len(take)]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            j = int(src[a])
            parts.append(trains[j].subset(local[take[a:b]]))  # type: ignore[union-attr]
            counts[j] += b - a
        train = type(parts[0]).concat(parts)
        composition.append(counts)
        meta = {**exp.meta, "from_experience": {j: c for j, c in enumerate(counts) if c}}
        experiences.append(Experience(i, train, exp.test, _classes(train.y), None, meta, exp.shift))
    spec = {**_base_spec(base, scenario, base_args), "window": window, "window_examples": round(width, 3),
            "seed": seed, "n_experiences": len(scenario), "composition": composition}  # fmt: skip
    return Scenario("blurry", experiences, spec, scenario.n_classes, scenario.setting, scenario.protocol_defaults,
                    ordered=True, flip_invariant=scenario.flip_invariant)  # fmt: skip


@SCENARIOS.register(
    "power_law",
    reference="Gandhi, Shah, Marupudi, Varma, 'Natural Mitigation of Catastrophic Interference: Continual "
    "Learning in Power-Law Learning Environments' (arXiv:2401.10393, 2024), after Anderson & Schooler, "
    "'Reflections of the environment in memory' (Psychological Science 1991)",
)
def power_law(
    base: str = "split_digits",
    base_args: dict[str, Any] | None = None,
    exponent: float = 1.0,
    rehearsal_fraction: float = 0.1,
    seed: int = 0,
) -> Scenario:
    """Naturalistic rehearsal environment: earlier experiences recur with power-law probability.

    Before experience ``k`` each earlier experience ``j`` recurs with probability ``(1 + g)^-exponent``, where
    ``g = k - (the last experience in which j appeared)``; a recurring experience adds a random
    ``rehearsal_fraction`` of its training examples (at least one) to experience ``k``'s training data and
    resets its clock. ``exponent=0`` rehearses every earlier experience every time; large exponents approach
    the plain base stream. Test sets stay the base ones. ``meta["recurring"]`` maps each recurring experience
    to the number of its examples added; the spec's ``schedule`` lists ``[j, n]`` pairs per experience.

    The paper gives the idea (need probability falls as a power law of the time since last use) but not
    these defaults: ``exponent=1.0`` and ``rehearsal_fraction=0.1`` are cl_bench's choices.

    Args:
        base: Registered scenario (class- or domain-incremental).
        base_args: Parameters of the base scenario.
        exponent: Power-law exponent of the recurrence probability (>= 0).
        rehearsal_fraction: Share of a recurring experience's training data added, in (0, 1].
        seed: Seeds the recurrences and the rehearsed examples.

    References:
        Gandhi, Shah, Marupudi, Varma, "Natural Mitigation of Catastrophic Interference: Continual Learning in
            Power-Law Learning Environments" (arXiv:2401.10393, 2024).
        Anderson & Schooler, "Reflections of the environment in memory" (Psychological Science, 1991).
    """
    if not exponent >= 0:
        raise ConfigError(f"exponent must be >= 0, got {exponent}")
    if not 0 < rehearsal_fraction <= 1:
        raise ConfigError(f"rehearsal_fraction must be in (0, 1], got {rehearsal_fraction}")
    scenario = _base_scenario("power_law", base, base_args)
    gen = torch.Generator().manual_seed(seed)
    last_seen: dict[int, int] = {}
    experiences, schedule = [], []
    for k, exp in enumerate(scenario):
        parts, recurring = [exp.train], {}
        for j in range(k):
            p = (1 + k - last_seen[j]) ** -exponent
            if float(torch.rand(1, generator=gen, dtype=torch.float64)) < p:
                old = scenario[j].train
                n = max(1, round(rehearsal_fraction * len(old)))  # type: ignore[arg-type]
                idx = torch.randperm(len(old), generator=gen)[:n].sort().values  # type: ignore[arg-type]
                parts.append(old.subset(idx))  # type: ignore[union-attr]
                recurring[j] = n
                last_seen[j] = k
        last_seen[k] = k
        train = type(exp.train).concat(parts)  # type: ignore[arg-type]
        schedule.append([[j, n] for j, n in recurring.items()])  # lists: JSON keeps them as they are
        meta = {**exp.meta, "recurring": recurring}
        experiences.append(Experience(k, train, exp.test, _classes(train.y), None, meta, exp.shift))
    spec = {**_base_spec(base, scenario, base_args), "exponent": exponent, "rehearsal_fraction": rehearsal_fraction,
            "seed": seed, "n_experiences": len(scenario), "schedule": schedule}  # fmt: skip
    return Scenario("power_law", experiences, spec, scenario.n_classes, scenario.setting,
                    scenario.protocol_defaults, flip_invariant=scenario.flip_invariant)  # fmt: skip
