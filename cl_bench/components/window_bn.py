"""Batch norm over a sliding window of recent test samples, for small test batches (down to one sample).

:class:`WindowBatchNorm` normalises the current batch with the statistics of the last ``window`` test
samples, the current batch included: with a batch of n >= ``window`` samples it is test-batch
normalisation (BN-1); with smaller batches the missing samples come from the previous batches, whose
per-sample channel moments (mean and mean square over the spatial positions) the layer keeps in a ring
buffer. Pooled mean and (biased) variance: ``mu = mean_i m_i``, ``var = mean_i s_i - mu^2`` over the
window's samples i (every sample counts its spatial positions equally). Gradients flow through the
current batch's moments only.

``mode`` decides what a forward pass does: "peek" normalises without storing (a prediction that changes
no state), "update" also stores the batch's moments in the window. The ring buffer is registered as
buffers, so the network's ``state_dict`` holds it (checkpoints resume to the same record).

References:
    Döbler, Marsden & Yang, RMT benchmark (github.com/mariodoebler/test-time-adaptation, commit 8b2ed63):
    ``TEST.WINDOW_LENGTH`` (classification/conf.py line 319) and classification/methods/base.py
    ``forward`` (lines 69-110): single-sample TTA forwards the last ``WINDOW_LENGTH`` test samples together,
    so batch norm sees their statistics. Here the window lives inside the layer (stored moments instead
    of stored images), which gives the same statistics for a network with one BatchNorm layer and needs
    one forward pass of the current batch only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

WindowMode = Literal["peek", "update"]


class WindowBatchNorm(nn.Module):
    """BatchNorm normalising with the statistics of the last ``window`` test samples (see module docstring).

    Args:
        bn: The source BatchNorm layer (affine parameters copied; source statistics kept as buffers, unused).
        window: Samples in the window (>= 1).
    """

    def __init__(self, bn: _BatchNorm, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.eps = int(window), bn.eps
        self.weight = None if bn.weight is None else nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else nn.Parameter(bn.bias.detach().clone())
        c = bn.num_features
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        var = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        device = mean.device
        self.register_buffer("win_mean", torch.zeros(window, c, device=device))
        self.register_buffer("win_sq", torch.zeros(window, c, device=device))
        self.register_buffer("win_filled", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("win_next", torch.zeros((), dtype=torch.long, device=device))
        self.mode: WindowMode = "peek"

    def _stored(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Moments of the ``k`` most recent stored samples (k <= filled)."""
        idx = (self.win_next - 1 - torch.arange(k, device=self.win_mean.device)) % self.window
        return self.win_mean[idx], self.win_sq[idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(2, x.dim()))
        m = x.mean(dims) if dims else x  # [n, C] per-sample channel means
        sq = (x * x).mean(dims) if dims else x * x
        n = len(x)
        k = min(max(self.window - n, 0), int(self.win_filled))
        if k:
            old_m, old_sq = self._stored(k)
            m_all, sq_all = torch.cat([m, old_m]), torch.cat([sq, old_sq])
        else:
            m_all, sq_all = m, sq
        mean = m_all.mean(0)
        var = (sq_all.mean(0) - mean * mean).clamp_min(0)
        if self.mode == "update":
            with torch.no_grad():
                for i in range(max(0, n - self.window), n):  # only the last `window` samples can matter
                    self.win_mean[self.win_next] = m[i].detach()
                    self.win_sq[self.win_next] = sq[i].detach()
                    self.win_next.copy_((self.win_next + 1) % self.window)
                self.win_filled.copy_(torch.clamp(self.win_filled + n, max=self.window))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out


def set_window_mode(model: nn.Module, mode: WindowMode) -> None:
    """Set the ``mode`` of every :class:`WindowBatchNorm` of ``model``."""
    for layer in model.modules():
        if isinstance(layer, WindowBatchNorm):
            layer.mode = mode


def has_window(model: nn.Module) -> bool:
    """Whether ``model`` has a :class:`WindowBatchNorm` layer."""
    return any(isinstance(m, WindowBatchNorm) for m in model.modules())


@torch.no_grad()
def forward_into_window(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without gradient, the batch joining the window of every :class:`WindowBatchNorm` of
    ``model`` ("update" mode for this one pass; the layers are left in "peek")."""
    set_window_mode(model, "update")
    try:
        return model(x)
    finally:
        set_window_mode(model, "peek")


def store_in_window(x: torch.Tensor, *models: nn.Module) -> None:
    """After a method's update on the test batch ``x``: ``x`` joins the window of each of ``models``.

    Every forward pass of an adaptation step peeks (the current batch plus the stored samples, nothing
    stored), so augmented views, source replay and teacher passes never enter a window; this one extra
    pass per windowed network, with the weights just updated, stores the clean batch's moments as that
    network sees them (the RMT benchmark re-forwards its whole window with the current weights at every
    step). A network without a window costs nothing.
    """
    for model in models:
        if has_window(model):
            forward_into_window(model, x)


def _is_window_key(key: object) -> bool:
    # WindowBatchNorm's own buffers are the ``win_*`` ones; its running statistics are plain BatchNorm's
    return isinstance(key, str) and key.rsplit(".", 1)[-1].startswith("win_")


def window_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of ``model``'s window buffers by ``state_dict`` key, so a reset to the source weights can keep
    the window (the RMT benchmark's ``reset`` reloads the weights, its sliding-window input buffer stays)."""
    return {k: b.clone() for k, b in model.state_dict().items() if _is_window_key(k)}


def keep_windows(initial: Any, current: Any) -> Any:
    """``initial`` (a state, possibly nested: a method's ``state_dict``) with every window buffer taken from
    ``current``: the same rule as :func:`window_buffers`, for a reset of a whole method's state."""
    if not isinstance(initial, dict) or not isinstance(current, dict):
        return initial
    for key, value in initial.items():
        if key in current:
            initial[key] = current[key] if _is_window_key(key) else keep_windows(value, current[key])
    return initial


__all__ = ["WindowBatchNorm", "forward_into_window", "has_window", "keep_windows", "set_window_mode",
           "store_in_window", "window_buffers"]  # fmt: skip
