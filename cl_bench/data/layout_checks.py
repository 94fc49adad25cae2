"""Layout checks of the image-folder datasets (ImageNet-R, Tiny ImageNet, ImageNet-C, PILOT's, DomainNet-126).

Each check takes a candidate folder and returns a :class:`Finding`: ``folder`` None when the folder does not
hold the dataset at all, else what is wrong (``problems``) and what was verified. Used by
:mod:`cl_bench.data.catalog` (``cl-bench data check``); nothing here reads an image's pixels.

References:
    Hendrycks & Dietterich (ICLR 2019), ImageNet-C (Zenodo 2235448); Hendrycks et al. (ICCV 2021), ImageNet-R;
    Le & Yang (2015), Tiny ImageNet; Zhou et al. (IJCV 2024), RevisitingCIL's dataset copies (PILOT);
    Chen et al. (CVPR 2022), AdaContrast's DomainNet-126 file lists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: The 15 benchmark corruptions of Hendrycks & Dietterich (the TTA benchmarks' streams) and the 4 extra ones.
CORRUPTIONS_15 = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                  "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                  "jpeg_compression")  # fmt: skip
CORRUPTIONS_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
_WNID = re.compile(r"^n\d{8}$")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG"}


@dataclass
class Finding:
    """What a check found under a root: the dataset's folder, what is wrong, what was verified."""

    folder: Path | None
    problems: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.folder is not None and not self.problems


# ---------------------------------------------------------------- ImageFolder-style trees
def check_class_tree(folder: Path, dataset: str, names: tuple[str, ...], n_images: int) -> Finding:
    """An ImageFolder tree whose class folders must be exactly ``names`` (the release's), with ``n_images``.

    A folder whose sub-folders are mostly not in ``names`` is another dataset (``Finding(None)``).
    """
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    known = set(names)
    inside = [p for p in subs if p.name in known]
    if not inside or len(inside) * 2 < len(subs):
        return Finding(None)
    finding = Finding(folder)
    stray = [p.name for p in subs if p.name not in known]
    if stray:
        finding.problems.append(f"{folder}: {len(stray)} folder(s) that are not {dataset} classes (first: "
                                f"{stray[0]})")  # fmt: skip
    if len(inside) != len(names):
        missing = [n for n in names if not (folder / n).is_dir()]
        finding.problems.append(f"{folder}: {len(inside)} of the {len(names)} class folders (missing e.g. "
                                f"{missing[0]})")  # fmt: skip
    n = sum(sum(1 for _ in _images(c)) for c in inside)
    if n != n_images:
        finding.problems.append(f"{folder}: {n:,} images, the release has {n_images:,}")
    if not finding.problems:
        finding.verified.append(f"the {len(names)} class folders of the release, {n_images:,} images (no checksum "
                                f"is published)")  # fmt: skip
    return finding


def shift_check(dataset: str) -> Callable[[Path], Finding]:
    """The layout check of ``imagenet_shift``'s ``dataset`` (imagenet_a, imagenet_v2 or imagenet_sketch)."""
    from cl_bench.data.imagenet_wnids import wnid_list

    names, n = {"imagenet_a": (lambda: wnid_list("imagenet_a"), 7_500),
                "imagenet_v2": (lambda: tuple(str(i) for i in range(1000)), 10_000),
                "imagenet_sketch": (lambda: wnid_list("imagenet_1k"), 50_889)}[dataset]  # fmt: skip
    return lambda folder: check_class_tree(folder, dataset, names(), n)



def _images(folder: Path) -> Iterator[str]:
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_file() and Path(entry.name).suffix in _IMAGE_SUFFIXES:
                yield entry.name


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _WNID.match(p.name))


def check_imagenet_r(folder: Path) -> Finding:
    """ImageNet-R: 200 WordNet-id class folders holding 30,000 images."""
    classes = _class_dirs(folder)
    if not classes:
        return Finding(None)
    finding = Finding(folder)
    n = sum(sum(1 for _ in _images(c)) for c in classes)
    if len(classes) != 200:
        finding.problems.append(f"{folder}: {len(classes)} class folders, the release has 200")
    if n != 30000:
        finding.problems.append(f"{folder}: {n:,} images, the release has 30,000")
    if not finding.problems:
        finding.verified.append("200 class folders, 30,000 images, as released (no checksum is published)")
    return finding


