"""DomainNet-126 as a continual test-time adaptation stream: one experience per target domain.

DomainNet-126 is the 126-class, four-domain subset (clipart, painting, real, sketch) of DomainNet that
AdaContrast introduced and the RMT authors' benchmark uses: a source model trained on one domain (``real`` by
default) adapts to the others in turn (their configs: clipart, painting, sketch). Each domain is read from its
published file list, ``<domain>_list.txt``, whose lines are ``<domain>/<class>/<file>.jpg <label>`` relative to
the DomainNet image root (the lists ship with the AdaContrast and RMT repositories; pass their folder as
``lists_dir``). Images are file-backed (decoded batch by batch), normalised with ImageNet's mean and std.

The domains differ in size (18,522 to 69,621 images), so ``n_per_domain`` draws a seeded subset of each domain
separately (0 = every listed image).

References:
    Peng, Bai, Xia, Huang, Saenko, Wang, "Moment Matching for Multi-Source Domain Adaptation" (ICCV 2019).
    Chen, Wang, Darrell, Ebrahimi, "Contrastive Test-Time Adaptation" (CVPR 2022): the 126-class subset.
    Döbler, Marsden & Yang, "Robust Mean Teacher for Continual and Gradual Test-Time Adaptation" (CVPR 2023).
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
from cl_bench.data.filedata import FileData
from cl_bench.data.streams import with_data
from cl_bench.data.tta_streams import tta_experiences, tta_spec

DOMAINS = ("clipart", "painting", "real", "sketch")
N_CLASSES = 126
_TRANSFORM = Standardize(255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_BATCH = 128  # the RMT repo's cfgs/domainnet126/*.yaml: TEST.BATCH_SIZE 128



def read_list(path: Path, root: Path) -> tuple[list[str], list[int]]:
    """Image paths (under ``root``) and labels of one DomainNet-126 list file.

    Raises:
        DataError: A missing or malformed list, a label outside 0-125, or a listed image that is not there.
    """
    if not path.is_file():
        raise DataError(f"list file {path} not found; domainnet126 reads <domain>_list.txt (lines '<domain>/"
                        f"<class>/<file>.jpg <label>', as published with AdaContrast and the RMT benchmark): pass "
                        f"their folder with --set scenario.lists_dir=DIR")  # fmt: skip
    paths, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) < N_CLASSES:
            raise DataError(f"{path}, line {n}: {line[:80]!r} is not '<path> <label>' with a label 0-"
                            f"{N_CLASSES - 1}; the list is not DomainNet-126's")  # fmt: skip
        paths.append(str(root / parts[0]))
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{path} lists no images")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(paths)} images listed in {path.name} are not under {root} "
                        f"(e.g. {missing[0]}); the root must be the DomainNet image folder holding "
                        f"<domain>/<class>/")  # fmt: skip
    return paths, labels


@SCENARIOS.register(
    "domainnet126",
    reference="Peng et al., 'Moment Matching for Multi-Source Domain Adaptation' (ICCV 2019); 126-class subset "
    "of Chen et al., 'Contrastive Test-Time Adaptation' (CVPR 2022)",
)
def domainnet126(
    root: str | None = None,
    lists_dir: str | None = None,
    domains: tuple[str, ...] = ("clipart", "painting", "sketch"),
    seed: int = 0,
    setting: str = "continual",
    n_per_domain: int = 0,
    concentration: float = 0.1,
    source_model: str = "resnet50",
    source_weights: str | None = None,
    image_size: int = 224,
    workers: int = 2,
    cache_dir: str | None = None,
) -> Scenario:
    """DomainNet-126: one test-only, file-backed experience per target domain.

    Args:
        root: The DomainNet image folder (``ROOT/<domain>/<class>/<file>.jpg``; default
            ``$CL_BENCH_DATA/domainnet``).
        lists_dir: Folder with ``<domain>_list.txt`` (default: ``root``).
        domains: Target domains in stream order (the RMT configs' clipart, painting, sketch for a model trained
            on real).
        seed: Seeds each domain's subset and the orders of the mixed and correlated settings.
        setting: continual, mixed_domains, reset_each_shift or correlated (no severities here, so no gradual).
        n_per_domain: Images per domain, a seeded subset of each (0 = every listed image).
        concentration: Dirichlet concentration of the correlated setting.
        source_model: Source architecture (torchvision's ``resnet50`` with a 126-class head; ``cnn_bn`` for tests).
        source_weights: Local state dict of the source model trained on the source domain (required).
        image_size: Side the images are resized to.
        workers: DataLoader worker processes decoding batches ahead (0 = in the loop).
        cache_dir: Decoded-image cache folder (None = off).

    References:
        Peng et al., "Moment Matching for Multi-Source Domain Adaptation" (ICCV 2019).
        Chen, Wang, Darrell, Ebrahimi, "Contrastive Test-Time Adaptation" (CVPR 2022).
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if not domains or unknown:
        raise ConfigError(f"domains must be some of {', '.join(DOMAINS)}, got {list(domains)}")
    if setting == "gradual":
        raise ConfigError("domainnet126 has no severities, so no gradual setting; use continual, mixed_domains, "
                          "reset_each_shift or correlated")  # fmt: skip
    if n_per_domain < 0 or image_size < 8 or workers < 0:
        raise ConfigError(f"n_per_domain and workers must be >= 0 and image_size >= 8, got {n_per_domain}, "
                          f"{workers} and {image_size}")  # fmt: skip
    if source_weights is None:
        raise ConfigError("domainnet126 needs a source model: pass --set scenario.source_weights=FILE, a local "
                          "state dict of a ResNet-50 with a 126-class head trained on the source domain; nothing is "
                          "downloaded at run time")  # fmt: skip
    base = Path(root).expanduser() if root else data_home() / "domainnet"
    if not base.is_dir():
        raise DataError(f"DomainNet root {base} does not exist; expected ROOT/<domain>/<class>/<file>.jpg. Pass the "
                        f"folder with --set scenario.root=DIR")  # fmt: skip
    lists = Path(lists_dir).expanduser() if lists_dir else base
    paths: list[str] = []
    labels: list[int] = []
    spans: dict[str, tuple[int, int]] = {}
    for d in domains:
        p, y = read_list(lists / f"{d}_list.txt", base)
        spans[d] = (len(paths), len(p))
        paths += p
        labels += y
    store = FileData(paths, torch.tensor(labels, dtype=torch.int64), image_size=image_size, transform=_TRANSFORM,
                     workers=workers, cache_dir=cache_dir)  # fmt: skip

    def domain_data(domain: str, _severity: int, _keep: torch.Tensor) -> FileData:
        start, n = spans[domain]
        rows = np.arange(n)
        if n_per_domain and n_per_domain < n:  # each domain's own seeded subset: the domains differ in size
            seq = np.random.SeedSequence([seed, DOMAINS.index(domain)])
            rows = np.sort(np.random.default_rng(seq).permutation(n)[:n_per_domain])
        return store.subset(torch.from_numpy(rows + start))

    source = SourceDomain(None, None, source_model, source_weights, 1, True, setting == "reset_each_shift")
    # No severities: recorded as 5, as the RMT configs' CORRUPTION.SEVERITY (0 would mean clean source data).
    experiences = tta_experiences(setting, tuple(domains), 5, domain_data, max(n for _, n in spans.values()),
                                  N_CLASSES, clean=None, insert_clean=False, n_per_domain=0,
                                  concentration=concentration, seed=seed)  # fmt: skip
    spec: dict[str, Any] = {"dataset": "domainnet126", "domains": list(domains),
                            "images_per_domain": {d: n for d, (_, n) in spans.items()}, "image_size": image_size,
                            "transform": "x/255, ImageNet mean/std", "per_domain_subset": n_per_domain,
                            **tta_spec(setting, 0, concentration, False, seed, source)}  # fmt: skip
    data = f"DomainNet-126 lists at {lists}, images at {base}"
    return with_data(Scenario("domainnet126", experiences, spec, N_CLASSES, "domain_il", {"batch_size": _BATCH},
                              source), data)  # fmt: skip
