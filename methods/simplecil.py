"""SimpleCIL: prototypes of raw frozen features with a cosine classifier (``ncm`` with its settings).

SimpleCIL's classifier weights are the class means of the *unnormalised* frozen embeddings, scored
by cosine similarity (LAMDA-PILOT ``models/simplecil.py``, ``replace_fc`` into a ``CosineLinear``).
That is ``ncm`` with ``metric=cosine, normalize=false``; ``ncm``'s default averages L2-normalised
features instead (Janson et al.'s NMC), which differs whenever feature norms vary within a class.
This subclass only fixes those two settings, so the name in a record says which rule was run; the
logic is :class:`methods.ncm.NCM`'s.

References:
    Zhou, Cai, Ye, Zhan & Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
    Generalizability and Adaptivity are All You Need", IJCV 2024 (arXiv:2303.07338), Sec. 4
    (SimpleCIL); official code LAMDA-CL/LAMDA-PILOT ``models/simplecil.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from cl_bench.core.registry import METHODS
from cl_bench.methods.ncm import NCM, NCMConfig


@dataclass(frozen=True)
class SimpleCILConfig(NCMConfig):
    """SimpleCIL: ``ncm`` fixed to raw-feature prototypes scored by cosine similarity.

    Attributes:
        metric: Always "cosine" (SimpleCIL's cosine classifier).
        normalize: Always False (prototypes average the raw embeddings, as ``replace_fc`` does).
    """

    metric: Literal["cosine"] = "cosine"
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric != "cosine" or self.normalize:
            raise ValueError("simplecil is ncm with metric=cosine and normalize=false; use ncm for other settings")


@METHODS.register(
    "simplecil",
    reference="Zhou et al., 'Revisiting Class-Incremental Learning with Pre-Trained Models' (SimpleCIL), IJCV 2024",
)
class SimpleCIL(NCM):
    """SimpleCIL: cosine classifier on raw-feature class means of a frozen backbone (ncm, normalize=false)."""

    Config: ClassVar[type] = SimpleCILConfig
