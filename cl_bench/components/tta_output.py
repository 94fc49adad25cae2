"""Access to a source model's feature extractor and linear head, for output-level TTA methods.

LAME, T3A and SHOT-IM work on the embedding ``features(x)`` and the classifier ``head`` separately;
every model of :mod:`cl_bench.nets` exposes both (``features`` input -> embedding, ``head`` a Linear).

References:
    Boudiaf et al., "Parameter-free Online Test-time Adaptation" (LAME). CVPR 2022.
    Iwasawa & Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
        Generalization" (T3A). NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cl_bench.core.errors import ConfigError


def features_and_head(model: nn.Module, method: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear]:
    """``model.features`` and ``model.head`` (a Linear layer).

    Raises:
        ConfigError: The model does not expose both.
    """
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if not callable(features) or not isinstance(head, nn.Linear):
        raise ConfigError(
            f"Method {method!r} needs the source model's embedding and linear classifier separately, but "
            f"{type(model).__name__} does not expose 'features' (input -> embedding) and 'head' (an nn.Linear). "
            "Use one of cl_bench's networks (all expose both) or wrap your model so that it does."
        )
    return features, head
