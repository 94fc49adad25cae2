"""HiDe-Prompt: hierarchical decomposition into within-task, task-identity and task-adaptive prediction.

A frozen pretrained ViT is used twice. Uninstructed (no prompt), its [CLS] feature feeds the
task-identity inference (TII) head, an MLP + linear classifier over all classes; instructed, with
one task-specific prefix prompt per experience (e-prompt, ``layers``), it feeds the linear
classifier that gives the prediction. Hierarchy at test time: the TII head's class (seen classes
only) names the experience, whose prompt is then used.

1. Within-task prediction (WTP), during the experience: the experience's prompt (initialised from
   the previous one, used as ``(1 - m) P_t + m mean(P_<t)``) and the head learn by cross-entropy
   over the experience's classes plus ``reg`` times a contrastive term: the batch features and
   the stored prototypes of earlier classes (instructed features) form ``M``, and each row of
   ``M M^T / 0.8`` is classified as itself, which pushes new features away from old prototypes.
   After the experience the prompt is mixed with the mean of the earlier ones (momentum ``m``).
2. Task-adaptive prediction (TAP), after the experience: the instructed features of its classes
   (own prompt) are stored as class Gaussians (:class:`~cl_bench.components.gaussians.ClassMixture`,
   default k-means centroids with diagonal variances); from the second experience on the head is
   re-aligned on features sampled from the Gaussians of every seen class (classifier alignment).
3. Task-identity inference (TII), after the experience: the TII head trains on the experience's
   uninstructed features (cross-entropy over its classes), their class Gaussians are stored, and
   from the second experience on the TII head is aligned on features sampled from all seen classes.

The official code trains TII in a separate run (``--train_inference_task_only``, 20 epochs); here it
trains at the end of each experience on the frozen features of its training data, for
``tii_epochs``, which is the same computation (the TII head never sees the prompts).

References:
    Wang, Xie, Zhang, Huang, Su & Zhu, "Hierarchical Decomposition of Prompt-Based Continual Learning:
    Rethinking Obscured Sub-optimality", NeurIPS 2023. Official code
    thu-ml/HiDe-Prompt: ``training_scripts/train_cifar100_vit.sh`` (the recipe),
    ``configs/cifar100_hideprompt_5e.py`` (defaults), ``engines/hide_promtp_wtp_and_tap_engine.py``
    (WTP + TAP), ``engines/hide_tii_engine.py`` (TII), ``trainers/*_trainer.py`` (lr scaling),
    ``peft/prompt/hide_prompt.py`` and ``vits/hide_prompt_vision_transformer.py`` (prompts, TII MLP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.components.alignment import align, contrastive_loss
from cl_bench.components.gaussians import ClassMixture, MixtureMode
from cl_bench.components.prompts import Prefixes, PromptPool
from cl_bench.core.errors import ConfigError
from cl_bench.core.registry import METHODS
from cl_bench.core.types import Experience, StreamInfo
from cl_bench.families.vit_prompt import TINY_VIT, ViTConfig, ViTPromptMethod

# The official trainers scale every lr by batch / 256 with --batch-size 24 (trainers/hideprompt_trainer.py
# l.101-105, trainers/tii_trainer.py l.75-80; --unscale_lr True keeps the per-device batch).
_SCALE = 24 / 256


@dataclass(frozen=True)
class HiDePromptConfig(ViTConfig):
    """HiDe-Prompt hyper-parameters: the official 10-task Split CIFAR-100 recipe.

    Sources: ``training_scripts/train_cifar100_vit.sh`` (script), ``configs/cifar100_hideprompt_5e.py``
    (config, line numbers of the ``add_argument`` calls) of thu-ml/HiDe-Prompt.

    Attributes:
        lr: Adam lr of the prompts: the config's 0.03 (l.33; the second script call sets none) times
            24/256 = 0.0028125 (``trainers/hideprompt_trainer.py`` l.105). Adam betas (0.9, 0.999), eps 1e-8
            (l.19-22), and the script's ``--epochs 50`` per task is the protocol's ``--epochs``.
        weight_decay: 0.0: the config declares ``--weight-decay`` (0.0, l.27) and ``--weight_decay``
            (5e-4, l.144) for the same argparse destination, and argparse keeps the first default.
        lr_schedule: "step": the script's ``--sched step``, timm's StepLR with ``--decay-epochs 30`` and
            ``--decay-rate 0.1`` (l.44, l.51), no warm-up (``--warmup-epochs 0``, l.45).
        clip_grad: Gradient-norm clipping of every step (``--clip-grad 1.0``, l.24).
        head_lr_scale: The head's lr relative to the prompts' (``--larger_prompt_lr``:
            ``args.lr * 0.1`` for every non-prompt parameter, ``hideprompt_trainer.py`` l.107-111).
        layers: Blocks with the e-prompt prefix (``--e_prompt_layer_idx 0 1 2 3 4``, l.106).
        length: Prefix tokens per block, keys then values: the script's ``--length 5`` is 5 key and 5
            value tokens (``peft/prompt/hide_prompt.py`` l.39: shape ``(layers, 2, pool, length, ...)``).
        pool_size: Prompts, one per experience (``--size 10``, l.114); at least the number of experiences.
        prompt_momentum: ``m`` of the prompt mixing (script ``--prompt_momentum 0.01``).
        reg: Weight of the contrastive regularisation (script ``--reg 0.1``; engine ``orth_loss``).
        reg_temperature: Its temperature (0.8, engine l.539).
        ca_storage: How class statistics are stored (``--ca_storage_efficient_method``, default
            "multi-centroid", l.151).
        n_centroids: k-means clusters per class (``--n_centroids 10``, l.152).
        ca_epochs: Alignment epochs of the head and of the TII head (script ``--crct_epochs 30``).
        ca_lr: SGD lr (momentum 0.9) of the head's alignment (script ``--ca_lr 0.005``, not rescaled in the
            prompt trainer), cosine-annealed over ``ca_epochs`` (engine l.427-429). Its weight decay is the
            parameter group's ``args.weight_decay`` = 0, which overrides SGD's 5e-4.
        ca_samples: Features drawn per component (cluster) and class per alignment epoch, also the
            alignment batch (``args.batch_size * 5`` = 120, engine l.440); ``crct_num`` batches per epoch
            (the number of classes of the earlier experiences, l.432-433).
        tii_epochs: Epochs of the TII head per experience (first script call ``--epochs 20``).
        tii_lr: Adam lr of the TII head: ``--lr 0.0005`` times 24/256 (``tii_trainer.py`` l.79), constant
            (``--sched constant``).
        tii_batch_size: TII training batch (``--batch-size 24``).
        tii_hidden: Hidden widths of the TII MLP in multiples of the ViT width
            (``--original_model_mlp_structure 2``, l.142): Linear(d, 2d), GELU, Linear(2d, d), plus the
            input, then LayerNorm (``MlpMapping`` in ``vits/hide_prompt_vision_transformer.py``).
        tii_ca_lr: SGD lr of the TII alignment: ``--ca_lr 0.005`` times 24/256 (``tii_trainer.py`` l.80).
        tii_ca_samples: Features per component and class per TII alignment epoch, and its batch
            (``args.batch_size`` = 24, ``hide_tii_engine.py`` l.305).
        feature_batch_size: Examples per forward pass when extracting features at experience ends.
    """

    lr: float = 0.03 * _SCALE
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine", "step"] = "step"
    clip_grad: float = 1.0
    head_lr_scale: float = 0.1
    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    length: int = 10
    pool_size: int = 10
    prompt_momentum: float = 0.01
    reg: float = 0.1
    reg_temperature: float = 0.8
    ca_storage: MixtureMode = "multi-centroid"
    n_centroids: int = 10
    ca_epochs: int = 30
    ca_lr: float = 0.005
    ca_samples: int = 120
    tii_epochs: int = 20
    tii_lr: float = 0.0005 * _SCALE
    tii_batch_size: int = 24
    tii_hidden: tuple[int, ...] = (2,)
    tii_ca_lr: float = 0.005 * _SCALE
    tii_ca_samples: int = 24
    feature_batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ca_storage not in ("multi-centroid", "covariance", "variance"):
            raise ValueError(f"ca_storage must be 'multi-centroid', 'covariance' or 'variance', "
                             f"got {self.ca_storage!r}")  # fmt: skip
        if not 0 <= self.prompt_momentum < 1 or self.reg < 0 or self.reg_temperature <= 0:
            raise ValueError("need 0 <= prompt_momentum < 1, reg >= 0 and reg_temperature > 0")
        counts = ("n_centroids", "ca_samples", "tii_batch_size", "tii_ca_samples", "feature_batch_size", "pool_size")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ca_epochs < 0 or self.tii_epochs < 0 or min(self.tii_hidden, default=1) < 1:
            raise ValueError("ca_epochs and tii_epochs must be >= 0 and tii_hidden widths >= 1")
        if min(self.ca_lr, self.tii_lr, self.tii_ca_lr, self.head_lr_scale) <= 0:
            raise ValueError("ca_lr, tii_lr, tii_ca_lr and head_lr_scale must be positive")


def _trunc_normal_init(module: nn.Module) -> None:
    """timm's ViT init of every Linear: truncated normal (std 0.02), zero bias (``init_weights_vit_timm``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


