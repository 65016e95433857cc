"""Library-wide switches.

``check_finite``: which value checks the public functions make (env ``PYAEPLUS_CHECK_FINITE``:
``auto`` (default), ``1``/``true``/``on``, ``0``/``false``/``off``).

* ``"auto"`` (default): only the checks that cost nothing: no extra pass over the data and no
  device-to-host synchronisation. Data tensors (images, latents, codes, decoder weights) go to
  the kernels unchecked, on every device alike, so a training step on CUDA never waits for the
  host: NaN/Inf propagates through SSIM, the Laplacian loss and the sparse decoder (top-k orders
  NaN above every number, as ``torch.topk``), so it reaches the loss that ``pyaeplus.train.fit``
  checks when it logs it. Small arguments that already sit on the host (a ``win`` on the CPU,
  tensor ``data_range``/``K``) are checked, and so are the data of the non-hot-path tools
  (k-NN graphs, data loaders). Out-of-range ``sparse_decode`` indices raise on the CPU (the
  kernel's own check) and contribute zero on CUDA (the kernels mask them).
* ``True``: every public function also reads its data tensors before any kernel runs and raises
  ``ValueError`` naming the argument and counting the NaN/Inf (one extra read of each input and,
  on CUDA, one host sync each); ``sparse_decode`` checks its index range the same way.
* ``False``: no value checks at all.

Each functional call may override it with its own ``check_finite=`` keyword; ``checks(mode)`` sets
it inside a ``with`` block. The checks are skipped while ``torch.compile`` traces (a
data-dependent check would break the graph).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Literal, Union

CheckMode = Union[bool, Literal["auto"]]

_ENV = {"auto": "auto", "1": True, "true": True, "on": True, "yes": True,
        "0": False, "false": False, "off": False, "no": False}


def _from_env(value: str | None) -> CheckMode:
    if value is None or value.strip() == "":
        return "auto"
    mode = _ENV.get(value.strip().lower())
    if mode is None:
        raise ValueError(f"PYAEPLUS_CHECK_FINITE must be one of auto, 1, 0 (true/false, on/off), got {value!r}")
    return mode


check_finite: CheckMode = _from_env(os.environ.get("PYAEPLUS_CHECK_FINITE"))


def check_mode(value) -> CheckMode:
    """``value`` as a check mode (``"auto"``, True or False), or a ``ValueError`` naming it."""
    if value == "auto" or value is True or value is False:
        return value
    raise ValueError(f"check_finite must be 'auto', True or False, got {value!r}")


@contextlib.contextmanager
def checks(mode: CheckMode) -> Iterator[None]:
    """Set ``check_finite`` (``"auto"``, True or False) inside a ``with`` block."""
    global check_finite
    old, check_finite = check_finite, check_mode(mode)
    try:
        yield
    finally:
        check_finite = old
