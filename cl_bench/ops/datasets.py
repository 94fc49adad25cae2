"""``cl-bench data list | check | prepare``: which files each scenario reads, whether they are right, unpacking.

``list`` prints every dataset of :mod:`cl_bench.data.catalog` with its scenarios, layout, published files and
(under a root) whether it is present; ``check ROOT`` verifies layouts and published checksums and says exactly
what is wrong (exit 1 when something is); ``prepare ARCHIVE`` verifies a downloaded archive against its
published MD5 and unpacks it into the layout the scenario reads. A download happens only when the user asks
(``prepare NAME --download``) and the network allows.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from cl_bench.core.errors import UserError
from cl_bench.data.catalog import DATASETS, Archive, Dataset, Finding, archive_owner, md5_of
from cl_bench.data.download import data_home


def _pick(names: Sequence[str] | None) -> list[Dataset]:
    unknown = [n for n in names or () if n not in DATASETS]
    if unknown:
        raise UserError(f"unknown dataset(s) {', '.join(unknown)}: `cl-bench data list` shows the "
                        f"{len(DATASETS)} known ones ({', '.join(DATASETS)}).")  # fmt: skip
    return [DATASETS[n] for n in names] if names else list(DATASETS.values())


def list_datasets(root: str | None = None) -> int:
    """Print every dataset: scenarios, layout, published files and, under ``root``, whether it is present."""
    base = Path(root).expanduser() if root else data_home()
    print(f"datasets under {base} ({'given' if root else '$CL_BENCH_DATA or ~/.cache/cl_bench'}):\n")
    for d in DATASETS.values():
        found = d.locate(base)
        state = "present" if found.ok else ("PROBLEM" if found.folder is not None else "absent")
        print(f"{d.name:<14} {state:<8} {found.folder or base / d.subdir}")
        print(f"  scenarios: {', '.join(d.scenarios) or '(none registered yet)'}")
        print(f"  layout:    {d.layout}")
        for a in d.archives:
            print(f"  file:      {a.filename}  md5 {a.md5 or '(none published)'}  {a.url}")
        print(f"  page:      {d.page}")
    return 0


def _report(d: Dataset, found: Finding) -> None:
    if found.folder is None:
        print(f"{d.name}: absent -- {found.problems[0]}")
        return
    print(f"{d.name}: {'OK' if found.ok else 'PROBLEMS'} in {found.folder}")
    for line in found.verified:
        print(f"  ok       {line}")
    for line in found.problems:
        print(f"  PROBLEM  {line}")


def check(root: str, datasets: Sequence[str] | None = None) -> int:
    """Verify the datasets under ``root``; exit 1 if a dataset found (or named) there has a problem."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"{base} is not a folder: pass the folder holding your datasets (e.g. $CL_BENCH_DATA).")
    bad, seen = 0, 0
    for d in _pick(datasets):
        found = d.locate(base)
        if found.folder is None and not datasets:
            continue  # an unnamed dataset that is not there is not a problem
        seen += 1
        _report(d, found)
        bad += not found.ok
    if not seen:
        print(f"no known dataset under {base}; `cl-bench data list` shows the layouts cl_bench reads")
        return 1
    return 1 if bad else 0


def _extract(archive: Path, into: Path) -> list[str]:
    """Unpack into ``into`` safely (no absolute paths, no ``..``, no links out); return the top-level names."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            if any(n.startswith("/") or ".." in Path(n).parts for n in names):
                raise UserError(f"{archive} holds paths outside its folder; refusing to unpack it")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            names = t.getnames()
            try:
                t.extractall(into, filter="data")
            except tarfile.FilterError as err:
                raise UserError(f"{archive} holds an unsafe member ({err}); refusing to unpack it") from None
    else:
        raise UserError(f"{archive} is neither a tar nor a zip archive: pass the file as published.")
    return sorted({Path(n).parts[0] for n in names if Path(n).parts})


def prepare(source: str, root: str | None = None, *, download: bool = False, url: str | None = None,
            skip_checksum: bool = False) -> int:  # fmt: skip
    """Verify a published file (or download it when asked) and unpack it into the scenario's layout.

    Args:
        source: A downloaded file (``CIFAR-10-C.tar``), or with ``download`` a dataset name.
        root: The data root (default ``$CL_BENCH_DATA``); the dataset lands in its default folder below it.
        download: Fetch the published files of dataset ``source`` first.
        url: A mirror to download from instead of the publisher (one file datasets only).
        skip_checksum: Unpack even when no published MD5 matches (for files the user made or mirrored).
    """
    base = Path(root).expanduser() if root else data_home()
    if download:
        (dataset,) = _pick([source])
        files = [_download(a, base, url if len(dataset.archives) == 1 else None, skip_checksum)
                 for a in dataset.archives]  # fmt: skip
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"{path} is not a file: pass a file you downloaded (`cl-bench data list` names the "
                            f"published files), or a dataset name with --download.")  # fmt: skip
        owner = archive_owner(path.name)
        if owner is None:
            known = ", ".join(a.filename for d in DATASETS.values() for a in d.archives)
            raise UserError(f"{path.name} is not a published file cl_bench knows ({known}); keep the name it was "
                            f"published under.")  # fmt: skip
        dataset = owner[0]
        files = [(path, owner[1])]
    for path, archive in files:
        _place(path, archive, dataset, base, skip_checksum)
    found = dataset.locate(base)
    _report(dataset, found)
    return 0 if found.ok or skip_checksum else 1


def _download(archive: Archive, base: Path, url: str | None, skip_checksum: bool) -> tuple[Path, Archive]:
    from torchvision.datasets.utils import download_url

    target = base / ".downloads"
    target.mkdir(parents=True, exist_ok=True)
    try:
        download_url(url or archive.url, str(target), archive.filename, None if skip_checksum else archive.md5)
    except (OSError, RuntimeError) as err:
        raise UserError(f"downloading {archive.filename} from {url or archive.url} failed ({err}). Download it "
                        f"where the network allows and run `cl-bench data prepare FILE --root {base}`.") from None
    return target / archive.filename, archive


def _place(path: Path, archive: Archive, dataset: Dataset, base: Path, skip_checksum: bool) -> None:
    if archive.md5 is not None and not skip_checksum:
        got = md5_of(path)
        if got != archive.md5:
            raise UserError(f"{path}: MD5 {got} differs from the published {archive.md5}: the download is damaged "
                            f"or not the released file. Download it again (nothing was unpacked).")  # fmt: skip
    dest = base / (dataset.subdir if archive.into is None else archive.into)
    dest.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz" and not path.name.endswith(".tar.gz"):  # MNIST: the scenarios read the .gz as is
        if not (dest / path.name).exists():
            shutil.copyfile(path, dest / path.name)
        return
    # Unpack beside the destination, then move the top-level entries in: a failure leaves nothing half-written.
    with tempfile.TemporaryDirectory(dir=dest, prefix=".prepare-") as tmp:
        tops = _extract(path, Path(tmp))
        clash = [t for t in tops if (dest / t).exists()]
        if clash:
            raise UserError(f"{', '.join(str(dest / t) for t in clash)} already exist(s): move them away or check "
                            f"them with `cl-bench data check {base}` (nothing was overwritten).")  # fmt: skip
        for t in tops:
            (Path(tmp) / t).rename(dest / t)
    print(f"unpacked {path.name} into {dest}")


__all__ = ["check", "list_datasets", "prepare"]
