"""fastai's PASCAL_2007 archive (train.csv + train/ and test.csv + test/): found locally or downloaded."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pml_jax.data.dataset import LabelledImages
from pml_jax.data.tables import from_csv
from pml_jax.download import download, extract_tar
from pml_jax.errors import PmlError
from pml_jax.hosts import process_0_first
from pml_jax.paths import cache_dir

# fastai URLs.PASCAL_2007 and its entry in fastai/data/download_checks.py: archive size in bytes and
# the MD5 of the archive's first MiB (fastdownload's check), so a full read is not needed.
PASCAL_2007_URL = "https://s3.amazonaws.com/fast-ai-imagelocal/pascal_2007.tgz"
PASCAL_2007_SIZE = 1637796771
PASCAL_2007_MD5_FIRST_MIB = "433b4706eb7c42bd74e7f784e3fdf244"


def pascal_2007(
    path: Path | str | None = None,
    download: bool = True,
    url: str = PASCAL_2007_URL,
    size: int | None = PASCAL_2007_SIZE,
    md5_first_mib: str | None = PASCAL_2007_MD5_FIRST_MIB,
    progress: bool = True,
) -> LabelledImages:
    """fastbook ch. 6's data: `path/train.csv` (fname, labels, is_valid) with images in `path/train`.

    `path` defaults to `cache_dir('data')/'pascal_2007'`. If it has no train.csv and `download`,
    the archive at `url` is fetched into `path.parent` (resumable, size + first-MiB MD5 checked as
    fastai does), extracted safely into a temporary folder and renamed to `path` in one step; the
    archive is then deleted. In a multi-process run process 0 does this first (hosts may share
    `path`). Returns items rooted at `path/'train'`.
    """
    path = Path(path) if path is not None else cache_dir("data") / "pascal_2007"

    def ensure() -> None:
        if (path / "train.csv").is_file():
            return
        if not download:
            raise PmlError(f"PASCAL 2007 not found at {path} (no train.csv) and download=False")
        if path.exists() and any(path.iterdir()):
            raise PmlError(f"{path} exists but holds no train.csv; remove it or pass another path")
        fetch_pascal_2007(path, url, size, md5_first_mib, progress)

    process_0_first(f"get PASCAL 2007 into {path}", ensure)
    return from_csv(path / "train.csv", path / "train", name="pascal_2007")


def fetch_pascal_2007(
    path: Path, url: str, size: int | None, md5_first_mib: str | None, progress: bool = True
) -> Path:
    """Download `url` next to `path`, verify it, extract it and move the folder holding train.csv to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    archive = download(url, path.parent / Path(url.split("?")[0]).name, size=size, progress=progress)
    if md5_first_mib is not None:
        with open(archive, "rb") as f:
            got = hashlib.md5(f.read(1 << 20)).hexdigest()
        if got != md5_first_mib.lower():
            archive.unlink()
            raise PmlError(
                f"download of {url} is corrupt: MD5 of the first MiB is {got}, expected {md5_first_mib}; "
                "the file was deleted, rerun to fetch it again"
            )
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=path.parent))
    try:
        extract_tar(archive, tmp)
        found = sorted((p.parent for p in tmp.rglob("train.csv")), key=lambda p: len(p.parts))
        if not found:
            raise PmlError(f"{archive}: the archive holds no train.csv; is {url} the PASCAL_2007 archive?")
        os.replace(found[0], path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink()
    return path
