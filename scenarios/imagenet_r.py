"""Split ImageNet-R: 200 ImageNet classes rendered as art, cartoons, sketches, ... (~30,000 images), class split.

Read from an ImageFolder tree (``ROOT/<wnid>/<image>.jpg``, as ``imagenet-r.tar`` unpacks) through
:class:`cl_bench.data.filedata.FileData`: images are decoded lazily (DataLoader workers during training) or once
into a decoded-image cache. Two train/test splits:

* ``split="seeded"`` (default): 80/20 per class, drawn with a fixed split seed (0), independent of the run seed.
* ``split="coda_prompt"``: the published file lists of CODA-Prompt (``dataloaders/splits/imagenet-r_train.yaml``
  and ``imagenet-r_test.yaml`` in GT-RIPL/CODA-Prompt; 24,000 train / 6,000 test images). Each is a YAML mapping
  with ``data`` (paths such as ``data/imagenet-r/train/n01443537/art_0.jpg``) and ``targets`` (integer labels);
  entries are matched to ``ROOT/<wnid>/<file>`` (or ``ROOT/<train|test>/<wnid>/<file>``).

The spec records which split was used (and the split files' SHA-256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import yaml

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, Standardize
from cl_bench.data.augment import ResizedCropFlip
from cl_bench.data.download import data_home
from cl_bench.data.filedata import FileData, scan_image_folder
from cl_bench.data.streams import split_by_class, stratified_split

_SPLIT_SEED = 0  # the seeded train/test split is part of the dataset, not of the run
SPLIT_FILES = ("imagenet-r_train.yaml", "imagenet-r_test.yaml")
# CODA-Prompt (dataloaders/utils.py) feeds its ViT x/255 with mean 0 and std 1.
_TRANSFORM = Standardize(255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# CODA-Prompt configs/imnet-r_prompt.yaml: batch 128, 50 epochs per task.
_PROTOCOL = {"batch_size": 128, "epochs": 50}
_EXAMPLE = "ROOT/n01443537/art_0.jpg"



def _scan(root: Path) -> dict[str, list[Path]]:
    # CODA-Prompt's prepared copy splits the tree into ROOT/train/<wnid>/ and ROOT/test/<wnid>/; merge them.
    halves = [root / "train", root / "test"]
    if root.is_dir() and all(h.is_dir() for h in halves) and not any(p.is_dir() and p.name.startswith("n")
                                                                    for p in root.iterdir()):  # fmt: skip
        merged: dict[str, list[Path]] = {}
        for half in halves:
            for wnid, images in scan_image_folder(half, "ImageNet-R", _EXAMPLE).items():
                merged.setdefault(wnid, []).extend(images)
        return {w: sorted(merged[w], key=lambda p: (p.name, str(p))) for w in sorted(merged)}
    return scan_image_folder(root, "ImageNet-R", _EXAMPLE)


def _read_split_file(path: Path) -> tuple[list[str], list[int]]:
    if not path.is_file():
        raise DataError(
            f"split file {path} not found; split=coda_prompt needs scenario.split_dir to be a folder holding "
            f"{SPLIT_FILES[0]} and {SPLIT_FILES[1]} (CODA-Prompt's dataloaders/splits)"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        doc = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"cannot read split file {path} ({err}); it must be CODA-Prompt's YAML split file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list) or not isinstance(doc.get("targets"), list):
        raise DataError(f"{path} is not a CODA-Prompt split file: expected a YAML mapping with lists 'data' (image "
                        f"paths) and 'targets' (integer labels)")  # fmt: skip
    data, targets = doc["data"], doc["targets"]
    if len(data) != len(targets) or not all(isinstance(t, int) for t in targets):
        raise DataError(f"{path}: 'data' has {len(data)} entries and 'targets' {len(targets)}; expected one integer "
                        f"target per image path")  # fmt: skip
    return [str(d) for d in data], targets


def _resolve(root: Path, entry: str, classes: dict[str, Any], path: Path) -> str:
    parts = Path(entry).parts
    if len(parts) < 2:
        raise DataError(f"{path}: entry {entry!r} has no class folder; expected paths like "
                        f"data/imagenet-r/train/<wnid>/<file>.jpg")  # fmt: skip
    wnid, name = parts[-2], parts[-1]
    if wnid not in classes:
        raise DataError(f"{path} lists {entry!r}, but class {wnid} has no folder with images under {root}; the "
                        f"root must be the full ImageNet-R tree ({_EXAMPLE})")  # fmt: skip
    # CODA-Prompt's own copy sits under data/imagenet-r/<train|test>/<wnid>/; the released tree has no such level.
    candidates = [root / wnid / name] + ([root / parts[-3] / wnid / name] if len(parts) >= 3 else [])
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise DataError(f"{path} lists {entry!r}, but {' and '.join(map(str, candidates))} do not exist; the root is "
                    f"incomplete or not ImageNet-R")  # fmt: skip


def load_split_files(
    root: Path, split_dir: Path, classes: dict[str, Any]
) -> tuple[tuple[list[str], torch.Tensor], tuple[list[str], torch.Tensor], dict[str, Any]]:
    """Train and test (paths, labels) from CODA-Prompt's split files; labels = sorted class-folder index.

    Raises:
        DataError: A missing or malformed split file, an entry whose class or file is not under ``root``, a
            class of ``root`` that a split file lacks, or targets that disagree with the class folders.
    """
    index = {wnid: i for i, wnid in enumerate(classes)}
    out, digests = [], {}
    for fname in SPLIT_FILES:
        path = split_dir / fname
        data, targets = _read_split_file(path)
        paths = [_resolve(root, d, classes, path) for d in data]
        wnids = [Path(d).parts[-2] for d in data]
        seen: dict[str, int] = {}
        for w, t in zip(wnids, targets, strict=True):
            if seen.setdefault(w, t) != t:
                raise DataError(f"{path} gives class {w} two targets ({seen[w]} and {t}); the file is corrupt")
        missing = sorted(set(classes) - set(seen))
        if missing:
            raise DataError(f"{path} has no image of class(es) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(classes)} classes "
                            f"under {root}); expected every class in both split files")  # fmt: skip
        out.append((paths, torch.tensor([index[w] for w in wnids], dtype=torch.int64)))
        digests[fname] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out[0], out[1], {"split_files_sha256": digests}


@SCENARIOS.register(
    "split_imagenet_r",
    reference="Hendrycks et al., 'The Many Faces of Robustness' (ICCV 2021) for ImageNet-R; 10 x 20 class split "
    "and published split files of Smith et al., 'CODA-Prompt' (CVPR 2023)",
)
def split_imagenet_r(
    root: str | None = None,
    n_experiences: int = 10,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    split: str = "seeded",
    split_dir: str | None = None,
    test_fraction: float = 0.2,
    image_size: int = 224,
    augment: bool = True,
    workers: int = 2,
    cache_dir: str | None = None,
) -> Scenario:
    """Split ImageNet-R: 200 classes in 10 experiences of 20 (file-backed, 224 x 224).

    Args:
        root: ImageFolder tree ``ROOT/<wnid>/<image>`` (default ``$CL_BENCH_DATA/imagenet-r``), or CODA-Prompt's
            prepared copy ``ROOT/<train|test>/<wnid>/<image>``.
        n_experiences: Number of experiences (10 in CODA-Prompt).
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order (e.g. "pycil1993") or an explicit list of all classes.
        setting: "class_il" or "task_il".
        split: "seeded" (80/20 per class, fixed split seed) or "coda_prompt" (published file lists).
        split_dir: Folder with CODA-Prompt's ``imagenet-r_train.yaml`` and ``imagenet-r_test.yaml``.
        test_fraction: Share of each class held out by the seeded split.
        image_size: Side of the stored images (224 for ViT-B/16, as in CODA-Prompt).
        augment: Random resized crop + horizontal flip on training batches (CODA-Prompt's training transform,
            applied to the stored 224 x 224 images rather than the original files).
        workers: DataLoader worker processes that decode training batches ahead (0 = decode in the loop).
        cache_dir: Decode and resize every image once into a uint8 ``.npy`` under this folder and memory-map it
            afterwards (about 4.5 GB at 224 px for the 30,000 images); unset = decode on the fly.

    References:
        Hendrycks, Basart, Mu, Kadavath, Wang, Dorundo, Desai, Zhu, Parajuli, Guo, Song, Steinhardt, Gilmer,
            "The Many Faces of Robustness: A Critical Analysis of Out-of-Distribution Generalization" (ICCV 2021).
        Smith, Karlinsky, Gutta, Cascante-Bonilla, Kim, Arbelle, Panda, Feris, Kira, "CODA-Prompt: COntinual
            Decomposed Attention-based Prompting for Rehearsal-Free Continual Learning" (CVPR 2023).
    """
    if split not in ("seeded", "coda_prompt"):
        raise ConfigError(f"split must be 'seeded' (80/20 per class) or 'coda_prompt' (published file lists), "
                          f"got {split!r}")  # fmt: skip
    if image_size < 8 or workers < 0:
        raise ConfigError(f"image_size must be >= 8 and workers >= 0, got {image_size} and {workers}")
    base = Path(root).expanduser() if root else data_home() / "imagenet-r"
    if not base.is_dir():
        raise DataError(f"ImageNet-R root {base} does not exist; expected the ImageFolder tree that imagenet-r.tar "
                        f"(github.com/hendrycks/imagenet-r) unpacks to, ROOT/<wnid>/<image> such as {_EXAMPLE}. "
                        f"Pass the folder with --set scenario.root=DIR")  # fmt: skip
    classes = _scan(base)
    spec: dict[str, Any] = {"dataset": "imagenet_r", "n_classes_found": len(classes), "image_size": image_size,
                            "stored": f"RGB uint8 resized to {image_size}x{image_size} (bilinear)",
                            "transform": "x/255 (mean 0, std 1, as CODA-Prompt)"}  # fmt: skip
    if split == "coda_prompt":
        if split_dir is None:
            raise ConfigError(f"split=coda_prompt needs --set scenario.split_dir=DIR, the folder holding "
                              f"{SPLIT_FILES[0]} and {SPLIT_FILES[1]} (GT-RIPL/CODA-Prompt dataloaders/splits)")
        (tr_paths, tr_y), (te_paths, te_y), extra = load_split_files(base, Path(split_dir).expanduser(), classes)
        spec.update(split="coda_prompt (published file lists)", **extra)
    else:
        paths = [str(p) for images in classes.values() for p in images]
        y = torch.tensor([i for i, images in enumerate(classes.values()) for _ in images], dtype=torch.int64)
        tr, te = stratified_split(y, test_fraction, _SPLIT_SEED)
        tr_paths, tr_y = [paths[i] for i in tr.tolist()], y[tr]
        te_paths, te_y = [paths[i] for i in te.tolist()], y[te]
        spec.update(split=f"seeded {round((1 - test_fraction) * 100)}/{round(test_fraction * 100)} per class",
                    split_seed=_SPLIT_SEED, test_fraction=test_fraction)  # fmt: skip
    aug = ResizedCropFlip(size=image_size) if augment else None
    spec.update(n_train=len(tr_paths), n_test=len(te_paths), augment=aug.describe() if aug else None)
    kw: dict[str, Any] = {"image_size": image_size, "transform": _TRANSFORM, "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    train = FileData(tr_paths, tr_y, augment=aug, **kw)
    test = FileData(te_paths, te_y, **kw)
    return split_by_class("split_imagenet_r", train, test, n_experiences=n_experiences, class_order=class_order,
                          seed=seed, setting=setting, spec=spec, protocol_defaults=_PROTOCOL)  # fmt: skip
