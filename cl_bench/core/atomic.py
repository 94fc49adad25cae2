"""Atomic file writes that respect the umask: the one way cl_bench replaces a file.

Every file a run or a report writes (``run.json``, checkpoints, leaderboards, plots, caches) is written
to a temporary file beside its target and renamed over it, so a reader (or a killed writer) sees the
old file or the new one, never a mix. ``tempfile.mkstemp`` creates the temporary file ``0600`` for
safety; renamed as is, every record and leaderboard would be private to its writer (issue 19). The
file is therefore given the mode an ordinary ``open(path, "w")`` would have, ``0o666 & ~umask``,
before the rename.

Temporary names are ``.<name>.<random>.tmp``: ``resume`` sweeps ``.*.tmp`` out of a run directory,
the leftovers of a writer killed mid-write.

References:
    POSIX ``rename(2)``: replacing a file within one file system is atomic.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's current umask (read without changing it where the OS allows)."""
    try:  # Linux: reading /proc leaves the umask alone (os.umask would set it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path``: write it inside the block; on success it replaces ``path``.

    The parent folder is created. The finished file gets mode ``0o666 & ~umask``, as a plain
    ``open(path, "w")`` would give it. On an exception the temporary file is removed and ``path``
    is left as it was.

    Example:
        >>> with replacing(out / "plot.png") as tmp:  # doctest: +SKIP
        ...     fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically."""
    import torch  # here, so that importing this module costs no torch import

    with replacing(path) as tmp:
        torch.save(obj, tmp)


__all__ = ["replacing", "torch_save", "umask", "write_bytes", "write_text"]
