"""Low-level image operations behind :mod:`cl_bench.data.corruptions`, on float32 NHWC batches.

Each function re-implements, vectorised over a batch, one primitive the CIFAR-10-C generation script
(``make_cifar_c.py`` in hendrycks/robustness) takes from scipy, scikit-image, OpenCV, ImageMagick or PIL:
Gaussian and 2-D filtering with those libraries' border rules, bilinear zoom and resampling as matrices,
ImageMagick's motion-blur line kernel, the plasma fractal, the anti-aliased disk kernel and histogram
equalisation. Each docstring names the library behaviour it matches. Nothing here knows about corruption
names or severities; the table of corruptions and :func:`~cl_bench.data.corruptions.corrupt` live in
:mod:`cl_bench.data.corruptions`.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations" (ICLR 2019); code: github.com/hendrycks/robustness (ImageNet-C/create_c/make_cifar_c.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

#: ITU-R 601 luma weights (R, G, B), used to treat grey images as RGB and back.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(x: np.ndarray) -> np.ndarray:
    """Grey level of RGB ``x`` (N, H, W, 3) as (N, H, W, 1)."""
    return (x @ LUMA)[..., None]


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over H, W of (N, H, W, C) (skimage.filters.gaussian's defaults: nearest, truncate 4)."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def filter2d(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel of (N, H, W, C) with a 2-D ``kernel``, reflect-101 borders (OpenCV's default)."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)), mode="reflect")
    n, h, w, c = padded.shape
    t = torch.from_numpy(np.ascontiguousarray(padded.transpose(0, 3, 1, 2).reshape(n * c, 1, h, w), np.float32))
    out = torch.nn.functional.conv2d(t, torch.from_numpy(kernel.astype(np.float32))[None, None])
    return out.numpy().reshape(n, c, x.shape[1], x.shape[2]).transpose(0, 2, 3, 1)


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom the centre of (N, H, W, C) by ``factor`` (bilinear) and crop back to H x W."""
    h, w = x.shape[1:3]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    mh, mw = zoom_matrix(ch, factor), zoom_matrix(cw, factor)  # scipy.ndimage.zoom(order=1), separably
    th, tw = (len(mh) - h) // 2, (len(mw) - w) // 2
    return separable(x[:, top : top + ch, left : left + cw], mh[th : th + h], mw[tw : tw + w])


def zoom_matrix(n: int, factor: float) -> np.ndarray:
    """``scipy.ndimage.zoom(v, factor, order=1)`` of a length-``n`` vector as a matrix (it is linear in v)."""
    return ndimage.zoom(np.eye(n), (factor, 1), order=1)


def separable(x: np.ndarray, mh: np.ndarray, mw: np.ndarray) -> np.ndarray:
    """Apply ``mh`` (P, H) along H and ``mw`` (Q, W) along W of (N, H, W, C) -> (N, P, Q, C)."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))  # (N, C, H, W)
    t = torch.from_numpy(mh.astype(np.float32)) @ t @ torch.from_numpy(mw.T.astype(np.float32))
    return t.permute(0, 2, 3, 1).numpy()


def line_motion_blur(x: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick-style motion blur of (N, H, W, C), one angle (degrees) per image.

    The kernel is a one-sided Gaussian line: weights exp(-i^2 / 2 sigma^2), i = 0 .. 2 radius, normalised,
    sampled at integer offsets (i cos a, i sin a) rounded half-down, borders clamped to the edge.
    """
    n, h, w, _ = x.shape
    width = 2 * radius + 1
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i**2) / (2 * sigma**2))
    weights /= weights.sum()
    rad = np.deg2rad(angles)[:, None]
    off_x = np.ceil(i[None] * np.cos(rad) - 0.5).astype(np.int64)  # (N, width)
    off_y = np.ceil(i[None] * np.sin(rad) - 0.5).astype(np.int64)
    rows, cols, batch = np.arange(h), np.arange(w), np.arange(n)[:, None, None]
    out = np.zeros_like(x, dtype=np.float32)
    for k in range(width):
        rr = np.clip(rows[None] + off_y[:, k : k + 1], 0, h - 1)  # (N, H)
        cc = np.clip(cols[None] + off_x[:, k : k + 1], 0, w - 1)  # (N, W)
        out += weights[k] * x[batch, rr[:, :, None], cc[:, None, :]]
    return out


def reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Map indices ``i`` into ``0 .. n-1`` by reflect-101 (``dcb|abcd|cba``), OpenCV's default border."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Map indices ``i`` into ``0 .. n-1`` by reflection with the edge repeated (``dcba|abcd|dcba``)."""
    period = 2 * n
    i = i % period
    return np.where(i >= n, period - 1 - i, i)


