"""Parameter-efficient tuning (PETL) modules attached to a timm backbone: adapter, SSF, VPT.

:func:`attach_petl` freezes every pretrained weight of a backbone, adds the new trainable modules
under ``backbone.petl`` (so they are part of its ``state_dict``) and wires them in with forward
hooks, leaving the timm module tree untouched. At initialisation every variant is the identity or
close to it, so tuning starts from the pretrained function.

- ``adapter`` (AdaptFormer, as in APER's ``vision_transformer_adapter.py``): a bottleneck
  ``up(relu(down(x))) * scale`` (width ``ffn_num`` = 64, ``scale`` = 0.1, ``down`` Kaiming-uniform,
  ``up`` zero-initialised) in parallel to each ViT block's MLP, fed the MLP branch's input before
  its LayerNorm. On a CNN (timm EfficientNet / MobileNet ``blocks`` stages, ResNet ``layer1..4``)
  there is no MLP branch: the same bottleneck, as 1x1 convolutions, is added residually after each
  block, ``y + scale * up(relu(down(y)))`` (our adaptation of the adapter to convolutional blocks).
- ``ssf`` (Lian et al., NeurIPS 2022): a per-channel ``y * gamma + beta`` after every normalisation
  layer and every linear layer (ViT: qkv, proj, fc1, fc2, norms; CNN: every BatchNorm, which
  follows each convolution), ``gamma ~ N(1, 0.02)``, ``beta ~ N(0, 0.02)`` (SSF's
  ``init_ssf_scale_shift``).
- ``vpt`` (Jia et al., ECCV 2022), ViT only: ``prompt_tokens`` learnable tokens appended to the token
  sequence after the position embedding (shallow, APER's default ``vpt_type=shallow``, 5 tokens),
  or replaced before every block (deep); removed again before pooling. Uniform initialisation in
  ``±sqrt(6 / (3 * 16 * 16 + dim))`` as VPT's code (patch size 16).

References:
    Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition",
    NeurIPS 2022; Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model
    Tuning", NeurIPS 2022; Jia et al., "Visual Prompt Tuning", ECCV 2022; Zhou et al., "Revisiting
    Class-Incremental Learning with Pre-Trained Models: Generalizability and Adaptivity are All You
    Need", IJCV 2024, official code zhoudw-zdw/RevisitingCIL (``ffn_num`` 64, ``prompt_token_num`` 5,
    ``vpt_type`` shallow in ``exps/aper_*``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

PETL_KINDS = ("adapter", "ssf", "vpt")


def check_petl_backbone(kind: str, backbone: str) -> None:
    """Fail at config time, before any model is built, when ``kind`` cannot work on ``backbone``.

    Raises:
        ValueError: Unknown kind, or VPT on an architecture outside timm's ``vision_transformer`` module.
    """
    if kind not in PETL_KINDS:
        raise ValueError(f"petl must be one of {', '.join(PETL_KINDS)}, got {kind!r}")
    if kind == "vpt":
        import timm

        if backbone not in timm.list_models(module="vision_transformer"):
            raise ValueError(f"petl=vpt needs a timm VisionTransformer backbone (prompt tokens), and {backbone!r} is "
                             f"not one; use petl=adapter or petl=ssf, or a ViT such as vit_base_patch16_224")


def _is_vit(backbone: nn.Module) -> bool:
    blocks = getattr(backbone, "blocks", None)
    return isinstance(blocks, nn.Sequential) and len(blocks) > 0 and hasattr(blocks[0], "mlp") \
        and hasattr(backbone, "patch_embed")


def _cnn_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual blocks of a timm EfficientNet-style (``blocks`` stages) or ResNet (``layerN``) CNN."""
    out: list[tuple[str, nn.Module]] = []
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        for i, stage in enumerate(blocks):
            children = list(stage) if isinstance(stage, nn.Sequential) else [stage]
            out += [(f"blocks.{i}.{j}", b) for j, b in enumerate(children)]
    for k in range(1, 5):
        layer = getattr(backbone, f"layer{k}", None)
        if isinstance(layer, nn.Sequential):
            out += [(f"layer{k}.{j}", b) for j, b in enumerate(layer)]
    return out


