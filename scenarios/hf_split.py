"""A Hugging Face ``datasets`` dataset as a class-incremental stream (``hf_split``), read offline.

Two sources, neither of which touches the network:

* ``path``: a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (read with
  ``datasets.load_from_disk``);
* ``dataset``: a dataset ``load_dataset`` finds locally: a name already in the Hugging Face cache (``cache_dir``,
  default the library's), read with ``download_mode="reuse_dataset_if_exists"`` and the library's offline mode
  switched on, or a local folder of data files (parquet, csv, json, an image folder).

The image and label columns are configurable. Images (``datasets.Image`` features, or arrays) are decoded once
into memory as RGB uint8 at ``image_size`` (bilinear; arrays keep their size), then dealt into experiences
exactly as ``folder_split`` does (same split parameters: class order, seeded held-out ``test_fraction`` when
there is no test split, augmentation, normalisation). The spec records a SHA-256 of the content (the stored
image bytes or array values with their labels, per split), so two users can tell whether they ran the same
data; the path or dataset name is recorded as ``scenario.data``, outside the hashed spec.

References:
    Lhoest et al., "Datasets: A Community Library for Natural Language Processing" (EMNLP 2021 demos): the
        library, its ``save_to_disk`` / ``load_from_disk`` format and its cache.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_bench.core.errors import ConfigError, DataError
from cl_bench.core.registry import SCENARIOS
from cl_bench.core.types import Scenario, Standardize, TensorData
from cl_bench.data.streams import split_by_class, with_data
from cl_bench.data.user_data import augmenter, check_options, image_transform, seeded_split

_MISSING = ("hf_split reads Hugging Face datasets, and the `datasets` package is not installed. Install the "
            "optional extra with: pip install 'cl_bench[hf]' (or pip install datasets), then run again.")  # fmt: skip


def _library() -> Any:
    # Offline before the first import: the library reads these switches when it loads its config.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ConfigError(_MISSING) from None
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # already imported elsewhere: switch it off-line too
        if hasattr(datasets.config, flag):
            setattr(datasets.config, flag, True)
    datasets.disable_progress_bars()  # the run prints its own progress
    return datasets


def _open(path: str | None, name: str | None, config_name: str | None, cache_dir: str | None) -> tuple[Any, str]:
    """The dataset (a Dataset or DatasetDict) and a sentence saying where it was read from."""
    if (path is None) == (name is None):
        raise ConfigError("hf_split needs exactly one source: --set scenario.path=DIR (a save_to_disk directory) "
                          "or --set scenario.dataset=NAME (a dataset in the local Hugging Face cache, or a local "
                          "folder of data files)")  # fmt: skip
    ds = _library()
    try:
        if path is not None:
            folder = Path(path).expanduser()
            if not folder.is_dir():
                raise DataError(f"hf_split: {folder} is not a folder; scenario.path must be a directory written by "
                                f"Dataset.save_to_disk or DatasetDict.save_to_disk")  # fmt: skip
            return ds.load_from_disk(str(folder)), f"Hugging Face dataset saved at {folder}"
        where = cache_dir or "the default Hugging Face cache"
        data = ds.load_dataset(name, config_name, cache_dir=cache_dir,
                               download_mode="reuse_dataset_if_exists")  # fmt: skip
        return data, f"Hugging Face dataset {name!r}{f' ({config_name})' if config_name else ''} from {where}"
    except DataError:
        raise
    except Exception as err:  # the library's errors name their own cause; keep its first line only
        first = (str(err).splitlines() or [type(err).__name__])[0][:240]
        raise DataError(f"hf_split cannot read {path or name!r} ({type(err).__name__}: {first}). A path must be a "
                        f"save_to_disk directory; a dataset name must already be in the local cache (cache_dir) or "
                        f"be a local folder of data files: nothing is downloaded") from None  # fmt: skip


def _splits(data: Any, train_split: str, test_split: str) -> tuple[Any, Any | None]:
    if not hasattr(data, "keys"):  # a single Dataset: the held-out split is drawn from it
        return data, None
    names = list(data.keys())
    if train_split not in names:
        raise DataError(f"hf_split: the dataset has splits {names}, not {train_split!r}; pass "
                        f"--set scenario.train_split=NAME")  # fmt: skip
    return data[train_split], data[test_split] if test_split in names else None


def _column(part: Any, column: str, role: str) -> Any:
    if column not in part.column_names:
        raise DataError(f"hf_split: no {role} column {column!r}; the dataset has {', '.join(part.column_names)}. "
                        f"Pass --set scenario.{role}_column=NAME")  # fmt: skip
    return part.features[column]


def _images(part: Any, column: str, image_size: int, h: Any) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` inputs of one split; the stored bytes (or values) go into the hash ``h``."""
    from PIL import Image

    ds = _library()
    feature = _column(part, column, "image")
    out = []
    if isinstance(feature, ds.Image):
        for row in part.cast_column(column, ds.Image(decode=False))[column]:
            raw = row["bytes"] if row.get("bytes") is not None else Path(row["path"]).read_bytes()
            h.update(hashlib.sha256(raw).digest())
            img = Image.open(io.BytesIO(raw)).convert("RGB").resize((image_size, image_size), Image.BILINEAR)
            out.append(np.asarray(img).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 3, image_size, image_size, dtype=torch.uint8)
    x = np.asarray(part.with_format("numpy")[column])
    if x.dtype == object or x.ndim not in (2, 3, 4):
        raise DataError(f"hf_split: column {column!r} is {feature}; expected an Image feature or fixed-shape "
                        f"arrays (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W)")  # fmt: skip
    h.update(str((x.dtype, x.shape)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()  # channels last (numpy / PIL order) to channels first
    return t


def _labels(parts: list[Any], column: str) -> tuple[list[np.ndarray], list[str]]:
    """Each split's labels numbered 0..K-1 and the class names (a ClassLabel's names, else sorted values)."""
    ds = _library()
    feature = _column(parts[0], column, "label")
    raw = [np.asarray(p[column]) for p in parts]
    if isinstance(feature, ds.ClassLabel):
        return [r.astype(np.int64) for r in raw], list(feature.names)
    values = np.unique(np.concatenate(raw))
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype.kind in "US"):
        raise DataError(f"hf_split: label column {column!r} holds {values.dtype} values; expected a ClassLabel, "
                        f"integers or strings")  # fmt: skip
    return [np.searchsorted(values, r).astype(np.int64) for r in raw], [str(v) for v in values]


@SCENARIOS.register("hf_split", reference="a Hugging Face datasets dataset (local), split by class")
def hf_split(
    path: str | None = None,
    dataset: str | None = None,
    config_name: str | None = None,
    cache_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    n_experiences: int = 5,
    seed: int = 0,
    class_order: str | tuple[int, ...] = "seeded",
    setting: str = "class_il",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    augment: str = "none",
    normalize: str = "unit",
) -> Scenario:
    """A local Hugging Face dataset as a class-incremental stream.

    Args:
        path: A ``save_to_disk`` directory (a Dataset, or a DatasetDict with train/test splits).
        dataset: Or a dataset name ``load_dataset`` finds offline (in ``cache_dir``), or a local data folder.
        config_name: The dataset's configuration (``load_dataset``'s second argument), for ``dataset``.
        cache_dir: Hugging Face cache folder for ``dataset`` (default: the library's).
        image_column: Column holding the images (an Image feature or arrays).
        label_column: Column holding the labels (ClassLabel, integers or strings; numbered in sorted order
            unless a ClassLabel names them).
        train_split: Split trained on.
        test_split: Split tested on; when absent, ``test_fraction`` of each class is held out of the train split.
        n_experiences: Number of experiences; the classes are dealt into groups of (nearly) equal size.
        seed: Seeds the class order.
        class_order: "seeded", "identity", a named order or an explicit list of all class indices.
        setting: "class_il" or "task_il".
        test_fraction: Share of each class held out when there is no test split.
        split_seed: Seeds that held-out split.
        image_size: Side Image-feature images are resized to (RGB, bilinear); arrays keep their size.
        augment: "none", "crop_flip" or "resized_crop_flip" (as ``folder_split``).
        normalize: "unit" (x/255 for uint8 images) or "imagenet".

    References:
        Lhoest et al., "Datasets: A Community Library for Natural Language Processing" (EMNLP 2021 demos).
    """
    check_options(image_size, test_fraction, augment, normalize, 0)
    data, where = _open(path, dataset, config_name, cache_dir)
    train_part, test_part = _splits(data, train_split, test_split)
    parts = [train_part] if test_part is None else [train_part, test_part]
    ys, names = _labels(parts, label_column)
    h = hashlib.sha256()
    xs = []
    for part, y in zip(parts, ys, strict=True):
        xs.append(_images(part, image_column, image_size, h))
        h.update(np.ascontiguousarray(y).tobytes())
    if len(names) < 2:
        raise DataError(f"hf_split: {where} has one class ({names[0] if names else 'none'}); a class-incremental "
                        f"stream needs at least two")  # fmt: skip
    labels = [torch.from_numpy(y) for y in ys]
    if test_part is None:
        tr, te, split = seeded_split(labels[0], test_fraction, split_seed)
        tr_x, tr_y, te_x, te_y = xs[0][tr], labels[0][tr], xs[0][te], labels[0][te]
    else:
        (tr_x, te_x), (tr_y, te_y), split = xs, labels, f"given {train_split!r} and {test_split!r} splits"
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DataError(f"hf_split: {train_split} inputs have shape {tuple(tr_x.shape[1:])}, {test_split}'s "
                        f"{tuple(te_x.shape[1:])}; they must match")  # fmt: skip
    images = tr_x.dim() == 4
    aug = augmenter(augment, tr_x.shape[-1]) if images else None
    if augment != "none" and not images:
        raise ConfigError(f"augment={augment} needs image inputs; the column holds vectors of shape "
                          f"{tuple(tr_x.shape[1:])}")  # fmt: skip
    channels = tr_x.shape[1] if images else 1
    # uint8 images are scaled as folder_split's; float arrays are used as they are (as tensor_split's).
    transform = (image_transform(normalize, channels) if tr_x.dtype == torch.uint8
                 else Standardize(1.0, (0.0,) * channels, (1.0,) * channels))  # fmt: skip
    spec: dict[str, Any] = {
        "dataset": "huggingface", "classes": names, "split": split, "columns": [image_column, label_column],
        "input_shape": list(tr_x.shape[1:]), "image_size": image_size, "augment": aug.describe() if aug else None,
        "normalize": normalize, "n_train": len(tr_y), "n_test": len(te_y), "data_sha256": h.hexdigest(),
        "hashed": "stored image bytes (or array values) and labels",
    }  # fmt: skip
    train = TensorData(tr_x, tr_y, transform, augment=aug)
    test = TensorData(te_x, te_y, transform)
    return with_data(split_by_class("hf_split", train, test, n_experiences=n_experiences, class_order=class_order,
                                    seed=seed, setting=setting, spec=spec),
                     f"{where} ({len(tr_y)} train / {len(te_y)} test)")  # fmt: skip