def bilinear(x: np.ndarray, ys: np.ndarray, xs: np.ndarray, border: Callable[[np.ndarray, int], np.ndarray]) -> (
    np.ndarray
):  # fmt: skip
    """Sample (N, H, W, C) at per-image coordinates ``ys``, ``xs`` (N, H, W), bilinear, ``border`` index map."""
    n, h, w, _ = x.shape
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    b = np.arange(n)[:, None, None]
    ya, yb, xa, xb = border(y0, h), border(y0 + 1, h), border(x0, w), border(x0 + 1, w)
    top = x[b, ya, xa] * (1 - fx) + x[b, ya, xb] * fx
    bottom = x[b, yb, xa] * (1 - fx) + x[b, yb, xb] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def plasma_fractal(rng: np.random.Generator, n: int, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Diamond-square height maps in [0, 1], one per image: (N, mapsize, mapsize); mapsize a power of two."""
    maps = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(square)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(top)
        left = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(left)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """Anti-aliased disk kernel (make_cifar_c.py's ``disk``), trimmed to its non-zero support."""
    r = 8 if radius <= 8 else int(np.ceil(radius))
    ks = 3 if radius <= 8 else 5
    grid = np.arange(-r, r + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(ks) - ks // 2
    g = np.exp(-(taps**2) / (2 * alias_blur**2))
    g /= g.sum()
    disk = ndimage.correlate1d(ndimage.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    nz_r, nz_c = np.nonzero(disk.any(axis=1))[0], np.nonzero(disk.any(axis=0))[0]
    return disk[nz_r[0] : nz_r[-1] + 1, nz_c[0] : nz_c[-1] + 1]


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """PIL's BOX resampling from ``n_in`` to ``n_out`` samples as an (n_out, n_in) matrix."""
    eye = np.eye(n_in, dtype=np.float32)
    return np.stack([np.asarray(Image.fromarray(row[None]).resize((n_out, 1), Image.BOX))[0]
                     for row in eye], axis=1)  # fmt: skip


def equalize(img: np.ndarray) -> np.ndarray:
    """Per-image histogram equalisation of uint8 (N, H, W, 1), as cv2.equalizeHist."""
    out = np.empty(img.shape, np.float32)
    for i in range(len(img)):
        hist = np.bincount(img[i].ravel(), minlength=256)
        cdf = hist.cumsum()
        lo = cdf[np.nonzero(hist)[0][0]]
        total = cdf[-1]
        lut = np.zeros(256) if total == lo else np.round((cdf - lo) * 255.0 / (total - lo))
        out[i] = lut[img[i]]
    return np.clip(out, 0, 255)


def opencv_available() -> bool:
    """Whether OpenCV (``cv2``, which the ``corruptions`` extra's imagecorruptions brings) can be imported."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def spatter_water_map(liquid8: np.ndarray) -> np.ndarray:
    """make_cifar_c.py's water-spatter brightness map of uint8 liquid layers (N, H, W), through OpenCV.

    Per image: ``255 - Canny(50, 150)``, L2 distance transform (mask 5), truncation at 20, 3x3 box
    blur cast to uint8, histogram equalisation, the emboss-like ``filter2D`` into uint8, 3x3 box
    blur; the original's calls in its order. Returns float32 (N, H, W).
    """
    import cv2

    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    out = np.empty(liquid8.shape, np.float32)
    for i, layer in enumerate(liquid8):
        dist = 255 - cv2.Canny(np.ascontiguousarray(layer), 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        out[i] = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
    return out


def approx_spatter_water_map(liquid8: np.ndarray) -> np.ndarray:
    """Without OpenCV, :func:`spatter_water_map` of (N, H, W, 1) with Canny edges approximated by the mask boundary."""
    mask = liquid8 > 0
    edges = mask & ~ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3, 1)), border_value=1)
    dist = np.empty(liquid8.shape, dtype=np.float32)
    for i in range(len(liquid8)):  # exact Euclidean distance transform per image
        dist[i] = ndimage.distance_transform_edt(~edges[i]) if edges[i].any() else 20
    dist = np.minimum(dist, 20)
    dist = np.floor(ndimage.uniform_filter(dist, size=(1, 3, 3, 1), mode="mirror"))
    dist = equalize(dist.astype(np.uint8))
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
    dist = np.clip(np.round(filter2d(dist.astype(np.float32), ker)), 0, 255)
    return ndimage.uniform_filter(dist, size=(1, 3, 3, 1), mode="mirror")
