"""Built-in methods (installed as ``cl_bench.methods``).

Importing this package registers every built-in method; this module list is
the one place that names them. Each module holds one method family's whole logic.
"""

from . import agem, er, ewc, finetune, joint, l2, lwf, ncm, ranpac, slca  # noqa: F401
