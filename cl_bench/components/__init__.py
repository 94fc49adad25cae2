"""Plain components methods call directly (no plugin system): memory, penalties, backbone inputs.

References:
    See each component's docstring.
"""

from .backbone_input import BackboneInput
from .buffer import ReservoirBuffer
from .penalty import FisherPenalty, diagonal_fisher

__all__ = ["BackboneInput", "ReservoirBuffer", "FisherPenalty", "diagonal_fisher"]
