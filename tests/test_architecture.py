"""The import graph and the size rules that hold the house up (issue 12).

Imports are read with :mod:`ast` from the source files, so nothing is imported and no
optional dependency is needed; lazy imports inside functions count as much as top-level ones.

Rules checked:
    * ``metrics/`` imports nothing of the project (besides itself) and never torch;
    * ``methods/`` and ``scenarios/`` import only the core, never each other and never a
      particular module of their own folder (each plug-in stands alone);
    * the core (``cl_bench/*``) never imports a particular method or scenario module;
    * the subpackages of ``cl_bench`` are layered: every arrow points to a strictly lower
      layer, so there is no cycle and no arrow running back up;
    * ``cl_bench/`` holds at most 8 modules directly under it;
    * no file in ``cl_bench/`` (and the plug-in folders installed into it) is over 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Plug-in folders at the top of the repository and the package name they are installed as.
PLUGINS = {"methods": "cl_bench.methods", "scenarios": "cl_bench.scenarios", "metrics": "cl_bench.metrics"}

#: Layers of the core, lowest first. An arrow may only point to a strictly lower layer.
#: ``metrics`` is the ground floor (pure Python, no torch); ``cli`` is the roof.
LAYERS: dict[str, int] = {
    "cl_bench.metrics": 0,
    "cl_bench.core": 1,
    "cl_bench.nets": 2,
    "cl_bench.components": 2,
    "cl_bench.report": 2,
    "cl_bench.data": 3,
    "cl_bench.families": 3,
    "cl_bench.engine": 4,
    "cl_bench.bridges": 4,
    "cl_bench.testing": 5,
    "cl_bench.ops": 5,
    "cl_bench.cli": 6,
}

MAX_LINES = 450
MAX_TOP_MODULES = 8

#: Files still over MAX_LINES while another branch splits them. The integrator empties this list;
#: a file listed here that is no longer oversize fails the test, so the list cannot go stale.
KNOWN_OVERSIZE: list[str] = []

#: Plug-in modules that still import a sibling plug-in (importer, imported). Same rule as above:
#: an entry that no longer occurs fails, so fixing one forces removing it here.
KNOWN_PLUGIN_CROSS_IMPORTS: list[tuple[str, str]] = [
    # BNAdapt subclasses the Source method instead of a family base class.
    ("cl_bench.methods.bn_adapt", "cl_bench.methods.source"),
]


def _source_files() -> dict[str, Path]:
    """Map every module name of the installed package to its source file."""
    files: dict[str, Path] = {}
    roots = {"cl_bench": "cl_bench", **{folder: pkg for folder, pkg in PLUGINS.items()}}
    for folder, pkg in roots.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("").parts
            parts = [pkg, *rel]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


FILES = _source_files()


def _is_package(module: str) -> bool:
    return FILES[module].name == "__init__.py"


def _imports(module: str) -> set[str]:
    """Absolute names imported by ``module`` (for ``from a import b``, both ``a`` and ``a.b``)."""
    tree = ast.parse(FILES[module].read_text(), filename=str(FILES[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if _is_package(module) else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


IMPORTS = {module: _imports(module) for module in FILES}


def _project(names: set[str]) -> set[str]:
    """Only the names that are modules of the project (drops ``from x import some_function``)."""
    return {name for name in names if name in FILES}


def _group(module: str) -> str:
    """``cl_bench.data.streams`` -> ``cl_bench.data``; ``cl_bench.cli`` -> ``cl_bench.cli``."""
    return ".".join(module.split(".")[:2])


def _plugin_modules(pkg: str) -> list[str]:
    return [m for m in FILES if m.startswith(pkg + ".")]


def test_metrics_import_nothing_of_the_project_and_no_torch():
    bad = []
    for module in _plugin_modules("cl_bench.metrics") + ["cl_bench.metrics"]:
        for name in IMPORTS[module]:
            top = name.split(".")[0]
            if top == "torch" or (top == "cl_bench" and not name.startswith("cl_bench.metrics")):
                bad.append(f"{module} imports {name}")
            if top in PLUGINS:  # the repository folder name instead of the installed one
                bad.append(f"{module} imports {name}")
    assert not bad, "metrics/ must stay pure Python and self-contained:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("pkg", ["cl_bench.methods", "cl_bench.scenarios"])
def test_plugins_import_only_the_core(pkg):
    other = {"cl_bench.methods", "cl_bench.scenarios"} - {pkg}
    bad, seen = [], set()
    for module in _plugin_modules(pkg):
        for name in _project(IMPORTS[module]):
            if any(name == o or name.startswith(o + ".") for o in other):
                bad.append(f"{module} imports {name} (another plug-in axis)")
            elif name.startswith(pkg + ".") and name != module:
                if (module, name) in KNOWN_PLUGIN_CROSS_IMPORTS:
                    seen.add((module, name))
                else:
                    bad.append(f"{module} imports {name} (a sibling plug-in)")
        for name in IMPORTS[module]:
            if name.split(".")[0] in PLUGINS:
                bad.append(f"{module} imports {name} (use the installed name cl_bench.*)")
    assert not bad, "\n".join(sorted(set(bad)))
    stale = {k for k in KNOWN_PLUGIN_CROSS_IMPORTS if k[0].startswith(pkg + ".")} - seen
    assert not stale, f"remove from KNOWN_PLUGIN_CROSS_IMPORTS, no longer imported: {sorted(stale)}"


def test_core_never_imports_a_particular_method_or_scenario():
    bad = []
    for module in FILES:
        if module.startswith(tuple(PLUGINS.values())):
            continue
        for name in _project(IMPORTS[module]):
            # Importing the package (which registers every plug-in) is fine; naming one is not.
            if name.startswith(("cl_bench.methods.", "cl_bench.scenarios.")):
                bad.append(f"{module} imports {name}")
    assert not bad, "the core must reach plug-ins through the registries:\n" + "\n".join(bad)


def _subpackage_arrows() -> dict[tuple[str, str], list[str]]:
    """Arrows between groups of the core, each with the module imports that draw it."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for module in FILES:
        if module == "cl_bench" or module.startswith(("cl_bench.methods", "cl_bench.scenarios")):
            continue
        for name in _project(IMPORTS[module]):
            if name == "cl_bench" or name.startswith(("cl_bench.methods", "cl_bench.scenarios")):
                continue  # the facade and the plug-in registries are checked elsewhere
            src, dst = _group(module), _group(name)
            if src != dst:
                arrows.setdefault((src, dst), []).append(f"{module} -> {name}")
    return arrows


