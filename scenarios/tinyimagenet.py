"""Split Tiny ImageNet: 200 classes of 64 x 64 images (500 train / 50 val each), class split (default 10 x 20).

Read from the released folder layout (``tiny-imagenet-200.zip``)::

    ROOT/wnids.txt                              200 class ids, one per line
    ROOT/train/<wnid>/images/<wnid>_<k>.JPEG    500 training images per class
    ROOT/val/images/val_<k>.JPEG                10,000 validation images
    ROOT/val/val_annotations.txt                "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per image

The labelled validation set is the test set (the official test images have no labels). The 110,000 images are
small enough for memory (1.35 GB as uint8), so they are decoded once — with threads, and into an optional
decoded-image cache — and held as uint8 tensors like CIFAR.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cl_bench.core.errors import DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, Standardize, TensorData
from cl_bench.data.augment import CropFlip
from cl_bench.data.download import data_home
from cl_bench.data.filedata import FileData, find_images
from cl_bench.data.streams import split_by_class

# Normalisation and augmentation of mammoth's seq-tinyimg (Buzzega et al., NeurIPS 2020).
_TRANSFORM = Standardize(255.0, (0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821))
AUGMENT = CropFlip(padding=4, flip_p=0.5)
# Buzzega et al. train Seq-TinyImageNet with batch 32 for 100 epochs per task (unverified against their code).
_PROTOCOL = {"batch_size": 32, "epochs": 100}
_LAYOUT = ("ROOT/wnids.txt, ROOT/train/<wnid>/images/*.JPEG, ROOT/val/images/*.JPEG and "
           "ROOT/val/val_annotations.txt (the layout of tiny-imagenet-200.zip)")  # fmt: skip



def _locate(root: Path) -> Path:
    if not root.is_dir():
        raise DataError(f"Tiny ImageNet root {root} does not exist; expected {_LAYOUT}, from "
                        f"cs231n.stanford.edu/tiny-imagenet-200.zip. Pass the folder with --set scenario.root=DIR")
    for folder in (root, root / "tiny-imagenet-200"):
        if (folder / "wnids.txt").is_file():
            return folder
    raise DataError(f"{root} is not a Tiny ImageNet folder: wnids.txt is missing; expected {_LAYOUT}")


def tinyimagenet_files(root: Path) -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """Train paths and labels, val paths and labels, and the class ids (label = position in sorted wnids).

    Raises:
        DataError: A missing file or folder, a class without training images, a val annotation naming an
            unknown class or a missing image, or a class absent from the annotations.
    """
    folder = _locate(root)
    wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text().splitlines() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    tr_paths, tr_y = [], []
    for w in wnids:
        images_dir = folder / "train" / w / "images"
        images = find_images(images_dir) if images_dir.is_dir() else []
        if not images:
            raise DataError(f"class {w} (listed in wnids.txt) has no training images in {images_dir}; expected "
                            f"{_LAYOUT}")  # fmt: skip
        tr_paths += [str(p) for p in images]
        tr_y += [index[w]] * len(images)
    ann = folder / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{ann} not found; the labels of the validation images (our test set) live there. "
                        f"Expected {_LAYOUT}")  # fmt: skip
    te_paths, te_y = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{ann} line {n} is {line!r}; expected '<file>\\t<wnid>\\t<box>' (tab-separated)")
        name, w = fields[0].strip(), fields[1].strip()
        if w not in index:
            raise DataError(f"{ann} line {n} labels {name} with class {w}, which wnids.txt does not list")
        path = folder / "val" / "images" / name
        if not path.is_file():
            raise DataError(f"{ann} line {n} names {path}, which does not exist; the val folder is incomplete")
        te_paths.append(str(path))
        te_y.append(index[w])
    missing = sorted(set(wnids) - {wnids[y] for y in te_y})
    if missing:
        raise DataError(f"{ann} has no image of class(es) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                        f"; expected validation images for all {len(wnids)} classes of wnids.txt")  # fmt: skip
    return tr_paths, tr_y, te_paths, te_y, wnids


@SCENARIOS.register(
    "split_tinyimagenet",
    reference="Le & Yang, 'Tiny ImageNet Visual Recognition Challenge' (CS231N, 2015); 10 x 20 class split and "
    "augmentation of Buzzega et al., 'Dark Experience for General Continual Learning' (NeurIPS 2020)",
)
def split_tinyimagenet(
    root: str | None = None,
    n_experiences: int = 10,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    augment: bool = True,
    workers: int = 2,
    cache_dir: str | None = None,
) -> Scenario:
    """Split Tiny ImageNet: 200 classes of 64 x 64 images in 10 experiences of 20 (held in memory as uint8).

    Args:
        root: The unpacked ``tiny-imagenet-200`` folder (or its parent; default ``$CL_BENCH_DATA``).
        n_experiences: Number of experiences.
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order or an explicit list of all classes.
        setting: "class_il" or "task_il".
        augment: Random crop (padding 4) + horizontal flip on training batches.
        workers: Threads that decode the JPEGs on first load.
        cache_dir: Keep the decoded images as a uint8 ``.npy`` here so later runs skip decoding.

    References:
        Le & Yang, "Tiny ImageNet Visual Recognition Challenge" (CS231N, 2015).
        Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual Learning: a
            Strong, Simple Baseline" (NeurIPS 2020).
    """
    base = Path(root).expanduser() if root else data_home() / "tiny-imagenet-200"
    tr_paths, tr_y, te_paths, te_y, wnids = tinyimagenet_files(base)

    def load(paths: list[str], y: list[int]) -> torch.Tensor:
        data = FileData(paths, torch.tensor(y), image_size=64, workers=workers, cache_dir=cache_dir)
        return torch.from_numpy(data.store.decode(range(len(paths))))

    train = TensorData(load(tr_paths, tr_y), torch.tensor(tr_y), _TRANSFORM, augment=AUGMENT if augment else None)
    test = TensorData(load(te_paths, te_y), torch.tensor(te_y), _TRANSFORM)
    spec = {"dataset": "tinyimagenet", "n_train": len(tr_paths), "n_test": len(te_paths), "n_classes_found": len(wnids),
            "test_set": "val (labelled by val_annotations.txt)", "labels": "index in sorted wnids",
            "stored": "RGB uint8 64x64 (resized if not 64x64)",
            "transform": "x/255, standardize((0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821))",
            "augment": AUGMENT.describe() if augment else None}  # fmt: skip
    return split_by_class("split_tinyimagenet", train, test, n_experiences=n_experiences, class_order=class_order,
                          seed=seed, setting=setting, spec=spec, protocol_defaults=_PROTOCOL)  # fmt: skip
