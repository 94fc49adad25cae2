"""Prompts for frozen Vision Transformers: prefix tuning, key-matched prompt pools, CODA components.

A frozen timm ``VisionTransformer`` is wrapped by :class:`PromptedViT`, which re-implements the
blocks' attention (from each block's own ``qkv`` / ``proj`` weights) so learnable prefixes can be
prepended to the keys and values of chosen blocks (prefix tuning: a prompt of length L is split into
L/2 key and L/2 value tokens, as in the CODA-Prompt reference code for L2P++, DualPrompt and CODA-P).
The query that selects or weights prompts is the pooled [CLS] feature of a plain frozen forward pass.

The method family built on these (:class:`~cl_bench.families.vit_prompt.ViTPromptMethod`) lives in
:mod:`cl_bench.families.vit_prompt`.

References:
    Li & Liang. "Prefix-Tuning: Optimizing Continuous Prompts for Generation". ACL 2021.
    Wang et al. "Learning to Prompt for Continual Learning". CVPR 2022 (L2P).
    Wang et al. "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning". ECCV 2022.
    Smith et al. "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
    Continual Learning". CVPR 2023 (reference code GT-RIPL/CODA-Prompt: L2P++, DualPrompt, CODA-P).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.core.errors import ConfigError

Prefixes = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""Block index -> (key prefix ``[B, Lk, D]``, value prefix ``[B, Lv, D]``)."""

# timm modules whose models are (subclasses of) ``VisionTransformer``: a name-level check before any run.
_VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.vision_transformer_hybrid")


def _not_a_vit(who: str, backbone: str, kind: str) -> ConfigError:
    return ConfigError(
        f"{who} works on the attention blocks of a Vision Transformer, but backbone {backbone!r} is "
        f"{kind}. Choose a timm ViT of the VisionTransformer family with a [CLS] token, e.g. "
        f"--set backbone=vit_base_patch16_224 (ViT-B/16, as in the papers) or vit_tiny_patch16_224, with "
        f"--set weights=PATH to its weight file."
    )


def require_vit_name(backbone: str, who: str = "this method") -> None:
    """Raise ConfigError unless timm builds ``backbone`` in its VisionTransformer modules."""
    from timm.models import model_entrypoint

    module = model_entrypoint(backbone).__module__
    if module not in _VIT_MODULES:
        raise _not_a_vit(who, backbone, f"a {module.rsplit('.', 1)[-1]} model")


def require_vit(model: nn.Module, method: str, backbone: str) -> None:
    """Raise ConfigError unless ``model`` is a timm VisionTransformer with a [CLS] token."""
    from timm.models.vision_transformer import VisionTransformer

    if not (isinstance(model, VisionTransformer) and getattr(model, "cls_token", None) is not None):
        raise _not_a_vit(f"method {method!r}", backbone, f"a {type(model).__name__}")


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