def test_every_core_group_has_a_layer():
    groups = {_group(m) for m in FILES if m != "cl_bench"} - {"cl_bench.methods", "cl_bench.scenarios"}
    missing = sorted(groups - set(LAYERS))
    assert not missing, f"give the new part a layer in LAYERS (and docs/architecture.md): {missing}"


def test_no_arrow_runs_back_up():
    back = [
        f"{src} (layer {LAYERS[src]}) -> {dst} (layer {LAYERS[dst]}): {', '.join(sorted(why))}"
        for (src, dst), why in sorted(_subpackage_arrows().items())
        if LAYERS.get(src, 99) <= LAYERS.get(dst, 99)
    ]
    assert not back, "imports must point to a lower layer:\n" + "\n".join(back)


def test_no_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for src, dst in _subpackage_arrows():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _from_facade(module: str) -> set[str]:
    """Names ``module`` takes from the ``cl_bench`` facade itself (``from cl_bench import x``)."""
    return {n for n in IMPORTS[module] if n.count(".") == 1 and n.startswith("cl_bench.") and n not in FILES}


def test_inner_modules_use_the_facade_only_for_the_version():
    # The facade lazily re-exports the public API; importing it from inside would hide the real arrow.
    bad = [
        f"{module} takes {sorted(_from_facade(module))} from the facade"
        for module in FILES
        if module != "cl_bench" and _from_facade(module) - {"cl_bench.__version__"}
    ]
    assert not bad, "inside the package, import from the subpackage, not the cl_bench facade:\n" + "\n".join(bad)


def test_few_modules_directly_under_cl_bench():
    top = sorted(p.name for p in (REPO / "cl_bench").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules directly under cl_bench/: {top}"


def test_no_file_over_the_line_limit():
    sizes = {
        str(path.relative_to(REPO)): len(path.read_text().splitlines()) for path in FILES.values()
    }
    over = sorted(f for f, n in sizes.items() if n > MAX_LINES)
    unexpected = [f"{f}: {sizes[f]} lines" for f in over if f not in KNOWN_OVERSIZE]
    assert not unexpected, f"split these files by job (limit {MAX_LINES} lines):\n" + "\n".join(unexpected)
    stale = sorted(set(KNOWN_OVERSIZE) - set(over))
    assert not stale, f"remove from KNOWN_OVERSIZE, now within {MAX_LINES} lines: {stale}"