class Bottleneck(nn.Module):
    """``scale * up(relu(down(x)))`` on tokens (Linear) or feature maps (1x1 Conv); ``up`` starts at zero."""

    def __init__(self, dim: int, width: int, scale: float, conv: bool) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.down, self.up, self.scale = layer(dim, width), layer(width, dim), scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # AdaptFormer's "lora" init
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x))) * self.scale


class ScaleShift(nn.Module):
    """SSF's per-channel ``x * gamma + beta`` (channel dim 1 for feature maps, last dim otherwise)."""

    def __init__(self, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1 + 0.02 * torch.randn(dim, generator=gen))
        self.beta = nn.Parameter(0.02 * torch.randn(dim, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)
        return x * self.gamma + self.beta


def _key(name: str) -> str:
    return name.replace(".", "__")


def _attach_adapter(backbone: nn.Module, petl: nn.ModuleDict, make: Callable[[int, bool], nn.Module]) -> None:
    """Wire ``make(channels, conv)`` (a Bottleneck, or a :class:`SwitchedBottleneck`) into every block."""
    if _is_vit(backbone):
        for i, block in enumerate(backbone.blocks):
            adapter = petl[f"block{i}"] = make(backbone.embed_dim, False)
            stash: dict[str, torch.Tensor] = {}
            # The MLP branch's input before norm2 is what the parallel adapter reads (AdaptFormer).
            block.norm2.register_forward_pre_hook(lambda _m, args, s=stash: s.__setitem__("x", args[0]))
            block.mlp.register_forward_hook(lambda _m, _a, out, s=stash, a=adapter: out + a(s.pop("x")))
        return
    blocks = _cnn_blocks(backbone)
    if not blocks:
        raise ValueError(f"petl=adapter supports timm ViTs, EfficientNet/MobileNet-style and ResNet backbones, not "
                         f"{type(backbone).__name__}; use petl=ssf, which works on any backbone with norm layers")
    for name, block in blocks:
        channels = _out_channels(block)
        adapter = petl[_key(name)] = make(channels, True)
        block.register_forward_hook(lambda _m, _a, out, a=adapter: out + a(out))


def _out_channels(block: nn.Module) -> int:
    last = [m for m in block.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.Conv2d))][-1]
    if isinstance(last, nn.Conv2d):
        return last.out_channels
    return last.num_features if isinstance(last, nn.BatchNorm2d) else last.num_channels


def _attach_ssf(backbone: nn.Module, petl: nn.ModuleDict, gen: torch.Generator) -> None:
    for name, m in list(backbone.named_modules()):
        if name.startswith("petl") or isinstance(m, nn.Linear) and name in ("head", "fc", "classifier"):
            continue
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.Linear)):
            if isinstance(m, nn.BatchNorm2d):
                dim = m.num_features
            elif isinstance(m, nn.LayerNorm):
                dim = m.normalized_shape[-1]
            elif isinstance(m, nn.GroupNorm):
                dim = m.num_channels
            else:
                dim = m.out_features
            ssf = petl[_key(name)] = ScaleShift(dim, gen)
            m.register_forward_hook(lambda _m, _a, out, s=ssf: s(out))
    if not len(petl):
        raise ValueError(f"petl=ssf found no normalisation or linear layer in {type(backbone).__name__}")


