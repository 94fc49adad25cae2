"""The Avalanche bridge's parameter machinery: strategy and benchmark signatures as cl_bench configs."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from cl_bench.core.config import coerce
from cl_bench.core.errors import ConfigError, UserError
from cl_bench.core.types import StreamInfo
from cl_bench.families.supervised import TrainConfig

PREFIX = "avalanche"
#: The Avalanche release the bridge is written and tested against.
AVALANCHE_VERSION = "0.6.0"
INSTALL = "pip install avalanche-lib==0.6.0 quadprog (or pip install 'cl_bench[bench]')"

#: Names users know strategies by that Avalanche spells differently.
ALIASES = {"SI": "SynapticIntelligence"}

#: Values for strategy parameters Avalanche requires without a default (and one it defaults
#: to a value that does not fit cl_bench's networks), so that ``avalanche:NAME`` runs as is.
#: Sources: GEM, 256 memories per task (Lopez-Paz & Ranzato 2017, Sec. 5); A-GEM, the native
#: ``agem`` default; EWC, the strength of the native ``ewc`` default (lambda = 100) converted to
#: Avalanche's scale, 100 x 4.0 measured by benchmarks/ewc_lambda_scale.py (Split-MNIST MLP, batch 32;
#: docs/avalanche.md, "EWC's lambda and Avalanche's ewc_lambda"); LwF, lambda_o = 1 and T = 2 (Li &
#: Hoiem 2017, Sec. 3); SI, c = 1 for Split-MNIST (Zenke et al. 2017, Sec. 5.1, also
#: continual-learning-baselines' SI Split-MNIST config); CWR*: cl_bench networks call their
#: output layer ``head``.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "GEM": {"patterns_per_exp": 256},
    "AGEM": {"patterns_per_exp": 256},
    "EWC": {"ewc_lambda": 400.0},
    "LwF": {"alpha": 1.0, "temperature": 2.0},
    "SynapticIntelligence": {"si_lambda": 1.0},
    "CWRStar": {"cwr_layer_name": "head"},
}

#: Papers of the strategies the bridge is tested with; the others cite Avalanche and their class.
REFERENCES: dict[str, str] = {
    "GEM": "Lopez-Paz & Ranzato, 'Gradient Episodic Memory for Continual Learning' (NeurIPS 2017)",
    "AGEM": "Chaudhry et al., 'Efficient Lifelong Learning with A-GEM' (ICLR 2019)",
    "LwF": "Li & Hoiem, 'Learning without Forgetting' (ECCV 2016; TPAMI 2017)",
    "SynapticIntelligence": "Zenke, Poole & Ganguli, 'Continual Learning Through Synaptic Intelligence' (ICML 2017)",
    "DER": "Buzzega et al., 'Dark Experience for General Continual Learning: a Strong, Simple Baseline' "
    "(NeurIPS 2020)",
    "Replay": "Rolnick et al., 'Experience replay for continual learning' (NeurIPS 2019)",
    "EWC": "Kirkpatrick et al., 'Overcoming catastrophic forgetting in neural networks' (PNAS 2017)",
    "Naive": "fine-tuning baseline (no continual-learning mechanism)",
}

# Strategy constructor parameters the bridge sets itself: the network, optimiser and loss are
# cl_bench's, batch size and epochs come from the run's protocol, and evaluation is cl_bench's.
OWNED = {"self", "model", "optimizer", "criterion", "train_mb_size", "train_epochs", "eval_mb_size", "device",
          "plugins", "evaluator", "eval_every", "peval_mode"}  # fmt: skip
# Parameters that describe the stream (GSS's input size, CoPE's number of classes): taken from it.
FROM_STREAM: dict[str, Callable[[StreamInfo], Any]] = {
    "input_size": lambda info: list(info.input_shape),
    "n_classes": lambda info: info.n_classes,
    "num_classes": lambda info: info.n_classes,
}
_SCALARS = (bool, int, float, str)
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def avalanche_module() -> types.ModuleType:
    """``avalanche`` itself, or a :class:`UserError` saying how to install it."""
    try:
        import avalanche
        import avalanche.training.supervised  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"names starting with '{PREFIX}:' run Avalanche, which is not installed here ({err}). "
            f"Install it with {INSTALL}, or use a built-in name (`cl-bench list methods`)."
        ) from None
    return avalanche


# -- parameters from signatures -----------------------------------------------------------------------------


def _cli_type(tp: Any, default: Any) -> Any | None:
    """The part of annotation ``tp`` a ``--set`` value can express, or None if nothing can."""
    if tp is inspect.Parameter.empty or tp is Any:
        return type(default) if isinstance(default, _SCALARS) else None
    origin = get_origin(tp)
    if tp in _SCALARS or origin is Literal:
        if default is not inspect.Parameter.empty and default is not None:
            try:
                coerce(default, tp)
            except Exception:  # e.g. ``temperature: int = 0.1``: the default tells the real type
                return type(default) if isinstance(default, _SCALARS) else None
        return tp
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        usable = [a for a in (_cli_type(a, inspect.Parameter.empty) for a in args if a is not type(None)) if a]
        if not usable:
            return None
        # Union[float, Sequence[float]] (a value per experience) is offered as its scalar form.
        scalar = [a for a in usable if a in _SCALARS] or usable
        out = Union[tuple(scalar)] if len(scalar) > 1 else scalar[0]  # noqa: UP007
        return out | None if type(None) in args else out
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if len(args) == 1 and args[0] in _SCALARS:
            return tuple[args[0], ...]
    if isinstance(tp, type) and tp in (list, tuple) and isinstance(default, (list, tuple)):
        return tuple[Any, ...]
    return None


@dataclasses.dataclass(frozen=True)
class Param:
    name: str  # the field name in cl_bench's config
    target: str  # the constructor parameter it feeds
    type: Any
    default: Any  # inspect.Parameter.empty = required


def parameters_of(fn: Callable[..., Any], skip: set[str], defaults: Mapping[str, Any], rename: set[str],
                what: str) -> list[Param]:  # fmt: skip
    """The ``--set``-able parameters of ``fn``; a required one that is not settable is a ConfigError."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotations
        hints = {}
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = defaults.get(p.name, p.default)
        default = tuple(default) if isinstance(default, list) else default
        tp = _cli_type(hints.get(p.name, p.annotation), default)
        if tp is None:
            if default is inspect.Parameter.empty:
                shown = getattr(p.annotation, "__name__", str(p.annotation))
                raise ConfigError(
                    f"{what} cannot run through the cl_bench bridge: its parameter {p.name!r} ({shown}) has no "
                    f"default and cannot be given as a --set value. Use it from Avalanche directly, or pick "
                    f"another name (`cl-bench list methods`)."
                )
            continue  # Avalanche's default (e.g. a transform or a module) is used
        if default is not inspect.Parameter.empty and default is not None:
            try:
                default = coerce(default, tp)
            except Exception:
                continue
        name = f"strategy_{p.name}" if p.name in rename else p.name
        params.append(Param(name, p.name, tp, default))
    return params


