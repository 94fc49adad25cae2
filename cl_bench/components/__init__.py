"""Plain components methods call directly (no plugin system): memory, penalties, backbone inputs,
prototypes, prompts, test-batch BatchNorm, test-time adaptation building blocks.

References:
    See each component's docstring.
"""

from cl_bench.components.backbone_input import BackboneInput
from cl_bench.components.batchnorm import PriorBatchNorm, batch_norm_layers, use_test_batch_stats
from cl_bench.components.buffer import LogitReservoirBuffer, ReservoirBuffer
from cl_bench.components.ema import EMATeacher
from cl_bench.components.feature_cache import FeatureCache
from cl_bench.components.importance import PathIntegral, output_norm_importance, parameters_outside_norm_layers
from cl_bench.components.norm import adapt_only, bn_affine_params, require_bn
from cl_bench.components.penalty import FisherPenalty, diagonal_fisher
from cl_bench.components.prompts import CodaPrompt, PromptedViT, PromptPool
from cl_bench.components.prototypes import PrototypeHead
from cl_bench.components.tta_augment import TTAugment, make_augment
from cl_bench.components.tta_losses import (
    ReliableEntropy,
    cross_entropy_to,
    pseudo_label_fisher,
    softmax_entropy,
    source_batches,
    symmetric_cross_entropy,
)

__all__ = ["BackboneInput", "CodaPrompt", "EMATeacher", "FeatureCache", "FisherPenalty", "LogitReservoirBuffer",
           "PathIntegral", "PriorBatchNorm",
           "PromptPool", "PromptedViT", "PrototypeHead", "ReliableEntropy", "ReservoirBuffer", "TTAugment",
           "adapt_only", "batch_norm_layers", "bn_affine_params", "cross_entropy_to", "diagonal_fisher",
           "make_augment", "output_norm_importance",
           "parameters_outside_norm_layers", "pseudo_label_fisher", "require_bn", "softmax_entropy", "source_batches",
           "symmetric_cross_entropy", "use_test_batch_stats"]
