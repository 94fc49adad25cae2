"""Registries and configs: names, close-match hints, checked overrides, entry-point plug-ins."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from cl_bench.core.config import build_config, config_to_dict, public_name
from cl_bench.core.errors import ConfigError, UserError
from cl_bench.core.method import Method
from cl_bench.core.registry import METHODS, METRICS, SCENARIOS, Registry

REGISTRIES = {"method": METHODS, "scenario": SCENARIOS, "metric": METRICS}


# -- names -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("registry", "typo", "meant"),
    [(METHODS, "ewcc", "ewc"), (METHODS, "agme", "agem"), (SCENARIOS, "split_mnsit", "split_mnist"),
     (SCENARIOS, "split-digits", "split_digits"), (METRICS, "final_accc", "final_acc")],
)  # fmt: skip
def test_unknown_name_suggests_close_matches(registry: Registry, typo: str, meant: str) -> None:
    with pytest.raises(UserError) as err:
        registry.get(typo)
    msg = str(err.value)
    assert f"unknown {registry.kind} {typo!r}" in msg and "Did you mean" in msg
    assert repr(meant) in msg.split("Did you mean", 1)[1].split("?")[0]
    assert f"cl-bench list {registry.kind}s" in msg
    assert typo not in registry


def test_unknown_name_without_close_match_has_no_hint() -> None:
    with pytest.raises(UserError) as err:
        METHODS.create("zzzzzz")
    assert "Did you mean" not in str(err.value)


def test_duplicate_registration_raises() -> None:
    reg: Registry[object] = Registry("method", f"cl_bench_test_{uuid.uuid4().hex}", ())

    @reg.register("mine", reference="Someone (2024)")
    class Mine(Method):
        """A method."""

    with pytest.raises(ValueError, match="registered twice"):
        reg.add("mine", Mine, reference="Someone (2024)")
    with pytest.raises(ValueError, match="registered twice"):

        @METHODS.register("er", reference="Imposter (2024)")
        class Imposter(Method):
            """Not ER."""

    assert METHODS.get("er").obj.__name__ == "ER"  # the built-in is untouched


def test_duplicate_of_a_builtin_is_caught_before_the_first_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registering a built-in's name before anything looked a name up must fail then, not break loading later."""
    uid = uuid.uuid4().hex[:8]
    (tmp_path / f"reg_{uid}.py").write_text(
        "from cl_bench.core.registry import Registry\n"
        f"REG = Registry('method', 'cl_bench_test_{uid}', ('builtins_{uid}',))\n"
    )
    (tmp_path / f"builtins_{uid}.py").write_text(
        f"from reg_{uid} import REG\n\n@REG.register('b', reference='Builtin (2020)')\nclass B:\n    '''Built-in.'''\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        reg = __import__(f"reg_{uid}").REG
        with pytest.raises(ValueError, match="registered twice"):
            reg.add("b", object, reference="Shadow (2024)")
        assert reg.get("b").reference == "Builtin (2020)" and reg.names() == ["b"]
    finally:
        sys.modules.pop(f"reg_{uid}", None)
        sys.modules.pop(f"builtins_{uid}", None)


def test_registration_needs_a_reference() -> None:
    reg: Registry[object] = Registry("method", f"cl_bench_test_{uuid.uuid4().hex}", ())
    with pytest.raises(ValueError, match="cite"):
        reg.add("anon", Method, reference="")


def test_scenario_builders_need_type_hints() -> None:
    reg: Registry[object] = Registry("scenario", f"cl_bench_test_{uuid.uuid4().hex}", ())

    def untyped(n_experiences=5) -> None:  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(TypeError, match="n_experiences"):
        reg.add("untyped", untyped, reference="x")


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_every_entry_has_reference_and_description(kind: str) -> None:
    registry = REGISTRIES[kind]
    names = registry.names()
    assert names, f"no {kind}s registered"
    for entry in registry.entries():
        assert entry.reference.strip(), f"{kind} {entry.name!r} cites no paper"
        assert entry.description.strip(), f"{kind} {entry.name!r} has no description"
        if kind != "metric":
            assert dataclasses.is_dataclass(entry.config_cls), f"{kind} {entry.name!r} has no Config dataclass"
            assert registry.parameters(entry.name) is not None


def test_builtins_are_registered() -> None:
    assert {"finetune", "joint", "er", "agem", "ewc", "l2", "lwf"} <= set(METHODS.names())
    assert {"split_digits", "split_mnist", "permuted_mnist", "rotated_mnist"} <= set(SCENARIOS.names())
    assert {"final_acc", "forgetting", "bwt", "fwt", "min_acc", "wc_acc"} <= set(METRICS.names())
    assert METHODS.get("er").obj.name == "er"


# -- checked overrides -----------------------------------------------------------------------------------------------
def test_create_rejects_unknown_keys_with_close_matches() -> None:
    with pytest.raises(ConfigError) as err:
        METHODS.create("er", bufer_size=10)
    msg = str(err.value)
    assert "'bufer_size'" in msg and "Did you mean 'buffer_size'" in msg and "buffer_size (int)" in msg
    with pytest.raises(ConfigError, match="Did you mean 'lambda'"):
        METHODS.create("ewc", lamda=1.0)
    with pytest.raises(ConfigError, match="Did you mean 'n_experiences'"):
        SCENARIOS.create("split_digits", n_experience=3)


@pytest.mark.parametrize(
    ("name", "key", "value", "type_text"),
    [("er", "buffer_size", "lots", "int"), ("er", "buffer_size", 2.5, "int"), ("er", "buffer_size", True, "int"),
     ("ewc", "lambda", "strong", "float"), ("ewc", "lr", [0.1], "float"), ("ewc", "lr", False, "float"),
     ("ewc", "mode", "offline", "one of 'separate', 'online'"), ("er", "model", None, "str")],
)  # fmt: skip
def test_create_rejects_mistyped_values_naming_field_and_type(
    name: str, key: str, value: object, type_text: str
) -> None:
    with pytest.raises(ConfigError) as err:
        METHODS.create(name, **{key: value})
    msg = str(err.value)
    assert f"parameter {key!r} of method {name!r} must be {type_text}" in msg
    assert repr(value) in msg


def test_lambda_alias() -> None:
    by_public = METHODS.create("ewc", **{"lambda": 5000})
    by_field = METHODS.create("ewc", lambda_=5000)
    assert by_public.config.lambda_ == by_field.config.lambda_ == 5000.0
    assert isinstance(by_public.config.lambda_, float)
    assert config_to_dict(by_public.config)["lambda"] == 5000.0 and "lambda_" not in config_to_dict(by_public.config)
    assert METHODS.parameters("ewc")["lambda"] == "float = 100.0" and "lambda_" not in METHODS.parameters("ewc")
    assert public_name("lambda_") == "lambda" and public_name("lr") == "lr" and public_name("size_") == "size_"


def test_yaml_style_strings() -> None:
    cfg = METHODS.create("ewc", lr="1e-3", lambda_="2.5e3", fisher_samples="64", mode="online").config
    assert (cfg.lr, cfg.lambda_, cfg.fisher_samples, cfg.mode) == (0.001, 2500.0, 64, "online")
    assert METHODS.create("er", buffer_size=50.0).config.buffer_size == 50  # lossless float -> int
    assert METHODS.create("er", lr=1).config.lr == 1.0
    # Scenario parameters go through the same checks (the builder's signature is the config).
    assert SCENARIOS.config("split_mnist", {"root": None}).root is None
    assert SCENARIOS.config("split_digits", {"class_order": "3,1,2"}).class_order == "3,1,2"  # checked by the builder
    assert SCENARIOS.config("split_digits", {"class_order": [3, 1, 2]}).class_order == (3, 1, 2)


@pytest.mark.parametrize("value", [1, 0, "yes", "no", "true", "on", 1.0])
def test_bool_fields_reject_yes_ish_values(value: object) -> None:
    with pytest.raises(ConfigError, match="'download' of scenario 'split_mnist' must be bool"):
        SCENARIOS.config("split_mnist", {"download": value})


def test_bool_fields_accept_bools() -> None:
    assert SCENARIOS.config("split_mnist", {"download": False}).download is False


def test_invalid_values_caught_by_the_config_itself() -> None:
    with pytest.raises(ConfigError, match="invalid configuration for method 'er'"):
        METHODS.create("er", lr=-0.1)
    with pytest.raises(ConfigError, match="'sample_size' of method 'agem' must be >= 1"):
        METHODS.create("agem", sample_size=0)


def test_configs_are_frozen_and_round_trip_through_json() -> None:
    for name in METHODS.names():
        config = METHODS.create(name).config
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.lr = 1.0  # type: ignore[misc]
        as_json = json.loads(json.dumps(config_to_dict(config)))
        assert METHODS.create(name, **as_json).config == config


@dataclass(frozen=True)
class _Demo:
    flag: bool = False
    rate: float = 0.1
    n: int | None = None
    sizes: tuple[int, ...] = (1, 2)
    kind: Literal["a", "b"] = "a"
    class_: str = "x"


def test_build_config_directly() -> None:
    cfg = build_config(_Demo, {"flag": True, "rate": "1e-2", "n": "none", "sizes": "3, 4", "kind": "b",
                               "class": "y"}, "demo")  # fmt: skip
    assert cfg == _Demo(True, 0.01, None, (3, 4), "b", "y")
    assert build_config(_Demo, {"n": 3, "sizes": [5]}, "demo") == _Demo(n=3, sizes=(5,))
    with pytest.raises(ConfigError, match="'n' of demo must be int or null"):
        build_config(_Demo, {"n": "three"}, "demo")
    with pytest.raises(ConfigError, match="'sizes' of demo must be list of int"):
        build_config(_Demo, {"sizes": ["a"]}, "demo")
    with pytest.raises(ConfigError, match="'flag' of demo must be bool"):
        build_config(_Demo, {"flag": "yes"}, "demo")
    with pytest.raises(ConfigError, match=r"Its parameters are: flag \(bool\), rate \(float\)"):
        build_config(_Demo, {"nope": 1}, "demo")


def test_metrics_take_no_parameters() -> None:
    assert callable(METRICS.create("final_acc"))
    with pytest.raises(UserError, match="takes no parameters"):
        METRICS.create("final_acc", window=3)


# -- entry-point plug-ins (a real installed distribution on sys.path) ------------------------------------------------
PLUGIN_MODULE = '''
from dataclasses import dataclass
from typing import ClassVar

from cl_bench.core.method import Method
from cl_bench.core.registry import METHODS


@dataclass(frozen=True)
class DemoConfig:
    alpha: float = 0.5


class Demo(Method):
    """Demo plug-in method: does nothing."""

    Config: ClassVar[type] = DemoConfig
    reference = "Doe & Roe, 'A demo plug-in' (2024)"


class NotER(Method):
    """A plug-in that tries to take a built-in's name."""


def tiny_stream(n_experiences: int = 2, seed: int = 0) -> list:
    """Tiny plug-in stream."""
    return [n_experiences, seed]


@METHODS.register("{decorated}", reference="Poe (2024)")
class Decorated(Method):
    """Registered by a decorator when its module is imported."""
'''


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, Path]]:
    """Install a plug-in distribution into ``tmp_path`` (module + .dist-info with entry_points.txt).

    Yields the module name, the entry-point group prefix and the dist-info folder.
    """
    uid = uuid.uuid4().hex[:8]
    module = f"cl_bench_demo_plugin_{uid}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE.replace("{decorated}", f"decorated_{uid}"))
    dist = tmp_path / f"cl_bench_demo_plugin_{uid}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: cl-bench-demo-plugin-{uid}\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module, f"cl_bench_test_{uid}", dist
    sys.modules.pop(module, None)
    METHODS._entries.pop(f"decorated_{uid}", None)


