"""Fine-tuning: plain SGD on each experience in turn, the lower bound of every stream.

References:
    McCloskey & Cohen. "Catastrophic interference in connectionist networks:
    the sequential learning problem". Psychology of Learning and Motivation, 1989.
"""

from __future__ import annotations

from cl_bench.core.registry import METHODS
from cl_bench.families.supervised import SupervisedMethod


@METHODS.register(
    "finetune",
    reference="McCloskey & Cohen, 'Catastrophic interference in connectionist networks' (1989)",
)
class Finetune(SupervisedMethod):
    """Sequential fine-tuning with no protection against forgetting (lower bound)."""
