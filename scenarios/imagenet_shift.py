"""ImageNet-R, -A, -V2 and -Sketch as test-time adaptation targets of an ImageNet-1k source model.

Each dataset is one test-only, file-backed domain read from its released folder layout:

* ``imagenet_r``: ``imagenet-r/<wnid>/*.jpg``, 200 classes, 30,000 renditions (Hendrycks et al., ICCV 2021);
* ``imagenet_a``: ``imagenet-a/<wnid>/*.jpg``, 200 classes, 7,500 natural adversarial examples (Hendrycks et
  al., CVPR 2021);
* ``imagenet_v2``: ``imagenetv2-matched-frequency-format-val/<class index 0..999>/*.jpeg``, 10,000 images
  (Recht et al., ICML 2019); the folder name is the ImageNet-1k label;
* ``imagenet_sketch``: ``sketch/<wnid>/*.JPEG``, 1,000 classes, 50,889 sketches (Wang et al., NeurIPS 2019).

The source model is torchvision's ResNet-50 with its 1,000-unit ImageNet head, loaded from a local state dict
(``source_weights``; the spec records its SHA-256). ImageNet-R and -A have 200 classes: the stream's labels
are the positions of their wnids in the 200-wnid lists (sorted, as the reference evaluation code), and the
source model's classifier keeps only those 200 output units (:func:`cl_bench.nets.models.restrict_outputs`,
the ``imagenet_r_mask`` / ``indices_in_1k`` of the reference code), so predictions and every adaptation loss
see the 200-class output. The wnid lists ship in ``cl_bench/data/wnids/`` (:mod:`cl_bench.data.imagenet_wnids`;
sources in their headers). ImageNet-V2 and -Sketch use the whole 1,000-class head.

As in the RMT authors' benchmark (``datasets/data_loading.py``: ``random.shuffle(test_dataset.samples)``),
the images are played in a seeded random order (``seed``), not class by class; ``setting=correlated``
orders them by a Dirichlet process over labels instead. ``n_per_domain`` > 0 keeps a seeded subset.

References:
    Hendrycks et al., "The Many Faces of Robustness: A Critical Analysis of Out-of-Distribution
        Generalization" (ICCV 2021): ImageNet-R; code https://github.com/hendrycks/imagenet-r.
    Hendrycks, Zhao, Basart, Steinhardt & Song, "Natural Adversarial Examples" (CVPR 2021): ImageNet-A;
        code https://github.com/hendrycks/natural-adv-examples.
    Recht, Roelofs, Schmidt & Shankar, "Do ImageNet Classifiers Generalize to ImageNet?" (ICML 2019).
    Wang, Ge, Lipton & Xing, "Learning Robust Global Representations by Penalizing Local Predictive
        Power" (NeurIPS 2019): ImageNet-Sketch.
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (CVPR 2023);
        benchmark code https://github.com/mariodoebler/test-time-adaptation (``imagenet_others`` configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, SourceDomain, Standardize
from cl_bench.data.download import data_home
from cl_bench.data.filedata import FileData, scan_image_folder
from cl_bench.data.imagenet_wnids import output_rows, wnid_list
from cl_bench.data.streams import with_data
from cl_bench.data.tta_streams import check_setting, tta_experiences, tta_spec

_TRANSFORM = Standardize(255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The RMT repo's cfgs/imagenet_others/*.yaml: TEST.BATCH_SIZE 64.
_BATCH = 64


#: dataset -> (default folder under $CL_BENCH_DATA, the 200-wnid list or None for the 1k head, example path,
#: released image count).
DATASETS: dict[str, tuple[str, str | None, str, int]] = {
    "imagenet_r": ("imagenet-r", "imagenet_r", "ROOT/n01443537/art_0.jpg", 30_000),
    "imagenet_a": ("imagenet-a", "imagenet_a", "ROOT/n01498041/0.000116_digital clock _ digital clock_0.865662.jpg",
                   7_500),
    "imagenet_v2": ("imagenetv2-matched-frequency-format-val", None, "ROOT/0/7e1e3f4b1b9e2e2f.jpeg", 10_000),
    "imagenet_sketch": ("sketch", None, "ROOT/n01440764/sketch_0.JPEG", 50_889),
}  # fmt: skip


def class_folders(dataset: str, base: Path, partial: bool) -> tuple[list[str], list[int], int, tuple[int, ...] | None]:
    """Image paths, labels, the label-space size and the 1k output rows (None = all) of one dataset's tree.

    Raises:
        DataError: A folder that is not one of the dataset's classes, or (unless ``partial``) missing classes.
    """
    _, subset, example, _ = DATASETS[dataset]
    classes = scan_image_folder(base, dataset, example)
    all_1k = wnid_list("imagenet_1k")
    if dataset == "imagenet_v2":
        names = [str(i) for i in range(1000)]  # the folder name is the ImageNet-1k label
        what = "class index folders 0..999"
    else:
        names = list(wnid_list(subset) if subset else all_1k)
        what = f"the {len(names)} {dataset} WordNet-id folders"
    index = {c: i for i, c in enumerate(names)}
    stray = sorted(c for c in classes if c not in index)
    if stray:
        raise DataError(f"{base} holds {len(stray)} folder(s) that are not {what} (first: {stray[0]}); is this the "
                        f"{dataset} release? Expected {example}")  # fmt: skip
    if len(classes) != len(names) and not partial:
        missing = [c for c in names if c not in classes]
        raise DataError(f"{base} holds {len(classes)} of the {len(names)} class folders of {dataset} (missing e.g. "
                        f"{missing[0]}); the copy is incomplete (--set scenario.partial=true to use it anyway, "
                        f"labels unchanged)")  # fmt: skip
    paths = [str(p) for c, imgs in classes.items() for p in imgs]
    labels = [index[c] for c, imgs in classes.items() for _ in imgs]
    rows = output_rows(subset) if subset else None
    return paths, labels, len(names), rows


@SCENARIOS.register(
    "imagenet_shift",
    reference="Hendrycks et al. (ICCV 2021) ImageNet-R; Hendrycks et al. (CVPR 2021) ImageNet-A; Recht et al. "
    "(ICML 2019) ImageNet-V2; Wang et al. (NeurIPS 2019) ImageNet-Sketch; as TTA targets in Döbler et al. (CVPR "
    "2023)'s benchmark",
)
def imagenet_shift(
    dataset: str = "imagenet_r",
    root: str | None = None,
    seed: int = 0,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    partial: bool = False,
    source_model: str = "resnet50",
    source_weights: str | None = None,
    image_size: int = 224,
    workers: int = 2,
    cache_dir: str | None = None,
) -> Scenario:
    """One ImageNet distribution-shift dataset as a single test-only, file-backed TTA domain.

    Args:
        dataset: imagenet_r, imagenet_a, imagenet_v2 or imagenet_sketch.
        root: The dataset's released folder (default ``$CL_BENCH_DATA/<imagenet-r | imagenet-a |
            imagenetv2-matched-frequency-format-val | sketch>``); for Sketch also its parent holding ``sketch/``.
        seed: Seeds the image order, the subset and the correlated order.
        setting: continual (the images in a seeded random order, as the RMT repo), correlated (Dirichlet label
            order) or reset_each_shift (the same as continual: there is one domain). No severities, so no
            gradual; one domain, so no mixed_domains.
        n_per_domain: Images kept, a seeded subset (0 = all).
        concentration: Dirichlet concentration of the correlated setting.
        partial: Accept a copy holding only some of the class folders (labels stay the dataset's).
        source_model: Source architecture with a 1,000-unit ImageNet head (torchvision's ``resnet50``; a small
            ``cnn_bn`` for tests).
        source_weights: Local state dict of the ImageNet-1k source model (required; nothing is downloaded).
        image_size: Side the images are resized to (224, as torchvision's ImageNet models).
        workers: DataLoader worker processes decoding batches ahead (0 = in the loop).
        cache_dir: Decoded-image cache folder (None = off).

    References:
        Hendrycks et al., "The Many Faces of Robustness" (ICCV 2021).
        Hendrycks et al., "Natural Adversarial Examples" (CVPR 2021).
        Recht et al., "Do ImageNet Classifiers Generalize to ImageNet?" (ICML 2019).
        Wang et al., "Learning Robust Global Representations by Penalizing Local Predictive Power"
            (NeurIPS 2019).
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r} for imagenet_shift; choose one of {', '.join(DATASETS)} "
                          f"(--set scenario.dataset=imagenet_r)")  # fmt: skip
    check_setting(setting, concentration, n_per_domain)
    if setting in ("gradual", "mixed_domains"):
        raise ConfigError(f"imagenet_shift is one domain without severities, so setting {setting!r} does not "
                          f"apply; use continual, correlated or reset_each_shift")  # fmt: skip
    if image_size < 8 or workers < 0:
        raise ConfigError(f"image_size must be >= 8 and workers >= 0, got {image_size} and {workers}")
    if source_weights is None:
        raise ConfigError("imagenet_shift needs a source model: pass --set scenario.source_weights=FILE, a local "
                          "state dict of an ImageNet-1k model with a 1,000-unit head (e.g. torchvision's ResNet-50 "
                          "IMAGENET1K_V1 file resnet50-0676ba61.pth); nothing is downloaded at run time")  # fmt: skip
    folder, subset, example, released = DATASETS[dataset]
    base = Path(root).expanduser() if root else data_home() / folder
    if dataset == "imagenet_sketch" and (base / "sketch").is_dir():
        base = base / "sketch"  # the archive unpacks to sketch/<wnid>/; accept its parent too
    if not base.is_dir():
        raise DataError(f"{dataset} root {base} does not exist; expected the released layout such as {example}. "
                        f"Pass the folder with --set scenario.root=DIR")  # fmt: skip
    paths, labels, n_classes, rows = class_folders(dataset, base, partial)
    # The RMT repo shuffles the test files once (seeded); the scanned order is class by class.
    order = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(len(paths))
    store = FileData([paths[i] for i in order], torch.tensor(labels, dtype=torch.int64)[torch.from_numpy(order)],
                     image_size=image_size, transform=_TRANSFORM, workers=workers, cache_dir=cache_dir)  # fmt: skip

    def domain_data(_name: str, _severity: int, keep: torch.Tensor) -> FileData:
        return store.subset(keep)

    source = SourceDomain(None, None, source_model, source_weights, 1, True, setting == "reset_each_shift",
                          checkpoint_classes=1000, output_rows=rows)  # fmt: skip
    # No severities: recorded as 5, as domainnet126 does (0 would mean clean source data).
    experiences = tta_experiences(setting, (dataset,), 5, domain_data, len(paths), n_classes, clean=None,
                                  insert_clean=False, n_per_domain=n_per_domain, concentration=concentration,
                                  seed=seed)  # fmt: skip
    spec: dict[str, Any] = {"dataset": dataset, "n_classes": n_classes, "images": len(paths),
                            "images_released": released, "class_folders": len(set(labels)),
                            "image_size": image_size, "transform": "x/255, ImageNet mean/std",
                            "order": "seeded shuffle", "checkpoint_classes": 1000,
                            "output_mask": f"{subset}_wnids.txt (200 of the 1k outputs)" if subset else None,
                            **tta_spec(setting, n_per_domain, concentration, False, seed, source)}  # fmt: skip
    data = f"{dataset} folders ({len(paths)} images, {len(set(labels))} classes) at {base}"
    return with_data(Scenario("imagenet_shift", experiences, spec, n_classes, "domain_il", {"batch_size": _BATCH},
                              source), data)  # fmt: skip
