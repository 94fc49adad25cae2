"""CMF's filtering against ROID through the public interface (issue 17: CMF gave ROID's numbers).

Both methods take the same Adam step on the same loss and augmentation (same seed, same batch), so after
one batch their adapted parameters differ only by the ensembling rule:

* ROID: ``theta <- 0.99 theta' + 0.01 theta_src``;
* CMF (reference cmf.py l. 97-128, first step, hidden = source): ``P = q``, ``beta = clip((1-q)/(P+1-q))``,
  ``h = beta theta_src + (1-beta) theta'``, ``theta <- 0.99 theta' + 0.01 h``,

i.e. ``theta_cmf - theta_roid = 0.01 (1-beta) (theta' - theta_src)``: zero when ``beta`` is clipped to 1,
which is what the reference's ``q`` scaled by trainable parameters / 38,400 gives on small networks.
"""

from __future__ import annotations

from typing import Any

import torch

from cl_bench.core.registry import METHODS
from cl_bench.core.types import StreamInfo
from cl_bench.nets.models import build_source_model


def _run(name: str, n_batches: int, **kw: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_source_model("cnn_bn", (3, 8, 8), 5).eval()
    info = StreamInfo((3, 8, 8), 5, 1, "domain_il", "cpu", source_model=model, source_data=None,
                      flip_invariant=False)  # fmt: skip
    method = METHODS.create(name, flip=False, **kw)
    method.setup(info, 0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n_batches):
        method.adapt(torch.randn(16, 3, 8, 8, generator=gen) + 0.5)
    return method.state_dict()


def _affine(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    # the cnn_bn's batch-norm weights and biases (features.1, features.5): the parameters both methods adapt
    return {k: v for k, v in state["model"].items() if k.split(".")[1] in {"1", "5"} and k.endswith(("weight", "bias"))}


def _source() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_source_model("cnn_bn", (3, 8, 8), 5).state_dict()


def test_one_filtering_step_is_the_reference_rule() -> None:
    # gamma 0.5 and lr 0.1 (ROID with the same weight on the source) so the rule's effect is far above atol
    q_eff, gamma = 0.1, 0.5  # cfg.q is scaled by 96 trainable parameters / 38,400
    cmf = _run("cmf", 1, q=q_eff * 38400 / 96, gamma=gamma, lr=0.1)
    roid = _run("roid", 1, momentum_src=gamma, lr=0.1)
    beta = (1 - q_eff) / (q_eff + 1 - q_eff)  # 0.9: inside [0.89, 0.9999], not clipped
    assert abs(cmf["hidden_var"] - beta * q_eff) < 1e-9
    src = _source()
    gap = 0.0
    for k, theta_roid in _affine(roid).items():
        theta_step = (theta_roid - (1 - gamma) * src[k]) / gamma  # after Adam's step, before ensembling
        hidden = beta * src[k] + (1 - beta) * theta_step
        assert torch.allclose(cmf["hidden"][k], hidden, atol=1e-6), k
        assert torch.allclose(_affine(cmf)[k], gamma * theta_step + (1 - gamma) * hidden, atol=1e-6), k
        gap = max(gap, (_affine(cmf)[k] - theta_roid).abs().max().item())
    assert gap > 1e-4  # CMF's rule and ROID's differ here by far more than the tolerance


def test_with_the_reference_q_on_a_small_network_cmf_is_roid() -> None:
    # q = 0.005 x 96 / 38,400 = 1.25e-5: P stays below 1e-4 for the first batches, beta >= 0.9999 is set
    # to 1, the hidden model stays the source, and CMF's ensembling is ROID's
    cmf, roid = _run("cmf", 4), _run("roid", 4)
    q_eff = 0.005 * 96 / 38400
    assert abs(cmf["hidden_var"] - q_eff * sum(0.99 ** (2 * k) for k in range(4))) < 1e-12
    for k, v in _affine(roid).items():
        assert torch.allclose(_affine(cmf)[k], v, atol=1e-6), k
    # ...and a larger q makes it differ
    other = _affine(_run("cmf", 4, q=20.0))
    assert max((other[k] - v).abs().max().item() for k, v in _affine(roid).items()) > 1e-6
