"""``nn.Module`` wrappers: configuration in ``__init__``, one call into
``pyaeplus.functional`` in ``forward``."""

from __future__ import annotations

__all__: list[str] = []

# ---- top-k sparse activation ------------------------------------------------------------

# ---- sparse decoder ---------------------------------------------------------------------

# ---- SSIM / MS-SSIM ---------------------------------------------------------------------

# ---- graph-Laplacian regularization ------------------------------------------------------
