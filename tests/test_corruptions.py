"""Corruptions (Hendrycks & Dietterich, CIFAR scale), the corruption streams and the CIFAR-10-C loader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.data import corruptions as C
from cl_bench.data.corruptions import BENCHMARK_ORDER, CORRUPTIONS, corrupt, is_canonical
from cl_bench.engine.runner import run
from cl_bench.engine.spec import Protocol, RunSpec
from cl_bench.testing.layouts import write_cifar_c


def smooth_images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Natural-ish uint8 images: gradients plus a few soft blobs (noise-free, so blurs and noise both show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, c), np.float64)
    for i in range(n):
        for ch in range(c):
            a, b = rng.uniform(-1, 1, 2)
            img = 0.5 + 0.2 * (a * xx + b * yy)
            for _ in range(3):
                cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
                img += rng.uniform(-0.3, 0.3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
            # a hard edge, as objects have
            img += np.where(xx > rng.uniform(0.3, 0.7), 0.15, -0.15)
            out[i, ..., ch] = img
    return np.uint8(np.clip(out, 0, 1) * 255)


RGB = smooth_images(6, 32, 32, 3)
GREY = smooth_images(4, 28, 28, 1, seed=1)


def test_registry_names_and_order() -> None:
    assert len(BENCHMARK_ORDER) == 15 and len(CORRUPTIONS) == 19
    assert BENCHMARK_ORDER[:3] == ("gaussian_noise", "shot_noise", "impulse_noise")
    assert BENCHMARK_ORDER[-3:] == ("elastic_transform", "pixelate", "jpeg_compression")
    assert set(CORRUPTIONS) - set(BENCHMARK_ORDER) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_determinism(name: str) -> None:
    for severity in range(1, 6):
        for images in (RGB, GREY, smooth_images(2, 8, 12, 3, seed=2)):
            out = corrupt(images, name, severity, seed=7)
            assert out.shape == images.shape and out.dtype == np.uint8
        assert np.array_equal(corrupt(RGB, name, severity, seed=7), corrupt(RGB, name, severity, seed=7))
    assert corrupt(RGB[0], name, 3).shape == RGB[0].shape  # a single HWC image


RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform", "spatter")  # fmt: skip


@pytest.mark.parametrize("name", RANDOM)
def test_seed_changes_random_corruptions(name: str) -> None:
    assert not np.array_equal(corrupt(RGB, name, 5, seed=0), corrupt(RGB, name, 5, seed=1))


@pytest.mark.parametrize(
    "name",
    ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur", "motion_blur",
     "zoom_blur", "gaussian_blur"],
)  # fmt: skip
def test_severity_monotone_for_noise_and_blur(name: str) -> None:
    def change(s: int) -> float:
        return float(np.abs(corrupt(RGB, name, s, seed=3).astype(float) - RGB).mean())

    assert change(5) > change(1) > 0


@pytest.mark.parametrize("severity,sigma", [(1, 0.04), (3, 0.08), (5, 0.10)])
def test_gaussian_noise_sigma(severity: int, sigma: float) -> None:
    grey = np.full((20, 32, 32, 3), 128, np.uint8)
    diff = corrupt(grey, "gaussian_noise", severity, seed=0).astype(float) - 128
    # truncation to uint8 shifts the mean by -0.5, not the spread
    assert diff.std() == pytest.approx(sigma * 255, rel=0.03)


def test_jpeg_quality_ordering_and_exactness() -> None:
    errors = [np.abs(corrupt(RGB, "jpeg_compression", s).astype(float) - RGB).mean() for s in range(1, 6)]
    assert errors[0] < errors[2] < errors[4]
    buf = io.BytesIO()
    Image.fromarray(RGB[0]).save(buf, "JPEG", quality=40)
    assert np.array_equal(corrupt(RGB[:1], "jpeg_compression", 5)[0], np.asarray(Image.open(buf)))


def test_pixelate_is_make_cifar_c_pil_box_resizing_byte_for_byte() -> None:
    for s, side in zip(range(1, 6), (30, 28, 27, 24, 20), strict=True):  # int(32 * c), c = 0.95 ... 0.65
        for img in RGB:
            ref = Image.fromarray(img).resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
            assert np.array_equal(corrupt(img[None], "pixelate", s)[0], np.asarray(ref)), s
    grey = RGB[:2, ..., :1]  # one channel (MNIST, digits): PIL mode L
    ref = Image.fromarray(grey[1, ..., 0]).resize((20, 20), Image.BOX).resize((32, 32), Image.BOX)
    assert np.array_equal(corrupt(grey, "pixelate", 5)[1, ..., 0], np.asarray(ref))


def test_contrast_and_brightness_formulas() -> None:
    x = RGB.astype(np.float64) / 255
    means = x.mean(axis=(1, 2), keepdims=True)
    expected = np.uint8(np.clip((x - means) * 0.15 + means, 0, 1) * 255)
    assert np.abs(corrupt(RGB, "contrast", 5).astype(int) - expected).max() <= 1
    black = np.zeros((1, 4, 4, 3), np.uint8)
    assert (corrupt(black, "brightness", 5) == 76).all()  # V 0 -> 0.3: grey 0.3 * 255 = 76.5, truncated


def test_grey_colour_corruptions_stay_grey_scale() -> None:
    out = corrupt(np.repeat(GREY, 3, axis=3), "brightness", 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_bad_name_and_severity() -> None:
    with pytest.raises(ConfigError, match="gaussian_noise.*jpeg_compression"):
        corrupt(RGB, "gausian_noise", 3)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ConfigError, match="1, 2, 3, 4, 5"):
            corrupt(RGB, "fog", bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="uint8"):
        corrupt(RGB.astype(np.float32), "fog", 1)
    with pytest.raises(ConfigError, match="C = 1 or 3"):
        corrupt(np.zeros((2, 8, 8, 4), np.uint8), "fog", 1)


def test_frost_canonical_textures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_canonical("frost") == (C.installed_frost_dir() is not None)  # imagecorruptions' photographs
    monkeypatch.setattr(C, "installed_frost_dir", lambda: None)
    assert not is_canonical("frost") and is_canonical("frost", str(tmp_path)) and is_canonical("fog")
    assert C.describe("frost").startswith("procedural (non-canonical; pip install")
    with pytest.raises(DataError, match="frost1.png"):
        corrupt(RGB, "frost", 1, frost_dir=str(tmp_path))
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"):
        Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(tmp_path / name)
    out = corrupt(RGB, "frost", 5, seed=1, frost_dir=str(tmp_path))
    assert out.shape == RGB.shape and np.array_equal(out, corrupt(RGB, "frost", 5, seed=1, frost_dir=str(tmp_path)))
    # severity 5: 0.75 x + 0.45 frost, here with a flat frost texture of 200
    assert np.abs(out.astype(int) - np.uint8(np.clip(0.75 * RGB + 0.45 * 200, 0, 255))).max() <= 2


# -- the released CIFAR-10-C format -----------------------------------------------------------------------------------
# (written by cl_bench.testing.layouts.write_cifar_c: ``<corruption>.npy`` and ``labels.npy``, fewer rows)


def test_cifar10_c_loader(tmp_path: Path) -> None:
    arrays = write_cifar_c(tmp_path, BENCHMARK_ORDER)
    sc = SCENARIOS.create("cifar10_c", root=str(tmp_path), severity=3)
    assert len(sc) == 15 and sc.setting == "domain_il" and sc.n_classes == 10
    exp = sc[8]
    assert exp.train is None and exp.meta == {"corruption": "frost", "severity": 3}
    assert np.array_equal(exp.test.x.permute(0, 2, 3, 1).numpy(), arrays["frost"][8:12])
    assert exp.test.y.tolist() == arrays["labels"][8:12].tolist()
    assert sc.input_shape == (3, 32, 32) and float(exp.test.batch(slice(0, 4))[0].max()) <= 1.0
    sc100 = SCENARIOS.create("cifar100_c", root=str(tmp_path), corruptions=("fog",), severity=1)
    assert len(sc100) == 1 and sc100.n_classes == 100


def test_cifar10_c_bad_files(tmp_path: Path) -> None:
    write_cifar_c(tmp_path, ("gaussian_noise",))
    with pytest.raises(DataError, match="shot_noise.npy not found"):
        SCENARIOS.create("cifar10_c", root=str(tmp_path))
    np.save(tmp_path / "shot_noise.npy", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 \(20, 32, 32, 3\)"):
        SCENARIOS.create("cifar10_c", root=str(tmp_path), corruptions=("shot_noise",))
    np.save(tmp_path / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match=r"expected \(50000,\)"):
        SCENARIOS.create("cifar10_c", root=str(tmp_path), corruptions=("gaussian_noise",))
    with pytest.raises(ConfigError, match="scenario.root"):
        SCENARIOS.create("cifar10_c")
    with pytest.raises(ConfigError, match="valid corruptions"):
        SCENARIOS.create("cifar10_c", root=str(tmp_path), corruptions=("rain",))


# -- generated streams -------------------------------------------------------------------------------------------------
def test_digits_c_stream() -> None:
    sc = SCENARIOS.create("digits_c", corruptions=("gaussian_noise", "frost", "pixelate"), severity=2, seed=1)
    assert len(sc) == 3 and sc.setting == "domain_il" and sc.n_classes == 10
    assert [e.meta["corruption"] for e in sc] == ["gaussian_noise", "frost", "pixelate"]
    assert sc.spec["frost"] == C.describe("frost") and sc.spec["severity"] == 2
    again = SCENARIOS.create("digits_c", corruptions=("gaussian_noise", "frost", "pixelate"), severity=2, seed=1)
    assert sc.spec_hash == again.spec_hash and all(a.test.x.equal(b.test.x) for a, b in zip(sc, again, strict=True))
    assert not sc[0].train.x.equal(sc[0].test.x[: len(sc[0].train.x)])  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="1, 2, 3, 4, 5"):
        SCENARIOS.create("digits_c", severity=6)


def test_digits_c_runs_end_to_end(tmp_path: Path) -> None:
    spec = RunSpec(method="finetune", scenario="digits_c", scenario_config={"severity": 3},
                   protocol=Protocol(eval_every=0, max_iterations=3), seed=0)  # fmt: skip
    record = run(spec, tmp_path)
    assert record["status"] == "completed"
    assert len(record["accuracy_matrix"]["n_total"][0]) == 15
    assert 0.0 <= record["metrics"]["final_acc"] <= 1.0
    assert record["scenario"]["spec"]["frost"] == C.describe("frost")


def test_mnist_c_stream(mnist_root: Path) -> None:
    sc = SCENARIOS.create("mnist_c", root=str(mnist_root), download=False, corruptions=("fog", "shot_noise"))
    assert len(sc) == 2 and sc[0].test.x.shape[1:] == (1, 28, 28) and sc[0].meta["corruption"] == "fog"
    assert sc.spec["frost"] is None


@pytest.mark.parametrize("name,severity", [("brightness", 2), ("brightness", 5), ("saturate", 1), ("saturate", 5)])
def test_hsv_corruptions_match_an_hsv_round_trip(name: str, severity: int) -> None:
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    images = np.concatenate([RGB, np.zeros((1, 32, 32, 3), np.uint8), np.full((1, 32, 32, 3), 90, np.uint8)])
    hsv = rgb_to_hsv(images / 255.0)
    if name == "brightness":
        hsv[..., 2] = np.clip(hsv[..., 2] + [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1], 0, 1)
    else:
        a, b = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
        hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
    expected = np.uint8(np.clip(hsv_to_rgb(hsv), 0, 1) * 255)
    assert np.abs(corrupt(images, name, severity).astype(int) - expected).max() <= 1