def _entry_points(dist: Path, groups: dict[str, dict[str, str]]) -> None:
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    (dist / "entry_points.txt").write_text(textwrap.dedent(text))


def test_plugin_class_and_function_from_entry_points(plugin_dist: tuple[str, str, Path]) -> None:
    module, group, dist = plugin_dist
    _entry_points(dist, {f"{group}.methods": {"demo": f"{module}:Demo"},
                         f"{group}.scenarios": {"tiny": f"{module}:tiny_stream"}})  # fmt: skip
    methods: Registry[object] = Registry("method", f"{group}.methods", ())
    assert methods.names() == ["demo"]
    entry = methods.get("demo")
    assert entry.reference == "Doe & Roe, 'A demo plug-in' (2024)"
    assert entry.description == "Demo plug-in method: does nothing."
    made = methods.create("demo", alpha="2")
    assert type(made).__name__ == "Demo" and made.config.alpha == 2.0 and type(made).name == "demo"
    with pytest.raises(ConfigError, match="Did you mean 'alpha'"):
        methods.create("demo", alpah=1.0)
    with pytest.raises(UserError, match="Did you mean 'demo'"):
        methods.get("demoo")

    scenarios: Registry[object] = Registry("scenario", f"{group}.scenarios", ())
    entry = scenarios.get("tiny")
    assert entry.reference == f"plug-in {module}:tiny_stream"  # no reference attribute: say where it came from
    assert scenarios.create("tiny", n_experiences=3) == [3, 0]
    with pytest.raises(ConfigError, match="'n_experiences' of scenario 'tiny' must be int"):
        scenarios.create("tiny", n_experiences="many")