def check_tiny_imagenet(folder: Path) -> Finding:
    """Tiny ImageNet: wnids.txt, 200 x 500 training images, 10,000 annotated validation images."""
    if not (folder / "wnids.txt").is_file():
        return Finding(None)
    finding = Finding(folder)
    wnids = (folder / "wnids.txt").read_text().split()
    if len(wnids) != 200:
        finding.problems.append(f"{folder / 'wnids.txt'}: {len(wnids)} class ids, expected 200")
    short = [w for w in wnids if not (folder / "train" / w / "images").is_dir()
             or sum(1 for _ in _images(folder / "train" / w / "images")) != 500]  # fmt: skip
    if short:
        finding.problems.append(f"{len(short)} class(es) without 500 training images under train/<wnid>/images "
                                f"(first: {short[0]})")  # fmt: skip
    ann = folder / "val" / "val_annotations.txt"
    if not ann.is_file():
        finding.problems.append(f"{ann} is missing")
    elif (k := len(ann.read_text().splitlines())) != 10000:
        finding.problems.append(f"{ann}: {k} lines, expected 10,000")
    if not (folder / "val" / "images").is_dir():
        finding.problems.append(f"{folder / 'val' / 'images'} is missing")
    if not finding.problems:
        finding.verified.append("200 classes x 500 training images and 10,000 annotated validation images")
    return finding


def check_imagenet_c(folder: Path) -> Finding:
    """ImageNet-C: 15 corruptions x severities 1-5 x the same 1,000 WordNet-id folders x 50 images."""
    present = [c for c in (*CORRUPTIONS_15, *CORRUPTIONS_EXTRA) if (folder / c).is_dir()]
    if not present:
        return Finding(None)
    finding = Finding(folder)
    for c in CORRUPTIONS_15:
        if c not in present:
            finding.problems.append(f"{folder / c} is missing (one of the 15 benchmark corruptions)")
    reference: list[str] | None = None  # the first severity's class folders: every domain holds the same images
    for c in present:
        for s in range(1, 6):
            sev = folder / c / str(s)
            if not sev.is_dir():
                finding.problems.append(f"{sev} is missing (severities 1-5)")
                continue
            classes = _class_dirs(sev)
            stray = sorted(p.name for p in sev.iterdir() if p.is_dir() and not _WNID.match(p.name))
            if stray:
                finding.problems.append(f"{sev}: {len(stray)} folder(s) not named by a WordNet id nXXXXXXXX (first: "
                                        f"{stray[0]}); the release has exactly the 1,000 class folders")  # fmt: skip
            if len(classes) != 1000:
                finding.problems.append(f"{sev}: {len(classes)} class folders, the release has 1,000")
            names = [p.name for p in classes]
            if reference is None:
                reference = names
            elif names != reference and len(names) == len(reference):
                finding.problems.append(f"{sev}: other class folders than {folder / present[0] / '1'}")
            odd = [(p.name, k) for p in classes if (k := sum(1 for _ in _images(p))) != 50]
            if odd:
                finding.problems.append(f"{sev}: {len(odd)} class folder(s) without the released 50 images (first: "
                                        f"{odd[0][0]} with {odd[0][1]})")  # fmt: skip
    if not finding.problems:
        finding.verified.append(f"{len(present)} corruptions x 5 severities x 1,000 class folders x 50 images, as "
                                f"released (the Zenodo record publishes MD5s of the tar files only: check those "
                                f"with `cl-bench data prepare FILE.tar`)")  # fmt: skip
    return finding


# ---------------------------------------------------------------- PILOT / RevisitingCIL copies (no checksums)
#: Folder name -> class count of the PILOT datasets (scenarios/pilot.py's DATASETS; tested to agree).
PILOT_CLASSES = {"cub": 200, "imagenet-a": 200, "objectnet": 200, "omnibenchmark": 300, "vtab": 50, "cars": 196}


def pilot_check(name: str) -> Callable[[Path], Finding]:
    """The check of the PILOT dataset whose folder is ``name`` (see :data:`PILOT_CLASSES`)."""
    return lambda folder: check_pilot(folder, name, PILOT_CLASSES[name])


