"""Seeds and RNG state of a run: every source of randomness is seeded from the run seed or checkpointed.

Shuffling is seeded per (experience, epoch) and the training augmentation per (experience, epoch,
batch), so a resumed run redraws exactly the same batches; the global generators' state is saved in
checkpoints.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def shuffle_seed(seed: int, experience: int, epoch: int) -> int:
    return (seed * 1_000_003 + experience * 10_007 + epoch) % (2**63)


def augment_seed(seed: int, experience: int, epoch: int, batch: int) -> int:
    # Per-batch seed of the training augmentation: a resumed run redraws exactly the same crops and flips.
    return (shuffle_seed(seed, experience, epoch) * 1_000_033 + batch + 1) % (2**63)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["augment_seed", "rng_state", "seed_everything", "set_rng_state", "shuffle_seed"]
