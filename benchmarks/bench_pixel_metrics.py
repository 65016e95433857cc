"""Benchmark: pixel AUROC and AUPRO over anomaly maps (``pyaeplus.scoring.pixel_metrics``).

Target (issue 17): the metrics of 10k maps of 256x256 (655 Mi pixels, 2.6 GB of float32 maps in a
``.npy`` memory map, as ``scoring.score(maps=True, out=...)`` writes them) computed exactly in bounded
memory. Rows (mode "forward", one row = the whole computation):

* ``sklearn roc_auc_score`` (anchor): pixel AUROC only, everything flattened in memory (it sorts
  all pixels; at 10k maps it would need ~15 GB, so it runs on the small config only);
* ``torchmetrics binary_auroc`` (exact, ``thresholds=None``): pixel AUROC only, in memory;
* ``pyaeplus exact``: pixel AUROC and AUPRO, exact, streamed in chunks;
* ``pyaeplus tolerance=1e-4``: the one-histogram result with its error bound (pass 3 skipped).

Maps are synthetic: uniform noise everywhere, plus a random offset on one rectangular defect in
half of the images (so positives and negatives overlap, the costly case for the exact pass).
Peak memory: numpy/Python allocations traced by ``tracemalloc`` in a separate call (the memory map's
file-backed pages are not allocations), written to the rows' ``peak_mem_bytes``.

Options (besides the harness's): ``--n N`` maps for the small config (default 200; ``--quick`` 40),
``--big N`` maps for the streamed config (default 10000; 0 skips it; ``--quick`` 400),
``--tmp DIR`` where the big config's ``.npy`` files go (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
import tracemalloc

import numpy as np

import harness

from pyaeplus.scoring import pixel_metrics

SIDE = 256


def make(n: int, seed: int, maps_out=None, masks_out=None) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (n, 256, 256), masks uint8), in memory or written chunk by chunk to .npy files."""
    rng = np.random.default_rng(seed)
    shape = (n, SIDE, SIDE)
    maps = np.empty(shape, np.float32) if maps_out is None else np.lib.format.open_memmap(maps_out, "w+", np.float32, shape)
    masks = np.zeros(shape, np.uint8) if masks_out is None else np.lib.format.open_memmap(masks_out, "w+", np.uint8, shape)
    for s in range(0, n, 256):
        e = min(n, s + 256)
        m = rng.random((e - s, SIDE, SIDE), dtype=np.float32) * 0.8
        g = np.zeros((e - s, SIDE, SIDE), np.uint8)
        for i in range(0, e - s, 2):
            y, x = rng.integers(16, 200, 2)
            g[i, y:y + rng.integers(4, 48), x:x + rng.integers(4, 48)] = 1
        m += g * rng.random((e - s, 1, 1), dtype=np.float32) * 0.6
        maps[s:e], masks[s:e] = m, g
    return maps, masks


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def add(r, name, cfg, fn, anchor=False, memory=True):
    row = r.add(name, cfg, "forward", fn, anchor=anchor)
    if row is not None and memory and r.traced_memory:
        row["peak_mem_bytes"] = traced_peak(fn)
        print(f"[{r.name}]   peak traced memory {row['peak_mem_bytes'] / 2**20:.1f} MiB", flush=True)


def main() -> None:
    r = harness.Runner("pixel_metrics", description=__doc__)
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--big", type=int, default=None)
    ap.add_argument("--tmp", default=None)
    own, rest = ap.parse_known_args(r.extra)
    if rest:
        raise SystemExit(f"bench_pixel_metrics.py: unknown arguments {rest}")
    n = own.n or (40 if r.quick else 200)
    big = (400 if r.quick else 10_000) if own.big is None else own.big
    # the harness's profiler sees torch allocations only: peak memory comes from tracemalloc instead
    r.traced_memory, r.args.no_memory = not r.args.no_memory, True
    if r.args.repeats is None:
        r.repeats = 1 if big else 3   # one measurement is a whole pass over the maps
    if r.args.warmup is None:
        r.warmup = 0

    maps, masks = make(n, 0)
    cfg = {"maps": f"{n}x{SIDE}x{SIDE}", "storage": "in memory", "pixels": maps.size}
    flat_m, flat_g = maps.reshape(-1), masks.reshape(-1)
    from sklearn.metrics import roc_auc_score

    add(r, "sklearn roc_auc_score (AUROC only)", cfg, lambda: roc_auc_score(flat_g, flat_m), anchor=True)
    try:
        import torch
        from torchmetrics.functional.classification import binary_auroc

        tm, tg = torch.from_numpy(flat_m), torch.from_numpy(flat_g.astype(np.int64))
        add(r, "torchmetrics binary_auroc (AUROC only)", cfg, lambda: binary_auroc(tm, tg), memory=False)
        del tm, tg
    except ImportError:
        r.skip("torchmetrics binary_auroc", "torchmetrics is not installed")
    add(r, "pyaeplus exact (AUROC + AUPRO)", cfg, lambda: pixel_metrics(maps, masks))
    add(r, "pyaeplus tolerance=1e-4", cfg, lambda: pixel_metrics(maps, masks, tolerance=1e-4))
    ref = roc_auc_score(flat_g, flat_m)
    got = pixel_metrics(maps, masks)
    print(f"[{r.name}] check: sklearn {ref!r}, pyaeplus {got['pixel_auroc']!r}, AUPRO {got['aupro']:.6f}")
    del maps, masks, flat_m, flat_g

    if big:
        tmp = pathlib.Path(own.tmp or tempfile.mkdtemp(prefix="pyaeplus-bench-"))
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            make(big, 1, tmp / "maps.npy", tmp / "masks.npy")
            bm, bg = np.load(tmp / "maps.npy", mmap_mode="r"), np.load(tmp / "masks.npy", mmap_mode="r")
            cfg = {"maps": f"{big}x{SIDE}x{SIDE}", "storage": ".npy memory map", "pixels": bm.size}
            add(r, "pyaeplus exact (AUROC + AUPRO)", cfg, lambda: pixel_metrics(bm, bg), anchor=True)
            add(r, "pyaeplus tolerance=1e-4", cfg, lambda: pixel_metrics(bm, bg, tolerance=1e-4))
            res = pixel_metrics(bm, bg, tolerance=1e-4)
            print(f"[{r.name}] big: {res}")
        finally:
            if own.tmp is None:
                shutil.rmtree(tmp, ignore_errors=True)
    r.finish()


if __name__ == "__main__":
    main()
