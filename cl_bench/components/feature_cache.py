"""A content-addressed cache of frozen-backbone features, shared by every method and seed.

A frozen backbone maps the same input row to the same feature vector, whoever asks. The cache keys
each input row by a 128-bit hash of its bytes, inside a file named by everything that defines the
mapping: backbone name, weights fingerprint (the weight file's SHA-256, or a hash of the tensors
for random weights), the :class:`~cl_bench.components.BackboneInput` spec (image size, both
normalisations) and the feature dtype. Rows are the stream's model inputs, so the dataset and its
transform are part of the key through the content: the same MNIST test image standardised the same
way hits the cache in every run, from any method (ncm, ranpac, a sweep's seeds), while another
dataset, split or transform simply misses.

Files live in ``$CL_BENCH_CACHE/features`` (default ``~/.cache/cl_bench/features``) and are written
atomically (temp file + rename), merging rows another process wrote meanwhile.

References:
    DESIGN.md, "Principles": frozen backbones' features are computed once and cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cl_bench.core import atomic

#: Rows above this count are computed but not stored (augmented training data would only fill the cache).
MAX_ROWS = 200_000


def cache_dir() -> Path:
    """``$CL_BENCH_CACHE/features``, or ``~/.cache/cl_bench/features``."""
    root = os.environ.get("CL_BENCH_CACHE")
    return Path(root).expanduser() / "features" if root else Path.home() / ".cache" / "cl_bench" / "features"


def _multipliers(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Odd 62-bit multipliers: a linear hash mod 2^64 of the row's 32-bit words.
    return torch.randint(0, 2**62, (n,), generator=gen, dtype=torch.int64) * 2 + 1


def row_hashes(x: torch.Tensor) -> torch.Tensor:
    """Two 64-bit hashes per row of ``x`` (N, ...), from the raw bytes, as an (N, 2) int64 tensor."""
    flat = x.detach().reshape(len(x), -1).contiguous()
    if flat.element_size() == 4:
        words = flat.view(torch.int32).to(torch.int64)
    else:
        words = flat.to(torch.float64).view(torch.int64)
    words = words.cpu()
    d = words.shape[1]
    # Integer products wrap around mod 2^64, which is what a multiplicative hash wants.
    h1 = (words * _multipliers(d, 1)).sum(1) + d
    h2 = ((words ^ 0x5BD1E995) * _multipliers(d, 2)).sum(1)
    return torch.stack([h1, h2], dim=1)


class FeatureCache:
    """Features of one frozen encoder, looked up by input content, persisted to one file.

    Args:
        key: JSON-able description of the encoder (what makes two encoders the same mapping).
        directory: Where the file lives (default :func:`cache_dir`).
        max_rows: Stop storing new rows beyond this count.
        persist: False keeps the cache in memory only (one run's repeated evaluations still hit it).
    """

    def __init__(self, key: dict[str, Any], directory: Path | None = None, max_rows: int = MAX_ROWS,
                 persist: bool = True) -> None:  # fmt: skip
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.path: Path | None = (directory or cache_dir()) / f"{digest}.pt" if persist else None
        self.max_rows = max_rows
        self.index: dict[tuple[int, int], int] = {}
        # Rows live in a buffer that doubles when full: appending stays amortised O(rows added).
        self.buffer = torch.zeros(0, 0)
        self.hashes: list[tuple[int, int]] = []
        self.dirty = False
        self.hits = 0
        self.misses = 0
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache file is only a cache miss: it is rewritten on flush
            return
        self._absorb(blob["hashes"], blob["features"])

    def _absorb(self, hashes: torch.Tensor, features: torch.Tensor) -> None:
        listed = [tuple(h) for h in hashes.tolist()]
        new = [i for i, h in enumerate(listed) if h not in self.index]
        if not new:
            return
        base, need = len(self.hashes), len(self.hashes) + len(new)
        if self.buffer.shape[1] != features.shape[1] or need > len(self.buffer):
            with torch.inference_mode(False):  # a normal tensor: evaluation and training both append to it
                grown = torch.zeros(max(need, 2 * len(self.buffer), 1024), features.shape[1])
            if base:
                grown[:base] = self.buffer[:base]
            self.buffer = grown
        self.buffer[base:need] = features[new].to(torch.float32)
        for j, i in enumerate(new):
            self.index[listed[i]] = base + j  # type: ignore[index]
            self.hashes.append(listed[i])  # type: ignore[arg-type]

    def _table(self) -> torch.Tensor:
        return self.buffer[: len(self.hashes)]

    def __len__(self) -> int:
        return len(self.hashes)

    def lookup(self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Features of every row of ``x``: cached rows from the table, the others by ``compute``."""
        keys = [tuple(h) for h in row_hashes(x).tolist()]
        rows = [self.index.get(k, -1) for k in keys]  # type: ignore[call-overload]
        missing = [i for i, r in enumerate(rows) if r < 0]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        if not missing:
            return self._table()[torch.tensor(rows)].to(x.device)
        fresh = compute(x[missing]).detach().to(torch.float32)
        if len(missing) == len(rows):
            out = fresh
        else:
            out = torch.empty(len(rows), fresh.shape[1], device=fresh.device)
            have = [i for i, r in enumerate(rows) if r >= 0]
            out[have] = self._table()[torch.tensor([rows[i] for i in have])].to(fresh.device)
            out[missing] = fresh
        if len(self) + len(missing) <= self.max_rows:
            unique: dict[tuple[int, int], int] = {}
            for j, i in enumerate(missing):
                unique.setdefault(keys[i], j)  # type: ignore[arg-type]
            sel = list(unique.values())
            self._absorb(torch.tensor(list(unique.keys()), dtype=torch.int64), fresh[sel].cpu())
            self.dirty = True
        return out

    def flush(self) -> None:
        """Write new rows to disk atomically, keeping rows another process added meanwhile."""
        if not self.dirty or self.path is None:
            return
        self._load()  # merge what other runs stored since we loaded
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"key": json.dumps(self.key, sort_keys=True, default=str),
                "hashes": torch.tensor(self.hashes, dtype=torch.int64), "features": self._table()}  # fmt: skip
        atomic.torch_save(blob, self.path)
        self.dirty = False


__all__ = ["MAX_ROWS", "FeatureCache", "cache_dir", "row_hashes"]
