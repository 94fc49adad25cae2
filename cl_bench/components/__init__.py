"""Plain components methods call directly (no plugin system): memory, penalties, backbone inputs.

References:
    See each component's docstring.
"""

from .backbone_input import BackboneInput
from .buffer import ReservoirBuffer
from .feature_cache import FeatureCache
from .penalty import FisherPenalty, diagonal_fisher
from .pretrained import Encoder, PretrainedConfig
from .prompts import CodaPrompt, PromptedViT, PromptPool
from .prototypes import PrototypeHead

__all__ = ["BackboneInput", "CodaPrompt", "Encoder", "FeatureCache", "FisherPenalty", "PretrainedConfig",
           "PromptPool", "PromptedViT", "PrototypeHead", "ReservoirBuffer", "diagonal_fisher"]
