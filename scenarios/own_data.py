"""Your own data as a stream: an ImageFolder tree, a tensor file, or one folder per domain.

* ``folder_split``: ``ROOT/<class>/<image>`` (split into train/test with a seeded ``test_fraction``) or
  ``ROOT/train/<class>/<image>`` + ``ROOT/test/<class>/<image>``, dealt into class-incremental experiences.
* ``tensor_split``: a ``.npz`` (numpy) or ``.pt`` (torch, loaded with ``weights_only=True``) file holding ``x`` and
  ``y`` and optionally ``x_test`` and ``y_test``; images as ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
  (uint8 0-255 or float), or feature vectors ``(N, D)``.
* ``folder_domains``: ``ROOT/<domain>/<class>/<image>`` (or ``<domain>/train|test/<class>/<image>``), one
  domain-incremental experience per domain, all domains sharing the class list; with ``source_domain`` (or
  ``source_weights``) a test-time adaptation stream instead: the source model is trained on that domain's
  training split (or loaded), and every other domain is one unlabelled test domain, as DomainNet-126's.

The folder or file is recorded as ``scenario.data`` (printed as ``data:``), not in the hashed spec, so the same
files at another path are the same stream. Every spec records a SHA-256 of the data's content (file bytes with
their relative paths and labels), so two users can tell from their records whether they ran the same data;
``content_hash=False`` hashes the listing (relative paths and sizes) instead, for trees too large to read twice.
Nothing is ever written into ``root``.

References:
    Marcel & Rodriguez, "Torchvision the machine-vision package of torch" (ACM MM 2010): the ImageFolder layout
        (class = sub-folder name, label = its position in sorted order).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Experience, Scenario, Shift, SourceDomain, Standardize, TensorData
from cl_bench.data.augment import CropFlip
from cl_bench.data.filedata import FileData, paths_and_labels, scan_train_test
from cl_bench.data.streams import split_by_class, with_data
from cl_bench.data.tta_streams import TTA_BATCH_SIZE, check_setting, tta_experiences, tta_spec
from cl_bench.data.user_data import (
    as_inputs,
    augmenter,
    check_options,
    files_digest,
    image_transform,
    read_arrays,
    seeded_split,
)

_EXAMPLE = "ROOT/cat/0001.png"


def _split_tree(
    tree: tuple[dict[str, list[Path]], dict[str, list[Path]] | None], test_fraction: float, split_seed: int,
    names: list[str] | None = None,
) -> tuple[list[Path], torch.Tensor, list[Path], torch.Tensor, list[str], str]:
    """Train and test paths/labels of one scanned class-folder tree (:func:`scan_train_test`), the class names
    (``names``, else the tree's own) and how it was split."""
    train_cls, test_cls = tree
    names = names if names is not None else sorted(train_cls)
    paths, y = paths_and_labels(train_cls, names)
    if test_cls is not None:
        te_paths, te_y = paths_and_labels(test_cls, names)
        return paths, y, te_paths, te_y, names, "given train/ and test/ folders"
    tr, te, split = seeded_split(y, test_fraction, split_seed)
    return ([paths[i] for i in tr.tolist()], y[tr], [paths[i] for i in te.tolist()], y[te], names, split)


def _root(root: str | None, name: str, layout: str) -> Path:
    if not root:
        raise ConfigError(f"{name} needs your data: pass --set scenario.root=DIR, a folder laid out as {layout}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"{name}: {base} does not exist or is not a folder; expected {layout}")
    return base


@SCENARIOS.register("folder_split", reference="your own ImageFolder tree, split by class (torchvision's layout)")
def folder_split(
    root: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    augment: str = "none",
    normalize: str = "unit",
    content_hash: bool = True,
    workers: int = 0,
    cache_dir: str | None = None,
) -> Scenario:
    """Any ImageFolder tree as a class-incremental stream.

    Args:
        root: ``ROOT/<class>/<image>``, or ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>``.
        n_experiences: Number of experiences; the classes are dealt into groups of (nearly) equal size.
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order or an explicit list of all class indices (classes are
            numbered by sorted folder name).
        setting: "class_il" or "task_il".
        test_fraction: Share of each class held out when the tree has no train/ and test/ folders.
        split_seed: Seeds that held-out split (part of the data, not of the run).
        image_size: Side the images are resized to (RGB, bilinear).
        augment: Training-batch augmentation: "none", "crop_flip" (padded random crop + flip, CIFAR's) or
            "resized_crop_flip" (random resized crop + flip, ImageNet's).
        normalize: "unit" (x/255) or "imagenet" (ImageNet mean/std, for pretrained backbones).
        content_hash: Hash the images' bytes into the spec (False: their paths and sizes only).
        workers: DataLoader processes decoding training batches ahead (0 = in the loop).
        cache_dir: Decode every image once into a memory-mapped cache under this folder (None = off).

    References:
        Marcel & Rodriguez, "Torchvision the machine-vision package of torch" (ACM MM 2010).
    """
    check_options(image_size, test_fraction, augment, normalize, workers)
    base = _root(root, "folder_split", "ROOT/<class>/<image> (or ROOT/train/... and ROOT/test/...)")
    tr_paths, tr_y, te_paths, te_y, names, split = _split_tree(
        scan_train_test(base, "folder_split", _EXAMPLE), test_fraction, split_seed)
    if len(names) < 2:
        raise DataError(f"{base} has one class folder ({names[0]}); a class-incremental stream needs at least two")
    aug = augmenter(augment, image_size)
    kw: dict[str, Any] = {"image_size": image_size, "transform": image_transform(normalize, 3), "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    listing = [*zip(tr_paths, tr_y.tolist(), strict=True), *zip(te_paths, te_y.tolist(), strict=True)]
    spec: dict[str, Any] = {
        "dataset": "folder", "classes": names, "split": split, "image_size": image_size,
        "augment": aug.describe() if aug else None, "normalize": normalize, "n_train": len(tr_paths),
        "n_test": len(te_paths), "data_sha256": files_digest(listing, base, content_hash),
        "hashed": "file bytes" if content_hash else "paths and sizes",
    }  # fmt: skip
    train = FileData([str(p) for p in tr_paths], tr_y, augment=aug, **kw)
    test = FileData([str(p) for p in te_paths], te_y, **kw)
    data = f"image folder ({len(tr_paths)} train / {len(te_paths)} test images) at {base}"
    return with_data(split_by_class("folder_split", train, test, n_experiences=n_experiences,
                                    class_order=class_order, seed=seed, setting=setting, spec=spec), data)  # fmt: skip


@SCENARIOS.register("tensor_split", reference="your own arrays (.npz / .pt), split by class")
def tensor_split(
    path: str | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    augment: str = "none",
) -> Scenario:
    """Arrays from one file as a class-incremental stream.

    Args:
        path: ``.npz`` or ``.pt`` file with ``x``, ``y`` (and optionally ``x_test``, ``y_test``). uint8 inputs
            are scaled by 1/255; float inputs are used as they are. Labels may be any integers: they are
            renumbered 0..K-1 in sorted order (the spec records the original values).
        n_experiences: Number of experiences.
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order or an explicit list of all classes.
        setting: "class_il" or "task_il".
        test_fraction: Share of each class held out when the file has no test arrays.
        split_seed: Seeds that held-out split.
        augment: "none" or, for images, "crop_flip" (padded random crop + flip).

    References:
        Harris et al., "Array programming with NumPy" (Nature 2020): the ``.npz`` format.
    """
    if not path:
        raise ConfigError("tensor_split needs your data: pass --set scenario.path=FILE, a .npz or .pt file holding "
                          "x and y (and optionally x_test, y_test)")  # fmt: skip
    if augment not in ("none", "crop_flip"):
        raise ConfigError(f"tensor_split's augment must be 'none' or 'crop_flip', got {augment!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    file = Path(path).expanduser()
    if not file.is_file():
        state = "is a folder" if file.is_dir() else "does not exist"
        raise DataError(f"tensor_split: {file} {state}; pass a .npz or .pt file holding x and y")
    arrays = read_arrays(file)
    x, y = as_inputs(arrays["x"], arrays["y"], file, "x")
    values = np.unique(np.concatenate([y, arrays["y_test"]]) if "y_test" in arrays else y)
    if len(values) < 2:
        raise DataError(f"{file} has one class ({values[0]}); a class-incremental stream needs at least two")
    relabel = lambda v: torch.from_numpy(np.searchsorted(values, v).astype(np.int64))  # noqa: E731
    if "x_test" in arrays:
        x_test, y_test = as_inputs(arrays["x_test"], arrays["y_test"], file, "x_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{file}: x_test examples have shape {tuple(x_test.shape[1:])}, x's "
                            f"{tuple(x.shape[1:])}; they must match")  # fmt: skip
        tr_x, tr_y, te_x, te_y, split = x, relabel(y), x_test, relabel(y_test), "given x_test / y_test"
    else:
        labels = relabel(y)
        tr, te, split = seeded_split(labels, test_fraction, split_seed)
        tr_x, tr_y, te_x, te_y = x[tr], labels[tr], x[te], labels[te]
    images = x.dim() == 4
    if augment == "crop_flip" and not images:
        raise ConfigError(f"augment=crop_flip needs image inputs; {file} holds vectors of shape {tuple(x.shape[1:])}")
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    channels = x.shape[1] if images else 1
    transform = Standardize(scale, (0.0,) * channels, (1.0,) * channels)
    aug = CropFlip(padding=max(1, x.shape[-1] // 8)) if augment == "crop_flip" else None
    spec: dict[str, Any] = {
        "dataset": "tensor_file", "input_shape": list(x.shape[1:]), "dtype": str(x.dtype),
        "label_values": values.tolist(), "split": split, "augment": aug.describe() if aug else None,
        "n_train": len(tr_y), "n_test": len(te_y), "data_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "hashed": "file bytes",
    }  # fmt: skip
    train = TensorData(tr_x, tr_y, transform, augment=aug)
    test = TensorData(te_x, te_y, transform)
    data = f"arrays ({len(tr_y)} train / {len(te_y)} test) from {file}"
    return with_data(split_by_class("tensor_split", train, test, n_experiences=n_experiences,
                                    class_order=class_order, seed=seed, setting=setting, spec=spec), data)  # fmt: skip


@SCENARIOS.register("folder_domains",
                    reference="your own folders, one per domain (domain-incremental, or TTA with a source_domain)")
def folder_domains(
    root: str | None = None,
    domains: tuple[str, ...] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    augment: str = "none",
    normalize: str = "unit",
    content_hash: bool = True,
    workers: int = 0,
    cache_dir: str | None = None,
    source_domain: str | None = None,
    source_weights: str | None = None,
    source_model: str = "auto",
    source_epochs: int = 5,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    seed: int = 0,
) -> Scenario:
    """One folder per domain as a domain-incremental stream over a shared class list, or a TTA stream.

    Args:
        root: ``ROOT/<domain>/<class>/<image>`` (or ``ROOT/<domain>/train|test/<class>/<image>``).
        domains: Domain folders in stream order (default: every domain folder, sorted by name).
        test_fraction: Share of each class per domain held out when a domain has no train/ and test/ folders.
        split_seed: Seeds that held-out split.
        image_size: Side the images are resized to (RGB, bilinear).
        augment: "none", "crop_flip" or "resized_crop_flip" (see ``folder_split``).
        normalize: "unit" (x/255) or "imagenet".
        content_hash: Hash the images' bytes into the spec (False: paths and sizes only).
        workers: DataLoader processes decoding training batches ahead.
        cache_dir: Decoded-image cache folder (None = off).
        source_domain: Makes this a test-time adaptation stream: the domain folder the source model is trained
            on (its training split, decoded into memory; its held-out split measures ``clean_acc_after``).
            The other domains (``domains``, default all but this one) are the test domains, every image of each.
        source_weights: Or a local state dict of the source model (``source_model``'s architecture) for a TTA
            stream over ``domains``; with ``source_domain`` too, it is loaded instead of trained.
        source_model: Source architecture ("auto": cnn_bn for images; see ``cl-bench list models``).
        source_epochs: Epochs of the source phase when training (Adam 1e-3, batch 128; engine/source.py).
        setting: TTA stream setting: continual, mixed_domains, reset_each_shift or correlated (no severities,
            so no gradual).
        n_per_domain: TTA: images per test domain, a seeded subset of each (0 = all).
        concentration: TTA: Dirichlet concentration of the correlated setting.
        seed: TTA: seeds the subsets and the mixed and correlated orders.

    References:
        Lomonaco & Maltoni, "CORe50: a new dataset and benchmark for continuous object recognition" (CoRL 2017):
            the new-instances (domain-incremental) protocol this layout expresses.
        Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation"
            (CVPR 2023): the source-model-then-adapt protocol of the TTA mode (as their DomainNet-126 stream).
    """
    check_options(image_size, test_fraction, augment, normalize, workers)
    layout = "ROOT/<domain>/<class>/<image>"
    base = _root(root, "folder_domains", layout)
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    if source_domain is not None or source_weights is not None:
        return _tta_domains(base, found, domains, source_domain, source_weights, source_model, source_epochs,
                            setting, n_per_domain, concentration, seed, image_size, normalize, content_hash,
                            test_fraction, split_seed, workers, cache_dir)  # fmt: skip
    if setting != "continual" or n_per_domain:
        raise ConfigError("setting and n_per_domain shape a test-time adaptation stream: give folder_domains a "
                          "source with --set scenario.source_domain=NAME (a domain folder to train the source "
                          "model on) or scenario.source_weights=FILE")  # fmt: skip
    order = list(domains) if domains is not None else found
    unknown = [d for d in order if d not in found]
    if unknown or len(order) < 1:
        raise DataError(f"folder_domains: {base} has domain folders {found}; asked for {unknown or order}. "
                        f"Expected {layout}")  # fmt: skip
    trees = [scan_train_test(base / d, f"domain {d}", _EXAMPLE) for d in order]
    names = sorted({c for halves in trees for half in halves if half for c in half})
    aug = augmenter(augment, image_size)
    kw: dict[str, Any] = {"image_size": image_size, "transform": image_transform(normalize, 3), "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    experiences, listing, splits = [], [], {}
    for i, (d, tree) in enumerate(zip(order, trees, strict=True)):
        tr_p, tr_y, te_p, te_y, _, split = _split_tree(tree, test_fraction, split_seed, names)
        listing += [*zip(tr_p, tr_y.tolist(), strict=True), *zip(te_p, te_y.tolist(), strict=True)]
        splits[d] = {"split": split, "n_train": len(tr_p), "n_test": len(te_p)}
        train = FileData([str(p) for p in tr_p], tr_y, augment=aug, **kw)
        test = FileData([str(p) for p in te_p], te_y, **kw)
        classes = tuple(sorted(set(tr_y.tolist()) | set(te_y.tolist())))
        experiences.append(Experience(i, train, test, classes, meta={"domain": d}, shift=Shift(d, 0)))
    spec: dict[str, Any] = {
        "dataset": "folder_domains", "domains": order, "classes": names, "per_domain": splits,
        "image_size": image_size, "augment": aug.describe() if aug else None, "normalize": normalize,
        "data_sha256": files_digest(listing, base, content_hash), "hashed": "file bytes" if content_hash else
        "paths and sizes",
    }  # fmt: skip
    data = f"{len(order)} domain folders at {base}"
    return with_data(Scenario("folder_domains", experiences, spec, len(names), "domain_il"), data)


def _tta_domains(
    base: Path, found: list[str], domains: tuple[str, ...] | None, source_domain: str | None,
    source_weights: str | None, source_model: str, source_epochs: int, setting: str, n_per_domain: int,
    concentration: float, seed: int, image_size: int, normalize: str, content_hash: bool, test_fraction: float,
    split_seed: int, workers: int, cache_dir: str | None,
) -> Scenario:
    """folder_domains as a TTA stream: the source domain's training split trains the source model."""
    layout = "ROOT/<domain>/<class>/<image>"
    if setting == "gradual":
        raise ConfigError("folder_domains has no severities, so no gradual setting; use continual, mixed_domains, "
                          "reset_each_shift or correlated")  # fmt: skip
    check_setting(setting, concentration, n_per_domain)
    if source_epochs < 1:
        raise ConfigError(f"source_epochs must be >= 1, got {source_epochs}")
    if source_domain is not None and source_domain not in found:
        raise DataError(f"folder_domains: source_domain {source_domain!r} is not a folder of {base} (it has "
                        f"{', '.join(found)}); expected {layout}")  # fmt: skip
    targets = list(domains) if domains is not None else [d for d in found if d != source_domain]
    unknown = [d for d in targets if d not in found]
    if unknown or not targets or source_domain in targets:
        why = (f"the source domain {source_domain!r} cannot also be a test domain" if source_domain in targets
               else f"asked for {unknown or 'no test domain'}")  # fmt: skip
        raise ConfigError(f"folder_domains: {base} has domain folders {found}; {why}. Pass the test domains with "
                          f"--set scenario.domains=[a,b]")  # fmt: skip
    names = sorted({c for d in [*targets, *([source_domain] if source_domain else [])]
                    for half in scan_train_test(base / d, f"domain {d}", _EXAMPLE) if half for c in half})  # fmt: skip
    transform = image_transform(normalize, 3)
    kw: dict[str, Any] = {"image_size": image_size, "transform": transform, "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    listing: list[tuple[Path, int]] = []
    train = test = None
    source_split = None
    if source_domain is not None:
        tr_p, tr_y, te_p, te_y, _, source_split = _split_tree(
            scan_train_test(base / source_domain, f"domain {source_domain}", _EXAMPLE), test_fraction, split_seed,
            names)  # fmt: skip
        listing += [*zip(tr_p, tr_y.tolist(), strict=True), *zip(te_p, te_y.tolist(), strict=True)]
        # Decoded once into memory: the source phase trains on tensors and keys its cache by their bytes.
        train, test = (TensorData(FileData([str(p) for p in ps], ys, **kw).raw_batch(slice(None)), ys, transform)
                       for ps, ys in ((tr_p, tr_y), (te_p, te_y)))  # fmt: skip
    paths: list[str] = []
    labels: list[int] = []
    spans: dict[str, tuple[int, int]] = {}
    for d in targets:  # every image of a test domain is adapted on (its train/ and test/ halves alike)
        halves = [h for h in scan_train_test(base / d, f"domain {d}", _EXAMPLE) if h]
        files = [(p, y) for h in halves for p, y in zip(*paths_and_labels(h, names), strict=True)]
        spans[d] = (len(paths), len(files))
        listing += [(p, int(y)) for p, y in files]
        paths += [str(p) for p, _ in files]
        labels += [int(y) for _, y in files]
    store = FileData(paths, torch.tensor(labels, dtype=torch.int64), **kw)

    def domain_data(domain: str, _severity: int, _keep: torch.Tensor) -> FileData:
        start, n = spans[domain]
        rows = np.arange(n)
        if n_per_domain and n_per_domain < n:  # each domain's own seeded subset: the domains differ in size
            rng = np.random.default_rng(np.random.SeedSequence([seed, targets.index(domain)]))
            rows = np.sort(rng.permutation(n)[:n_per_domain])
        return store.subset(torch.from_numpy(rows + start))

    source = SourceDomain(train, test, source_model, source_weights, source_epochs, train is None,
                          setting == "reset_each_shift")  # fmt: skip
    # No severities: recorded as 1 for every domain (0 would mean the clean source data).
    experiences = tta_experiences(setting, tuple(targets), 1, domain_data, max(n for _, n in spans.values()),
                                  len(names), clean=None, insert_clean=False, n_per_domain=0,
                                  concentration=concentration, seed=seed)  # fmt: skip
    spec: dict[str, Any] = {
        "dataset": "folder_domains", "tta": True, "source_domain": source_domain, "source_split": source_split,
        "n_source_train": None if train is None else len(train), "domains": targets, "classes": names,
        "images_per_domain": {d: n for d, (_, n) in spans.items()}, "per_domain_subset": n_per_domain,
        "image_size": image_size, "normalize": normalize, "data_sha256": files_digest(listing, base, content_hash),
        "hashed": "file bytes" if content_hash else "paths and sizes",
        **tta_spec(setting, 0, concentration, False, seed, source),
    }  # fmt: skip
    src = f"source {source_domain!r}" if source_domain else f"source weights {source_weights}"
    data = f"{len(targets)} test domain folders ({src}) at {base}"
    return with_data(Scenario("folder_domains", experiences, spec, len(names), "domain_il",
                              {"batch_size": TTA_BATCH_SIZE}, source), data)  # fmt: skip
