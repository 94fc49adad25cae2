"""Stream types: tensor datasets, experiences, scenarios, and what methods see.

Data small enough for memory is held as tensors and batched by indexing (no
per-sample ``Dataset.__getitem__`` on the hot path); the per-batch augmentation
(training only) and transform run on whole batches, on the device.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Setting = Literal["class_il", "task_il", "domain_il"]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""A training batch augmentation: ``(stored-form batch, CPU generator) -> batch`` of the same form."""
SETTINGS: tuple[str, ...] = ("class_il", "task_il", "domain_il")


@dataclass(frozen=True)
class Standardize:
    """Batch transform: ``(x / scale - mean) / std`` per channel, as float32.

    Stored images stay compact (uint8); this runs on each batch, on the device.
    """

    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) / self.scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, device=x.device).view(shape)
        std = torch.tensor(self.std, device=x.device).view(shape)
        return (x - mean) / std


@dataclass(frozen=True)
class TrainView:
    """Turns stored-form (raw) inputs into a training view: the stream's augmentation, then its transform.

    A training :class:`~cl_bench.core.types.Batch` carries the raw inputs and this callable, so a replay
    memory can keep un-augmented, un-normalised examples and draw a fresh augmentation each time it
    replays them (mammoth's ``not_aug_inputs``; Avalanche re-applies the train transform to its buffer).
    Without an augmentation (or without a generator) the view is the plain batch transform, so replaying
    gives bit-for-bit the inputs the network saw when the example arrived.

    Attributes:
        augment: Training augmentation on stored-form batches (None = none).
        transform: Batch transform from stored form to model input (None = identity).

    References:
        Buzzega et al. "Dark experience for general continual learning: a strong, simple baseline". NeurIPS 2020
            (official code github.com/aimagelab/mammoth, ``utils/buffer.py``: the buffer applies the train
            transform to stored ``not_aug_inputs`` in ``get_data``).
    """

    augment: Augment | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The model inputs for ``raw``; augmented only when an augmentation and a generator are given."""
        x = raw
        if generator is not None and self.augment is not None and len(x):
            x = self.augment(x, generator)
        return self.transform(x) if self.transform is not None else x


class TensorData:
    """A labelled dataset held as tensors.

    Args:
        x: Stored inputs, first dimension = examples (uint8 images, usually).
        y: Integer labels (int64), one per example.
        transform: Batch transform from stored form to model input (e.g.
            :class:`Standardize`). Applied after indexing, on the batch's device.
        t: Per-example task ids, for data that mixes tasks (e.g. joint training
            in a task-incremental stream); None means "the experience's task".
        augment: Training-time batch augmentation ``augment(x, generator)`` on
            stored-form inputs (e.g. :class:`cl_bench.data.augment.CropFlip`), run
            before ``transform`` only when :meth:`batch` is given a generator
            (the runner passes one, seeded per batch, for training batches).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        t: torch.Tensor | None = None,
        augment: Augment | None = None,
    ) -> None:
        if len(x) != len(y) or (t is not None and len(t) != len(y)):
            raise ValueError(f"x, y (and t) must have one entry per example: {len(x)} vs {len(y)}")
        self.x = x
        self.y = y.to(torch.int64)
        self.transform = transform
        self.t = t
        self.augment = augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Per-sample access for torch DataLoader / Avalanche interop only.
        xi = self.x[i : i + 1]
        return (self.transform(xi) if self.transform else xi)[0], int(self.y[i])

    def batch(
        self,
        idx: torch.Tensor | slice,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (transformed) and labels at ``idx``, moved to ``device``.

        Args:
            idx: Example indices or a slice.
            device: Where the batch goes (default: where the data lives).
            generator: CPU generator for the training augmentation; without one
                (evaluation, per-sample access) no augmentation is applied.
        """
        x, y, _ = self.train_batch(idx, device, generator)
        return x, y

    def train_batch(
        self,
        idx: torch.Tensor | slice,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`batch`, plus the raw (stored-form, un-augmented) inputs the view was made from.

        Replay memories keep the raw inputs and replay them through :attr:`view` (see :class:`Batch`).
        """
        raw, y = self.x[idx], self.y[idx]
        if device is not None:
            raw, y = raw.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return self.view(raw, generator), y, raw

    def raw_batch(self, idx: torch.Tensor | slice, device: torch.device | str | None = None) -> torch.Tensor:
        """Stored-form (un-augmented, un-transformed) inputs at ``idx``, moved to ``device``."""
        raw = self.x[idx]
        return raw if device is None else raw.to(device, non_blocking=True)

    @property
    def view(self) -> TrainView:
        """The callable turning raw inputs into training inputs (this data's augmentation, then transform)."""
        return TrainView(self.augment, self.transform)

    def subset(self, idx: torch.Tensor) -> TensorData:
        """The examples at ``idx`` (same transform and augmentation)."""
        t = None if self.t is None else self.t[idx]
        return TensorData(self.x[idx], self.y[idx], self.transform, t, self.augment)

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        """One dataset holding ``parts`` in order (transform and augmentation of the first part).

        Per-example task ids are kept only when every part has them.
        """
        t = None if any(p.t is None for p in parts) else torch.cat([p.t for p in parts])  # type: ignore[misc]
        first = parts[0]
        return TensorData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), first.transform, t,
                          first.augment)  # fmt: skip

    def to(self, device: torch.device | str) -> TensorData:
        """A copy whose tensors live on ``device``."""
        t = None if self.t is None else self.t.to(device)
        return TensorData(self.x.to(device), self.y.to(device), self.transform, t, self.augment)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example as the model sees it."""
        return tuple(self.batch(slice(0, 1))[0].shape[1:])


@dataclass(frozen=True)
class Shift:
    """The input domain of one experience, as a stream declares it.

    Loops compare these (never ``Experience.meta``) to see a domain shift, e.g. the test-time
    adaptation loop's reset at each shift.

    Attributes:
        domain: Domain name, e.g. a corruption ("gaussian_noise"), "none" for clean source images,
            "rotation_30" for a rotated view.
        severity: Corruption severity 1-5; 0 for clean images and for domains without a severity.
    """

    domain: str
    severity: int = 0


@dataclass(frozen=True)
class Experience:
    """One step of a stream.

    Attributes:
        index: Position in the stream (0-based).
        train: Training data (None for test-only streams).
        test: Test data of this experience.
        classes: Labels present in this experience.
        task_id: Task label, None unless the protocol gives task ids.
        meta: Free-form facts for display, e.g. a permutation seed or a rotation angle. Loops never
            read it: what they act on is declared (``shift`` here, ``Scenario.ordered``).
        shift: The experience's input domain on streams of domains (corruptions, rotations, ...);
            None on streams without declared domains.
    """

    index: int
    train: TensorData | None
    test: TensorData
    classes: tuple[int, ...]
    task_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    shift: Shift | None = None


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able spec."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Scenario(Sequence[Experience]):
    """A sequence of experiences and everything that defines it.

    Args:
        name: Registered builder name.
        experiences: The stream, in order.
        spec: Everything that defines the stream (dataset, class order, seeds,
            split, transforms): two scenarios with equal specs are the same stream.
        n_classes: Size of the label space over the whole stream.
        setting: "class_il", "task_il" or "domain_il".
        protocol_defaults: Training-protocol values this stream is usually run
            with (e.g. ``{"epochs": 5}``); explicit protocol values win.
        source: Test-time adaptation streams only: the clean source domain and how the
            source model is obtained (see :class:`SourceDomain`); None for other streams.
        ordered: The stream defines the order of its training examples (e.g. blurry task
            boundaries): the online protocol consumes each experience in its stored order
            instead of shuffling it.
        flip_invariant: A horizontally mirrored input keeps its label (natural images: yes; digits,
            letters and the synthetic blobs: no). Test-time augmentations flip only on such streams.
            Not part of :attr:`spec` (it describes the data, it does not change the stream).

    Attributes:
        data: Which files the stream was read from, where (set by file-reading builders; None otherwise).
            Recorded and printed, but not part of :attr:`spec`: the same files elsewhere are the same stream.
    """

    data: str | None = None

    def __init__(
        self,
        name: str,
        experiences: list[Experience],
        spec: dict[str, Any],
        n_classes: int,
        setting: str,
        protocol_defaults: dict[str, Any] | None = None,
        source: SourceDomain | None = None,
        ordered: bool = False,
        flip_invariant: bool = True,
    ) -> None:
        if setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
        self.name = name
        self.experiences = list(experiences)
        self.spec = dict(spec, setting=setting)
        self.n_classes = n_classes
        self.setting = setting
        self.protocol_defaults = dict(protocol_defaults or {})
        self.source = source
        self.ordered = ordered
        self.flip_invariant = flip_invariant

    @property
    def spec_hash(self) -> str:
        """Hash of :meth:`spec`, the identity of the stream in records and leaderboards."""
        return spec_hash(self.spec)

    def __len__(self) -> int:
        return len(self.experiences)

    def __getitem__(self, i: int) -> Experience:  # type: ignore[override]
        return self.experiences[i]

    def __iter__(self) -> Iterator[Experience]:
        return iter(list(self.experiences))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Model input shape (after the batch transform)."""
        return self.experiences[0].test.input_shape


