"""One writer per output: an exclusive lock on a small lock file next to it.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<out>.lock``. The kernel drops it when the
holding process exits for any reason (SIGKILL included), so a lock file left by a killed job is
stale, not stuck: the next writer takes it over at once. Record locks are not inherited by
forked children (DataLoader workers), so a killed parent with workers still alive frees it too.
The file holds the holder's pid, host and start time, for the message the second writer gets.

Caveats: record locks do not exclude the same process, so this module also keeps the set of locks
it holds (a second writer in the same process is refused too); and the holder must not open and
close the lock file by other means (POSIX drops the lock then). Where the filesystem has no
locking (``ENOLCK``), the file is created exclusively instead and a holder that no longer runs on
this host is treated as stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import threading
import time

from .files import _HOST, pid_alive

__all__ = ["LockedError", "WriterLock"]

_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockedError(RuntimeError):
    """Another live process (or this one) is writing the same output."""


class WriterLock:
    """Exclusive writer lock: ``with WriterLock("scores.npy.lock", "scores.npy"): ...``.

    Args:
        path: the lock file (created; removed again by :meth:`release`).
        target: what the lock protects, for messages (e.g. the ``out`` path).
    """

    def __init__(self, path: str | os.PathLike, target: str | os.PathLike | None = None):
        self.path = pathlib.Path(path)
        self.target = str(target if target is not None else path)
        self._fd: int | None = None
        self._key = os.path.realpath(self.path)

    # ---- acquire / release ------------------------------------------------------------------
    def acquire(self) -> "WriterLock":
        """Take the lock or raise :class:`LockedError` naming the holder (never waits)."""
        with _HELD_GUARD:
            if self._key in _HELD:
                raise LockedError(f"{self.target} is already being written by this process (lock file {self.path}); "
                                  "one writer per output")
            _HELD.add(self._key)
        try:
            self._fd = self._take()
        except BaseException:
            with _HELD_GUARD:
                _HELD.discard(self._key)
            raise
        return self

    def _take(self) -> int:
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise LockedError(self._busy_message()) from None
                if e.errno in _NO_LOCKING:
                    return self._take_exclusive_file()
                raise
            # The previous holder may have unlinked the file between our open and our lock: then we
            # hold a lock on a dead inode and must retry on the file now at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._write_info(fd)
                return fd
            os.close(fd)
        raise LockedError(self._busy_message())

    def _take_exclusive_file(self) -> int:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                info = self._holder()
                if info.get("host") == _HOST and isinstance(info.get("pid"), int) and not pid_alive(info["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its writer is gone
                    continue
                raise LockedError(self._busy_message()) from None
            self._write_info(fd)
            return fd
        raise LockedError(self._busy_message())

    @staticmethod
    def _write_info(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": _HOST, "since": time.time()}).encode())

    def release(self) -> None:
        """Drop the lock and remove the lock file (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()  # before unlocking: a waiter re-checks the inode it locked
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        with _HELD_GUARD:
            _HELD.discard(self._key)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- messages ---------------------------------------------------------------------------
    def _holder(self) -> dict:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _busy_message(self) -> str:
        info = self._holder()
        who = "another process"
        if info.get("pid") is not None:
            since = info.get("since")
            when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) \
                else ""
            who = f"process {info['pid']} on {info.get('host', '?')}{when}"
        return (f"{self.target} is being written by {who} (lock file {self.path}); one writer per output: wait for "
                "it to finish or choose another output path")
