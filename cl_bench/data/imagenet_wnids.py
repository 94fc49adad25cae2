"""ImageNet class lists (WordNet ids) shipped with cl_bench, for the 200-class ImageNet-R / -A output masks.

``data/wnids/imagenet_1k_wnids.txt`` holds the 1,000 ImageNet-1k wnids in label order (sorted: torchvision's
label order), ``imagenet_r_wnids.txt`` and ``imagenet_a_wnids.txt`` the 200 classes of ImageNet-R and
ImageNet-A, sorted as the reference evaluation code orders them; each file's header names its source.

References:
    Hendrycks et al., "The Many Faces of Robustness" (ICCV 2021), https://github.com/hendrycks/imagenet-r
        ``eval.py`` (``all_wnids``, ``imagenet_r_wnids``).
    Hendrycks et al., "Natural Adversarial Examples" (CVPR 2021),
        https://github.com/hendrycks/natural-adv-examples ``eval.py`` (``thousand_k_to_200``).
    Döbler, Marsden & Yang, "Robust Mean Teacher" (CVPR 2023), https://github.com/mariodoebler/test-time-adaptation
        ``classification/datasets/imagenet_subsets.py`` (the same lists).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

LISTS = ("imagenet_1k", "imagenet_r", "imagenet_a")
_FOLDER = Path(__file__).resolve().parent / "wnids"


@cache
def wnid_list(name: str) -> tuple[str, ...]:
    """The packaged wnid list ``name`` (one of :data:`LISTS`), in label order, header comments dropped."""
    if name not in LISTS:
        raise KeyError(f"no wnid list {name!r}; the packaged lists are {', '.join(LISTS)}")
    lines = (_FOLDER / f"{name}_wnids.txt").read_text().splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def output_rows(name: str) -> tuple[int, ...]:
    """Positions of list ``name``'s wnids among the 1,000 ImageNet-1k outputs (the output mask), in its order."""
    index = {w: i for i, w in enumerate(wnid_list("imagenet_1k"))}
    return tuple(index[w] for w in wnid_list(name))


__all__ = ["LISTS", "output_rows", "wnid_list"]