def check_pilot(folder: Path, name: str, n_classes: int) -> Finding:
    """A PILOT dataset: ``train/`` and ``test/`` with the same ``n_classes`` non-empty class folders."""
    # The layout (train/ and test/ class folders) is any ImageFolder split's: a folder is taken for this dataset
    # by its name, as the scenario's default root is $CL_BENCH_DATA/<name>.
    if folder.name.lower() != name or not ((folder / "train").is_dir() or (folder / "test").is_dir()):
        return Finding(None)
    finding = Finding(folder)
    classes: dict[str, list[str]] = {}
    for split in ("train", "test"):
        sub = folder / split
        if not sub.is_dir():
            finding.problems.append(f"{sub} is missing: PILOT reads the released split, {folder}/train/<class>/ "
                                    f"and {folder}/test/<class>/")  # fmt: skip
            continue
        dirs = sorted(p for p in sub.iterdir() if p.is_dir())
        classes[split] = [p.name for p in dirs]
        loose = sum(1 for _ in _images(sub))
        if loose:
            finding.problems.append(f"{sub}: {loose} image(s) directly in the folder, outside any class folder")
        if len(dirs) != n_classes:
            finding.problems.append(f"{sub}: {len(dirs)} class folders, the dataset has {n_classes}")
        empty = [p.name for p in dirs if next(_images(p), None) is None]
        if empty:
            finding.problems.append(f"{sub}: {len(empty)} class folder(s) without images (first: {empty[0]})")
        n_images = sum(sum(1 for _ in _images(p)) for p in dirs)
        finding.verified.append(f"{split}/: {len(dirs)} class folders, {n_images:,} images")
    if len(classes) == 2 and classes["train"] != classes["test"]:
        only = sorted(set(classes["train"]) ^ set(classes["test"]))
        finding.problems.append(f"train/ and test/ name different classes ({len(only)} in one only, first: "
                                f"{only[0] if only else '(order)'}): labels are sorted folder positions")  # fmt: skip
    if not finding.problems:
        finding.verified.append("the layout PILOT's ImageFolder reads (RevisitingCIL publishes no checksums)")
    return finding


# ---------------------------------------------------------------- DomainNet-126 (AdaContrast's file lists)
DOMAINNET_DOMAINS = ("clipart", "painting", "real", "sketch")


def check_domainnet126(folder: Path) -> Finding:
    """DomainNet-126: the four ``<domain>_list.txt`` files, well formed, every listed image present."""
    lists = {d: folder / f"{d}_list.txt" for d in DOMAINNET_DOMAINS}
    if not any(p.is_file() for p in lists.values()):
        return Finding(None)
    finding = Finding(folder)
    for d, path in lists.items():
        if not path.is_file():
            finding.problems.append(f"{path} is missing (the file list of domain {d}, published with AdaContrast "
                                    f"and the RMT benchmark)")  # fmt: skip
            continue
        bad, missing, labels, n = None, [], set(), 0
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            ok = len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < 126 and parts[0].startswith(f"{d}/")
            if not ok:
                bad = bad or (k, line[:80])
                continue
            n += 1
            labels.add(int(parts[1]))
            if not (folder / parts[0]).is_file():
                missing.append(parts[0])
        if bad:
            finding.problems.append(f"{path.name}, line {bad[0]}: {bad[1]!r} is not '{d}/<class>/<file> <label 0-125>'")
        if missing:
            finding.problems.append(f"{path.name}: {len(missing)} of {n} listed images are not under {folder} "
                                    f"(first: {missing[0]}); the lists sit in the DomainNet image root")  # fmt: skip
        if not bad and not missing:
            finding.verified.append(f"{path.name}: {n:,} images, {len(labels)} of the 126 labels, every file present")
    if not finding.problems:
        finding.verified.append("the layout domainnet126 reads (no checksums are published for the images or lists)")
    return finding


__all__ = ["CORRUPTIONS_15", "CORRUPTIONS_EXTRA", "DOMAINNET_DOMAINS", "Finding", "PILOT_CLASSES", "check_domainnet126",
           "check_class_tree", "check_imagenet_c", "check_imagenet_r", "check_pilot", "check_tiny_imagenet",
           "pilot_check", "shift_check"]