class TaskIdentityHead(nn.Module):
    """The TII classifier on uninstructed features: residual MLP, LayerNorm, linear head over all classes.

    ``MlpMapping`` of the official ViT with ``hidden=[2]`` (dropout 0): ``norm(x + mlp(x))``, then the
    head. ``task_of`` maps a class to the experience that introduced it (-1: not seen yet).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        widths = [dim, *(dim * h for h in hidden), dim]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)
        _trunc_normal_init(self)
        self.register_buffer("task_of", torch.full((n_classes,), -1, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x + self.mlp(x)))


@METHODS.register(
    "hide_prompt",
    reference="Wang et al., 'Hierarchical Decomposition of Prompt-Based Continual Learning: Rethinking "
    "Obscured Sub-optimality' (NeurIPS 2023)",
)
class HiDePrompt(ViTPromptMethod):
    """Task-specific prompts, Gaussian-replayed task-identity head and classifier alignment on a frozen ViT."""

    Config: ClassVar[type] = HiDePromptConfig
    conformance_config: ClassVar[dict[str, object]] = {
        **TINY_VIT, "layers": (0, 1), "length": 4, "pool_size": 3, "lr": 1e-2, "lr_schedule": "constant",
        "n_centroids": 2, "ca_epochs": 2, "ca_samples": 16, "tii_epochs": 5, "tii_lr": 1e-2, "tii_ca_lr": 1e-2,
        "tii_ca_samples": 8, "tii_batch_size": 8,
    }  # fmt: skip

    def build(self, info: StreamInfo) -> None:
        cfg = self.config
        if cfg.pool_size < info.n_experiences:
            raise ConfigError(f"hide_prompt keeps one prompt per experience, but pool_size={cfg.pool_size} < "
                              f"{info.n_experiences} experiences; set --set pool_size="
                              f"{info.n_experiences}")  # fmt: skip
        d, n = self.vit.embed_dim, info.n_classes
        self.pool = PromptPool(cfg.layers, cfg.pool_size, cfg.length, d, d).to(self.device)
        with torch.no_grad():  # uniform in [-1, 1] (peft/prompt/hide_prompt.py l.44-45); keys unused (prompt_key False)
            for prompt in self.pool.prompts:
                prompt.uniform_(-1, 1)
        _trunc_normal_init(self.head)
        self.tii = TaskIdentityHead(d, cfg.tii_hidden, n).to(self.device)
        k = cfg.n_centroids
        self.tap_stats = ClassMixture(n, d, cfg.ca_storage, k).to(self.device)  # instructed features
        self.tii_stats = ClassMixture(n, d, cfg.ca_storage, k).to(self.device)  # uninstructed features

    def trainable(self) -> list[nn.Module]:
        return [self.head, self.pool, self.tii, self.tap_stats, self.tii_stats]

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        # The TII head and the statistics are trained / fitted at the experience's end, not by this optimiser.
        return [(list(self.pool.prompts.parameters()), 1.0), (list(self.head.parameters()), self.config.head_lr_scale)]

    def new_task(self, exp: Experience) -> None:
        # A fresh optimiser per task (--reinit_optimizer True, engine l.223-235) and the new prompt starts as a
        # copy of the previous one (shared_prompt_pool with top_k 1, engine l.257-283).
        self.opt.state.clear()
        if exp.index > 0:
            with torch.no_grad():
                for prompt in self.pool.prompts:
                    prompt[exp.index] = prompt[exp.index - 1]

    def _task_prefixes(self, task: int, batch: int, momentum: float) -> Prefixes:
        """Prefixes of prompt ``task``, mixed as ``(1 - m) P_t + m mean(P_<t)`` (detached) when m > 0."""
        out: Prefixes = {}
        for layer, prompt in zip(self.pool.layers, self.pool.prompts, strict=True):
            p = prompt[task]
            if momentum > 0 and task > 0:
                p = (1 - momentum) * p + momentum * prompt[:task].detach().mean(0)
            half = p.shape[0] // 2
            out[layer] = (p[:half].expand(batch, -1, -1), p[half:].expand(batch, -1, -1))
        return out

    def infer_task(self, query: torch.Tensor) -> torch.Tensor:
        """The experience of each input: that of the TII head's best seen class."""
        seen = self.tii.task_of >= 0
        if not bool(seen.any()):
            return torch.zeros(len(query), dtype=torch.long, device=query.device)
        cls = self.tii(query).masked_fill(~seen, float("-inf")).argmax(1)
        return self.tii.task_of[cls]

    def features(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor | float]:
        cfg = self.config
        if train:
            # Training knows its experience: its own prompt (use_prompt_mask, vits/... l.587-595).
            feats = self.vit(x, self._task_prefixes(self.task, len(x), cfg.prompt_momentum))
            if not cfg.reg:
                return feats, 0.0
            return feats, cfg.reg * contrastive_loss(feats, self.tap_stats.prototypes(), cfg.reg_temperature)
        idx = self.infer_task(self.vit.query(x))
        return self.vit(x, self.pool.prefixes(idx[:, None])), 0.0

    @torch.no_grad()
    def _extract(self, x: torch.Tensor, task: int | None) -> torch.Tensor:
        """Uninstructed (task None) or prompt-``task`` features of adapted inputs, in chunks."""
        self.vit.eval()
        bs = self.config.feature_batch_size
        parts = []
        for i in range(0, len(x), bs):
            xb = self.adapt_input(x[i : i + bs])
            parts.append(self.vit.query(xb) if task is None else self.vit(xb, self._task_prefixes(task, len(xb), 0.0)))
        return torch.cat(parts)

    def _train_tii(self, q: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, gen: torch.Generator) -> None:
        """Cross-entropy over the experience's classes on its uninstructed features (``hide_tii_engine.py``)."""
        cfg = self.config
        opt = torch.optim.Adam(self.tii.parameters(), lr=cfg.tii_lr, betas=(0.9, 0.999), weight_decay=0.0)
        current = torch.zeros(len(self.tii.task_of), dtype=torch.bool, device=q.device)
        current[classes] = True
        for _ in range(cfg.tii_epochs):
            order = torch.randperm(len(q), generator=gen).to(q.device)
            for i in range(0, len(q), cfg.tii_batch_size):
                idx = order[i : i + cfg.tii_batch_size]
                loss = F.cross_entropy(self.tii(q[idx]).masked_fill(~current, float("-inf")), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad > 0:  # --clip-grad 1.0 of the TII run too (hide_tii_engine.py l.61)
                    torch.nn.utils.clip_grad_norm_(self.tii.parameters(), cfg.clip_grad)
                opt.step()

    def end_experience(self, exp: Experience) -> None:
        cfg, t = self.config, exp.index
        if exp.train is None or len(exp.train) == 0:
            return
        # Seeded per (run seed, experience): a run resumed at this boundary draws the same numbers.
        gen = torch.Generator().manual_seed(self.seed * 7919 + t)
        if cfg.prompt_momentum > 0 and t > 0:  # engine l.315-324
            with torch.no_grad():
                for prompt in self.pool.prompts:
                    prompt[t] = (1 - cfg.prompt_momentum) * prompt[t] + cfg.prompt_momentum * prompt[:t].mean(0)
        x, y = exp.train.batch(slice(None), device=self.device)
        classes = torch.as_tensor(list(exp.classes), device=self.device)
        n_prev = int(self.tii.task_of.ge(0).sum())  # classes of the earlier experiences (crct_num)
        seen = self.seen.clone()
        # TAP: class Gaussians of the instructed features, then the head's alignment (engine l.326-337).
        self.tap_stats.fit(self._extract(x, t), y, seed=self.seed * 7919 + t)
        if t > 0:
            align(self.head, list(self.head.parameters()), self.tap_stats, seen, n_prev, cfg.ca_lr, cfg.ca_epochs,
                  cfg.ca_samples, gen)  # fmt: skip
        # TII: train on the uninstructed features, store their Gaussians, align (hide_tii_engine.py l.228-247).
        q = self._extract(x, None)
        self.tii.train()
        self._train_tii(q, y, classes, gen)
        self.tii_stats.fit(q, y, seed=self.seed * 7919 + t)
        self.tii.task_of[classes] = t
        if t > 0:
            align(self.tii, list(self.tii.parameters()), self.tii_stats, seen, n_prev, cfg.tii_ca_lr, cfg.ca_epochs,
                  cfg.tii_ca_samples, gen)  # fmt: skip
        self.tii.eval()
