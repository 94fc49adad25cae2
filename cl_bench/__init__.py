"""cl_bench: a benchmark and evaluation harness for continual learning and test-time adaptation.

Scenario builders produce streams of experiences; pluggable methods learn from
them; an evaluator measures every method the same way, per iteration if asked,
and writes one self-describing run record per run.

The stable public names (they keep working whatever moves inside the package)::

    from cl_bench import run, resume, RunSpec, Protocol, METHODS, SCENARIOS, METRICS, Method, Caps, create_model

They are resolved lazily, so ``import cl_bench.metrics`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "run": "cl_bench.engine.runner",
    "resume": "cl_bench.engine.runner",
    "RunSpec": "cl_bench.engine.spec",
    "Protocol": "cl_bench.engine.spec",
    "METHODS": "cl_bench.core.registry",
    "SCENARIOS": "cl_bench.core.registry",
    "METRICS": "cl_bench.core.registry",
    "Method": "cl_bench.core.method",
    "Caps": "cl_bench.core.method",
    "create_model": "cl_bench.nets.registry",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'cl_bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["__version__", *_PUBLIC]
