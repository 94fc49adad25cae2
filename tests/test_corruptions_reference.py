"""cl_bench's corruptions against the ``imagecorruptions`` package (ImageNet-C's code), same random draws.

Where a CIFAR-10-C severity and an ImageNet-C severity share their parameters, ours at the CIFAR
severity and the package's at the ImageNet one run on the same image with the same random numbers
(our functions draw from a shim over NumPy's legacy global generator, which the package uses, in
the package's order). Spatter's parameters are never shared, but its code is make_cifar_c.py's;
there the package's function runs with the CIFAR parameter table substituted into its source.
Target: mean absolute difference <= 0.05 grey levels. Skipped when imagecorruptions is absent
(``pip install 'cl_bench[corruptions]'``).

References:
    Michaelis et al., "Benchmarking Robustness in Object Detection: Autonomous Driving when Winter is
    Coming" (2019), the imagecorruptions package; Hendrycks & Dietterich (ICLR 2019), make_cifar_c.py.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cl_bench.data import corruptions as C

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("imagecorruptions") is None,
    reason="imagecorruptions is not installed (pip install 'cl_bench[corruptions]')",
)

#: (corruption, CIFAR severity, ImageNet severity) with equal parameters in make_cifar_c.py and imagecorruptions.
SHARED = [
    ("gaussian_noise", 3, 1), ("speckle_noise", 5, 2), ("gaussian_blur", 5, 1), ("zoom_blur", 2, 1),
    ("zoom_blur", 3, 2), ("contrast", 3, 1), ("contrast", 4, 2), ("brightness", 2, 1), ("brightness", 4, 2),
    ("brightness", 5, 3), ("saturate", 1, 1), ("saturate", 2, 2),
]  # fmt: skip

#: make_cifar_c.py's spatter table (the same as ours).
CIFAR_SPATTER = [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                 (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)]  # fmt: skip


class LegacyRNG:
    """The Generator methods our corruptions call, drawn from NumPy's legacy global state instead."""

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None) -> Any:
        return np.random.normal(loc, scale, size)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None) -> Any:
        return np.random.uniform(low, high, size)

    def poisson(self, lam: Any = 1.0, size: Any = None) -> Any:
        return np.random.poisson(lam, size)

    def integers(self, low: int, high: int | None = None, size: Any = None) -> Any:
        return np.random.randint(low, high, size)

    def random(self, size: Any = None) -> Any:
        return np.random.random(size)


@pytest.fixture(scope="module")
def ref() -> types.ModuleType:
    """imagecorruptions.corruptions (see :func:`load_reference`)."""
    return load_reference()


def load_reference() -> types.ModuleType:
    """imagecorruptions.corruptions, importable on today's setuptools and scikit-image."""
    added = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:  # setuptools >= 81 dropped it; the package only needs resource_filename
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda pkg, name: str(Path(sys.modules[pkg].__file__).parent / name)  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
        added = True
    try:
        import imagecorruptions.corruptions as mod
    finally:
        if added:
            del sys.modules["pkg_resources"]
    blur = mod.gaussian

    def gaussian(*args: Any, multichannel: bool | None = None, **kw: Any) -> Any:
        # scikit-image >= 0.19 spells multichannel=True as channel_axis=-1
        return blur(*args, **({"channel_axis": -1} if multichannel else {}), **kw)

    mod.gaussian = gaussian
    return mod


def _image(seed: int = 0) -> np.ndarray:
    """A smooth 32x32 RGB test image (edges and flat parts, like a photograph more than noise)."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((32, 32, 3)), (2, 2, 0))
    x = (x - x.min()) / (x.max() - x.min())
    return np.uint8(x * 255)


def _ours(img: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    x = img[None].astype(np.float32) / np.float32(255)
    return np.uint8(np.clip(C._FUNCTIONS[name](x, severity, LegacyRNG()), 0, 1) * 255)[0]


def _theirs(fn: Any, img: np.ndarray, severity: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    return np.uint8(fn(Image.fromarray(img), severity))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize(("name", "cifar", "imagenet"), SHARED)
def test_shared_severities_match_imagecorruptions(ref: types.ModuleType, name: str, cifar: int, imagenet: int) -> None:
    for seed in (0, 1):
        img = _image(seed)
        mad = _mad(_ours(img, name, cifar, seed), _theirs(getattr(ref, name), img, imagenet, seed))
        assert mad <= 0.05, f"{name} CIFAR s{cifar} vs ImageNet s{imagenet}: MAD {mad:.4f} grey levels"


def _with_table(ref: types.ModuleType, name: str, table: list[Any]) -> Any:
    """The package's ``name`` with its parameter table replaced (its code otherwise as published)."""
    src = inspect.getsource(getattr(ref, name))
    src, n = re.subn(r"c = \[.*?\]\[\s*severity - 1\]", "c = __TABLE__[severity - 1]", src, count=1, flags=re.S)
    assert n == 1, f"no parameter table found in imagecorruptions' {name}"
    scope = dict(vars(ref), __TABLE__=table)
    exec(compile(src, f"<imagecorruptions.{name}>", "exec"), scope)  # noqa: S102 - the package's own source
    return scope[name]


@pytest.mark.skipif(not C.ops.opencv_available(), reason="OpenCV (cv2) is not installed")
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_spatter_is_make_cifar_c_code(ref: types.ModuleType, severity: int) -> None:
    fn = _with_table(ref, "spatter", CIFAR_SPATTER)
    for seed in (0, 1):
        img = _image(seed)
        mad = _mad(_ours(img, "spatter", severity, seed), _theirs(fn, img, severity, seed))
        assert mad <= 0.05, f"spatter s{severity}: MAD {mad:.4f} grey levels"


def test_frost_defaults_to_the_packages_photographs() -> None:
    folder = C.installed_frost_dir()
    assert folder is not None and C.is_canonical("frost") and "imagecorruptions" in C.describe("frost")
    assert np.array_equal(C.corrupt(_image()[None], "frost", 3, seed=2),
                          C.corrupt(_image()[None], "frost", 3, seed=2, frost_dir=folder))  # fmt: skip