def config_class(name: str, params: list[Param], base: type | None, owner: str) -> type:
    """A frozen dataclass with a field per parameter; required ones are checked with a clear message."""
    fields = []
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    for p in params:
        if p.default is inspect.Parameter.empty:
            fields.append((p.name, p.type | None, dataclasses.field(default=None)))
        else:
            fields.append((p.name, p.type, dataclasses.field(default=p.default)))

    def __post_init__(self: Any) -> None:  # noqa: N807
        if base is not None:
            base.__post_init__(self)  # type: ignore[attr-defined]
        missing = [f for f in required if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"{owner} needs {', '.join(repr(m) for m in missing)}, which Avalanche gives no default; "
                f"pass e.g. --set {missing[0]}=<value>"
            )

    bases = (base,) if base is not None else ()
    cls = dataclasses.make_dataclass(name, fields, bases=bases, frozen=True, namespace={"__post_init__": __post_init__})
    cls.__doc__ = f"Parameters of {owner} (from its signature; {', '.join(p.name for p in params) or 'none'})."
    return cls


def close_matches(name: str, names: Sequence[str]) -> str:
    lower = {n.lower(): n for n in names}
    close = [lower[name.lower()]] if name.lower() in lower else difflib.get_close_matches(name, list(names), n=3)
    return f" Did you mean {', '.join(repr(f'{PREFIX}:{c}') for c in close)}?" if close else ""

