"""Bridges to other continual-learning libraries (installed as ``cl_bench.bridges``).

A bridge registers a name prefix with :meth:`cl_bench.core.registry.Registry.add_bridge`, so that
``METHODS.get("avalanche:GEM")`` resolves through it. Importing this package registers every
bridge but imports no other library: that happens only when a bridged name is looked up.
"""

from cl_bench.bridges import avalanche  # noqa: F401
