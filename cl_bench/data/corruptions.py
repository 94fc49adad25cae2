"""Common image corruptions at CIFAR scale, vectorised over batches of uint8 NHWC images.

``corrupt(images, name, severity, seed=0)`` applies one of the 15 benchmark
corruptions of Hendrycks & Dietterich (plus their 4 extra ones) at severity 1-5,
with the parameter values of the CIFAR-10-C generation script
(``make_cifar_c.py`` in hendrycks/robustness). The formulas follow that script;
the code is our own, works on whole batches (numpy/scipy/torch), on any H x W,
with 1 or 3 channels, and draws all randomness from ``numpy.random.default_rng(seed)``,
so the same seed gives the same output. Like the original (``np.uint8(...)``),
results are truncated, not rounded, to uint8.

Where the original relied on ImageMagick, this module re-implements the operation directly (the
primitives are in :mod:`cl_bench.data.image_ops`): motion blur (``motion_blur`` and the snow layer)
is ImageMagick's one-sided Gaussian line kernel of width ``2 * radius + 1`` at the sampled angle, with
edge-clamped borders. Spatter's water (severities 1-3) calls OpenCV's Canny edge detector and
distance transform as the original does; without OpenCV its edges are approximated by the liquid
mask's boundary pixels (not canonical). Pixelate keeps PIL's 8-bit image between its two resizes.

Frost uses the original photographs (``frost1.png`` ... ``frost6.jpg`` of hendrycks/robustness):
from ``frost_dir`` when given, else the copies the ``imagecorruptions`` package ships (optional
extra ``corruptions``). Without either a procedural texture is used, which is **not** the canonical
corruption — :func:`is_canonical` says so, and streams record it in their spec.

Grayscale images (C = 1): channel-wise corruptions run on the single channel;
colour ones (brightness, saturate, snow, frost, spatter) treat it as a grey RGB
image and convert back with ITU-R 601 luma weights.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
    Corruptions and Perturbations" (ICLR 2019); code: github.com/hendrycks/robustness
    (ImageNet-C/create_c/make_cifar_c.py).
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.data import image_ops as ops

BENCHMARK_ORDER: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS: tuple[str, ...] = BENCHMARK_ORDER + EXTRA
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
FROST_FILES: tuple[str, ...] = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_FROST_DRAWN = 5  # the original draws np.random.randint(5): frost6 is never used

_Fn = Callable[..., np.ndarray]


# -- the corruptions (x: float32 (N, H, W, C) in [0, 1]; return unclipped values in [0, 1] scale) ----------------------
def gaussian_noise(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Additive Gaussian noise, sigma 0.04-0.10."""
    sigma = [0.04, 0.06, 0.08, 0.09, 0.10][s - 1]
    return x + rng.normal(scale=sigma, size=x.shape)


