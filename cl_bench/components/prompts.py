"""Prompts for frozen Vision Transformers: prefix tuning, key-matched prompt pools, CODA components.

A frozen timm ``VisionTransformer`` is wrapped by :class:`PromptedViT`, which re-implements the
blocks' attention (from each block's own ``qkv`` / ``proj`` weights) so learnable prefixes can be
prepended to the keys and values of chosen blocks (prefix tuning: a prompt of length L is split into
L/2 key and L/2 value tokens, as in the CODA-Prompt reference code for L2P++, DualPrompt and CODA-P).
The query that selects or weights prompts is the pooled [CLS] feature of a plain frozen forward pass.

:class:`ViTPromptMethod` is the small shared base of the prompt methods (l2p, dualprompt,
coda_prompt, one_prompt) and of l2_vit: it builds the backbone from the config, adapts stream inputs
to it, owns the linear classifier, the optimiser over the trainable parameters, the class masking of
the CODA-Prompt reference code and the checkpoint state. Each method fills in :meth:`features`.

References:
    Li & Liang. "Prefix-Tuning: Optimizing Continuous Prompts for Generation". ACL 2021.
    Wang et al. "Learning to Prompt for Continual Learning". CVPR 2022 (L2P).
    Wang et al. "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning". ECCV 2022.
    Smith et al. "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
    Continual Learning". CVPR 2023 (reference code GT-RIPL/CODA-Prompt: L2P++, DualPrompt, CODA-P).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.backbones import backbone_tag, check_backbone_name, create_backbone
from cl_bench.components.backbone_input import BackboneInput
from cl_bench.errors import ConfigError
from cl_bench.method import Caps, Method
from cl_bench.types import Batch, Experience, PredictContext, StreamInfo

Prefixes = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""Block index -> (key prefix ``[B, Lk, D]``, value prefix ``[B, Lv, D]``)."""

# A timm ViT small enough for the conformance suite and unit tests: 4 patches of the 8x8 adapted
# toy images, 2 blocks of width 32 (random weights, no file needed).
TINY_VIT: dict[str, Any] = {"backbone": "vit_tiny_patch16_224", "image_size": 8, "patch_size": 4, "depth": 2,
                            "embed_dim": 32, "num_heads": 2}  # fmt: skip


def require_vit(model: nn.Module, method: str, backbone: str) -> None:
    """Raise ConfigError unless ``model`` is a timm VisionTransformer with a [CLS] token."""
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer) and getattr(model, "cls_token", None) is not None:
        return
    raise ConfigError(
        f"method {method!r} prompts the attention blocks of a Vision Transformer, but backbone {backbone!r} is a "
        f"{type(model).__name__}. Choose a timm ViT of the VisionTransformer family with a [CLS] token, e.g. "
        f"--set backbone=vit_base_patch16_224 (ViT-B/16, as in the papers) or vit_tiny_patch16_224, with "
        f"--set weights=PATH to its weight file."
    )


def merge_prefixes(*parts: Prefixes) -> Prefixes:
    """Concatenate the prefixes of several prompt sources block by block (e.g. DualPrompt's e and g)."""
    out: Prefixes = {}
    for part in parts:
        for layer, (pk, pv) in part.items():
            if layer in out:
                out[layer] = (torch.cat([out[layer][0], pk], 1), torch.cat([out[layer][1], pv], 1))
            else:
                out[layer] = (pk, pv)
    return out


