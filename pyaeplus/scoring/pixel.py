"""Pixel-level localization metrics over anomaly maps and ground-truth masks, streamed in chunks.

Both metrics are areas under a ROC curve over all pixels of all images:

* **pixel AUROC**: positives are the defect pixels, negatives the normal pixels, each counted once
  (scikit-learn's ``roc_auc_score`` over the flattened maps);
* **AUPRO** (Bergmann et al., CVPR 2020 / IJCV 2021): the per-region overlap at a threshold is the
  mean over the 8-connected ground-truth regions of the fraction of the region's pixels above it.
  That is a true-positive rate in which each pixel of region ``r`` weighs ``1 / (R |r|)``, so the
  PRO curve is a weighted ROC curve; AUPRO is its area for FPR in [0, ``fpr_limit``] divided by
  ``fpr_limit``, the curve linearly interpolated at the limit (as the MVTec AD evaluation code does).

Computation (exact, memory-bounded): pass 1 reads min/max and counts; pass 2 builds histograms of
negatives, positives and region weights over ``bins`` equal-width value bins, which give every pair
of pixels in different bins exactly. Only pairs inside a bin that holds both classes ("mixed") are
unresolved, at most ``½ Σ_b p_b n_b`` of the AUROC numerator: that bound is returned. Unless it is
within ``tolerance``, pass 3 resolves those pairs exactly: it sorts the positive pixels of the mixed
bins (at most ``max_gather`` at a time, more groups take more passes) and looks up each negative of a
mixed bin among them; the bin that holds the FPR limit is replayed value by value. Ties count one
half, as in scikit-learn. Memory: one chunk of maps and masks plus the gathered positives (~40 bytes
per distinct value), whatever the number of images.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pixel_metrics"]

_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True  # 8-connected inside an image, never across the images of a chunk


class _Source:
    """Chunked read access to an (N, H, W) array, tensor or memmap ((N, 1, H, W) is accepted)."""

    def __init__(self, name: str, a):
        if not isinstance(a, (torch.Tensor, np.ndarray)):
            a = np.asarray(a)
        shape = tuple(a.shape)
        if len(shape) == 4 and shape[1] == 1:
            shape = (shape[0],) + shape[2:]
        if len(shape) != 3 or 0 in shape:
            raise ValueError(f"{name} must be (N, H, W) (or (N, 1, H, W)) and non-empty, got shape {tuple(a.shape)}")
        self.name, self.a, self.shape = name, a, shape

    def read(self, s: int, e: int) -> np.ndarray:
        c = self.a[s:e]
        if isinstance(c, torch.Tensor):
            c = c.detach().cpu()
            c = (c.float() if c.dtype in (torch.float16, torch.bfloat16) else c).numpy()
        return np.asarray(c).reshape((e - s,) + self.shape[1:])


def _maps_chunk(src: _Source, s: int, e: int) -> np.ndarray:
    """Flat float32/float64 values (float32 stays float32: exact, and half the memory traffic)."""
    m = src.read(s, e)
    if m.dtype.kind not in "fiub":
        raise TypeError(f"maps must be numeric, got dtype {m.dtype}")
    return m.astype(m.dtype if m.dtype in (np.float32, np.float64) else np.float64, copy=False).reshape(-1)


def _masks_chunk(src: _Source, s: int, e: int, check: bool = False) -> np.ndarray:
    g = src.read(s, e)
    if g.dtype == np.bool_:
        return g
    if check:
        if g.dtype.kind not in "fiu":
            raise TypeError(f"masks must be bool or numeric 0/1, got dtype {g.dtype}")
        if not ((g == 0) | (g == 1)).all():
            raise ValueError(f"masks must hold 0 and 1 only (got values in [{g.min()}, {g.max()}]); binarize "
                             "stored masks first, e.g. masks > 0")
    return g != 0


def _weights(g: np.ndarray) -> tuple[np.ndarray, int]:
    """Per defect pixel of the chunk (in C order), ``1 / |its 8-connected region|``; and the region count."""
    from scipy import ndimage

    has = g.reshape(g.shape[0], -1).any(1)
    if not has.any():
        return np.zeros(0), 0
    sub = g if has.all() else g[has]  # only the images with defects: C order of g[g] is kept
    lab, n = ndimage.label(sub, structure=_REGION_STRUCTURE)
    sizes = np.bincount(lab.reshape(-1))
    return 1.0 / sizes[lab[sub]], int(n)


class _Bins:
    """Equal-width bins over [lo, hi]; the bin of a value is computed identically in every pass."""

    def __init__(self, lo: float, hi: float, k: int):
        self.lo, self.k = lo, k
        self.scale = k / (hi - lo) if hi > lo and np.isfinite(k / (hi - lo)) else 0.0
        # float32 maps are binned in float32 (rounding is monotone, so bins stay ordered by value)
        # unless the scale does not fit one
        self.f32 = bool(np.isfinite(np.float32(self.scale)) and np.isfinite(np.float32(lo)))

    def __call__(self, v: np.ndarray) -> np.ndarray:
        dt = np.float32 if (v.dtype == np.float32 and self.f32) else np.float64
        t = v.astype(dt, copy=False) - dt(self.lo)   # >= 0: lo is the smallest value
        t *= dt(self.scale)
        b = t.astype(np.int32)
        np.minimum(b, self.k - 1, out=b)
        return b


def _suffix_above(a: np.ndarray) -> np.ndarray:
    """out[b] = sum of a[b'] over b' > b."""
    inc = np.cumsum(a[::-1])[::-1]
    return inc - a


def _chunks(n: int, chunk: int):
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


def _stats(maps: _Source, masks: _Source, chunk: int) -> tuple[float, float, int, int]:
    lo, hi, pos, tot = np.inf, -np.inf, 0, 0
    for s, e in _chunks(maps.shape[0], chunk):
        m, g = _maps_chunk(maps, s, e), _masks_chunk(masks, s, e, check=True)
        if not np.isfinite(m).all():
            raise ValueError(f"maps contain NaN or Inf (images {s}..{e - 1})")
        lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
        pos += int(np.count_nonzero(g))
        tot += m.size
    if pos == 0:
        raise ValueError("masks mark no defect pixel: pixel AUROC and AUPRO need at least one anomalous pixel")
    if pos == tot:
        raise ValueError("masks mark every pixel as a defect: pixel AUROC and AUPRO need normal pixels too")
    return lo, hi, pos, tot - pos


def _histograms(maps, masks, chunk, bins: _Bins, gather: bool):
    """Pass 2: per-bin negatives, positives and region weights; the region count; the positives'
    (value, weight) pairs when ``gather``."""
    n_b, p_b, w_b = (np.zeros(bins.k) for _ in range(3))
    regions, vals, wts = 0, [], []
    for s, e in _chunks(maps.shape[0], chunk):
        m, g = _maps_chunk(maps, s, e), _masks_chunk(masks, s, e)
        w, r = _weights(g)
        regions += r
        gf = g.reshape(-1)
        b = bins(m)
        bp = b[gf]
        pc = np.bincount(bp, minlength=bins.k)
        n_b += np.bincount(b, minlength=bins.k) - pc   # negatives without selecting them
        p_b += pc
        w_b += np.bincount(bp, weights=w, minlength=bins.k)
        if gather:
            vals.append(m[gf])
            wts.append(w)
    return n_b, p_b, w_b, regions, vals, wts


def _unique_sum(v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct values of v with the summed weights and counts of each."""
    u, inv = np.unique(v, return_inverse=True)
    return u, np.bincount(inv, weights=w, minlength=u.size), np.bincount(inv, minlength=u.size).astype(np.float64)


class _Table:
    """Sorted distinct positive values of a group of bins with suffix sums of counts and weights."""

    def __init__(self, vals: list[np.ndarray], wts: list[np.ndarray]):
        v = np.concatenate(vals) if vals else np.zeros(0)
        w = np.concatenate(wts) if wts else np.zeros(0)
        self.u, self.w, self.c = _unique_sum(v, w)
        self.wsuf = np.append(np.cumsum(self.w[::-1])[::-1], 0.0)  # weight of values >= u[i]
        self.csuf = np.append(np.cumsum(self.c[::-1])[::-1], 0.0)

    def above(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(count, weight) of the table's positives above each v, ties counting one half."""
        if self.u.size == 0:
            return np.zeros(v.shape), np.zeros(v.shape)
        i = np.searchsorted(self.u, v, side="left")
        j = np.minimum(i, self.u.size - 1)
        eq = (i < self.u.size) & (self.u[j] == v)
        c = self.csuf[i] - np.where(eq, 0.5 * self.c[j], 0.0)
        w = self.wsuf[i] - np.where(eq, 0.5 * self.w[j], 0.0)
        return c, w


def _plan_groups(p_b: np.ndarray, mixed: np.ndarray, max_gather: int) -> list[tuple[int, int]]:
    """Consecutive bin ranges [lo, hi) whose mixed bins hold at most max_gather positives each
    (a single bin above the budget forms its own group)."""
    groups, start, acc = [], 0, 0.0
    for b in np.flatnonzero(mixed):
        if acc and acc + p_b[b] > max_gather:
            groups.append((start, int(b)))
            start, acc = int(b), 0.0
        acc += p_b[b]
    groups.append((start, p_b.size))
    return groups


class _Curve:
    """The histogram-level quantities both metrics are assembled from (bins descending = thresholds
    descending): cross-bin terms exactly, within-bin terms as the tie approximation plus its bound."""

    def __init__(self, n_b, p_b, w_b, fpr_limit: float):
        self.n_b, self.p_b, self.w_b = n_b, p_b, w_b
        self.N, self.P, self.W = n_b.sum(), p_b.sum(), w_b.sum()
        self.p_above, self.w_above, self.n_above = _suffix_above(p_b), _suffix_above(w_b), _suffix_above(n_b)
        self.mixed = (n_b > 0) & (p_b > 0)
        self.LN = fpr_limit * self.N                     # the FPR limit in negative pixels
        # the truncation bin t: C_above[t] < LN <= C_above[t] + n_t
        self.t = int(np.flatnonzero(self.n_above + n_b >= self.LN)[-1])
        self.above_t = np.arange(n_b.size) > self.t

    def auroc(self, within: float | None) -> tuple[float, float]:
        tie = 0.5 * float((self.p_b * self.n_b).sum())
        num = float((self.n_b * self.p_above).sum()) + (tie if within is None else within)
        return num / (self.P * self.N), (tie if within is None else 0.0) / (self.P * self.N)

    def aupro(self, within: float | None, tail: float | None) -> tuple[float, float]:
        """(AUPRO, bound); ``within``: exact within-bin area of the bins above t; ``tail``: exact area
        inside bin t up to the limit."""
        t, sel = self.t, self.above_t
        dx = self.LN - self.n_above[t]
        f = dx / self.n_b[t]
        tie = 0.5 * float((self.n_b[sel] * self.w_b[sel]).sum())
        tail_est = dx * (self.w_above[t] + 0.5 * f * self.w_b[t])
        area = float((self.n_b[sel] * self.w_above[sel]).sum())
        area += (tie if within is None else within) + (tail_est if tail is None else tail)
        bound = (tie if within is None else 0.0) + (dx * self.w_b[t] * (1 - 0.5 * f) if tail is None else 0.0)
        norm = self.N * self.W * (self.LN / self.N)  # FPR x PRO units (W = number of regions)
        return area / norm, bound / norm


def _tail_area(curve: _Curve, neg_u: np.ndarray, neg_c: np.ndarray, table: _Table, bins: _Bins) -> float:
    """Exact area inside the truncation bin t, value by value (ties as diagonal segments)."""
    t = curve.t
    in_t = bins(table.u) == t
    v = np.concatenate([neg_u, table.u[in_t]])
    n = np.concatenate([neg_c, np.zeros(int(in_t.sum()))])
    w = np.concatenate([np.zeros(neg_u.size), table.w[in_t]])
    u, inv = np.unique(v, return_inverse=True)
    n, w = np.bincount(inv, weights=n)[::-1], np.bincount(inv, weights=w)[::-1]   # descending values
    x1 = curve.n_above[t] + np.cumsum(n)
    y0 = curve.w_above[t] + np.cumsum(w) - w
    k = int(np.searchsorted(x1, curve.LN, side="left"))   # the segment that crosses the limit
    full = float((n[:k] * (y0[:k] + 0.5 * w[:k])).sum())
    f = (curve.LN - (x1[k] - n[k])) / n[k]
    return full + f * n[k] * (y0[k] + 0.5 * f * w[k])


def _resolve(maps, masks, chunk, bins: _Bins, curve: _Curve, table: _Table | None, max_gather: int):
    """Pass 3: exact within-bin terms (AUROC numerator, area above t) and the exact tail area."""
    mixed = curve.mixed
    cm, wm = np.where(mixed, curve.p_b, 0.0), np.where(mixed, curve.w_b, 0.0)
    c_sup, w_sup = _suffix_above(cm), _suffix_above(wm)
    groups = [(0, bins.k)] if table is not None else _plan_groups(curve.p_b, mixed, max_gather)
    roc_in, pro_in, tail_vals, tail = 0.0, 0.0, [], None
    for glo, ghi in groups:
        if table is None:  # gather this group's positives first
            vals, wts = [], []
            for s, e in _chunks(maps.shape[0], chunk):
                m, g = _maps_chunk(maps, s, e), _masks_chunk(masks, s, e)
                w, _ = _weights(g)
                v = m[g.reshape(-1)]
                b = bins(v)
                keep = mixed[b] & (b >= glo) & (b < ghi)
                vals.append(v[keep])
                wts.append(w[keep])
            tab = _Table(vals, wts)
        else:
            tab = table
        top, t = ghi - 1, curve.t
        lut = mixed.copy()
        lut[:glo], lut[ghi:] = False, False
        # the table counts the positives of the group's mixed bins above each negative: minus those
        # of the bins above the negative's own (the histogram already has those pairs)
        nm = np.where(lut, curve.n_b, 0.0)
        roc_in -= float((nm * (c_sup - c_sup[top])).sum())
        pro_in -= float((nm * (w_sup - w_sup[top]))[t + 1:].sum())
        for s, e in _chunks(maps.shape[0], chunk):
            m, g = _maps_chunk(maps, s, e), _masks_chunk(masks, s, e)
            b = bins(m)
            # sorted values: the lookups walk the table in order, and bin ranges are slices
            vs = np.sort(m[lut[b] & ~g.reshape(-1)])
            c, w = tab.above(vs)
            roc_in += float(c.sum())
            bs = bins(vs)
            i0, i1 = np.searchsorted(bs, t, side="left"), np.searchsorted(bs, t, side="right")
            pro_in += float(w[i1:].sum())
            if i1 > i0:
                tail_vals.append(vs[i0:i1].copy())  # a copy: a view would keep the chunk's whole array alive
        if glo <= t < ghi and mixed[t]:
            u, _, cnt = _unique_sum(np.concatenate(tail_vals), np.zeros(sum(a.size for a in tail_vals)))
            tail = _tail_area(curve, u, cnt, tab, bins)
    return roc_in, pro_in, tail


def pixel_metrics(maps, masks, *, fpr_limit: float = 0.3, tolerance: float = 0.0, chunk_size: int | None = None,
                  bins: int = 1 << 20, max_gather: int = 1 << 24) -> dict:
    """Pixel AUROC and AUPRO of anomaly maps against ground-truth masks, streamed in chunks.

    Args:
        maps: (N, H, W) (or (N, 1, H, W)) anomaly maps, higher = more anomalous: a numpy array, a
            memory map (e.g. the ``<out>.maps.npy`` of :func:`pyaeplus.scoring.score`) or a tensor
            on any device; finite.
        masks: (N, H, W) ground truth of the same shape, bool or 0/1 (e.g. ``mvtec_ad(...).masks``).
            All-normal images are allowed; at least one pixel must be a defect and one normal.
        fpr_limit: upper end of the FPR range of the AUPRO integral, in (0, 1] (0.3 as in MVTec AD).
        tolerance: accept the one-histogram result when both error bounds are within it (faster,
            pass 3 skipped); 0 (default) means exact.
        chunk_size: images per chunk (default: about 4 Mi pixels per chunk).
        bins: equal-width histogram bins between the smallest and largest map value.
        max_gather: positive pixels held in memory at once by the exact pass (~40 bytes per distinct
            value, twice that while the table is built); more take more passes over the data.

    Returns:
        dict with ``pixel_auroc`` (equal to ``sklearn.metrics.roc_auc_score(masks.ravel(),
        maps.ravel())``), ``aupro`` (normalized to [0, 1] by ``fpr_limit``), ``fpr_limit``,
        ``pixel_auroc_bound`` and ``aupro_bound`` (largest possible error: 0.0 when exact),
        ``n_images``, ``n_pixels``, ``n_defect_pixels`` and ``n_regions`` (8-connected).

    Raises:
        ValueError: shapes differ or are not (N, H, W); NaN/Inf in maps; masks not 0/1; no defect
            pixel or no normal pixel; ``fpr_limit`` outside (0, 1]; a bad option.
        TypeError: non-numeric maps or masks.
    """
    ms, gs = _Source("maps", maps), _Source("masks", masks)
    if ms.shape != gs.shape:
        raise ValueError(f"masks must have the shape of maps {ms.shape}, got {gs.shape}")
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, (int, float)) or not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0.0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    for name, v in (("bins", bins), ("max_gather", max_gather)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    hw = ms.shape[1] * ms.shape[2]
    chunk = max(1, (1 << 22) // hw) if chunk_size is None else chunk_size
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    lo, hi, n_pos, _ = _stats(ms, gs, chunk)
    hb = _Bins(lo, hi, bins)
    gather = n_pos <= max_gather
    n_b, p_b, w_b, regions, vals, wts = _histograms(ms, gs, chunk, hb, gather)
    curve = _Curve(n_b, p_b, w_b, float(fpr_limit))
    auroc, auroc_bound = curve.auroc(None)
    aupro, aupro_bound = curve.aupro(None, None)
    if max(auroc_bound, aupro_bound) > tolerance:
        table = None
        if gather:
            v, w = (np.concatenate(vals), np.concatenate(wts))
            keep = curve.mixed[hb(v)]
            table = _Table([v[keep]], [w[keep]])
            del vals, wts, v, w, keep  # only the table stays in memory during pass 3
        roc_in, pro_in, tail = _resolve(ms, gs, chunk, hb, curve, table, max_gather)
        auroc, auroc_bound = curve.auroc(roc_in)
        aupro, aupro_bound = curve.aupro(pro_in, tail)
    return {"pixel_auroc": float(auroc), "aupro": float(aupro), "fpr_limit": float(fpr_limit),
            "pixel_auroc_bound": float(auroc_bound), "aupro_bound": float(aupro_bound), "n_images": ms.shape[0],
            "n_pixels": int(n_b.sum() + p_b.sum()), "n_defect_pixels": n_pos, "n_regions": regions}
