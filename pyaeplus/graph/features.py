"""Features to build k-NN graphs on: raw pixels (optionally PCA-reduced), HOG descriptors
with scikit-image's parameters and results, and latents from any encoder.

All functions take a batch: a torch tensor or a NumPy array (a memmap is read in chunks).
Images are (N, H, W) grayscale or (N, C, H, W) multichannel (channels first, as in torch).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .._validate import integer as _integer

__all__ = ["raw_pixels", "PCA", "hog", "hog_output_dim", "encoder_features"]

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")


def _images_shape(name: str, images) -> tuple[int, ...]:
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0 or any(s == 0 for s in images.shape[1:]):
        raise ValueError(f"{name} must not be empty, got shape {tuple(images.shape)}")
    return tuple(images.shape)


def _chunk_numpy(images, start: int, stop: int) -> np.ndarray:
    c = images[start:stop]
    if isinstance(c, torch.Tensor):
        c = c.detach().cpu()
        if c.dtype == torch.bfloat16:
            c = c.float()
        c = c.numpy()
    return np.asarray(c)


# ----------------------------------------------------------------------------------------------
# raw pixels and PCA


class PCA:
    """Principal component projection fitted in chunks (the covariance is accumulated in
    float64, so the data never has to fit in memory).

    Args:
        n_components: number of components kept.
        whiten: scale each component to unit variance.
        chunk_size: rows per pass when fitting / transforming.

    Attributes (after :meth:`fit`): ``mean_`` (D,), ``components_`` (n_components, D) with a
    deterministic sign (the largest-magnitude entry of each component is positive),
    ``explained_variance_`` (n_components,), ``explained_variance_ratio_``.
    """

    def __init__(self, n_components: int, *, whiten: bool = False, chunk_size: int = 8192):
        self.n_components = _integer("n_components", n_components, lo=1)
        self.whiten = bool(whiten)
        self.chunk_size = _integer("chunk_size", chunk_size, lo=1)
        self.mean_: torch.Tensor | None = None

    def fit(self, x) -> "PCA":
        """Fit on (N, D) rows (tensor, array or memmap)."""
        n, d = _rows_shape("x", x)
        if self.n_components > min(n, d):
            raise ValueError(f"n_components must be <= min(N, D) = {min(n, d)}, got {self.n_components}")
        s1 = torch.zeros(d, dtype=torch.float64)
        s2 = torch.zeros(d, d, dtype=torch.float64)
        shift = _rows_chunk(x, 0, 1).double()[0]  # shifted sums: no catastrophic cancellation
        for a in range(0, n, self.chunk_size):
            c = _rows_chunk(x, a, min(n, a + self.chunk_size)).double() - shift
            s1 += c.sum(0)
            s2 += c.T @ c
        mean_c = s1 / n
        cov = (s2 - n * torch.outer(mean_c, mean_c)) / max(n - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[: self.n_components]
        comps = evecs[:, order].T.contiguous()
        signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * torch.where(signs == 0, 1.0, signs)
        self.mean_ = (mean_c + shift).float()
        self.components_ = comps.float()
        self.explained_variance_ = evals[order].clamp_min(0).float()
        total = evals.clamp_min(0).sum()
        self.explained_variance_ratio_ = (evals[order].clamp_min(0) / total.clamp_min(1e-300)).float()
        return self

    def transform(self, x) -> torch.Tensor:
        """(N, D) rows -> (N, n_components) float32 on the CPU."""
        if self.mean_ is None:
            raise RuntimeError("PCA.transform called before fit")
        n, d = _rows_shape("x", x)
        if d != self.mean_.numel():
            raise ValueError(f"x must have {self.mean_.numel()} columns (as fitted), got {d}")
        out = torch.empty(n, self.n_components)
        scale = self.explained_variance_.clamp_min(1e-12).rsqrt() if self.whiten else None
        for a in range(0, n, self.chunk_size):
            c = (_rows_chunk(x, a, min(n, a + self.chunk_size)).float() - self.mean_) @ self.components_.T
            out[a:a + c.shape[0]] = c * scale if scale is not None else c
        return out

    def fit_transform(self, x) -> torch.Tensor:
        return self.fit(x).transform(x)


def _rows_shape(name: str, x) -> tuple[int, int]:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-d (N, D) array, got shape {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1])


def _rows_chunk(x, a: int, b: int) -> torch.Tensor:
    c = x[a:b]
    if isinstance(c, torch.Tensor):
        return c.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(c))


def raw_pixels(images, *, pca: int | PCA | None = None, scale: float | None = None,
               chunk_size: int = 8192) -> torch.Tensor:
    """Flattened pixels as features, optionally projected on principal components.

    Args:
        images: (N, ...) images (any trailing shape), tensor, array or memmap; uint8 or float.
        pca: ``None`` (no projection), an ``int`` (fit a :class:`PCA` with that many components
            on ``images``) or a fitted :class:`PCA` (apply it, e.g. one fitted on the train set).
        scale: multiply the pixels by this (e.g. ``1/255`` for uint8); default 1.
        chunk_size: rows converted per step.

    Returns:
        (N, prod(trailing shape)) float32, or (N, n_components) with ``pca``.
    """
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise TypeError(f"images must be a torch.Tensor or a numpy array, got {type(images).__name__}")
    if images.ndim < 2 or images.shape[0] == 0 or int(np.prod(images.shape[1:])) == 0:
        raise ValueError(f"images must be a non-empty (N, ...) batch, got shape {tuple(images.shape)}")
    if isinstance(images, torch.Tensor) and images.is_complex() or isinstance(images, np.ndarray) and images.dtype.kind not in "uif":
        raise TypeError(f"images must hold integer or floating pixels, got dtype {images.dtype}")
    n = int(images.shape[0])
    d = int(np.prod(images.shape[1:]))
    s = 1.0 if scale is None else float(scale)
    out = torch.empty(n, d)
    for a in range(0, n, chunk_size):
        c = _chunk_numpy(images, a, min(n, a + chunk_size)).reshape(-1, d)
        out[a:a + c.shape[0]] = torch.from_numpy(c.astype(np.float32, copy=False)) * s
    if pca is None:
        return out
    if isinstance(pca, PCA):
        return pca.transform(out)
    return PCA(_integer("pca", pca, lo=1, hi=min(n, d)), chunk_size=chunk_size).fit_transform(out)


# ----------------------------------------------------------------------------------------------
# HOG (scikit-image's algorithm, vectorized over a batch)


def _pair(name: str, v) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    return _integer(f"{name}[0]", a, lo=1), _integer(f"{name}[1]", b, lo=1)


def hog_output_dim(image_shape: tuple[int, int], *, orientations: int = 9, pixels_per_cell=(8, 8),
                   cells_per_block=(3, 3)) -> int:
    """Length of the HOG vector for (H, W) images with these parameters."""
    c_r, c_c = _pair("pixels_per_cell", pixels_per_cell)
    b_r, b_c = _pair("cells_per_block", cells_per_block)
    n_br = image_shape[0] // c_r - b_r + 1
    n_bc = image_shape[1] // c_c - b_c + 1
    return max(n_br, 0) * max(n_bc, 0) * b_r * b_c * orientations


def _gradients(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences with zero borders: img (B, H, W) -> g_row, g_col (B, H, W)."""
    g_row = np.zeros_like(img)
    g_col = np.zeros_like(img)
    g_row[:, 1:-1, :] = img[:, 2:, :] - img[:, :-2, :]
    g_col[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
    return g_row, g_col


def _hog_batch(img: np.ndarray, orientations: int, cell: tuple[int, int], block: tuple[int, int],
               block_norm: str, transform_sqrt: bool, out_dtype) -> np.ndarray:
    # img: (B, H, W) or (B, C, H, W), float
    if transform_sqrt:
        img = np.sqrt(img)
    if img.ndim == 4:
        # Per pixel, the channel with the largest gradient magnitude (first one on ties).
        g_row, g_col = _gradients(img.reshape(-1, *img.shape[2:]))
        g_row = g_row.reshape(img.shape)
        g_col = g_col.reshape(img.shape)
        best = np.hypot(g_row, g_col).argmax(axis=1)[:, None]
        g_row = np.take_along_axis(g_row, best, 1)[:, 0]
        g_col = np.take_along_axis(g_col, best, 1)[:, 0]
    else:
        g_row, g_col = _gradients(img)
    g_row = g_row.astype(np.float64, copy=False)
    g_col = g_col.astype(np.float64, copy=False)
    B, H, W = g_row.shape
    c_r, c_c = cell
    b_r, b_c = block
    n_cr, n_cc = H // c_r, W // c_c
    # Same expressions as scikit-image (float64), so bin membership agrees bit for bit.
    magnitude = np.hypot(g_col, g_row)[:, : n_cr * c_r, : n_cc * c_c]
    orientation = (np.rad2deg(np.arctan2(g_row, g_col)) % 180)[:, : n_cr * c_r, : n_cc * c_c]
    per_180 = np.float32(180.0 / orientations)  # scikit-image keeps the bin edges in float32
    hist = np.empty((B, n_cr, n_cc, orientations), dtype=np.float64)
    for i in range(orientations):
        start = float(np.float32(per_180 * np.float32(i + 1)))
        end = float(np.float32(per_180 * np.float32(i)))
        sel = np.where((orientation < start) & (orientation >= end), magnitude, 0.0)
        cell_sum = sel.reshape(B, n_cr, c_r, n_cc, c_c).sum(axis=(2, 4))
        # scikit-image accumulates and divides in float32
        hist[..., i] = (cell_sum.astype(np.float32) / np.float32(c_r * c_c)).astype(np.float64)
    n_br, n_bc = n_cr - b_r + 1, n_cc - b_c + 1
    # blocks: (B, n_br, n_bc, b_r, b_c, orientations)
    blocks = np.lib.stride_tricks.sliding_window_view(hist, (b_r, b_c), axis=(1, 2))
    blocks = np.moveaxis(blocks, 3, -1)
    eps = 1e-5
    axes = (3, 4, 5)
    if block_norm == "L1":
        out = blocks / (np.abs(blocks).sum(axis=axes, keepdims=True) + eps)
    elif block_norm == "L1-sqrt":
        out = np.sqrt(blocks / (np.abs(blocks).sum(axis=axes, keepdims=True) + eps))
    elif block_norm == "L2":
        out = blocks / np.sqrt((blocks ** 2).sum(axis=axes, keepdims=True) + eps ** 2)
    else:  # L2-Hys
        out = blocks / np.sqrt((blocks ** 2).sum(axis=axes, keepdims=True) + eps ** 2)
        out = np.minimum(out, 0.2)
        out = out / np.sqrt((out ** 2).sum(axis=axes, keepdims=True) + eps ** 2)
    return out.astype(out_dtype, copy=False).reshape(B, -1)


def hog(images, *, orientations: int = 9, pixels_per_cell=(8, 8), cells_per_block=(3, 3),
        block_norm: str = "L2-Hys", transform_sqrt: bool = False, chunk_size: int = 1024,
        progress: bool = False) -> torch.Tensor:
    """Histogram-of-oriented-gradients descriptors of a batch, as ``skimage.feature.hog``
    computes them per image (same parameters, same defaults, results equal to within 1e-6).

    Args:
        images: (N, H, W) grayscale or (N, C, H, W) multichannel images (tensor, array or
            memmap; uint8 or float). Multichannel: per pixel the channel with the largest
            gradient magnitude is used, as scikit-image does with ``channel_axis``.
        orientations: number of orientation bins over [0, 180) degrees.
        pixels_per_cell: (rows, cols) pixels per cell.
        cells_per_block: (rows, cols) cells per normalization block.
        block_norm: ``"L1"``, ``"L1-sqrt"`` (its output rows are square-rooted L1-normalized
            histograms: use ``knn_graph(..., metric="l2")`` on them for a Hellinger graph),
            ``"L2"`` or ``"L2-Hys"``.
        transform_sqrt: square-root (gamma) compression of the image first (needs pixels >= 0).
        chunk_size: images per vectorized step (memory: about 100 x H x W x 8 bytes per image).
        progress: show a tqdm bar.

    Returns:
        (N, F) float32 tensor (float64 for float64 input), with ``F = n_blocks_row *
        n_blocks_col * cells_per_block[0] * cells_per_block[1] * orientations`` in
        scikit-image's ``feature_vector=True`` order.
    """
    shape = _images_shape("images", images)
    orientations = _integer("orientations", orientations, lo=1)
    cell = _pair("pixels_per_cell", pixels_per_cell)
    block = _pair("cells_per_block", cells_per_block)
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
    chunk_size = _integer("chunk_size", chunk_size, lo=1)
    H, W = shape[-2:]
    if H // cell[0] - block[0] + 1 <= 0 or W // cell[1] - block[1] + 1 <= 0:
        raise ValueError(f"images of {H}x{W} pixels are too small for pixels_per_cell={cell} and "
                         f"cells_per_block={block}: they need at least {block[0] * cell[0]} rows and "
                         f"{block[1] * cell[1]} cols")
    dt = images.dtype
    is_f64 = dt in (torch.float64, np.float64)
    if isinstance(images, torch.Tensor):
        if not (images.is_floating_point() or dt in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise TypeError(f"images must hold integer or floating pixels, got dtype {dt}")
    elif images.dtype.kind not in "uif":
        raise TypeError(f"images must hold integer or floating pixels, got dtype {dt}")
    # scikit-image computes float32 images in float32 up to the histograms, others in float64.
    is_f32 = dt in (torch.float32, np.float32, torch.float16, np.float16, torch.bfloat16)
    work = np.float32 if is_f32 else np.float64
    n = shape[0]
    out = torch.empty(n, hog_output_dim((H, W), orientations=orientations, pixels_per_cell=cell,
                                        cells_per_block=block),
                      dtype=torch.float64 if is_f64 else torch.float32)
    starts = range(0, n, chunk_size)
    if progress:
        try:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="hog", unit="chunk", leave=False)
        except ImportError:
            pass
    for a in starts:
        c = _chunk_numpy(images, a, min(n, a + chunk_size)).astype(work, copy=False)
        if not np.isfinite(c).all():
            raise ValueError(f"images contain NaN or Inf values (in rows {a}..{a + len(c) - 1})")
        if transform_sqrt and (c < 0).any():
            raise ValueError("images must be non-negative with transform_sqrt=True")
        f = _hog_batch(c, orientations, cell, block, block_norm, transform_sqrt, work)
        out[a:a + f.shape[0]] = torch.from_numpy(f)
    return out


# ----------------------------------------------------------------------------------------------
# encoder latents


def encoder_features(encoder: Callable, data, *, batch_size: int = 256, device=None,
                     amp: bool = False, progress: bool = False) -> torch.Tensor:
    """Run ``encoder`` over ``data`` in batches without gradients and stack its outputs.

    Args:
        encoder: a callable (usually an ``nn.Module``; it is put in eval mode for the pass and
            its mode restored afterwards). Its output may be a tensor or a tuple/list whose first
            element is the latent (e.g. a VAE's ``(mu, logvar)``); it is flattened per sample.
        data: an (N, ...) tensor / array / memmap, a ``torch.utils.data.Dataset`` whose items are
            tensors or tuples starting with one, or any iterable of batches (e.g. a DataLoader).
        batch_size: samples per forward pass (ignored for an iterable of batches).
        device: where to run; default the encoder's parameters' device (CPU without any).
        amp: autocast to float16 (CUDA) / bfloat16 (CPU) inside the forward pass.
        progress: show a tqdm bar.

    Returns:
        (N, d) float32 tensor on the CPU.
    """
    if not callable(encoder):
        raise TypeError(f"encoder must be callable, got {type(encoder).__name__}")
    batch_size = _integer("batch_size", batch_size, lo=1)
    if device is None:
        p = next(iter(encoder.parameters()), None) if isinstance(encoder, torch.nn.Module) else None
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    batches = _batches(data, batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="encode", unit="batch", leave=False)
        except ImportError:
            pass
    was_training = encoder.training if isinstance(encoder, torch.nn.Module) else None
    if was_training:
        encoder.eval()
    outs: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for xb in batches:
                xb = xb.to(device, non_blocking=True)
                if amp:
                    dt = torch.float16 if device.type == "cuda" else torch.bfloat16
                    with torch.autocast(device.type, dtype=dt):
                        z = encoder(xb)
                else:
                    z = encoder(xb)
                if isinstance(z, (tuple, list)):
                    z = z[0]
                if not isinstance(z, torch.Tensor):
                    raise TypeError(f"encoder must return a tensor (or a tuple starting with one), got {type(z).__name__}")
                outs.append(z.reshape(z.shape[0], -1).float().cpu())
    finally:
        if was_training:
            encoder.train()
    if not outs:
        raise ValueError("data must not be empty")
    return torch.cat(outs)


def _first_tensor(item) -> torch.Tensor:
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"data items must be tensors or tuples starting with one, got {type(item).__name__}")
    return item


def _batches(data, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim < 1 or data.shape[0] == 0:
            raise ValueError(f"data must not be empty, got shape {tuple(data.shape)}")
        n = data.shape[0]

        def gen():
            for a in range(0, n, batch_size):
                c = data[a:a + batch_size]
                yield c if isinstance(c, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(c))
        return gen()
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        n = len(data)

        def gen_ds():
            for a in range(0, n, batch_size):
                yield torch.stack([_first_tensor(data[i]) for i in range(a, min(n, a + batch_size))])
        return gen_ds()
    if hasattr(data, "__iter__"):
        return (_first_tensor(b) for b in data)
    raise TypeError(f"data must be a tensor, an array, a Dataset or an iterable of batches, got {type(data).__name__}")
