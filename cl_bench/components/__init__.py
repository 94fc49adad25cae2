"""Plain components methods call directly (no plugin system): memory, penalties, backbone inputs,
prototypes, prompts, test-batch BatchNorm, test-time adaptation building blocks.

References:
    See each component's docstring.
"""

from cl_bench.components.adacontrast_augment import (
    RangeAgnosticViews,
    ReferenceAdaContrastAugment,
    adacontrast_augment,
)
from cl_bench.components.backbone_input import BackboneInput
from cl_bench.components.batchnorm import (
    EMABatchNorm,
    PriorBatchNorm,
    batch_norm_layers,
    replace_batch_norms,
    set_ema_mode,
    use_test_batch_stats,
)
from cl_bench.components.buffer import LogitReservoirBuffer, ReservoirBuffer
from cl_bench.components.ema import EMATeacher, blend_parameters_, frozen_copy
from cl_bench.components.exemplars import (
    ClassBalancedBuffer,
    HerdingMemory,
    LogitClassBalancedBuffer,
    embed,
    herding,
    kd_loss,
    require_per_class_room,
)
from cl_bench.components.feature_cache import FeatureCache
from cl_bench.components.fisher import diagonal_fisher
from cl_bench.components.iabn import InstanceAwareBatchNorm, iabn_layers
from cl_bench.components.importance import PathIntegral, output_norm_importance, parameters_outside_norm_layers
from cl_bench.components.norm import adapt_only, bn_affine_params, norm_affine_params, require_bn
from cl_bench.components.penalty import FisherPenalty
from cl_bench.components.prompts import CodaPrompt, PromptedViT, PromptPool
from cl_bench.components.prototypes import PrototypeHead
from cl_bench.components.tta_augment import ReferenceTTAugment, TTAugment, make_augment, pixel_space, stream_augment
from cl_bench.components.tta_losses import (
    ReliableEntropy,
    cross_entropy_to,
    marginal_entropy,
    pseudo_label_fisher,
    softmax_entropy,
    source_batches,
    symmetric_cross_entropy,
)
from cl_bench.components.tta_memory import CSTUMemory, PBRSMemory
from cl_bench.components.tta_weighting import (
    CertaintyDiversityWeights,
    prior_correction,
    soft_likelihood_ratio,
    weighted_slr_consistency,
)

__all__ = ["BackboneInput", "CSTUMemory", "CertaintyDiversityWeights", "ClassBalancedBuffer", "CodaPrompt",
           "EMABatchNorm", "EMATeacher", "FeatureCache", "FisherPenalty", "HerdingMemory", "InstanceAwareBatchNorm",
           "LogitClassBalancedBuffer", "LogitReservoirBuffer", "PBRSMemory", "PathIntegral", "PriorBatchNorm",
           "PromptPool", "PromptedViT", "PrototypeHead", "RangeAgnosticViews", "ReferenceAdaContrastAugment",
           "ReferenceTTAugment", "ReliableEntropy", "ReservoirBuffer",
           "TTAugment", "adacontrast_augment",
           "adapt_only", "batch_norm_layers", "blend_parameters_", "bn_affine_params", "cross_entropy_to",
           "diagonal_fisher", "embed", "frozen_copy", "herding", "iabn_layers", "kd_loss", "make_augment",
           "marginal_entropy",
           "norm_affine_params", "output_norm_importance", "parameters_outside_norm_layers", "pixel_space",
           "prior_correction", "pseudo_label_fisher", "replace_batch_norms", "require_bn", "require_per_class_room",
           "set_ema_mode", "soft_likelihood_ratio", "softmax_entropy", "source_batches", "stream_augment",
           "symmetric_cross_entropy", "use_test_batch_stats", "weighted_slr_consistency"]
