"""Resumable, verified downloads and safe archive extraction (datasets and weights share them)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from pml_jax.errors import PmlError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `dest`, resuming a partial `dest.part`, then verify and rename atomically.

    `sha256` may be a full hex digest or a prefix of one (torchvision's filename hashes are
    prefixes). `size` is the expected byte count. An existing `dest` that verifies is
    returned at once. A mismatch deletes the partial file and raises PmlError.
    """
    dest = Path(dest)
    if dest.exists() and _verified(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else size
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True,
                desc=dest.name, disable=None if progress else True,  # None: no bar off a terminal
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            if length is not None and part.stat().st_size < total:  # read(n) returns b"" on a dropped link
                raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is already complete
            pass
        else:
            raise PmlError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        kept = (f"partial data kept in {part}, rerun to resume"
                if part.exists() and part.stat().st_size else "rerun when online")
        raise PmlError(f"download of {url} failed ({e}); {kept}, or place the file at {dest} yourself") from None
    if not _verified(part, sha256, size):
        got = part.stat().st_size
        part.unlink()
        raise PmlError(
            f"download of {url} is corrupt: expected size={size} sha256={sha256}, got {got} bytes; "
            "the partial file was deleted, rerun to fetch it again"
        )
    os.replace(part, dest)
    return dest


def _verified(path: Path, sha256: str | None, size: int | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_of(path).startswith(sha256.lower())


def extract_tar(archive: Path, dest: Path) -> Path:
    """Extract a (compressed) tar into `dest`, refusing members that would land outside it.

    Links, devices and absolute or `..` paths that escape `dest` raise PmlError before
    anything is written.
    """
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if not target.is_relative_to(dest):
                    raise PmlError(f"{archive}: member {m.name!r} would extract outside {dest}")
                if not (m.isfile() or m.isdir()):
                    raise PmlError(f"{archive}: member {m.name!r} is a link or device; refused")
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as e:
        raise PmlError(f"{archive}: not a readable tar archive ({e})") from None
    return dest
