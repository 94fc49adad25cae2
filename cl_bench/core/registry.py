"""One generic registry class and its three instances.

Modelled on timm's ``register_model``/``create_model``: built-ins and
third-party plug-ins register the same way. Built-ins live in the packages
``cl_bench.methods`` / ``cl_bench.scenarios`` / ``cl_bench.metrics`` (each
package's ``__init__`` is the one explicit list of its modules); plug-ins come
from the entry-point groups of the same names and show up in ``cl-bench list``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from cl_bench.core.config import build_config, config_to_dict, field_types, public_name, type_name
from cl_bench.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with what ``cl-bench list`` shows about it."""

    name: str
    obj: T
    config_cls: type | None
    description: str
    reference: str


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0].strip()


def signature_config(fn: Callable[..., Any], name: str) -> type:
    """A frozen dataclass mirroring the typed keyword parameters of ``fn``.

    Scenario builders are plain functions; this gives them the same checked
    ``Config`` that method classes declare explicitly.
    """
    hints = typing.get_type_hints(fn)
    fields = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints:
            raise TypeError(f"parameter {p.name!r} of {name!r} needs a type hint")
        default = dataclasses.field() if p.default is p.empty else dataclasses.field(default=p.default)
        fields.append((p.name, hints[p.name], default))
    return dataclasses.make_dataclass(f"{name}_config", fields, frozen=True)