def shot_noise(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Poisson noise Poisson(x * lam) / lam, lam 500-50."""
    lam = [500, 250, 100, 75, 50][s - 1]
    return rng.poisson(x * lam) / lam


def impulse_noise(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Salt-and-pepper noise on a fraction 0.01-0.07 of the values."""
    amount = [0.01, 0.02, 0.03, 0.05, 0.07][s - 1]
    flipped = rng.random(x.shape) < amount  # skimage random_noise 's&p': per value, salt vs pepper 50/50
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


def speckle_noise(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Multiplicative Gaussian noise x + x * N(0, sigma), sigma 0.06-0.2."""
    sigma = [0.06, 0.1, 0.12, 0.16, 0.2][s - 1]
    return x + x * rng.normal(scale=sigma, size=x.shape)


def gaussian_blur(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Gaussian blur, sigma 0.4-1."""
    return ops.gaussian(x, [0.4, 0.6, 0.7, 0.8, 1.0][s - 1])


def glass_blur(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Gaussian blur, local pixel shuffling (1-2 passes), Gaussian blur again."""
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    img = np.uint8(np.clip(ops.gaussian(x, sigma), 0, 1) * 255)
    n, h, w, _ = img.shape
    b = np.arange(n)
    # The original's "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on numpy views, so it copies the
    # neighbour into (h, w) and leaves the neighbour unchanged; we reproduce that effective behaviour.
    for _it in range(iterations):
        for r in range(h - delta, delta, -1):  # the original's scan order, all images at once
            for c in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2, n))  # numpy randint(-d, d): d excluded
                img[b, r, c] = img[b, r + dy, c + dx]
    return ops.gaussian(img / np.float32(255), sigma)


def defocus_blur(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Convolution with an anti-aliased disk, radius 0.3-1.5."""
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    return ops.filter2d(x, ops.disk(radius, alias))


def motion_blur(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Line blur (radius 6-9, sigma 1-2.5) at a random angle in [-45, 45) degrees per image."""
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    # ImageMagick worked on 8-bit images: quantise first, as the PNG round trip did
    return ops.line_motion_blur(np.floor(x * 255) / 255, radius, sigma, rng.uniform(-45, 45, size=len(x)))


def zoom_blur(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Mean of the image and its centre zooms by factors 1, 1.01, ... up to 1.06-1.26."""
    top = [1.06, 1.11, 1.16, 1.21, 1.26][s - 1]
    factors = np.arange(1, top, 0.01)
    out = np.zeros_like(x)
    for f in factors:
        out += ops.clipped_zoom(x, float(f))
    return (x + out) / (len(factors) + 1)


def snow(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Motion-blurred snow flakes, their 180-degree rotation, and a greyish brightening."""
    loc, scale, zoom, thresh, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ][s - 1]  # fmt: skip
    n, h, w, c = x.shape
    layer = rng.normal(loc=loc, scale=scale, size=(n, h, w, 1))
    layer = ops.clipped_zoom(layer, zoom)
    layer[layer < thresh] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255  # the original's 8-bit PNG round trip
    layer = np.floor(ops.line_motion_blur(layer, radius, sigma, rng.uniform(-135, -45, size=n)) * 255 + 0.5) / 255
    grey = x if c == 1 else ops.luma(x)
    x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return x + layer + layer[:, ::-1, ::-1]


def frost(x: np.ndarray, s: int, rng: np.random.Generator, frost_dir: str | None = None, **_: object) -> np.ndarray:
    """Blend with a frost texture crop: a x + b frost (original photographs, or procedural)."""
    a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
    n, h, w, c = x.shape
    frost_dir = frost_dir or installed_frost_dir()
    if frost_dir is None:
        tex = _procedural_frost(rng, n, h, w)
    else:
        textures = _frost_textures(frost_dir, h, w)
        which = rng.integers(0, _FROST_DRAWN, size=n)
        tex = np.empty((n, h, w, 3), np.float32)
        for i in range(n):  # crops differ per image; each is a slice copy
            t = textures[which[i]]
            r0, c0 = rng.integers(0, t.shape[0] - h), rng.integers(0, t.shape[1] - w)
            tex[i] = t[r0 : r0 + h, c0 : c0 + w]
    if c == 1:
        tex = ops.luma(tex)
    return a * x + b * tex / 255


_TEXTURE_CACHE: dict[tuple[str, int, int], list[np.ndarray]] = {}


def installed_frost_dir() -> str | None:
    """The frost photographs shipped by the installed ``imagecorruptions`` package, or None.

    Found with ``importlib.util.find_spec``, without importing the package (its import needs
    ``pkg_resources``, which setuptools >= 81 no longer ships). Install: ``pip install 'cl_bench[corruptions]'``.
    """
    spec = importlib.util.find_spec("imagecorruptions")
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(loc) / "frost"
        if all((folder / f).is_file() for f in FROST_FILES[:_FROST_DRAWN]):
            return str(folder)
    return None


def _frost_textures(frost_dir: str, h: int, w: int) -> list[np.ndarray]:
    """The frost photographs, resized by 0.2 (bilinear, as cv2.resize) and at least (h + 1) x (w + 1)."""
    key = (str(Path(frost_dir).expanduser().resolve()), h, w)
    if key in _TEXTURE_CACHE:
        return _TEXTURE_CACHE[key]
    folder = Path(frost_dir).expanduser()
    missing = [f for f in FROST_FILES[:_FROST_DRAWN] if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"frost_dir {folder} lacks {', '.join(missing)}; frost needs the texture images "
            f"{', '.join(FROST_FILES)} from github.com/hendrycks/robustness (ImageNet-C/create_c/). Put them "
            f"there, or leave frost_dir unset for the procedural (non-canonical) texture."
        )
    out = []
    for name in FROST_FILES[:_FROST_DRAWN]:
        try:
            arr = np.asarray(Image.open(folder / name).convert("RGB"), dtype=np.float32)
        except OSError as err:
            raise DataError(f"cannot read frost texture {folder / name} ({err}); fetch the original again") from None
        th, tw = arr.shape[:2]
        scale = max(0.2, (h + 1) / th, (w + 1) / tw)  # 0.2 as the original; larger only for big images
        size = (int(round(th * scale)), int(round(tw * scale)))
        t = torch.from_numpy(arr).permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
        out.append(t[0].permute(1, 2, 0).numpy())
    _TEXTURE_CACHE[key] = out
    return out


def _procedural_frost(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Non-canonical stand-in for the frost photographs: pale blue-white multi-scale crystal noise, 0-255."""
    tex = np.zeros((n, h, w), np.float32)
    for sigma, weight in ((h / 8, 0.5), (h / 32, 0.3), (0.5, 0.2)):
        layer = ndimage.gaussian_filter(rng.standard_normal((n, h, w)).astype(np.float32), (0, sigma, sigma))
        layer /= layer.std(axis=(1, 2), keepdims=True) + 1e-8
        tex += weight * layer
    tex = np.clip(0.55 + 0.2 * tex, 0, 1)  # mean grey level of the frost photographs, roughly
    tint = np.array([0.85, 0.92, 1.0], np.float32)
    return tex[..., None] * tint * 255


def fog(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Additive plasma-fractal fog, rescaled by max / (max + amount)."""
    amount, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    n, h, w, _ = x.shape
    mapsize = 1 << max(5, int(np.ceil(np.log2(max(h, w)))))  # 32 for CIFAR, as the original
    plasma = ops.plasma_fractal(rng, n, mapsize, decay)[:, :h, :w, None].astype(np.float32)
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + amount * plasma) * max_val / (max_val + amount)


def brightness(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """HSV value + 0.05-0.3."""
    # HSV with V' = clip(V + c): hue and saturation fixed, so RGB scales by V'/V (black becomes grey V').
    c = [0.05, 0.1, 0.15, 0.2, 0.3][s - 1]
    x = np.round(x.astype(np.float64) * 255) / 255  # k / 255 in float64 as the original (float32: MAD 0.06)
    v = x.max(axis=3, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    return np.where(v > 0, x * v_new / np.maximum(v, 1e-12), v_new)


def saturate(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """HSV saturation * a + b (desaturates at severities 1-2, oversaturates at 3-5)."""
    a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][s - 1]
    grey_input = x.shape[3] == 1
    if grey_input:
        x = np.repeat(x, 3, axis=3)
    v = x.max(axis=3, keepdims=True)
    delta = v - x.min(axis=3, keepdims=True)
    sat = np.where(v > 0, delta / np.maximum(v, 1e-12), 0)
    sat_new = np.clip(sat * a + b, 0, 1)
    # same hue and value: each channel is V - S V g(hue); g = (V - channel) / delta, and hue 0 (red) when delta = 0
    g = np.where(delta > 0, (v - x) / np.maximum(delta, 1e-12), np.array([0, 1, 1], np.float32))
    out = v - sat_new * v * g
    return ops.luma(out) if grey_input else out


def contrast(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Per-channel contrast towards the image mean, factor 0.75-0.15."""
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Random affine warp, then a smoothed random displacement field."""
    n, h, w, _ = x.shape
    # make_cifar_c.py's parameters are fractions of the 32-pixel side; scaled to this image's side, so an 8x8
    # digit is not warped 4x harder than a CIFAR image (with a fixed 32, severity 1's affine jitter of
    # +-2.56 px dominated an 8-px digit and the change fell as severity rose: MAD 0.343 at s1 -> 0.227 at s5).
    size = min(h, w)
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03)][s - 1]  # fmt: skip
    alpha, sigma, affine = alpha * size, sigma * size, affine * size
    centre = np.array([w // 2, h // 2], np.float64)  # (x, y), as OpenCV points
    sq = min(h, w) // 3
    src = np.array([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])  # 3 points (x, y)
    dst = src[None] + rng.uniform(-affine, affine, size=(n, 3, 2)).astype(np.float32)
    # affine map dst -> src (warpAffine samples the source at M^-1 of each destination pixel)
    ones = np.ones((n, 3, 1))
    inv = np.linalg.solve(np.concatenate([dst, ones], axis=2), np.broadcast_to(src, (n, 3, 2)))  # (N, 3, 2)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    sx = xx[None] * inv[:, 0, 0, None, None] + yy[None] * inv[:, 1, 0, None, None] + inv[:, 2, 0, None, None]
    sy = xx[None] * inv[:, 0, 1, None, None] + yy[None] * inv[:, 1, 1, None, None] + inv[:, 2, 1, None, None]
    warped = ops.bilinear(x, sy, sx, ops.reflect101)
    fields = rng.uniform(-1, 1, size=(2, n, h, w))
    fields = ndimage.gaussian_filter(fields, (0, 0, sigma, sigma), mode="reflect", truncate=3) * alpha
    dx, dy = fields[0], fields[1]
    return ops.bilinear(warped, yy[None] + dy, xx[None] + dx, ops.reflect)


def pixelate(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """PIL BOX down-sampling by 0.95-0.65 and BOX up-sampling back, on the 8-bit image (make_cifar_c.py's op).

    PIL itself does both resizes, so the result is byte for byte the reference's (its fixed-point filter
    coefficients and rounding included: a float re-implementation was up to 1 grey level off, MAD 0.215 at
    severity 5).
    """
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    img = _as_bytes(x)
    h, w = img.shape[1:3]
    small = (max(1, int(w * c)), max(1, int(h * c)))  # PIL sizes are (width, height)
    out = np.empty(img.shape, np.float32)
    for i in range(len(img)):  # PIL resizes one image at a time
        pil = Image.fromarray(img[i, ..., 0] if img.shape[3] == 1 else img[i])
        res = np.asarray(pil.resize(small, Image.BOX).resize((w, h), Image.BOX), dtype=np.float32)
        out[i] = res.reshape(img.shape[1:])
    return (out + 0.5) / 255  # the bytes, exactly, after the final truncation


def _as_bytes(x: np.ndarray) -> np.ndarray:
    """The uint8 image the reference's PIL operations see (truncation, as ``np.uint8(x * 255)``)."""
    return np.uint8(np.clip(x, 0, 1) * 255)


def jpeg_compression(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """JPEG round trip at quality 80-40."""
    quality = [80, 65, 58, 50, 40][s - 1]
    img = _as_bytes(x)
    out = np.empty(img.shape, np.float32)
    for i in range(len(img)):  # JPEG codes one image at a time
        pil = Image.fromarray(img[i, ..., 0] if img.shape[3] == 1 else img[i])
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32)
        out[i] = dec.reshape(img.shape[1:])
    return (out + 0.5) / 255  # the decoded bytes, exactly, after the final truncation


def spatter(x: np.ndarray, s: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Water drops (severities 1-3) or mud (4-5) splashed over the image."""
    loc, scale, sigma, thresh, intensity, mud = [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ][s - 1]  # fmt: skip
    n, h, w, c = x.shape
    liquid = rng.normal(loc=loc, scale=scale, size=(n, h, w, 1))
    liquid = ops.gaussian(liquid, sigma)
    liquid[liquid < thresh] = 0
    if mud:
        m = ops.gaussian((liquid > thresh).astype(np.float32), intensity)
        m[m < 0.8] = 0
        colour = np.array([63, 42, 20], np.float32) / 255
        if c == 1:
            colour = colour @ ops.LUMA
        return x * (1 - m) + colour * m
    # water: brightness from a distance-to-Canny-edge map of the 8-bit liquid layer (cast as the original's)
    liquid8 = (liquid * 255).astype(np.uint8)
    if ops.opencv_available():
        m = liquid8 * ops.spatter_water_map(liquid8[..., 0])[..., None]
    else:
        m = liquid8 * ops.approx_spatter_water_map(liquid8)
    m = m / np.maximum(m.max(axis=(1, 2, 3), keepdims=True), 1e-12) * intensity
    colour = np.array([175, 238, 238], np.float32) / 255  # the original adds (175, 238, 238) in channel order
    if c == 1:
        colour = colour @ ops.LUMA
    return x + m * colour


_FUNCTIONS: dict[str, _Fn] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
    brightness, contrast, elastic_transform, pixelate, jpeg_compression, speckle_noise, gaussian_blur, spatter,
    saturate,
)}  # fmt: skip


def check(name: str, severity: int) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a known corruption and ``severity`` is 1-5."""
    if name not in _FUNCTIONS:
        raise ConfigError(f"unknown corruption {name!r}; valid corruptions are: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1, 2, 3, 4, 5, got {severity!r}")


def is_canonical(name: str, frost_dir: str | None = None) -> bool:
    """Whether ``corrupt(..., name, frost_dir=frost_dir)`` is the published corruption.

    Frost is canonical with the original photographs: ``frost_dir``, or else the ones the
    ``imagecorruptions`` package ships (:func:`installed_frost_dir`); without either it uses a
    procedural texture. Spatter (severities 1-3) is canonical with OpenCV's Canny edge detector,
    which ``imagecorruptions`` brings; without OpenCV its edges are approximated. (Implementation
    differences listed in the module docstring aside.)
    """
    if name == "frost":
        return (frost_dir or installed_frost_dir()) is not None
    return name != "spatter" or ops.opencv_available()


def describe(name: str, frost_dir: str | None = None) -> str:
    """One-line provenance of a corruption, for scenario specs."""
    if name == "frost":
        if frost_dir:
            return "frost textures from frost_dir (canonical)"
        return "frost photographs of imagecorruptions (canonical)" if installed_frost_dir() else (
            "procedural (non-canonical; pip install 'cl_bench[corruptions]' for the photographs)")  # fmt: skip
    if name == "spatter" and not ops.opencv_available():
        return "make_cifar_c.py parameters; water edges approximated without OpenCV (non-canonical)"
    return "make_cifar_c.py parameters (re-implemented)"


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, frost_dir: str | None = None) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` to a batch of images.

    Args:
        images: uint8 array (N, H, W, C), C = 1 or 3 (a single (H, W, C) image is accepted too).
        name: One of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe); CIFAR-10-C parameters.
        seed: Seeds every random draw; the same seed gives the same output.
        frost_dir: Folder with the original frost textures (frost1.png ... frost6.jpg); without it the ones
            of the installed imagecorruptions package, else a procedural, non-canonical texture (see
            :func:`is_canonical`).

    Returns:
        uint8 array of the same shape.

    Raises:
        ConfigError: Unknown name, severity outside 1-5, or images that are not uint8 NHWC with 1 or 3 channels.
        DataError: ``frost_dir`` given but lacking the texture files.

    References:
        Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
        Perturbations" (ICLR 2019).
    """
    check(name, severity)
    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] not in (1, 3):
        raise ConfigError(
            f"corrupt() takes uint8 images shaped (N, H, W, C) with C = 1 or 3, got {images.dtype} {images.shape}"
        )
    if len(batch) == 0:
        return images.copy()
    rng = np.random.default_rng(seed)
    x = batch.astype(np.float32) / np.float32(255)
    out = _FUNCTIONS[name](x, int(severity), rng, frost_dir=frost_dir)
    out = np.uint8(np.clip(out, 0, 1) * 255)  # truncation, as the original's np.uint8
    return out[0] if single else out