def _attach_vpt(backbone: nn.Module, petl: nn.ModuleDict, tokens: int, deep: bool, gen: torch.Generator) -> None:
    if not _is_vit(backbone) or not hasattr(backbone, "norm_pre"):
        raise ValueError(f"petl=vpt needs a timm VisionTransformer backbone (prompt tokens), not "
                         f"{type(backbone).__name__}; use petl=adapter or petl=ssf for CNNs")
    dim, depth = backbone.embed_dim, len(backbone.blocks)
    bound = math.sqrt(6.0 / float(3 * 16 * 16 + dim))  # VPT's uniform init for 16x16 patches
    prompts = nn.Parameter((torch.rand(depth if deep else 1, tokens, dim, generator=gen) * 2 - 1) * bound)
    petl.register_parameter("prompts", prompts)  # type: ignore[arg-type]
    # fmt: off
    backbone.norm_pre.register_forward_hook(
        lambda _m, _a, out: torch.cat([out, prompts[0].expand(len(out), -1, -1)], dim=1))
    if deep:
        for i in range(1, depth):
            backbone.blocks[i].register_forward_pre_hook(
                lambda _m, args, i=i: (torch.cat([args[0][:, :-tokens], prompts[i].expand(len(args[0]), -1, -1)],
                                                 dim=1),))
    backbone.norm.register_forward_hook(lambda _m, _a, out: out[:, :-tokens])  # pool over the image tokens only
    # fmt: on


