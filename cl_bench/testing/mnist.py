"""Where the real MNIST test set is, for the test suite and the benchmark scripts.

The 10,000-image MNIST test set (IDX files, gzip or not) is the one real dataset the tests and the CPU
benchmarks use. They look for it in ``$CL_BENCH_MNIST``, else in ``shared/data/mnist`` beside the checkout (the
development layout); README "Data" says how to get the files.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable naming the folder that holds the MNIST IDX files.
MNIST_ENV = "CL_BENCH_MNIST"
#: The two files of the 10,000-image MNIST test set (gzip or not); the loader splits them 8,000 / 2,000.
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CHECKOUT = Path(__file__).resolve().parents[2]


def default_mnist_folder() -> Path:
    """``$CL_BENCH_MNIST`` if set, else ``shared/data/mnist`` beside the checkout (it may not exist)."""
    given = os.environ.get(MNIST_ENV)
    return Path(given).expanduser() if given else _CHECKOUT.parent / "shared" / "data" / "mnist"


def holds_mnist_test_set(folder: Path) -> bool:
    """Whether ``folder`` has both MNIST test-set files, gzipped or not."""
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in MNIST_TEST_FILES)


def find_mnist() -> Path | None:
    """The resolved :func:`default_mnist_folder` if it holds the MNIST test set, else None."""
    folder = default_mnist_folder()
    return folder.resolve() if holds_mnist_test_set(folder) else None


__all__ = ["MNIST_ENV", "MNIST_TEST_FILES", "default_mnist_folder", "find_mnist", "holds_mnist_test_set"]
