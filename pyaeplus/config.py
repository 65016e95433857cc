"""Library-wide switches.

``check_finite`` (default True, env ``PYAEPLUS_CHECK_FINITE=0`` to turn off): the public
functions reject NaN/Inf inputs with a ValueError naming the argument, before any kernel runs.
The check reads the input once more and synchronizes with the device, so throughput-bound
jobs may switch it off; it is skipped while ``torch.compile`` traces (a data-dependent check
would break the graph). With it off, the kernels follow ``torch.topk``'s convention that NaN
is larger than every number, and NaN propagates through SSIM and the Laplacian loss.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

check_finite: bool = os.environ.get("PYAEPLUS_CHECK_FINITE", "1") not in ("0", "false", "False", "off")


@contextlib.contextmanager
def checks(enabled: bool) -> Iterator[None]:
    """Turn the finite-value input checks on or off inside a ``with`` block."""
    global check_finite
    old, check_finite = check_finite, bool(enabled)
    try:
        yield
    finally:
        check_finite = old
