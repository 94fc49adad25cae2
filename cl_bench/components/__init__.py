"""Plain components methods call directly (no plugin system): memory, penalties, test-batch BatchNorm.

References:
    See each component's docstring.
"""

from .batchnorm import PriorBatchNorm, batch_norm_layers, use_test_batch_stats
from .buffer import ReservoirBuffer
from .penalty import FisherPenalty, diagonal_fisher

__all__ = ["ReservoirBuffer", "FisherPenalty", "diagonal_fisher"]
__all__ += ["PriorBatchNorm", "batch_norm_layers", "use_test_batch_stats"]