def test_plugin_in_the_global_registry(plugin_dist: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The real METHODS registry: built-ins plus plug-ins, a module entry point registering by decorator."""
    module, group, dist = plugin_dist
    uid = module.rsplit("_", 1)[1]
    _entry_points(dist, {f"{group}.methods": {f"decorated_{uid}": module, "demo_plugin": f"{module}:Demo"}})
    monkeypatch.setattr(METHODS, "group", f"{group}.methods")
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # restored after the test
    monkeypatch.setattr(METHODS, "_loaded", False)
    names = METHODS.names()
    assert {"er", "ewc", f"decorated_{uid}", "demo_plugin"} <= set(names)
    assert METHODS.get(f"decorated_{uid}").reference == "Poe (2024)"


def test_plugin_taking_a_builtin_name_is_rejected(plugin_dist: tuple[str, str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    module, group, dist = plugin_dist
    _entry_points(dist, {f"{group}.methods": {"er": f"{module}:NotER"}})
    monkeypatch.setattr(METHODS, "group", f"{group}.methods")
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METHODS, "_loaded", False)
    with pytest.raises(UserError, match=r"plug-in 'er' .*already registered"):
        METHODS.names()


def test_broken_plugin_is_a_user_error(plugin_dist: tuple[str, str, Path]) -> None:
    module, group, dist = plugin_dist
    _entry_points(dist, {f"{group}.methods": {"broken": f"{module}_missing:Thing"}})
    reg: Registry[object] = Registry("method", f"{group}.methods", ())
    with pytest.raises(UserError) as err:
        reg.names()
    assert "plug-in 'broken'" in str(err.value) and f"{module}_missing:Thing" in str(err.value)
