"""The runtime layer under ``scoring``, ``checkpoint`` and ``train``: atomic file writes that turn a
full disk into an ``OSError`` naming the path (never a half-written file or a leaked temporary),
one-writer locks that a killed process cannot leave stuck, and cheap fingerprints of data and code
so that a resumed job can tell whether it is still the same job.

Nothing here imports the rest of pyaeplus.
"""

from .files import atomic_write, clean_stale_temps, file_sha256, fsync_dir, temp_path
from .fingerprint import callable_fingerprint, data_fingerprint, tensor_digest
from .lock import LockedError, WriterLock

__all__ = ["atomic_write", "clean_stale_temps", "file_sha256", "fsync_dir", "temp_path", "callable_fingerprint",
           "data_fingerprint", "tensor_digest", "LockedError", "WriterLock"]
