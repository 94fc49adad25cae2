"""ImageNet-C as a continual test-time adaptation stream, from its released folder layout.

``ROOT/<corruption>/<severity>/<wnid>/<image>.JPEG`` (as ``imagenet-c`` unpacks: 15 benchmark corruptions, each
with 5 severity folders of the 50,000 ImageNet validation images at 224 x 224, 50 per class). One experience per
corruption in the continual TTA order of the RMT authors' benchmark (:data:`BENCHMARK_ORDER`), severity 5, by
default the 5,000-image subset per domain that the RMT repo's README describes (its ``conf.py`` default is
``CORRUPTION.NUM_EX = -1``, all images); ``n_per_domain=0`` takes all 50,000. Images are file-backed
(:class:`cl_bench.data.filedata.FileData`): decoded batch by batch
(DataLoader workers, optional decoded-image cache), never a whole domain in memory.

Labels are the positions of the class folders in sorted order, which for the 1,000 ImageNet wnids is the label
order of torchvision's ImageNet models; every domain must hold the same ``n_classes`` class folders. The source
model is torchvision's ResNet-50 loaded from a local state dict (``source_weights``, e.g. the IMAGENET1K_V1
file, whose SHA-256 the spec records); inputs are normalised with ImageNet's mean and std, as torchvision's
weights expect (the RMT repo wraps the same normalisation into the model).

Difference to the RMT repo: its subset is a fixed list of image ids; ours is a seeded subset (``seed``), the same
images in every domain, so numbers on the 5,000-image subset are comparable across methods here but not
image-for-image with theirs.
The kept images are played in one seeded random order (the same in every domain), as the RMT repo shuffles
each domain's files; the folders themselves are scanned class by class.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
        (ICLR 2019).
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (CVPR 2023):
        the benchmark's order, subset size and ResNet-50 source model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, SourceDomain, Standardize
from cl_bench.data import corruptions as C
from cl_bench.data.download import data_home
from cl_bench.data.filedata import FileData, scan_image_folder
from cl_bench.data.streams import with_data
from cl_bench.data.tta_streams import GRADUAL_SEVERITIES, tta_experiences, tta_spec

BENCHMARK_ORDER = C.BENCHMARK_ORDER
# torchvision's ImageNet weights expect x/255 normalised by ImageNet's channel statistics.
_TRANSFORM = Standardize(255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The RMT repo's ImageNet-C configs: TEST.BATCH_SIZE 64; its README's 5,000 images per domain.
_BATCH, _SUBSET = 64, 5000
_EXAMPLE = "ROOT/gaussian_noise/5/n01440764/ILSVRC2012_val_00000293.JPEG"



@SCENARIOS.register(
    "imagenet_c",
    reference="Hendrycks & Dietterich (ICLR 2019), released ImageNet-C folders; Döbler et al., 'Robust Mean "
    "Teacher' (CVPR 2023) benchmark protocol",
)
def imagenet_c(
    root: str | None = None,
    severity: int = 5,
    corruptions: tuple[str, ...] = BENCHMARK_ORDER,
    n_classes: int = 1000,
    seed: int = 0,
    setting: str = "continual",
    n_per_domain: int = _SUBSET,
    concentration: float = 0.1,
    source_model: str = "resnet50",
    source_weights: str | None = None,
    image_size: int = 224,
    workers: int = 2,
    cache_dir: str | None = None,
) -> Scenario:
    """ImageNet-C: one test-only, file-backed experience per corruption.

    Args:
        root: ``ROOT/<corruption>/<severity>/<wnid>/<image>`` (default ``$CL_BENCH_DATA/ImageNet-C``).
        severity: Severity 1-5 (the gradual setting visits 1-5-1 within each domain).
        corruptions: One experience per name, in order (default: the benchmark order).
        n_classes: Class folders every domain must hold (1000 for the released set).
        seed: Seeds the image subset and the orders of the mixed and correlated settings.
        setting: continual, gradual, mixed_domains, reset_each_shift or correlated.
        n_per_domain: Images per domain (5,000 as the RMT repo; 0 = all 50,000).
        concentration: Dirichlet concentration of the correlated setting.
        source_model: Source architecture (torchvision's ``resnet50``; a small ``cnn_bn`` for tests).
        source_weights: Local state dict of the source model (required: ImageNet-C has no training data here).
        image_size: Side of the decoded images (224: the released files' size).
        workers: DataLoader worker processes decoding batches ahead (0 = in the loop).
        cache_dir: Decode every kept image once into a memory-mapped cache under this folder (None = off).

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
            Perturbations" (ICLR 2019).
        Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (CVPR 2023).
    """
    if not 1 <= severity <= 5:
        raise ConfigError(f"severity must be 1-5, got {severity}")
    if not corruptions:
        raise ConfigError(f"corruptions must name at least one of: {', '.join(BENCHMARK_ORDER)}")
    if image_size < 8 or workers < 0 or n_classes < 2:
        raise ConfigError(f"image_size must be >= 8, workers >= 0 and n_classes >= 2, got {image_size}, {workers} "
                          f"and {n_classes}")  # fmt: skip
    if source_weights is None:
        raise ConfigError("imagenet_c needs a source model: pass --set scenario.source_weights=FILE, a local state "
                          "dict of torchvision's ResNet-50 (e.g. resnet50-0676ba61.pth, the IMAGENET1K_V1 weights "
                          "torchvision publishes); nothing is downloaded at run time")  # fmt: skip
    base = Path(root).expanduser() if root else data_home() / "ImageNet-C"
    if not base.is_dir():
        raise DataError(f"ImageNet-C root {base} does not exist; expected the released layout "
                        f"ROOT/<corruption>/<severity>/<wnid>/<image> such as {_EXAMPLE}. Pass the folder with "
                        f"--set scenario.root=DIR")  # fmt: skip
    severities = GRADUAL_SEVERITIES if setting == "gradual" else (severity,)
    # One file list for the whole stream, so every domain is a subset of one store (mixed domains concatenate).
    paths: list[str] = []
    labels: list[int] = []
    offset: dict[tuple[str, int], int] = {}
    n_images = None
    for c in corruptions:
        for s in sorted(set(severities)):
            folder = base / c / str(s)
            classes = scan_image_folder(folder, f"ImageNet-C ({c}, severity {s})", _EXAMPLE)
            if len(classes) != n_classes:
                raise DataError(f"{folder} holds {len(classes)} class folders with images, expected {n_classes} "
                                f"(--set scenario.n_classes=N for a partial copy); the copy is incomplete")
            files = [(i, p) for i, imgs in enumerate(classes.values()) for p in imgs]
            if n_images is not None and len(files) != n_images:
                raise DataError(f"{folder} holds {len(files)} images, the first domain {n_images}; every domain "
                                f"of ImageNet-C holds the same images")  # fmt: skip
            n_images = len(files)
            offset[(c, s)] = len(paths)
            paths += [str(p) for _, p in files]
            labels += [i for i, _ in files]
    assert n_images is not None
    store = FileData(paths, torch.tensor(labels, dtype=torch.int64), image_size=image_size, transform=_TRANSFORM,
                     workers=workers, cache_dir=cache_dir)  # fmt: skip

    # The scanned files run class by class; the RMT repo shuffles each domain's files once (data_loading.py,
    # random.shuffle(test_dataset.samples)), so the kept images are played in one seeded order, the same in
    # every domain (the correlated and mixed settings reorder on top of it).
    def domain_data(corruption: str, sev: int, keep: torch.Tensor) -> FileData:
        order = torch.from_numpy(np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(len(keep)))
        return store.subset(keep[order] + offset[(corruption, sev)])

    source = SourceDomain(None, None, source_model, source_weights, 1, True, setting == "reset_each_shift")
    experiences = tta_experiences(setting, tuple(corruptions), severity, domain_data, n_images, n_classes,
                                  clean=None, insert_clean=False, n_per_domain=n_per_domain,
                                  concentration=concentration, seed=seed)  # fmt: skip
    spec: dict[str, Any] = {"dataset": "imagenet_c", "corruptions": list(corruptions),
                            "severity": severity, "n_classes": n_classes, "images_per_domain": n_images,
                            "image_size": image_size, "transform": "x/255, ImageNet mean/std",
                            "subset": "seeded, the same images in every domain",
                            "order": "seeded shuffle, the same in every domain",
                            **tta_spec(setting, n_per_domain, concentration, False, seed, source)}  # fmt: skip
    data = f"ImageNet-C folders ({n_images} images per domain) at {base}"
    return with_data(Scenario("imagenet_c", experiences, spec, n_classes, "domain_il", {"batch_size": _BATCH},
                              source), data)  # fmt: skip
