"""Refresh learning: unlearn a little of the current batch before learning it, scaled down where the Fisher
information of earlier experiences is high.

Unlearning step, on the incoming batch ``(x, y)``, for every trainable parameter tensor ``theta``:

    g     = grad_theta CE(f(x), y)                      (a gradient *ascent* direction)
    u     = ||theta|| / ||g|| * g                       (rescaled to the parameter's norm)
    theta = theta + delta * (u + sigma * n) / (1 + gamma * F),     n ~ N(0, I),

elementwise, with ``F`` the accumulated diagonal Fisher. The official code takes ``g`` as the update of one
SGD step on ``-CE`` of a copy of the network, whose learning rate (0.01) the rescaling cancels; BatchNorm
running statistics are those of the copy, so the network's own do not move (here: saved and restored).

Fisher, at the end of every experience, over its training data:

    F_new = mean over examples of p(y|x) * (grad_theta log p(y|x))^2,     F = tau * F + F_new.

References:
    Wang, Li, Shen & Huang, "A Unified and General Framework for Continual Learning" (ICLR 2024), refresh
        learning (unlearn-relearn) Sec. 4.
    Official code github.com/joey-wang123/CL-refresh-learning (commit 7c90da5), ``models/derpp.py``:
        ``unlearn`` lines 90-108 (the update above, epsilon 1e-20), ``end_task`` lines 116-145 (the
        Fisher), constants delta = tau = 1e-5 (lines 50-51), gamma = sigma = 1e-3 (line 108).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

#: The official code's guard against a zero gradient norm (derpp.py line 17).
EPSILON = 1e-20
#: Examples per vmap call of the per-example Fisher.
CHUNK = 32


def unlearn_update(theta: torch.Tensor, g: torch.Tensor | None, fisher: torch.Tensor, noise: torch.Tensor,
                   delta: float, gamma: float, sigma: float) -> torch.Tensor:  # fmt: skip
    """The refresh increment of one parameter tensor (see the module docstring).

    Args:
        theta: The parameter.
        g: Gradient of the batch's cross-entropy at ``theta`` (None = unused parameter: zero ascent).
        fisher: Accumulated Fisher diagonal of ``theta``.
        noise: Standard normal draws shaped like ``theta``.
        delta: Step size (official 1e-5).
        gamma: Fisher scale (official 1e-3).
        sigma: Noise scale (official 1e-3).
    """
    u = torch.zeros_like(theta) if g is None else theta.norm() / (g.norm() + EPSILON) * g
    return delta * (u + sigma * noise) / (1.0 + gamma * fisher)


class Refresh:
    """The unlearning step and the Fisher it is scaled by, with their state (for checkpoints).

    Args:
        delta: Unlearning step size.
        gamma: Fisher scale in the denominator.
        sigma: Noise scale.
        tau: Decay of the old Fisher at each consolidation.
        every: Unlearn before one batch in ``every``.
        seed: Seeds the noise (drawn on the CPU, so runs are reproducible on any device).
    """

    def __init__(self, delta: float, gamma: float, sigma: float, tau: float, every: int, seed: int) -> None:
        self.delta, self.gamma, self.sigma, self.tau, self.every = delta, gamma, sigma, tau, every
        self.gen = torch.Generator().manual_seed(seed * 104729 + 17)
        self.fisher: dict[str, torch.Tensor] = {}
        self.batches = 0

    def _params(self, net: nn.Module) -> dict[str, nn.Parameter]:
        return {k: p for k, p in net.named_parameters() if p.requires_grad}

    def unlearn(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> bool:  # fmt: skip
        """Count a batch and, on every ``every``-th, apply the unlearning step to ``net``; returns whether it did.

        Args:
            net: The network (in train mode, as the official copy; its buffers are restored afterwards).
            x: Incoming inputs.
            y: Their labels.
            logits: Optional map of the raw outputs before the loss (e.g. task-incremental masking).
        """
        self.batches += 1
        if (self.batches - 1) % self.every:
            return False
        params = self._params(net)
        saved = {k: b.detach().clone() for k, b in net.named_buffers()}
        was_training = net.training
        net.train()
        try:
            out = net(x)
            loss = F.cross_entropy(out if logits is None else logits(out), y)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        finally:
            with torch.no_grad():
                for k, b in net.named_buffers():
                    b.copy_(saved[k])
            net.train(was_training)
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                fisher = self.fisher.get(name)
                fisher = torch.zeros_like(p) if fisher is None else fisher
                noise = torch.randn(p.shape, generator=self.gen).to(p.device, p.dtype)
                p.add_(unlearn_update(p, g, fisher, noise, self.delta, self.gamma, self.sigma))
        return True

    def consolidate(self, net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``F = tau * F + F_new`` with ``F_new`` the p(y|x)-weighted mean squared per-example gradient of
        ``log p(y|x)`` over ``batches`` (net in eval mode: a single example cannot give batch statistics)."""
        was_training = net.training
        net.eval()
        params = {k: p.detach() for k, p in self._params(net).items()}
        buffers = {k: b.detach() for k, b in net.named_buffers()}

        def log_p(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
            return -F.cross_entropy(out, yi.unsqueeze(0))

        per_example = vmap(grad(log_p, has_aux=False), in_dims=(None, 0, 0))
        new = {k: torch.zeros_like(v) for k, v in params.items()}
        count = 0
        try:
            for x, y in batches:
                for s in range(0, len(x), CHUNK):
                    xs, ys = x[s : s + CHUNK], y[s : s + CHUNK]
                    with torch.no_grad():
                        prob = F.softmax(net(xs), 1).gather(1, ys.unsqueeze(1)).squeeze(1)
                    for k, gk in per_example(params, xs, ys).items():
                        new[k] += (prob.view(-1, *([1] * (gk.dim() - 1))) * gk.pow(2)).sum(0)
                count += len(x)
        finally:
            net.train(was_training)
        for k, v in new.items():
            v /= max(count, 1)
            old = self.fisher.get(k)
            self.fisher[k] = v if old is None else self.tau * old + v

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "batches": self.batches, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher = dict(state["fisher"])
        self.batches = int(state["batches"])
        self.gen.set_state(state["gen"])


__all__ = ["EPSILON", "Refresh", "unlearn_update"]