class Registry(Generic[T]):
    """Name -> object, with lazy loading of built-ins and entry-point plug-ins.

    Args:
        kind: "method", "scenario" or "metric" (used in messages).
        group: Entry-point group for third-party plug-ins.
        builtin: Modules whose import registers the built-ins.
        sync: Called after loading to pull entries from another table (used by
            ``METRICS``, a view of ``cl_bench.metrics.METRIC_SPECS``).
    """

    def __init__(
        self,
        kind: str,
        group: str,
        builtin: tuple[str, ...],
        sync: Callable[[Registry[T]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self._builtin = builtin
        self._sync = sync
        self._entries: dict[str, Entry[T]] = {}
        self._bridges: dict[str, Callable[[str], Entry[T]]] = {}
        self._bridged: dict[str, Entry[T]] = {}  # resolved bridge names (not listed by names())
        self._loaded = False
        self._loading = False

    def register(
        self, name: str, *, reference: str, description: str | None = None
    ) -> Callable[[T], T]:
        """Decorator registering a method class or scenario builder under ``name``.

        Raises:
            ValueError: If ``name`` is taken or ``reference`` is empty.
        """

        def wrap(obj: T) -> T:
            self.add(name, obj, reference=reference, description=description)
            return obj

        return wrap

    def add(self, name: str, obj: T, *, reference: str, description: str | None = None) -> None:
        """Register ``obj`` directly (what :meth:`register` does)."""
        self._load()  # so that a name is checked against the built-ins even before the first lookup
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not reference:
            raise ValueError(f"{self.kind} {name!r} must cite its paper (reference=...)")
        if inspect.isclass(obj):
            config_cls = getattr(obj, "Config", None)
            obj.name = name  # type: ignore[attr-defined]
        elif callable(obj) and self.kind != "metric":
            config_cls = signature_config(obj, name)
        else:
            config_cls = None
        desc = description or _first_line(getattr(obj, "__doc__", None))
        self._entries[name] = Entry(name, obj, config_cls, desc, reference)

    def add_bridge(self, prefix: str, resolver: Callable[[str], Entry[T]]) -> None:
        """Resolve every name ``"<prefix>:<rest>"`` through ``resolver(rest)`` (e.g. ``avalanche:GEM``).

        A bridge exposes another library's objects without listing them up front: the
        resolver runs on first lookup (so the other library is imported only when one of
        its names is used) and raises a :class:`UserError` naming close matches for a
        name it does not know. Resolved entries are cached but not listed by :meth:`names`.

        Raises:
            ValueError: If ``prefix`` is taken or contains ``':'``.
        """
        if prefix in self._bridges or ":" in prefix or not prefix:
            raise ValueError(f"{self.kind} bridge prefix {prefix!r} is empty, contains ':' or is registered twice")
        self._bridges[prefix] = resolver

    def bridges(self) -> list[str]:
        """Sorted prefixes of the registered bridges."""
        self._load()
        return sorted(self._bridges)

    def _resolve_bridged(self, name: str) -> Entry[T] | None:
        if name in self._bridged:
            return self._bridged[name]
        prefix, sep, rest = name.partition(":")
        if not sep or prefix not in self._bridges:
            return None
        if not rest:
            raise UserError(f"{self.kind} {name!r} names nothing after '{prefix}:'; write {prefix}:NAME")
        entry = self._bridges[prefix](rest)
        self._bridged[name] = dataclasses.replace(entry, name=name)
        return self._bridged[name]

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for module in self._builtin:
                importlib.import_module(module)
            for ep in entry_points(group=self.group):
                try:
                    loaded = ep.load()
                except Exception as err:  # a broken plug-in must not hide the built-ins
                    raise UserError(
                        f"the {self.kind} plug-in {ep.name!r} ({ep.value}) failed to import: {err}. "
                        f"Fix or uninstall the package that provides it."
                    ) from err
                if isinstance(loaded, types.ModuleType):
                    continue  # importing the module registered what it provides
                existing = self._entries.get(ep.name)
                if existing is None:
                    ref = getattr(loaded, "reference", "") or f"plug-in {ep.value}"
                    self.add(ep.name, loaded, reference=ref)
                elif existing.obj is not loaded:  # the same object may also be registered by a decorator
                    raise UserError(
                        f"the {self.kind} plug-in {ep.name!r} ({ep.value}) uses a name that is already "
                        f"registered; names must be unique. Rename the plug-in's entry point or uninstall it."
                    )
            if self._sync is not None:
                self._sync(self)
            self._loaded = True
        finally:
            self._loading = False

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        """Registered entries, sorted by name."""
        self._load()
        for name in sorted(self._entries):
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._bridged

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``.

        Raises:
            UserError: If no such name is registered; the message lists close matches.
        """
        self._load()
        if name not in self._entries:
            bridged = self._resolve_bridged(name)
            if bridged is not None:
                return bridged
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            other = ", ".join(f"{p}:NAME" for p in sorted(self._bridges))
            raise UserError(
                f"unknown {self.kind} {name!r}.{hint} Run `cl-bench list {self.kind}s` to see all "
                f"{len(self._entries)} registered {self.kind}s"
                + (f"; other libraries' {self.kind}s are named {other}." if other else ".")
            )
        return self._entries[name]

    def config(self, name: str, overrides: Mapping[str, Any] | None = None) -> Any:
        """Build ``name``'s config dataclass from ``overrides``, checking keys and types."""
        entry = self.get(name)
        if entry.config_cls is None:
            if overrides:
                raise UserError(f"{self.kind} {name!r} takes no parameters")
            return None
        return build_config(entry.config_cls, overrides or {}, f"{self.kind} {name!r}")

    def parameters(self, name: str) -> dict[str, str]:
        """Public parameter name -> readable type and default (``"float = 100.0"``), for help texts.

        ``cl-bench list ... -v`` prints these; a parameter without a default shows its type alone.
        """
        entry = self.get(name)
        if entry.config_cls is None:
            return {}
        types_ = field_types(entry.config_cls)
        out = {}
        for f in dataclasses.fields(entry.config_cls):
            key = public_name(f.name)
            if f.default is not dataclasses.MISSING:
                out[key] = f"{type_name(types_[key])} = {f.default!r}"
            elif f.default_factory is not dataclasses.MISSING:
                out[key] = f"{type_name(types_[key])} = {f.default_factory()!r}"
            else:
                out[key] = type_name(types_[key])
        return out

    def defaults(self, name: str) -> dict[str, Any] | None:
        """``name``'s default configuration as a plain dict, or None when ``name`` is not registered here.

        Boards and ``regress`` use it to tell a record's non-default parameters apart; a record of a method
        that is no longer (or not yet) installed is still readable, so an unknown name is not an error.
        """
        try:
            config = self.config(name)
        except UserError:
            return None
        return config_to_dict(config) if config is not None else {}

    def create(self, name: str, **overrides: Any) -> Any:
        """Validate ``overrides`` and build the object.

        Method classes are instantiated with their config; scenario builders are
        called with the config's fields; metrics return their function.
        """
        entry = self.get(name)
        config = self.config(name, overrides)
        if inspect.isclass(entry.obj):
            return entry.obj(config)
        if config is None:
            return entry.obj
        return entry.obj(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})


def _sync_metrics(registry: Registry[Any]) -> None:
    from cl_bench.metrics import METRIC_SPECS

    for name, spec in METRIC_SPECS.items():
        if name not in registry._entries:
            registry._entries[name] = Entry(name, spec.fn, None, spec.description, spec.reference)


# cl_bench.bridges registers resolvers for names of other libraries (avalanche:GEM); it imports no
# other library itself, so loading it costs nothing until such a name is used.
METHODS: Registry[Any] = Registry("method", "cl_bench.methods", ("cl_bench.methods", "cl_bench.bridges"))
SCENARIOS: Registry[Any] = Registry("scenario", "cl_bench.scenarios", ("cl_bench.scenarios", "cl_bench.bridges"))
METRICS: Registry[Any] = Registry("metric", "cl_bench.metrics", ("cl_bench.metrics",), sync=_sync_metrics)