def _prefixed_block(blk: nn.Module, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """A timm ViT block's forward with ``pk``/``pv`` prepended to its attention keys/values."""
    attn = blk.attn
    b, n, c = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(blk.norm1(x)).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    # Prefixes live in the projected key/value space (as in the CODA-Prompt reference ViT): no q/k norm.
    k = torch.cat([pk.reshape(b, -1, heads, head_dim).transpose(1, 2), k], 2)
    v = torch.cat([pv.reshape(b, -1, heads, head_dim).transpose(1, 2), v], 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, heads * head_dim)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(blk.norm1(x)).sigmoid()
    out = attn.proj(getattr(attn, "norm", nn.Identity())(out))
    x = x + blk.drop_path1(blk.ls1(out))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


class PromptedViT(nn.Module):
    """A timm VisionTransformer whose chosen blocks take key/value prefixes.

    Args:
        vit: The backbone (``num_classes=0``); its parameters are frozen unless ``frozen=False``.
        frozen: Freeze every backbone parameter (all prompt methods; l2_vit unfreezes some).
    """

    def __init__(self, vit: nn.Module, frozen: bool = True) -> None:
        super().__init__()
        self.vit = vit
        if frozen:
            vit.requires_grad_(False)
        self.embed_dim: int = vit.embed_dim
        self.depth = len(vit.blocks)

    def train(self, mode: bool = True) -> PromptedViT:
        super().train(mode)
        # Dropout / drop-path of the pretrained network stay off: prompts are tuned on the inference graph.
        self.vit.eval()
        return self

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled [CLS] feature of a plain frozen forward pass (the prompt query)."""
        return self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor, prefixes: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor:  # fmt: skip
        """Pooled [CLS] feature with ``prefixes`` (block index -> (keys, values)) in the attention."""
        vit = self.vit
        if not prefixes:
            return vit.forward_head(vit.forward_features(x), pre_logits=True)
        bad = [i for i in prefixes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"prompt layers {bad} do not exist in a ViT of depth {self.depth}; "
                              f"choose layers in 0..{self.depth - 1}")  # fmt: skip
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for i, blk in enumerate(vit.blocks):
            h = blk(h) if i not in prefixes else _prefixed_block(blk, h, *prefixes[i])
        return vit.forward_head(vit.norm(h), pre_logits=True)


def _split(prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L, D]`` -> first half (keys), second half (values)."""
    half = prompt.shape[1] // 2
    return prompt[:, :half], prompt[:, half:]


class PromptPool(nn.Module):
    """A pool of prompts with one learnable key each, selected by cosine similarity to the query.

    L2P selects the top-k keys per example at training and test time; DualPrompt's expert prompts
    use the experience's own prompt during training and the best key (k = 1) at test time; a pool of
    size 1 is a single shared prompt (DualPrompt's general prompt, OnePrompt). Prompts and keys are
    initialised uniformly in [0, 1) as in the CODA-Prompt reference code (``tensor_prompt``).

    Args:
        layers: Blocks that get the prompts as prefixes.
        pool_size: Number of prompts (and keys).
        length: Prompt length per block (even: half keys, half values).
        embed_dim: Width of the ViT.
        key_dim: Width of the keys (the query's width).
    """

    def __init__(self, layers: tuple[int, ...], pool_size: int, length: int, embed_dim: int, key_dim: int) -> None:
        super().__init__()
        if length < 2 or length % 2:
            raise ConfigError(f"prompt length must be an even number >= 2 (half keys, half values), got {length}")
        self.layers = tuple(layers)
        self.prompts = nn.ParameterList(
            [nn.Parameter(torch.rand(pool_size, length, embed_dim)) for _ in self.layers])  # fmt: skip
        self.keys = nn.Parameter(torch.rand(pool_size, key_dim))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``[B, pool]`` of each (detached) query to each key."""
        return F.normalize(query.detach(), dim=1) @ F.normalize(self.keys, dim=1).T

    def select(self, query: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices ``[B, k]`` of the ``top_k`` best-matching keys, and the similarities."""
        sim = self.similarity(query)
        return sim.topk(min(top_k, sim.shape[1]), dim=1).indices, sim

    def prefixes(self, idx: torch.Tensor) -> Prefixes:
        """Prefixes made of the prompts at ``idx`` ``[B, k]``, concatenated along the length."""
        out: Prefixes = {}
        for layer, prompt in zip(self.layers, self.prompts, strict=True):
            chosen = prompt[idx]  # [B, k, L, D]
            half = chosen.shape[2] // 2
            out[layer] = (chosen[:, :, :half].flatten(1, 2), chosen[:, :, half:].flatten(1, 2))
        return out

    def shared(self, batch_size: int) -> Prefixes:
        """Prefixes of prompt 0 for every example (single-prompt use)."""
        return {layer: _split(prompt[0].expand(batch_size, -1, -1))
                for layer, prompt in zip(self.layers, self.prompts, strict=True)}  # fmt: skip

    @staticmethod
    def match_loss(sim: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``1 - cos(query, key)`` summed over the chosen keys, averaged over the batch (pulls keys)."""
        return (1.0 - sim.gather(1, idx)).sum(1).mean()


def gram_schmidt_(param: torch.Tensor, start: int, stop: int, generator: torch.Generator) -> None:
    """Re-draw rows ``start:stop`` of ``param`` (flattened per row) orthonormal to every earlier row.

    CODA-P initialises each task's new components orthogonally to all earlier ones. When the space
    is exhausted (more rows than the flattened width, e.g. in tiny test ViTs) a row gets a random
    unit vector instead.
    """
    with torch.no_grad():
        flat = param.view(param.shape[0], -1)
        for i in range(start, stop):
            v = torch.randn(flat.shape[1], generator=generator).to(flat)
            basis = F.normalize(flat[:i], dim=1)
            for _ in range(2):  # twice: classical Gram-Schmidt loses orthogonality once
                v = v - basis.T @ (basis @ v)
            if v.norm() < 1e-4:
                v = torch.randn(flat.shape[1], generator=generator).to(flat)
            flat[i] = v / v.norm()


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """``mean((T T^T - I)^2)`` over the rows of ``t`` flattened."""
    flat = t.flatten(1)
    return (flat @ flat.T - torch.eye(len(flat), device=flat.device)).pow(2).mean()


class CodaPrompt(nn.Module):
    """CODA-P's decomposed prompt: components, keys and attention vectors, weighted per input.

    Per block, a prompt is ``sum_m alpha_m P_m`` with ``alpha_m = cos(q * A_m, K_m)`` for the query
    ``q``. The ``pool_size`` components are split evenly over the experiences: experience t trains
    only its own slice (earlier ones are frozen, later ones unused), which is Gram-Schmidt
    initialised orthogonal to the earlier slices when the experience begins.

    Args:
        layers: Blocks that get prefixes (CODA-P: 0-4).
        pool_size: Total number of components (CODA-P: 100).
        length: Prompt length per block (CODA-P: 8).
        embed_dim: Width of the ViT.
        key_dim: Width of keys and attention vectors (the query's width).
        n_tasks: Number of experiences the components are divided over.
    """

    def __init__(self, layers: tuple[int, ...], pool_size: int, length: int, embed_dim: int, key_dim: int,
                 n_tasks: int) -> None:  # fmt: skip
        super().__init__()
        if length < 2 or length % 2:
            raise ConfigError(f"prompt length must be an even number >= 2 (half keys, half values), got {length}")
        if pool_size < n_tasks:
            raise ConfigError(f"coda_prompt divides pool_size={pool_size} components over {n_tasks} experiences; "
                              f"set pool_size >= {n_tasks} (the paper uses 10 per task: 100 for 10 tasks)")  # fmt: skip
        self.layers = tuple(layers)
        self.per_task = pool_size // n_tasks
        self.components = nn.ParameterList([nn.Parameter(torch.zeros(pool_size, length, embed_dim))
                                            for _ in self.layers])  # fmt: skip
        self.keys = nn.ParameterList([nn.Parameter(torch.zeros(pool_size, key_dim)) for _ in self.layers])
        self.attention = nn.ParameterList([nn.Parameter(torch.zeros(pool_size, key_dim)) for _ in self.layers])

    def _groups(self) -> Iterator[nn.Parameter]:
        for group in (self.components, self.keys, self.attention):
            yield from group

    def begin_task(self, task: int, generator: torch.Generator) -> None:
        """Orthogonal initialisation of task ``task``'s slice of every component, key and attention vector."""
        start, stop = task * self.per_task, (task + 1) * self.per_task
        for p in self._groups():
            gram_schmidt_(p.data, start, stop, generator)

    def forward(self, query: torch.Tensor, task: int, train: bool) -> tuple[Prefixes, torch.Tensor]:
        """Prefixes for ``query`` with the components of tasks ``0..task``, and the orthogonality penalty.

        During training only task ``task``'s slice receives gradients.
        """
        start, stop = task * self.per_task, (task + 1) * self.per_task
        out: Prefixes = {}
        ortho = query.new_zeros(())
        q = query.detach()
        for layer, p, k, a in zip(self.layers, self.components, self.keys, self.attention, strict=True):
            if train:
                p, k, a = (torch.cat([t[:start].detach(), t[start:stop]]) for t in (p, k, a))
                ortho = ortho + ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p)
            else:
                p, k, a = p[:stop], k[:stop], a[:stop]
            alpha = (F.normalize(q[:, None, :] * a[None], dim=2) * F.normalize(k, dim=1)[None]).sum(2)  # [B, M]
            out[layer] = _split(torch.einsum("bm,mld->bld", alpha, p))
        return out, ortho


# -- shared method base --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViTConfig:
    """Backbone, input and optimiser fields shared by the methods on a (prompted) ViT.

    Defaults follow the CODA-Prompt reference code for 10-task Split CIFAR-100 with ViT-B/16:
    Adam (betas 0.9, 0.999) at lr 1e-3, no weight decay; the CE "heuristic" masks the classes of
    earlier experiences while training on a new one.

    Attributes:
        backbone: timm architecture (a VisionTransformer), built without classifier.
        weights: Local weight file of the backbone (None = random weights: tests and smoke runs only).
        image_size: Input side the backbone gets (None = the architecture's own, 224 for ViT-B/16).
        patch_size: Patch size override (None = the architecture's; for small test ViTs).
        depth: Number of blocks override (None = the architecture's).
        embed_dim: Width override (None = the architecture's).
        num_heads: Attention heads override (None = the architecture's).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        mask_old_classes: While training, exclude classes of earlier experiences from the softmax.
    """

    backbone: str = "vit_base_patch16_224"
    weights: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    mask_old_classes: bool = True

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("image_size", "patch_size", "depth", "embed_dim", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for the architecture's own), got {value}")
        check_backbone_name(self.backbone)  # unknown names fail before any run starts

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model`` from the set overrides."""
        names = {"img_size": self.image_size, "patch_size": self.patch_size, "depth": self.depth,
                 "embed_dim": self.embed_dim, "num_heads": self.num_heads}  # fmt: skip
        return {k: v for k, v in names.items() if v is not None}


class ViTPromptMethod(Method):
    """Shared base of the methods on a (prompted) ViT: the method supplies :meth:`features`.

    Training: cross-entropy on the seen classes (with ``mask_old_classes``: on the current
    experience's classes only, the CODA-Prompt reference code's heuristic) plus the auxiliary loss
    :meth:`features` returns. Prediction: logits of classes not yet seen are set to the lowest
    float, so a class-incremental prediction never names a future class.
    """

    Config: ClassVar[type] = ViTConfig
    caps: ClassVar[Caps] = Caps(pretrained_backbone=True, exceptions=((
        "check_beats_chance",
        "the conformance backbone is a randomly initialised tiny ViT whose [CLS] features barely depend on "
        "the input, so ~20 steps cannot separate the toy classes; tests/test_prompts.py runs the same check "
        "with the tiny ViT briefly pretrained (a weight file), where every method must beat chance",
    ),))  # fmt: skip
    conformance_config: ClassVar[dict[str, Any]] = dict(TINY_VIT)
    #: Whether the backbone stays frozen (l2_vit unfreezes part of it).
    frozen_backbone: ClassVar[bool] = True

    def setup(self, info: StreamInfo, seed: int) -> None:
        super().setup(info, seed)
        cfg = self.config
        self.device = torch.device(info.device)
        vit = create_backbone(cfg.backbone, cfg.weights, **cfg.backbone_kwargs())
        require_vit(vit, self.name or type(self).__name__, cfg.backbone)
        # Stream batches -> the backbone's input size, channels and normalisation.
        self.adapt_input = BackboneInput.for_backbone(vit, cfg.image_size).for_stream(info.input_transform)
        self.vit = PromptedViT(vit, frozen=self.frozen_backbone).to(self.device)
        self.head = nn.Linear(self.vit.embed_dim, info.n_classes).to(self.device)
        self.build(info)
        params = [p for m in self.trainable() for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        self.seen = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.current = torch.zeros(info.n_classes, dtype=torch.bool, device=self.device)
        self.task = -1

    def record_extras(self) -> dict[str, Any]:
        return {"backbone": backbone_tag(self.config.backbone, self.config.weights)}

    # -- hooks for the methods --------------------------------------------------------------------------
    def build(self, info: StreamInfo) -> None:
        """Create the method's prompt modules (called in setup, before the optimiser)."""

    def trainable(self) -> list[nn.Module]:
        """Modules whose parameters (with ``requires_grad``) the optimiser updates."""
        return [self.head]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Features of adapted inputs ``x`` and an auxiliary loss (0 at test time)."""
        raise NotImplementedError

    def new_task(self, exp: Experience) -> None:
        """Called when an experience begins, after ``self.task`` is updated."""

    # -- the protocol -----------------------------------------------------------------------------------
    def begin_experience(self, exp: Experience) -> None:
        self.task = exp.index
        self.current.zero_()
        self.current[list(exp.classes)] = True
        self.seen[list(exp.classes)] = True
        self.new_task(exp)

    def logits(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        feats, aux = self.features(self.adapt_input(x), train)
        return self.head(feats), aux

    def observe(self, batch: Batch) -> dict[str, Any]:
        self.vit.train()
        out, aux = self.logits(batch.x, train=True)
        allowed = self.current if self.config.mask_old_classes else self.seen
        loss = F.cross_entropy(out.masked_fill(~allowed, float("-inf")), batch.y) + aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def predict(self, x: torch.Tensor, ctx: PredictContext) -> torch.Tensor:
        self.vit.eval()
        out, _ = self.logits(x, train=False)
        if bool(self.seen.any()):
            out = out.masked_fill(~self.seen, torch.finfo(out.dtype).min)
        return out

    def state_dict(self) -> dict[str, Any]:
        modules = {f"m{i}": m.state_dict() for i, m in enumerate(self.trainable())}
        return {"modules": modules, "opt": self.opt.state_dict(), "seen": self.seen.clone(),
                "current": self.current.clone(), "task": self.task}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, m in enumerate(self.trainable()):
            m.load_state_dict(state["modules"][f"m{i}"])
        self.opt.load_state_dict(state["opt"])
        self.seen.copy_(state["seen"])
        self.current.copy_(state["current"])
        self.task = state["task"]


__all__ = ["TINY_VIT", "CodaPrompt", "PromptPool", "PromptedViT", "Prefixes", "ViTConfig", "ViTPromptMethod",
           "gram_schmidt_", "merge_prefixes", "ortho_penalty", "require_vit"]  # fmt: skip
