"""Plain components methods call directly (no plugin system): memory, penalties, backbone inputs,
prototypes, prompts, test-batch BatchNorm, test-time adaptation building blocks.

References:
    See each component's docstring.
"""

from .backbone_input import BackboneInput
from .batchnorm import PriorBatchNorm, batch_norm_layers, use_test_batch_stats
from .buffer import ReservoirBuffer
from .ema import EMATeacher
from .feature_cache import FeatureCache
from .norm import adapt_only, bn_affine_params, bn_layers, require_bn, use_batch_stats
from .penalty import FisherPenalty, diagonal_fisher
from .pretrained import Encoder, PretrainedConfig
from .prompts import CodaPrompt, PromptedViT, PromptPool
from .prototypes import PrototypeHead
from .tta_augment import TTAugment, make_augment
from .tta_losses import (
    ReliableEntropy,
    cross_entropy_to,
    pseudo_label_fisher,
    softmax_entropy,
    source_batches,
    symmetric_cross_entropy,
)
from .tta_setup import (
    TTAOptimConfig,
    adaptable_copy,
    clone_source,
    generator,
    generator_copy,
    make_optimizer,
    need_source_data,
    source_fisher_penalty,
)

__all__ = ["BackboneInput", "CodaPrompt", "Encoder", "FeatureCache", "FisherPenalty", "PretrainedConfig",
           "PromptPool", "PromptedViT", "PrototypeHead", "ReservoirBuffer", "diagonal_fisher"]
__all__ += ["PriorBatchNorm", "batch_norm_layers", "use_test_batch_stats"]
__all__ += ["EMATeacher", "TTAugment", "make_augment", "ReliableEntropy", "cross_entropy_to", "pseudo_label_fisher",
            "softmax_entropy", "source_batches", "symmetric_cross_entropy", "TTAOptimConfig", "adaptable_copy",
            "clone_source", "generator", "generator_copy", "make_optimizer", "need_source_data",
            "source_fisher_penalty", "adapt_only", "bn_affine_params", "bn_layers", "require_bn",
            "use_batch_stats"]  # fmt: skip
