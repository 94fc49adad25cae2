"""Plain components methods call directly (no plugin system): memory, penalties.

References:
    See each component's docstring.
"""

from .buffer import ReservoirBuffer
from .penalty import FisherPenalty, diagonal_fisher
from .prompts import CodaPrompt, PromptedViT, PromptPool

__all__ = ["ReservoirBuffer", "FisherPenalty", "diagonal_fisher", "CodaPrompt", "PromptedViT", "PromptPool"]
