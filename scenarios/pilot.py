"""The datasets of pretrained-model class-incremental learning (LAMDA-PILOT / RevisitingCIL), class split.

CUB-200, ImageNet-A, ObjectNet (200-class subset), OmniBenchmark (300 classes), VTAB (the 5-domain, 50-class
CL version) and Stanford Cars (196 classes), each read from the released layout PILOT's ``utils/data.py`` reads
with ``datasets.ImageFolder``: ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>`` (RevisitingCIL
publishes its copies of CUB, ImageNet-A, ObjectNet, OmniBenchmark and VTAB in that layout). Labels are the sorted
class-folder positions, as ImageFolder numbers them; the default class order is PILOT's (``shuffle: true``,
``seed: 1993``: ``np.random.seed(1993); np.random.permutation(n)``, our ``pycil1993``).

Images are stored resized to ``image_size`` (224) and fed as x/255 without normalisation, as PILOT's
``build_transform`` (ToTensor only). Training batches get PILOT's augmentation, a random resized crop with scale
(0.05, 1) and ratio (3/4, 4/3) plus a horizontal flip, applied to the stored 224 x 224 images; PILOT's test
transform resizes to 256 and centre-crops 224, ours resizes to 224 directly (a documented difference: the
stored test image keeps the border PILOT crops away).

References:
    Zhou, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
        Adaptivity are All You Need" (IJCV 2024): the dataset versions and splits.
    Sun, Zhou, Ye, Zhan, "PILOT: A Pre-Trained Model-Based Continual Learning Toolbox" (2023),
        ``utils/data.py`` and ``utils/data_manager.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, Standardize
from cl_bench.data.augment import ResizedCropFlip
from cl_bench.data.download import data_home
from cl_bench.data.filedata import FileData, paths_and_labels, scan_train_test
from cl_bench.data.streams import split_by_class, with_data

# PILOT utils/data.py build_transform: ToTensor() only, so the ViT sees x/255.
_TRANSFORM = Standardize(255.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# PILOT exps/*.json: batch_size 256 for the prototype methods (simplecil.json); tuned_epoch per method.
_PROTOCOL = {"batch_size": 256, "epochs": 1}


@dataclass(frozen=True)
class PilotDataset:
    """One dataset of the suite: its folder name, class count, default experiences and source."""

    folder: str
    n_classes: int
    n_experiences: int
    title: str
    reference: str


DATASETS: dict[str, PilotDataset] = {
    "split_cub200": PilotDataset("cub", 200, 10, "CUB-200-2011",
                                 "Wah et al., 'The Caltech-UCSD Birds-200-2011 Dataset' (2011)"),
    "split_imagenet_a": PilotDataset("imagenet-a", 200, 10, "ImageNet-A",
                                     "Hendrycks et al., 'Natural Adversarial Examples' (CVPR 2021)"),
    "split_objectnet": PilotDataset("objectnet", 200, 10, "ObjectNet (200-class subset)",
                                    "Barbu et al., 'ObjectNet' (NeurIPS 2019)"),
    "split_omnibenchmark": PilotDataset("omnibenchmark", 300, 10, "OmniBenchmark (300 classes)",
                                        "Zhang et al., 'Benchmarking Omni-Vision Representation' (ECCV 2022)"),
    "split_vtab": PilotDataset("vtab", 50, 5, "VTAB (5 domains x 10 classes, CL version)",
                               "Zhai et al., 'A Large-scale Study of Representation Learning with the Visual Task "
                               "Adaptation Benchmark' (2019)"),
    "split_cars": PilotDataset("cars", 196, 10, "Stanford Cars",
                               "Krause et al., '3D Object Representations for Fine-Grained Categorization' "
                               "(ICCV-W 2013)"),
}  # fmt: skip
"""Registered name -> dataset. Default experiences: 10 equal class groups (5 for VTAB, one per domain)."""



def _build(name: str, ds: PilotDataset, root: str | None, n_experiences: int, seed: int,
           class_order: str | tuple[int, ...], setting: str, image_size: int, augment: bool, workers: int,
           cache_dir: str | None) -> Scenario:  # fmt: skip
    if image_size < 8 or workers < 0:
        raise ConfigError(f"image_size must be >= 8 and workers >= 0, got {image_size} and {workers}")
    base = Path(root).expanduser() if root else data_home() / ds.folder
    layout = f"ROOT/train/<class>/<image> and ROOT/test/<class>/<image> ({ds.n_classes} class folders each)"
    if not base.is_dir():
        raise DataError(f"{ds.title} root {base} does not exist; expected the released layout PILOT reads, "
                        f"{layout}. Pass the folder with --set scenario.root=DIR")  # fmt: skip
    train_cls, test_cls = scan_train_test(base, ds.title, "ROOT/<class>/0001.jpg")
    if test_cls is None:
        raise DataError(f"{base} has no train/ and test/ folders; {ds.title} is read from its released split, "
                        f"{layout}")  # fmt: skip
    if len(train_cls) != ds.n_classes:
        raise DataError(f"{base / 'train'} has {len(train_cls)} class folders, {ds.title} has {ds.n_classes}; the "
                        f"copy is incomplete or another dataset")  # fmt: skip
    names = sorted(train_cls)
    (tr_files, tr_y), (te_files, te_y) = paths_and_labels(train_cls, names), paths_and_labels(test_cls, names)
    tr_paths, te_paths = [str(p) for p in tr_files], [str(p) for p in te_files]
    aug = ResizedCropFlip(size=image_size, scale=(0.05, 1.0)) if augment else None
    spec: dict[str, Any] = {"dataset": ds.folder, "image_size": image_size, "n_train": len(tr_paths),
                            "n_test": len(te_paths), "split": "released train/test folders",
                            "stored": f"RGB uint8 resized to {image_size}x{image_size} (bilinear)",
                            "transform": "x/255 (no normalisation, as PILOT)",
                            "augment": aug.describe() if aug else None}  # fmt: skip
    kw: dict[str, Any] = {"image_size": image_size, "transform": _TRANSFORM, "workers": workers,
                          "cache_dir": cache_dir}  # fmt: skip
    train = FileData(tr_paths, tr_y, augment=aug, **kw)
    test = FileData(te_paths, te_y, **kw)
    data = f"{ds.title} ({len(tr_paths)} train / {len(te_paths)} test images) at {base}"
    stream = split_by_class(name, train, test, n_experiences=n_experiences, class_order=class_order, seed=seed,
                            setting=setting, spec=spec, protocol_defaults=_PROTOCOL)  # fmt: skip
    return with_data(stream, data)


def _register(name: str, ds: PilotDataset) -> None:
    def builder(
        root: str | None = None,
        n_experiences: int = ds.n_experiences,
        seed: int = 0,
        class_order: str | tuple[int, ...] = "pycil1993",
        setting: str = "class_il",
        image_size: int = 224,
        augment: bool = True,
        workers: int = 2,
        cache_dir: str | None = None,
    ) -> Scenario:
        return _build(name, ds, root, n_experiences, seed, class_order, setting, image_size, augment, workers,
                      cache_dir)  # fmt: skip

    builder.__name__ = name
    builder.__doc__ = f"""Split {ds.title}: {ds.n_classes} classes in {ds.n_experiences} experiences (file-backed).

    Args:
        root: ``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>`` (default
            ``$CL_BENCH_DATA/{ds.folder}``).
        n_experiences: Number of experiences (equal class groups).
        seed: Seeds the class order when ``class_order="seeded"``.
        class_order: "pycil1993" (PILOT's default), "seeded", "identity" or an explicit list.
        setting: "class_il" or "task_il".
        image_size: Side of the stored images (224 for ViT-B/16).
        augment: PILOT's training augmentation (random resized crop, scale 0.05-1, and flip).
        workers: DataLoader worker processes decoding training batches ahead (0 = in the loop).
        cache_dir: Decode every image once into a memory-mapped cache under this folder (None = off).

    References:
        {ds.reference}.
        Zhou, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models" (IJCV 2024).
    """
    SCENARIOS.register(name, reference=f"{ds.reference}; splits of Zhou et al. (RevisitingCIL / PILOT)")(builder)


for _name, _ds in DATASETS.items():
    _register(_name, _ds)
