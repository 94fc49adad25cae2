"""Frozen-dataclass configs: build from overrides, check keys and types.

As in nanoGPT, a config is a dataclass and every override is checked against
its fields: unknown keys are rejected with the closest matches, values are
checked (and, where lossless, converted) against the field's type. Field names
that would be Python keywords carry a trailing underscore (``lambda_``) and are
spelled without it everywhere users see them (CLI, YAML, run records).
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from cl_bench.core.errors import ConfigError, UserError

# libyaml's parser when PyYAML was built with it: the same documents, about 8x faster than the pure-Python one
# (`cl-bench reproduce` parses every shipped recipe, over a hundred files, on each call).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def public_name(field_name: str) -> str:
    """The user-facing spelling of a field (``lambda_`` -> ``lambda``)."""
    if field_name.endswith("_") and keyword.iskeyword(field_name[:-1]):
        return field_name[:-1]
    return field_name


def field_types(cls: type) -> dict[str, Any]:
    """Map each public field name of dataclass ``cls`` to its resolved type."""
    hints = typing.get_type_hints(cls)
    return {public_name(f.name): hints[f.name] for f in dataclasses.fields(cls)}


def type_name(tp: Any) -> str:
    """Readable name of a type annotation, for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping (e.g. {key: value})"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ``_Mismatch``; conversions are lossless only."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        raise _Mismatch
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = [a for a in get_args(tp) if a is not Ellipsis]
        items = [coerce(v, args[0]) if args else v for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        # Nested parameters (e.g. a wrapper scenario's base_args); values are checked by whoever consumes them.
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Mismatch
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def build_config(cls: type, overrides: Mapping[str, Any], owner: str) -> Any:
    """Instantiate dataclass ``cls`` from ``overrides``, checking names and types.

    Args:
        cls: A (frozen) dataclass type.
        overrides: Public field name -> value (already YAML-parsed).
        owner: Who the config belongs to, e.g. ``"method 'ewc'"``, for messages.

    Raises:
        ConfigError: Unknown key (with close matches) or a value of the wrong type.
    """
    types_ = field_types(cls)
    by_public = {public_name(f.name): f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in overrides.items():
        key = public_name(key)
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(f"{k} ({type_name(t)})" for k, t in types_.items()) or "none"
            raise ConfigError(
                f"{owner} has no parameter {key!r}.{hint} Its parameters are: {known}."
            )
        try:
            kwargs[by_public[key]] = coerce(value, types_[key])
        except _Mismatch:
            raise ConfigError(
                f"parameter {key!r} of {owner} must be {type_name(types_[key])}, "
                f"got {value!r} ({type(value).__name__}). Pass e.g. {_set_hint(owner, key, types_[key])}."
            ) from None
        _check_range(key, kwargs[by_public[key]], _default_of(cls, by_public[key]), owner)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid configuration for {owner}: {err}") from None


#: Integers must fit in a signed 64-bit int: torch and numpy cannot hold more, and fail deep inside with a C++
#: overflow instead of a message.
INT_LIMIT = 2**63
#: Field names that size something (a layer, a batch, a pool): a value < 1 would build an empty network or
#: loop on nothing, so it is refused before any training. Where a field's default is 0, 0 keeps meaning
#: "the default" (e.g. ``replay_batch_size=0`` = the training batch size).
_SIZE_SUFFIXES = ("_size", "_dim")
_SIZE_NAMES = ("num_heads", "depth")
# Memory sizes may be 0: an empty memory is a valid ablation (ER without replay is fine-tuning).
_MAY_BE_ZERO = ("buffer_size", "memory_size")
# The CLI flags that set protocol fields; suggested before the generic --set protocol.KEY=.
_PROTOCOL_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "eval_every": "--eval-every"}


def _set_hint(owner: str, key: str, tp: Any) -> str:
    """The command-line spelling that sets ``key`` of ``owner`` (a method's keys take no prefix)."""
    value = f"<{type_name(tp)}>"
    if owner == "the protocol" or owner.endswith("'s protocol"):
        flag = _PROTOCOL_FLAGS.get(key)
        return (f"{flag} {value} or " if flag else "") + f"--set protocol.{key}={value}"
    if owner.startswith("scenario"):
        return f"--set scenario.{key}={value}"
    return f"--set {key}={value}"


def _default_of(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else None


def _check_range(key: str, value: Any, default: Any, owner: str) -> None:
    """Refuse integers too large for torch, and sizes below 1 (see :data:`_SIZE_SUFFIXES`)."""
    ints = [v for v in (value if isinstance(value, (list, tuple)) else [value])
            if isinstance(v, int) and not isinstance(v, bool)]  # fmt: skip
    if any(abs(v) >= INT_LIMIT for v in ints):
        raise ConfigError(f"parameter {key!r} of {owner} is {value!r}, which does not fit in a 64-bit integer "
                          f"(|value| < 2**63); no setting needs that many — check the value")  # fmt: skip
    is_size = key.endswith(_SIZE_SUFFIXES) or key in _SIZE_NAMES
    if is_size and isinstance(value, int) and not isinstance(value, bool):
        low = 0 if default == 0 or key in _MAY_BE_ZERO else 1
        if value < low:
            raise ConfigError(f"parameter {key!r} of {owner} must be >= {low} (it is a size), got {value}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config instance, with public field names."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[public_name(f.name)] = list(value) if isinstance(value, tuple) else value
    return out


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed content of a YAML file the user named (``what`` says which, for the error).

    Raises:
        UserError: If the file is missing, unreadable or not valid YAML.
    """
    try:
        return yaml.load(Path(path).read_text(), Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {what} {path}: {err}") from None
