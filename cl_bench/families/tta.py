"""Set-up shared by the test-time adaptation methods: the source-model copy and the optimiser.

References:
    Döbler et al. "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (RMT).
    CVPR 2023 — its benchmark (mariodoebler/test-time-adaptation) fixes the CIFAR-10-C optimiser
    used as default here: Adam, lr 1e-3, beta 0.9, no weight decay, one step per test batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from cl_bench.components.batchnorm import replace_batch_norms, use_test_batch_stats
from cl_bench.components.norm import adapt_only, bn_affine_params, require_bn
from cl_bench.components.penalty import FisherPenalty
from cl_bench.components.tta_losses import pseudo_label_fisher, source_batches
from cl_bench.components.window_bn import WindowBatchNorm
from cl_bench.core.errors import ConfigError
from cl_bench.core.method import Method
from cl_bench.core.types import StreamInfo


@dataclass(frozen=True)
class TTAOptimConfig:
    """Optimiser of a test-time adaptation method (defaults: the RMT benchmark's CIFAR-10-C configs).

    Attributes:
        optimizer: "adam" or "sgd".
        lr: Learning rate.
        beta: Adam's beta1 (beta2 = 0.999).
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    beta: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.beta < 1 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("beta must be in [0, 1), momentum and weight_decay >= 0")


@dataclass(frozen=True)
class WindowTTAConfig(TTAOptimConfig):
    """The optimiser plus ``window``: every method whose network normalises with test-batch statistics takes it.

    Attributes:
        window: 0 = off (each batch's own statistics); W >= 1 normalises with the statistics of the last W
            test samples, the current batch included, for small batches down to one sample. Every network of
            the method that sees test batches (student, teacher, anchor, key encoder) gets its own window.
            The RMT benchmark's ``TEST.WINDOW_LENGTH`` (classification/conf.py line 319, default 1 = off),
            which its base class honours for every method (classification/methods/base.py lines 66-110;
            commit 8b2ed63).
    """

    window: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 0:
            raise ValueError(f"window must be >= 0 (0 = off), got {self.window}")


def make_optimizer(params: Iterable[nn.Parameter], cfg: TTAOptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` describes over ``params``."""
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def clone_source(info: StreamInfo, method: str) -> nn.Module:
    """A private copy of the stream's source model on the run's device.

    Raises:
        ConfigError: The stream has no source model (not a test-time adaptation stream).
    """
    if info.source_model is None:
        raise ConfigError(
            f"Method {method!r} adapts a trained source model at test time, but this stream provides "
            "none. Run it on a test-time adaptation stream (e.g. --scenario digits_c or mnist_c with the "
            "TTA protocol), which trains or loads the source model before the stream starts."
        )
    return copy.deepcopy(info.source_model).to(info.device)


def adaptable_copy(
    info: StreamInfo, method: str, train: Literal["norm", "all"], window: int = 0
) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """The source model prepared for adaptation: a private copy normalising with test-batch statistics.

    Args:
        info: The stream description (its ``source_model`` is copied, never changed).
        method: Method name, for messages.
        train: "norm" makes only the batch-norm affine parameters trainable (Tent family);
            "all" every parameter (mean-teacher family).
        window: 0 = each batch's own statistics; W >= 1 = the statistics of the last W test samples
            (:class:`~cl_bench.components.window_bn.WindowBatchNorm`, the RMT benchmark's
            ``TEST.WINDOW_LENGTH``). Every forward pass only peeks at the window; after its update the method
            stores the batch in the window of each network it forwards test batches through
            (:func:`~cl_bench.components.window_bn.store_in_window`); deep copies of the model (teacher,
            anchor) get their own window.

    Returns:
        The model, in eval mode (no dropout noise; batch norm uses batch statistics regardless),
        and its trainable parameters by name.

    Raises:
        ConfigError: No source model, or no batch norm in it.
    """
    model = clone_source(info, method)
    require_bn(model, method)
    if window < 0:
        raise ConfigError(f"window must be >= 0 (0 = off), got {window}")
    if window:
        replace_batch_norms(model, lambda bn: WindowBatchNorm(bn, window))
        model.eval()
    else:
        model = use_test_batch_stats(model).eval()
    if train == "norm":
        named = dict(bn_affine_params(model))
        if window:  # WindowBatchNorm is not a _BatchNorm: its scale and shift by name
            named = {f"{n}.{k}": p for n, m in model.named_modules() if isinstance(m, WindowBatchNorm)
                     for k, p in m.named_parameters(recurse=False) if k in ("weight", "bias")}  # fmt: skip
        adapt_only(model, list(named.values()))
        return model, named
    model.requires_grad_(True)
    return model, dict(model.named_parameters())


def need_source_data(info: StreamInfo, method: str, what: str, disable: str) -> None:
    """Raise :class:`ConfigError` when a source-statistics feature is on but no source data exists.

    Args:
        info: The stream description.
        method: Method name.
        what: What the source data is needed for.
        disable: The setting that turns the feature off.
    """
    if info.source_data is None:
        raise ConfigError(
            f"Method {method!r} needs the labelled source training data for {what}, but this stream "
            f"is source-free (no source data). Set {disable} to run without it, or run on a stream "
            "whose protocol provides the source data."
        )


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded from ``seed`` (all of a method's randomness comes from it)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def generator_copy(g: torch.Generator) -> torch.Generator:
    """A new generator in ``g``'s current state: ``predict`` draws the augmentations ``adapt`` will
    draw next without advancing ``g`` (so it changes no state and matches ``adapt``'s output)."""
    copy_ = torch.Generator()
    copy_.set_state(g.get_state())
    return copy_


def source_fisher_penalty(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    info: StreamInfo,
    *,
    alpha: float,
    n_samples: int,
    batch_size: int,
    seed: int,
    method: str,
) -> FisherPenalty:
    """EATA/PSMT's anti-forgetting term ``alpha * sum F (theta - theta_source)^2`` over ``params``.

    F is :func:`pseudo_label_fisher` on ``n_samples`` source images (a seeded random subset). With
    ``alpha = 0`` the penalty is empty and no source data is needed.

    Raises:
        ConfigError: ``alpha > 0`` on a source-free stream.
    """
    penalty = FisherPenalty(2.0 * alpha)  # FisherPenalty computes strength/2 * sum F (theta - theta*)^2
    if alpha > 0:
        need_source_data(info, method, "the Fisher information of its penalty towards the source weights",
                         "method.fisher_alpha=0")  # fmt: skip
        assert info.source_data is not None
        batches = source_batches(info.source_data, n_samples, batch_size, torch.device(info.device), generator(seed))
        penalty.consolidate(model, pseudo_label_fisher(model, params, batches))
    return penalty


class FrozenSourceMethod(Method):
    """Base of the methods that keep a private eval-mode copy of the source model, ``self.net``.

    ``setup`` makes the copy (source batch-norm statistics, no dropout noise) and ``state_dict`` holds
    it; Source, LAME and T3A build on it instead of each repeating the set-up.
    """

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        self.net = clone_source(info, self.name or type(self).__name__).eval()

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
