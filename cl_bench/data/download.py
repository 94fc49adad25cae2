"""When a dataset loader may download: only when asked, or when no file of the dataset exists at all.

A loader never writes into a user's data folder unless it downloads into it, and the same command must not
use different data on different machines: with part of a dataset present (e.g. only MNIST's test files), an
automatic download would, where the network allows, silently switch the run to other data (issue 13). So
``download=None`` (every loader's default) downloads only when *no* file of the dataset is found, into the
default data folder or an existing folder the user named (a folder that does not exist is a typo to report,
not one to create); ``True`` always tries where files are missing; ``False`` never does.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """``$CL_BENCH_DATA``, or ``~/.cache/cl_bench``: where datasets go when no root is given."""
    return Path(os.environ.get("CL_BENCH_DATA", Path.home() / ".cache" / "cl_bench"))


def wants_download(download: bool | None, any_found: bool, root: str | None, base: Path) -> bool:
    """Whether a loader should try torchvision's download (see the module docstring).

    Args:
        download: The scenario's ``download`` parameter (None = automatic).
        any_found: Whether any file of the dataset was found.
        root: The root the user gave (None = the default data folder).
        base: The resolved root.
    """
    if download is not None:
        return download
    return not any_found and (root is None or base.is_dir())


__all__ = ["data_home", "wants_download"]