@dataclass(frozen=True)
class SourceDomain:
    """The clean source side of a test-time adaptation stream.

    Attributes:
        train: Labelled clean source training data (None when only a checkpoint is available).
        test: Clean held-out source data: accuracy on it after the stream measures forgetting
            (None when unavailable).
        model: Source architecture name (``cl_bench.nets.models.SOURCE_MODELS``; "auto" picks by input shape).
        weights: Checkpoint file of the source model; None = train it on ``train`` in the source phase.
        epochs: Epochs of the source phase when training.
        free: Source-free mode: methods get no source data (``StreamInfo.source_data`` is None).
        reset_each_shift: The runner resets the method (``setup`` again) at each domain shift.
        checkpoint_classes: Width of the checkpoint's output layer when it differs from the stream's label
            space (e.g. 1000 for an ImageNet-1k model on ImageNet-R's 200 classes); None = ``n_classes``.
        output_rows: The checkpoint's output units the stream's labels are, in label order (an output mask:
            label ``i`` is unit ``output_rows[i]``); None = all units, in order.
    """

    train: TensorData | None
    test: TensorData | None
    model: str = "auto"
    weights: str | None = None
    epochs: int = 5
    free: bool = False
    reset_each_shift: bool = False
    checkpoint_classes: int | None = None
    output_rows: tuple[int, ...] | None = None


