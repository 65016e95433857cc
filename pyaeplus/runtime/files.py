"""Atomic writes and the temporaries they leave when a process is killed.

A file is written under a temporary name in its final folder, flushed, ``fsync``-ed and renamed into
place (``os.replace``), so readers see the old file or the complete new one, never a part. The
temporary's name carries the writer's host and pid (``.<name>.pyaeplus-tmp-<host>-<pid>-<token>``):
one left by a killed process is recognised as stale (its pid no longer runs on this host) and
removed by :func:`clean_stale_temps`, while the temporaries of live writers are left alone.

A failed write (``ENOSPC`` on a full disk, ``EDQUOT``, ``EIO`` ...) removes its temporary and raises
an ``OSError`` with the same ``errno`` that names the final path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import secrets
import shutil
import socket
from typing import IO, Callable, Iterator

__all__ = ["temp_path", "atomic_write", "atomic_path", "restore_aside", "clean_stale_temps", "write_error", "write_npy",
           "write_rows", "file_digest", "file_sha256",
           "fsync_dir", "pid_alive"]

_TAG = ".pyaeplus-tmp-"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.pyaeplus-tmp-(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$")
_HOST = socket.gethostname() or "localhost"


def temp_path(path: str | os.PathLike) -> pathlib.Path:
    """A fresh temporary name next to ``path`` (same folder, so ``os.replace`` is atomic)."""
    p = pathlib.Path(path)
    return p.with_name(f".{p.name}{_TAG}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(p: pathlib.Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[pathlib.Path]:
    """Remove the temporaries (files or folders) under ``folder`` whose writer died: written on this
    host by a pid that no longer runs. ``name`` limits it to the temporaries of that final name.
    Returns what was removed; errors (a read-only folder ...) are ignored."""
    removed = []
    try:
        entries = list(pathlib.Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_RE.match(p.name)
        if m is None or (name is not None and m["name"] != name) or m["host"] != _HOST:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            _remove(p)
            removed.append(p)
        except OSError:
            pass
    return removed


def write_error(e: OSError, path: str | os.PathLike) -> OSError:
    """``e`` (a failed write of ``path``'s temporary) as an ``OSError`` with the same errno that names
    ``path`` and says that the partial file is gone."""
    why = e.strerror or str(e) or type(e).__name__
    msg = f"cannot write {path}: {why} (the partial file was removed; free space, then run again)"
    if e.errno:
        return OSError(e.errno, msg, str(path))
    return OSError(msg)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems refuse a folder fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """``with atomic_path(out) as tmp:`` a temporary name next to ``out`` for writers that want a
    path (``savefig``, ``torch.export.save``, ``np.lib.format.open_memmap``, ONNX ...). When the block
    ends normally the temporary (a file, or a folder whose files are all flushed) is fsync-ed and
    renamed onto ``out``; an existing folder at ``out`` is moved aside first and removed after (a
    kill in between leaves it in ``.<name>.old.pyaeplus-tmp-...``, which :func:`restore_aside` moves
    back). On any error the temporary is removed and an ``OSError`` is re-raised naming ``out``."""
    path = pathlib.Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.is_dir():
            for f in tmp.iterdir():
                _fsync_file(f)
            _replace_folder(tmp, path)
        else:
            _fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException as e:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        if isinstance(e, OSError):
            raise write_error(e, path) from e
        raise
    fsync_dir(path.parent)


def _fsync_file(f: pathlib.Path) -> None:
    with open(f, "rb") as fh:
        os.fsync(fh.fileno())


def _replace_folder(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Rename the complete folder ``tmp`` onto ``path`` (``os.replace`` cannot overwrite a
    non-empty folder: an existing one is moved aside first, then removed)."""
    if path.exists():
        old = temp_path(path.with_name(path.name + ".old"))
        old.mkdir()
        os.replace(path, old / path.name)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


_ASIDE_RE = re.compile(r"^\.(?P<name>.+)\.old\.pyaeplus-tmp-.+-(?P<pid>\d+)-[0-9a-f]{8}$")


def restore_aside(folder: str | os.PathLike, complete: Callable[[pathlib.Path], bool] = lambda p: True) -> None:
    """Move back the folders that a killed :func:`atomic_path` had moved aside (its writer no
    longer runs) when their replacement never arrived and ``complete(aside folder)`` holds."""
    folder = pathlib.Path(folder)
    try:
        olds = [d for d in folder.glob(".*.old.pyaeplus-tmp-*") if d.is_dir()]
    except OSError:
        return
    for d in olds:
        m = _ASIDE_RE.match(d.name)
        if m is None or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        src, dst = d / m["name"], folder / m["name"]
        if not dst.exists() and complete(src):
            try:
                os.replace(src, dst)
            except OSError:
                continue


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, text: bool = False) -> pathlib.Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file object (binary unless
    ``text``), which is flushed, fsync-ed and renamed onto ``path``.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); the temporary is removed and the error, with
            its errno, names ``path``. Anything else ``write`` raises propagates (temporary removed).
    """
    path = pathlib.Path(path)
    with atomic_path(path) as tmp, open(tmp, "w" if text else "wb") as f:
        write(f)
        f.flush()
    return path


def write_npy(f: IO, arr, shape: tuple[int, ...] | None = None) -> None:
    """``arr`` as ``.npy`` bytes into the binary file ``f`` through ``f.write`` (``np.save`` uses
    ``ndarray.tofile``, whose ``OSError`` on a full disk has no errno). With ``shape``, only the
    header is written, for an array of that shape and ``arr``'s dtype (rows appended by the caller)."""
    import numpy as np

    a = np.ascontiguousarray(arr)
    header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
              "shape": tuple(a.shape) if shape is None else tuple(shape)}
    np.lib.format.write_array_header_1_0(f, header)
    if shape is None and a.size:
        f.write(memoryview(a.reshape(-1)).cast("B"))


def write_rows(f: IO, arr) -> None:
    """Append ``arr``'s bytes (C order) to ``f`` (see :func:`write_npy`)."""
    import numpy as np

    a = np.ascontiguousarray(arr)
    if a.size:
        f.write(memoryview(a.reshape(-1)).cast("B"))


def file_digest(path: str | os.PathLike, h, block: int = 1 << 20) -> str:
    """Hex digest of a file's bytes under the hashlib object ``h``, read in blocks."""
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, hashlib.sha256())
