"""Built-in methods (installed as ``cl_bench.methods``).

Importing this package registers every built-in method; this module list is
the one place that names them. Each module holds one method family's whole logic.
"""

from . import agem, bn_adapt, cotta, eata, er, ewc, finetune, joint, l2, lwf, psmt, rdumb, rmt, sar, source, tent  # noqa: F401
