"""Numeric precision and network layout of a run's steps: ``Protocol.precision``, ``channels_last``, ``compile``.

:class:`Precision` turns the three protocol fields into what the loop does: every training, adaptation and
evaluation call of the method runs under ``torch.autocast`` (bfloat16 on CPU or CUDA; float16 on CUDA only,
with a ``torch.amp.GradScaler`` that :meth:`SupervisedMethod.step
<cl_bench.families.supervised.SupervisedMethod.step>` uses for its backward pass), the method's network is
moved to channels-last memory format and/or compiled in place once it is set up. fp32 with both switches off
(the defaults) changes nothing at all.

References:
    Micikevicius et al. "Mixed precision training". ICLR 2018 (loss scaling for float16).
    PyTorch documentation, "Automatic Mixed Precision package - torch.amp" (autocast, GradScaler; CPU autocast
        supports bfloat16).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from cl_bench.core.errors import UserError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """What ``precision``, ``channels_last`` and ``compile`` of a protocol mean on ``device``.

    Args:
        precision: "fp32", "bf16" or "fp16".
        channels_last: Convert the network and 4-D input batches to ``torch.channels_last``.
        compile: ``nn.Module.compile()`` the network (in place, so its ``state_dict`` keys are unchanged).
        device: The run's device ("cpu", "cuda", "cuda:N").

    Raises:
        UserError: fp16 asked for on CPU.
    """

    def __init__(self, precision: str, channels_last: bool, compile: bool, device: str) -> None:
        self.name = precision
        self.dtype = _DTYPES[precision]
        self.device_type = torch.device(device).type
        self.channels_last = channels_last
        self.compile = compile
        if precision == "fp16" and self.device_type != "cuda":
            raise UserError(
                f"--precision fp16 needs a CUDA device, but this run is on {device}: float16 autocast with "
                f"loss scaling is a GPU recipe, and on CPU it is slow and unsupported for many operations. "
                f"Use --precision bf16 for reduced precision on CPU, or run fp16 with --device cuda."
            )
        # float16 gradients underflow without loss scaling (Micikevicius et al., Sec. 3.2); bfloat16 has
        # float32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    @property
    def active(self) -> bool:
        """Whether anything differs from plain fp32 steps."""
        return self.dtype is not None or self.channels_last or self.compile

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context every method call of the loop runs in (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def prepare(self, method: Any) -> None:
        """Apply layout and compilation to ``method.net`` (when it has one) and hand it the grad scaler."""
        net = getattr(method, "net", None)
        if isinstance(net, torch.nn.Module):
            if self.channels_last:
                net.to(memory_format=torch.channels_last)
            if self.compile:
                net.compile()
        if self.scaler is not None:
            method.grad_scaler = self.scaler

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the run's memory format (channels-last for 4-D image batches when asked)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def state_dict(self) -> dict[str, Any]:
        """The grad scaler's state (empty without one), for checkpoints."""
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


__all__ = ["Precision"]