def attach_petl(
    backbone: nn.Module, kind: Literal["adapter", "ssf", "vpt"], *, seed: int = 0, ffn_num: int = 64,
    adapter_scale: float = 0.1, prompt_tokens: int = 5, vpt_deep: bool = False,
) -> list[nn.Parameter]:
    """Freeze ``backbone`` and attach PETL modules of ``kind``; return their (trainable) parameters.

    Args:
        backbone: A timm model; changed in place (new modules under ``backbone.petl``, forward hooks).
        kind: "adapter", "ssf" or "vpt".
        seed: Seeds the random initialisations (SSF, VPT, the adapter's down-projection).
        ffn_num: Adapter bottleneck width (APER: 64).
        adapter_scale: Adapter output scale (AdaptFormer / APER: 0.1).
        prompt_tokens: VPT prompt length (APER: 5).
        vpt_deep: Deep VPT (prompts before every block) instead of shallow.

    Raises:
        ValueError: Unknown kind, or a backbone the kind does not support (e.g. VPT on a CNN).
    """
    if kind not in PETL_KINDS:
        raise ValueError(f"petl must be one of {', '.join(PETL_KINDS)}, got {kind!r}")
    backbone.requires_grad_(False)
    petl = nn.ModuleDict()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the adapter's Kaiming init draws from the global generator
        if kind == "adapter":
            _attach_adapter(backbone, petl, lambda dim, conv: Bottleneck(dim, ffn_num, adapter_scale, conv))
        elif kind == "ssf":
            _attach_ssf(backbone, petl, gen)
        else:
            _attach_vpt(backbone, petl, prompt_tokens, vpt_deep, gen)
    device = next(backbone.parameters()).device
    backbone.petl = petl.to(device)
    params = list(petl.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


class SwitchedBottleneck(nn.Module):
    """Several :class:`Bottleneck` adapters at one place of a block; only the ``active`` one runs.

    ``active = None`` (or no adapter yet) adds nothing: the block computes its pretrained function.
    """

    def __init__(self, dim: int, width: int, scale: float, conv: bool) -> None:
        super().__init__()
        self.dim, self.width, self.scale, self.conv = dim, width, scale, conv
        self.sets = nn.ModuleList()
        self.active: int | None = None

    def add(self, device: torch.device) -> Bottleneck:
        """Append a fresh adapter on ``device`` (its initialisation draws from the global generator)."""
        adapter = Bottleneck(self.dim, self.width, self.scale, self.conv).to(device)
        self.sets.append(adapter)
        return adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        return self.sets[self.active](x)


class AdapterBank:
    """An expandable list of adapter sets on one frozen backbone, one set active at a time (EASE).

    Each set is one :class:`Bottleneck` per block, wired in exactly as ``attach_petl(kind="adapter")``
    wires its single set (parallel to the ViT MLP, residual after each CNN block), so a bank with one
    set active computes what APER's adapter computes. The sets live under ``backbone.petl`` (keys
    ``<block>.sets.<k>.down.weight``...). Selecting set ``k`` costs nothing: the forward hooks read
    each place's ``active`` index. ``select(None)`` gives the pretrained backbone.

    Args:
        backbone: A timm ViT, EfficientNet/MobileNet-style or ResNet model; frozen and changed in place.
        ffn_num: Bottleneck width of every set.
        adapter_scale: Output scale of every set.

    Raises:
        ValueError: A backbone without supported blocks (as ``attach_petl``'s adapter).

    References:
        Zhou, Sun, Ye & Zhan, "Expandable Subspace Ensemble for Pre-Trained Model-Based Class-Incremental
        Learning", CVPR 2024; official LAMDA-PILOT ``backbone/vit_ease.py`` (``get_new_adapter``,
        ``add_adapter_to_list``, ``forward_proto(adapt_index)``).
    """

    def __init__(self, backbone: nn.Module, *, ffn_num: int = 64, adapter_scale: float = 0.1) -> None:
        backbone.requires_grad_(False)
        petl = nn.ModuleDict()
        _attach_adapter(backbone, petl, lambda dim, conv: SwitchedBottleneck(dim, ffn_num, adapter_scale, conv))
        self.device = next(backbone.parameters()).device
        backbone.petl = petl
        self.backbone = backbone
        self.places: list[SwitchedBottleneck] = list(petl.values())  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.places[0].sets)

    def add(self, seed: int) -> list[nn.Parameter]:
        """Append a new set (seeded), make it active, and return its trainable parameters."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the down-projection's Kaiming init draws from the global generator
            for place in self.places:
                place.add(self.device)
        self.select(len(self) - 1)
        params = self.parameters(len(self) - 1)
        for p in params:
            p.requires_grad_(True)
        return params

    def parameters(self, index: int) -> list[nn.Parameter]:
        """The parameters of set ``index``, block by block."""
        return [p for place in self.places for p in place.sets[index].parameters()]

    def freeze(self) -> None:
        """No set trains any more (EASE: earlier subspaces stay fixed)."""
        self.backbone.petl.requires_grad_(False)

    def select(self, index: int | None) -> None:
        """Make set ``index`` the one the backbone runs (None: none, the pretrained backbone)."""
        if index is not None and not 0 <= index < len(self):
            raise IndexError(f"adapter set {index} does not exist (the bank has {len(self)})")
        for place in self.places:
            place.active = index


class CosineHead(nn.Module):
    """``sigma * cos(f, w_c)`` with a learnable ``sigma`` (PyCIL / APER ``CosineLinear``, sigma starts at 1)."""

    def __init__(self, dim: int, n_classes: int, gen: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter((torch.rand(n_classes, dim, generator=gen) * 2 - 1) * bound)
        self.sigma = nn.Parameter(torch.ones(()))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.sigma * nn.functional.normalize(f, dim=1) @ nn.functional.normalize(self.weight, dim=1).T


class FirstSessionTuner:
    """Trains PETL modules of a backbone plus a cosine head on the first experience (APER, RanPAC Phase 1).

    Cross-entropy over the experience's classes, SGD (momentum 0.9) over the PETL parameters and the
    head, and the official code's per-epoch cosine annealing, ``CosineAnnealingLR(T_max=tuned_epochs,
    eta_min=min_lr)``: epoch ``e`` (counted from the examples seen) runs at
    ``min_lr + (lr - min_lr) * (1 + cos(pi e / tuned_epochs)) / 2``. The number of epochs actually
    run is the protocol's; with ``epochs = tuned_epochs`` this is the official schedule exactly.

    Args:
        backbone: The (trainable-path) backbone, already carrying ``params`` from :func:`attach_petl`.
        params: The PETL parameters.
        dim: Feature dimension.
        n_classes: Width of the head.
        lr: Initial learning rate (official ``init_lr``).
        weight_decay: SGD weight decay.
        tuned_epochs: ``T_max`` of the cosine annealing (official ``tuned_epoch``).
        min_lr: ``eta_min`` (official ``min_lr``).
        seed: Seeds the head's initialisation.
    """

    def __init__(self, backbone: nn.Module, params: list[nn.Parameter], dim: int, n_classes: int, *, lr: float,
                 weight_decay: float, tuned_epochs: int, min_lr: float, seed: int) -> None:  # fmt: skip
        device = next(backbone.parameters()).device
        self.head = CosineHead(dim, n_classes, torch.Generator().manual_seed(seed)).to(device)
        self.opt = torch.optim.SGD([*params, *self.head.parameters()], lr=lr, momentum=0.9,
                                   weight_decay=weight_decay)  # fmt: skip
        self.lr, self.min_lr, self.tuned_epochs = lr, min_lr, tuned_epochs
        self.seen = 0

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based)."""
        return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * epoch / self.tuned_epochs)) / 2

    def step(self, features: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, n_train: int) -> torch.Tensor:
        """One SGD step on a batch's (gradient-carrying) ``features``; ``classes`` masks the logits."""
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.seen // max(n_train, 1))
        out = self.head(features).masked_fill(~classes, torch.finfo(features.dtype).min)
        loss = nn.functional.cross_entropy(out, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.seen += len(y)
        return loss.detach()

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "opt": self.opt.state_dict(), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        self.seen = state["seen"]


@dataclass(frozen=True)
class FirstSessionConfig:
    """The first-session PETL fields that APER and RanPAC's Phase 1 share (mixed into their configs).

    Defaults: RevisitingCIL / LAMDA-PILOT ``exps/aper_*`` (lr 0.01, weight decay 5e-4, 20 epochs of cosine
    annealing to 0, adapter width 64, scale 0.1, 5 shallow VPT tokens).

    Attributes:
        petl: "adapter", "ssf" or "vpt" (ViT backbones only).
        lr: First-session learning rate (official ``init_lr``).
        weight_decay: SGD weight decay.
        tuned_epochs: ``T_max`` of the per-epoch cosine annealing (official ``tuned_epoch``).
        min_lr: Floor of the annealing (official ``min_lr``).
        ffn_num: Adapter bottleneck width.
        adapter_scale: Adapter output scale (AdaptFormer's 0.1).
        prompt_tokens: VPT prompt length (official ``prompt_token_num`` for shallow VPT).
        vpt_deep: Deep VPT instead of the official default shallow one.
    """

    petl: Literal["adapter", "ssf", "vpt"] = "adapter"
    lr: float = 0.01
    weight_decay: float = 5e-4
    tuned_epochs: int = 20
    min_lr: float = 0.0
    ffn_num: int = 64
    adapter_scale: float = 0.1
    prompt_tokens: int = 5
    vpt_deep: bool = False

    def check_first_session(self, backbone: str, active: bool = True) -> None:
        """Validate the fields (called by the config's ``__post_init__``); ``active``: whether the first
        session runs, so that ``petl`` must also fit ``backbone``.

        Raises:
            ValueError: An unknown ``petl``, one that cannot work on ``backbone``, or a bad value.
        """
        check_petl_backbone(self.petl if active else "adapter", backbone)
        if self.petl not in PETL_KINDS:
            raise ValueError(f"petl must be one of {', '.join(PETL_KINDS)}, got {self.petl!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.tuned_epochs < 1 or self.ffn_num < 1 or self.prompt_tokens < 1:
            raise ValueError("lr must be positive, min_lr >= 0, tuned_epochs, ffn_num and prompt_tokens >= 1")

    def tuner(self, backbone: nn.Module, dim: int, n_classes: int, seed: int) -> FirstSessionTuner:
        """Attach this config's PETL modules to ``backbone`` and the tuner that trains them with a head."""
        params = attach_petl(backbone, self.petl, seed=seed, ffn_num=self.ffn_num, adapter_scale=self.adapter_scale,
                             prompt_tokens=self.prompt_tokens, vpt_deep=self.vpt_deep)  # fmt: skip
        return FirstSessionTuner(backbone, params, dim, n_classes, lr=self.lr, weight_decay=self.weight_decay,
                                 tuned_epochs=self.tuned_epochs, min_lr=self.min_lr, seed=seed)  # fmt: skip


__all__ = ["PETL_KINDS", "AdapterBank", "Bottleneck", "CosineHead", "FirstSessionConfig", "FirstSessionTuner",
           "ScaleShift", "SwitchedBottleneck", "attach_petl", "check_petl_backbone"]
