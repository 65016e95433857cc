"""Drop-in functions: validation here, then the custom ops in ``pyaeplus.ops``.

Every public function checks its arguments (shape, dtype, device, range, finite values when
``pyaeplus.config.check_finite``) and raises ValueError/TypeError naming the argument before
any kernel runs.
"""

from __future__ import annotations

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------

# ---- sparse decoder ---------------------------------------------------------------------

# ---- SSIM / MS-SSIM ---------------------------------------------------------------------

# ---- graph-Laplacian regularization ------------------------------------------------------
