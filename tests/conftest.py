"""Test-session settings shared by every test module."""

from __future__ import annotations

import os

import torch

# The suite trains tiny models whose matmuls are far too small to gain from intra-op threads;
# with PyTorch's default (one thread per core) they slow down badly whenever anything else
# competes for the cores. Subprocesses (CLI runs, sweep workers) inherit the variables.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
torch.set_num_threads(1)
