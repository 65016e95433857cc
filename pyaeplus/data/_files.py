"""Checksums, verified downloads and atomic writes shared by the loaders."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import urllib.error
import urllib.request

from ..runtime.files import atomic_path, file_digest


class _Failed(Exception):
    """One mirror did not deliver the file (unreachable, cut off, or a wrong MD5)."""


def _fetch(url: str, tmp: pathlib.Path, md5: str, timeout: float) -> None:
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            shutil.copyfileobj(r, out, 1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise _Failed(f"{url}: {e}") from e
    got = md5sum(tmp)
    if got != md5:
        raise _Failed(f"{url}: MD5 {got} != published {md5}")


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    return file_digest(path, hashlib.md5(usedforsecurity=False), chunk)


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise ValueError naming the file and both checksums when ``path`` does not hash to ``expected``."""
    got = md5sum(path)
    if got != expected:
        raise ValueError(
            f"checksum mismatch for {os.fspath(path)}: MD5 is {got}, the published MD5 is {expected}; "
            "the file is corrupt or truncated (delete it and download it again)")


def download(urls: list[str], dest: pathlib.Path, md5: str, *, timeout: float = 60.0) -> pathlib.Path:
    """Fetch ``dest`` from the first mirror that answers, verify its MD5 *before* it takes its
    final name (a partial or corrupt download never lands at ``dest``), then rename atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            with atomic_path(dest) as tmp:
                _fetch(url, tmp, md5, timeout)
            return dest
        except _Failed as e:
            errors.append(str(e))
    raise RuntimeError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))
