"""Built-in methods (installed as ``cl_bench.methods``).

Importing this package registers every built-in method; this module list is
the one place that names them. Each module holds one method family's whole logic.
"""

from . import agem, bn_adapt, er, ewc, finetune, joint, l2, lwf, source  # noqa: F401  # noqa: F401  (test-time adaptation)