@dataclass(frozen=True)
class StreamInfo:
    """What a method may know before training: no data, no future classes.

    Attributes:
        input_shape: Shape of one model input.
        n_classes: Size of the label space (the output layer's width).
        n_experiences: Number of experiences in the stream.
        setting: "class_il", "task_il" or "domain_il".
        device: Where batches arrive.
        source_model: Test-time adaptation only: the network trained on the clean source domain
            (shared by every method on a stream; a method deep-copies it before changing it).
        source_data: Test-time adaptation only: the labelled clean source training data, for methods
            that use source statistics (Fisher information, class prototypes, source replay).
        input_transform: The stream's batch transform (e.g. a :class:`Standardize`), so methods on
            pretrained backbones can undo the stream's normalisation and apply the backbone's.
        flip_invariant: A horizontally mirrored input has the same label (the stream's
            :attr:`Scenario.flip_invariant`): augmentations flip only then.
    """

    input_shape: tuple[int, ...]
    n_classes: int
    n_experiences: int
    setting: str
    device: str = "cpu"
    source_model: torch.nn.Module | None = None
    source_data: TensorData | None = None
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    flip_invariant: bool = True


@dataclass
class Batch:
    """A training mini-batch.

    Attributes:
        x: Model inputs on the run's device.
        y: Labels.
        task_ids: Per-example task ids, or None when the protocol hides them.
        experience: Index of the experience it comes from.
        raw: The same examples in stored form, before augmentation and transform (None = ``x`` is all
            there is, e.g. a batch built by hand). Replay memories keep these, not ``x``.
        view: Turns raw inputs into training inputs like ``x`` (the stream's augmentation, then its
            transform; a :class:`TrainView`), so replayed examples are augmented
            afresh each time (mammoth's ``not_aug_inputs``). None = raw inputs are model inputs.
    """

    x: torch.Tensor
    y: torch.Tensor
    task_ids: torch.Tensor | None
    experience: int
    raw: torch.Tensor | None = None
    view: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None

    @property
    def stored(self) -> torch.Tensor:
        """What a replay memory should keep for these examples: ``raw`` when known, else ``x``."""
        return self.raw if self.raw is not None else self.x

    def replay(self, stored: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Model inputs for memory examples kept as :attr:`stored`; a fresh augmentation drawn from ``generator``.

        Without a :attr:`view` the stored examples are model inputs already and come back unchanged.
        """
        if self.view is None or self.raw is None:
            return stored
        return self.view(stored, generator)


@dataclass(frozen=True)
class PredictContext:
    """What a method may use when predicting, besides the inputs.

    Attributes:
        task_ids: Per-example task ids in task-incremental evaluation, else None.
    """

    task_ids: torch.Tensor | None = None
