"""The runtime layer under ``train``, ``scoring``, ``checkpoint`` and ``graph``: atomic file writes
that turn a full disk into an ``OSError`` naming the path (never a half-written file or a leaked
temporary; ``files``), one-writer locks that a killed process cannot leave stuck (``lock``), cheap
fingerprints of data and code so that a resumed job can tell whether it is still the same job
(``fingerprint``), batches read and unpacked one way (``batches``), and the ``torch.distributed``
helpers (``dist``: rank/world, shards, all-gathers, sums over ranks).

Nothing here imports the rest of pyaeplus.
"""

from .files import atomic_write, clean_stale_temps, file_sha256, fsync_dir, temp_path
from .fingerprint import callable_fingerprint, data_fingerprint, tensor_digest
from .lock import LockedError, WriterLock

__all__ = ["atomic_write", "clean_stale_temps", "file_sha256", "fsync_dir", "temp_path", "callable_fingerprint",
           "data_fingerprint", "tensor_digest", "LockedError", "WriterLock"]
