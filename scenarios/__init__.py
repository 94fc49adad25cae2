"""Built-in scenario builders (installed as ``cl_bench.scenarios``).

Importing this package registers every built-in scenario; this module list is
the one place that names them.
"""

from . import digits, mnist, toy  # noqa: F401
