"""Built-in scenario builders (installed as ``cl_bench.scenarios``).

Importing this package registers every built-in scenario; this module list is
the one place that names them.
"""

from cl_bench.scenarios import (  # noqa: F401
    cifar,
    cifar_c,
    corrupted_streams,
    digits,
    domainnet126,
    hf_split,
    imagenet_c,
    imagenet_r,
    imagenet_shift,
    mnist,
    own_data,
    pilot,
    task_free,
    tinyimagenet,
    toy,
)
