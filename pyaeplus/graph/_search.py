"""The exact-search engine under :func:`pyaeplus.graph.knn_graph`, :class:`pyaeplus.graph.KnnIndex` and
the distributed graph (``graph/_distributed.py``): rows, search spaces, candidate searchers per backend,
and the sequence that makes a candidate list exact, written once:

    search (:func:`candidates`) -> re-rank (:func:`rerank`) -> prove the k-th neighbour
    (:func:`boundary_unproven`) -> repair the rows not proven (:func:`repair_rows`)

(:func:`exact_rows` runs the last three for one chunk of queries). The guarantees and the metrics are
described in ``pyaeplus/graph/knn.py``. Nothing here imports the rest of ``pyaeplus.graph``.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator

import numpy as np
import torch

from .. import config
from .._validate import integer as _integer

METRICS = ("l2", "cosine", "ip", "hellinger", "chi2", "w1")
BACKENDS = ("auto", "faiss-gpu", "faiss", "triton", "torch")
INDEXES = ("flat", "ivf", "hnsw")

TIE_MARGIN = 4
CHI2_RERANK = 4

# The space the candidate search runs in, per metric: "l2" (squared Euclidean), "ip"
# (inner product, larger is nearer) or "l1".
_SEARCH_SPACE = {"l2": "l2", "cosine": "ip", "ip": "ip", "hellinger": "l2", "chi2": "l2", "w1": "l1"}
_HISTOGRAM_METRICS = ("hellinger", "chi2", "w1")
_TINY = 1e-30


# ----------------------------------------------------------------------------------------------
# rows from a tensor, an array or a memmap


class _Rows:
    """Read access to the rows of ``x`` (tensor, ndarray or memmap) as torch tensors in the
    compute dtype (float64 for float64 input, float32 otherwise), chunk by chunk."""

    def __init__(self, x):
        # Out-of-core: a memmap is read block by block; in-memory data is searched whole.
        self.out_of_core = isinstance(x, np.memmap)
        if isinstance(x, np.ndarray) and not self.out_of_core:
            x = torch.from_numpy(x)  # zero-copy view: one gather path for arrays and tensors
        self.x = x
        self.n, self.d = int(x.shape[0]), int(x.shape[1])
        if isinstance(x, torch.Tensor):
            self.device = x.device
            self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        else:
            self.device = torch.device("cpu")
            self.dtype = torch.float64 if x.dtype == np.float64 else torch.float32

    def get(self, start: int, stop: int) -> torch.Tensor:
        r = self.x[start:stop]
        if not isinstance(r, torch.Tensor):
            r = torch.from_numpy(np.array(r, copy=True))  # a memmap slice is read-only: copy it in
        return r.to(self.dtype)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (any shape, int64, values in [0, n)) -> ``idx.shape + (d,)``."""
        if isinstance(self.x, torch.Tensor):
            flat = self.x.index_select(0, idx.reshape(-1).to(self.x.device))
        else:
            flat_idx = idx.reshape(-1).cpu().numpy()
            # Sorted unique reads keep memmap access sequential-ish.
            uniq, inv = np.unique(flat_idx, return_inverse=True)
            flat = torch.from_numpy(np.ascontiguousarray(self.x[uniq]))[torch.from_numpy(inv.reshape(-1))]
        return flat.to(self.dtype).reshape(*idx.shape, self.d)


def _normalize_hist(r: torch.Tensor) -> torch.Tensor:
    return r / r.sum(dim=-1, keepdim=True)


def search_transform(metric: str, r: torch.Tensor) -> torch.Tensor:
    """Rows -> the vectors the candidate search compares (see the module table)."""
    if metric in ("l2", "ip"):
        return r
    if metric == "cosine":
        return r / r.norm(dim=-1, keepdim=True).clamp_min(_TINY)
    if metric in ("hellinger", "chi2"):
        return _normalize_hist(r).sqrt()
    if metric == "w1":
        return _normalize_hist(r).cumsum(dim=-1)
    raise AssertionError(metric)


def _exact_transform(metric: str, r: torch.Tensor) -> torch.Tensor:
    """Rows -> the vectors the direct distance formula takes."""
    if metric == "chi2":
        return _normalize_hist(r)
    return search_transform(metric, r)


def pair_distances(metric: str, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Direct distances between queries ``q`` (m, d) and their candidates ``c`` (m, c, d), both
    already in the exact space (``_exact_transform``) -> (m, c). Each pair is reduced on its own
    (no expanded formula), so identical rows give bit-identical distances."""
    q = q.unsqueeze(1)
    if metric in ("l2", "hellinger"):
        # cdist's direct mode: one pass per pair, no (m, c, d) difference tensor (4x faster
        # than subtract + norm), and the same reduction for every pair.
        return torch.cdist(q, c, compute_mode="donot_use_mm_for_euclid_dist").squeeze(1)
    if metric == "cosine":
        # Rounding can push 1 - cos(q, q) slightly below 0; a distance is >= 0.
        return (1.0 - (q * c).sum(-1)).clamp_min(0.0)
    if metric == "ip":
        return -(q * c).sum(-1)
    if metric == "chi2":
        den = q + c
        num = (q - c).square()
        return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), 0.0).sum(-1)
    if metric == "w1":
        return torch.cdist(q, c, p=1.0).squeeze(1)
    raise AssertionError(metric)


def _pack(dist: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(float distance, int64 index) -> one int64 key whose order is (float32 distance, index);
    index -1 (missing) packs as 2**32 - 1 with distance inf, i.e. last."""
    bits = dist.float().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # same order as the floats
    return (ordered.to(torch.int64) << 32) | (idx & 0xFFFFFFFF)


def _unpack(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = (key >> 32).to(torch.int32)
    dist = (hi ^ ((hi >> 31) & 0x7FFFFFFF)).view(torch.float32)
    idx = key & 0xFFFFFFFF
    return dist, torch.where(idx == 0xFFFFFFFF, -1, idx)


def sort_candidates(dist: torch.Tensor, idx: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (float32 distance, index) ascending; index -1 (missing) goes last.
    ``k``: keep only the first ``k`` columns. Returns float32 distances."""
    dist = torch.where(idx < 0, torch.inf, dist.float())
    key = _pack(dist, idx)
    if k is not None and k < key.shape[1]:
        key = torch.topk(key, k, dim=1, largest=False, sorted=True).values
    else:
        key = torch.sort(key, dim=1).values
    return _unpack(key)


# ----------------------------------------------------------------------------------------------
# candidate searchers: (queries in search space (m, d)) -> (approx dist (m, kc), local idx (m, kc))
# Distances are "smaller is nearer": squared L2, negated inner product, or L1. Missing -> -1 / inf.


def _faiss_metric(faiss, space: str):
    return {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT, "l1": faiss.METRIC_L1}[space]


def _faiss_out(space: str, D: np.ndarray, I: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.from_numpy(np.ascontiguousarray(D, dtype=np.float32))
    i = torch.from_numpy(np.ascontiguousarray(I, dtype=np.int64))
    if space == "ip":
        d = -d
    return torch.where(i < 0, torch.inf, d), i


def _as_f32_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def _check_names(metric, backend, index) -> str:
    """The metric (lower-cased), backend and index names of knn_graph / KnnIndex, checked."""
    metric = metric.lower() if isinstance(metric, str) else metric
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
    return metric


_INDEX_PARAMS = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("M", "ef_construction", "ef_search")}
_INT_MAX = 2**31 - 1


def check_index_params(index: str, params: dict, n: int) -> dict:
    """The ``index_params`` of ``index`` over ``n`` database rows, checked before FAISS sees them
    (FAISS aborts the interpreter on some bad values: ``M=0``): ``nlist`` in [1, n], ``nprobe`` >= 1
    (FAISS searches at most ``nlist`` lists), ``M`` in [2, 1024], ``ef_construction`` and
    ``ef_search`` >= 1. Unknown keys are refused. Returns a dict of ints."""
    if not isinstance(params, dict):
        raise TypeError(f"index_params must be a dict, got {type(params).__name__}")
    allowed = _INDEX_PARAMS[index]
    unknown = sorted(map(str, set(params) - set(allowed)))
    if unknown:
        raise ValueError(f"index_params {unknown} are not parameters of index={index!r} "
                         f"(it takes {list(allowed) if allowed else 'none'})")
    bounds = {"nlist": (1, max(n, 1)), "nprobe": (1, _INT_MAX), "M": (2, 1024), "ef_construction": (1, _INT_MAX),
              "ef_search": (1, _INT_MAX)}
    return {k: _integer(f"index_params[{k!r}]", v, lo=bounds[k][0], hi=bounds[k][1]) for k, v in params.items()}


def _faiss_searcher(db: torch.Tensor, space: str, kc: int, index: str, params: dict) -> Callable:
    import faiss

    n, d = db.shape
    metric = _faiss_metric(faiss, space)
    xb = _as_f32_numpy(db)
    if index == "flat":
        idx = faiss.IndexFlat(d, metric)
        idx.add(xb)
    elif index == "ivf":
        nlist = params["nlist"] if "nlist" in params else max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlat(d, metric)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
        # faiss k-means wants about 39..256 points per centroid; sample deterministically.
        ntrain = min(n, 256 * nlist)
        sel = np.random.default_rng(0).choice(n, ntrain, replace=False) if ntrain < n else slice(None)
        idx.train(xb[sel])
        idx.add(xb)
        idx.nprobe = min(nlist, params["nprobe"]) if "nprobe" in params else max(1, min(nlist, nlist // 8 + 1, 64))
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(params.get("M", 32)), metric)
        idx.hnsw.efConstruction = int(params.get("ef_construction", 200))
        idx.add(xb)
        idx.hnsw.efSearch = params["ef_search"] if "ef_search" in params else max(128, 2 * kc)
    else:
        raise AssertionError(index)
    kk = min(kc, n)

    def search(q: torch.Tensor):
        D, I = idx.search(_as_f32_numpy(q), kk)
        return _faiss_out(space, D, I)

    return search


_GPU_RES = None


def _faiss_gpu_searcher(db: torch.Tensor, space: str, kc: int) -> Callable:
    import faiss

    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    metric = _faiss_metric(faiss, space)
    xb = _as_f32_numpy(db)
    kk = min(kc, xb.shape[0])

    def search(q: torch.Tensor):
        # Brute force on the GPU (bfKnn); the database streams from host memory in pieces.
        D, I = faiss.knn_gpu(_GPU_RES, _as_f32_numpy(q), xb, kk, metric=metric)
        return _faiss_out(space, D, I)

    return search


def _torch_searcher(db: torch.Tensor, space: str, kc: int, budget: int) -> Callable:
    n = db.shape[0]
    kk = min(kc, n)
    dn = db.square().sum(1) if space == "l2" else None

    def search(q: torch.Tensor):
        q = q.to(db.device)
        m = q.shape[0]
        step = max(kk, budget // max(m, 1))
        best_d = best_i = None
        for s in range(0, n, step):
            b = db[s:s + step]
            if space == "l2":
                sc = (q.square().sum(1, keepdim=True) + dn[s:s + step]).addmm_(q, b.T, alpha=-2.0)
            elif space == "ip":
                sc = -(q @ b.T)
            else:
                sc = torch.cdist(q, b, p=1.0)
            d, i = torch.topk(sc, min(kk, b.shape[0]), dim=1, largest=False, sorted=False)
            i = i + s
            if best_d is not None:
                d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                if d.shape[1] > kk:
                    d, o = torch.topk(d, kk, dim=1, largest=False, sorted=False)
                    i = i.gather(1, o)
            best_d, best_i = d, i
        return best_d.float(), best_i

    return search


def _triton_searcher(db: torch.Tensor, space: str, kc: int, tf32: bool) -> Callable:
    from ..kernels import knn as kern

    def search(q: torch.Tensor):
        return kern.knn_candidates(q.to(db.device), db, min(kc, db.shape[0]), space=space, tf32=tf32)

    return search


# ----------------------------------------------------------------------------------------------
# the driver


def _faiss_module():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    return faiss


def faiss_gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees a GPU (checked before any GPU call)."""
    faiss = _faiss_module()
    return faiss is not None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _auto_backend(device: torch.device, index: str) -> str:
    """What ``backend="auto"`` runs: it follows the op backend in force (``pyaeplus.backends.get()``:
    ``backends.use(...)``, ``set``, ``PYAEPLUS_BACKEND``) for the exact search. ``"torch"``: the torch
    brute force (the reference, on any device); ``"cpu"``: faiss-cpu (the compiled CPU path; torch
    without faiss); ``"triton"``: the Triton kernel; ``"cuda"``: FAISS GPU (k-NN has no CUDA C++
    kernel of its own); a setting that cannot run ``device``'s tensors raises as the ops do.
    ``"auto"``: FAISS GPU when it sees a GPU, else Triton for CUDA tensors (torch without triton),
    else faiss-cpu (torch without faiss). Approximate indexes are FAISS CPU indexes whatever the setting."""
    from .. import _ext, backends

    have_faiss = _faiss_module() is not None
    name = backends.get()
    if index != "flat":
        return "faiss" if have_faiss else "torch"
    if name == "torch":
        return "torch"
    if name == "auto":
        if faiss_gpu_available():
            return "faiss-gpu"
        if device.type == "cuda":
            return "triton" if _ext.triton_available() else "torch"
        return "faiss" if have_faiss else "torch"
    impl = backends.resolve(device.type, "knn")  # raises when the setting cannot run these tensors
    if impl == "cuda":
        if not faiss_gpu_available():
            raise RuntimeError("pyaeplus backend 'cuda' runs k-NN search through FAISS GPU, which is not available "
                               "(faiss.get_num_gpus() is 0 or missing); use backends.use('triton') or pass "
                               "backend='triton' / 'torch'")
        return "faiss-gpu"
    if impl == "cpu":
        return "faiss" if have_faiss else "torch"
    return impl  # "triton" (or "torch")


def resolve_backend(backend: str, device: torch.device, metric: str, index: str) -> str:
    """The concrete backend for ``backend`` (see :func:`knn_graph`). Raises when it cannot run."""
    if backend == "auto":
        backend = _auto_backend(device, index)
    if backend == "faiss-gpu":
        if not faiss_gpu_available():
            raise RuntimeError("backend='faiss-gpu' needs a FAISS build with GPU support and a visible GPU "
                               "(faiss.get_num_gpus() is 0 or missing); use backend='faiss' or 'triton'")
    elif backend == "faiss":
        if _faiss_module() is None:
            raise RuntimeError("backend='faiss' needs faiss (pip install faiss-cpu); backend='torch' needs nothing")
    elif backend == "triton":
        from .. import _ext
        if not _ext.triton_available():
            raise RuntimeError("backend='triton' requested but triton is not installed")
        if device.type != "cuda" and not _interpreting():
            raise ValueError(f"x is on {device}, but backend='triton' runs CUDA tensors only "
                             "(move x to a GPU, or use backend='faiss' / 'torch')")
    if index != "flat" and backend != "faiss":
        raise ValueError(f"index={index!r} is a faiss-cpu index; it needs backend='faiss' (got {backend!r})")
    return backend


def _validate_x(x, name: str = "x"):
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"{name} must be a floating-point tensor (float32, float64, float16, bfloat16), got {x.dtype}")
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on a CPU or CUDA device, got {x.device}")
    elif isinstance(x, np.ndarray):
        if x.dtype not in (np.float32, np.float64, np.float16):
            raise TypeError(f"{name} must be a floating-point array (float32, float64, float16), got {x.dtype}")
    else:
        raise TypeError(f"{name} must be a torch.Tensor, a numpy array or a numpy memmap, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-d (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def _check_rows(rows: _Rows, metric: str, chunk: int, name: str = "x") -> None:
    """NaN/Inf and, for histogram metrics, sign and positive-sum checks, chunk by chunk,
    all before any search starts."""
    need_finite = config.check_finite
    if not need_finite and metric not in _HISTOGRAM_METRICS:
        return
    for s in range(0, rows.n, chunk):
        r = rows.get(s, min(rows.n, s + chunk))
        if need_finite and not bool(torch.isfinite(r).all()):
            bad = int((~torch.isfinite(r)).any(1).nonzero()[0, 0]) + s
            raise ValueError(f"{name} contains NaN or Inf values (first in row {bad}); pyaeplus rejects non-finite "
                             "inputs (pyaeplus.config.check_finite=False skips this check)")
        if metric in _HISTOGRAM_METRICS:
            if bool((r < 0).any()):
                bad = int((r < 0).any(1).nonzero()[0, 0]) + s
                raise ValueError(f"{name} must be non-negative for metric={metric!r} (histograms); row {bad} has "
                                 "a negative entry")
            sums = r.sum(1)
            if bool((sums <= 0).any()):
                bad = int((sums <= 0).nonzero()[0, 0]) + s
                raise ValueError(f"{name} rows must have a positive sum for metric={metric!r}; row {bad} sums to 0")


def _progress(it, total: int, enabled: bool, desc: str):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, desc=desc, unit="chunk", leave=False)


def _default_chunk(backend: str) -> int:
    # faiss blocks queries itself; the Triton grid needs many query tiles to fill a GPU.
    return {"faiss": 16384, "faiss-gpu": 1 << 16, "triton": 1 << 16}.get(backend, 4096)


def candidate_count(k: int, n: int, metric: str, exclude_self: bool, index: str) -> int:
    base = k * CHI2_RERANK if metric == "chi2" else k
    return min(n, base + int(exclude_self) + TIE_MARGIN)


def make_searcher(backend: str, db: torch.Tensor, space: str, kc: int, index: str, params: dict,
                  budget: int, tf32: bool) -> Callable:
    if backend == "faiss":
        return _faiss_searcher(db, space, kc, index, params)
    if backend == "faiss-gpu":
        return _faiss_gpu_searcher(db, space, kc)
    if backend == "triton":
        return _triton_searcher(db, space, kc, tf32)
    return _torch_searcher(db, space, kc, budget)


def rerank(metric: str, q_exact: torch.Tensor, q_index: torch.Tensor | None, cand_idx: torch.Tensor,
           take: Callable[[torch.Tensor], torch.Tensor], k: int,
           rerank_budget: int = 1 << 21) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distances for candidates ``cand_idx`` (m, c) (global ids, -1 = none) of queries
    ``q_exact`` (m, d) in exact space, self removed when ``q_index`` (m,) is given, sorted by
    (distance, index); the first ``k`` columns -> (dist (m, k), idx (m, k))."""
    m, c = cand_idx.shape
    d = q_exact.shape[1]
    # About 8 MiB of gathered candidates per step: large enough to amortize the per-op
    # overhead, small enough to stay in the last-level cache (measured: 2x faster than 64 MiB).
    step = max(1, rerank_budget // max(1, c * d))
    out_d, out_i = [], []
    for s in range(0, m, step):
        ci = cand_idx[s:s + step]
        valid = ci >= 0
        if q_index is not None:
            valid &= ci != q_index[s:s + step, None].to(ci.device)
        safe = torch.where(valid, ci, 0)
        vec = take(safe).to(q_exact.device)
        dist = pair_distances(metric, q_exact[s:s + step], vec).to(ci.device)
        dist = torch.where(valid, dist, torch.inf)
        ci = torch.where(valid, ci, -1)
        dist, ci = sort_candidates(dist, ci, k)
        out_d.append(dist)
        out_i.append(ci)
    return torch.cat(out_d), torch.cat(out_i)


def _merge(run_d, run_i, d, i, kc):
    """Keep the ``kc`` best of the running and the new candidates, sorted by (distance, index)."""
    if run_d is not None:
        d, i = torch.cat([run_d, d], 1), torch.cat([run_i, i], 1)
    return sort_candidates(d, i, kc)




def repair_rows(rows: _Rows, metric: str, qidx: torch.Tensor, q_raw: torch.Tensor, k: int, kc: int,
                exclude_self: bool, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact torch search for a few queries ``q_raw`` (m, D) (global ids ``qidx``) against the
    database ``rows`` (global ids ``offset + j``): used for rows an approximate index left short
    and for rows whose k-th neighbour the candidate list does not prove (ties wider than the
    list, chi2). The candidate count grows 4x until every row is proven (at most ``rows.n``). -> (dist (m, k'), idx (m, k'))."""
    space = _SEARCH_SPACE[metric]
    n = rows.n
    out_d = torch.full((qidx.numel(), min(k, n)), torch.inf)
    out_i = torch.full((qidx.numel(), min(k, n)), -1, dtype=torch.int64)
    todo = torch.arange(qidx.numel())
    kc = min(n, kc)
    block = max(1, (1 << 27) // (4 * rows.d))
    take = row_taker(rows, metric, offset)
    while todo.numel():
        q_s = search_transform(metric, q_raw[todo].to(rows.dtype))
        q_e = _exact_transform(metric, q_raw[todo].to(rows.dtype))
        run_d = run_i = None
        for b in range(0, n, block):
            db = search_transform(metric, rows.get(b, min(n, b + block)))
            d, i = _torch_searcher(db, space, kc, 1 << 25)(q_s.to(db.device))
            run_d, run_i = _merge(run_d, run_i, d.cpu().float(), i.cpu() + b + offset, kc)
        cd, ci = rerank(metric, q_e, qidx[todo] if exclude_self else None, run_i.to(q_e.device), take, k)
        out_d[todo, :cd.shape[1]], out_i[todo, :ci.shape[1]] = cd.cpu().to(out_d.dtype), ci.cpu()
        if kc >= n:
            break
        todo = todo[boundary_unproven(metric, run_d, cd[:, -1].cpu(), q_s.square().sum(1), n)]
        kc = min(n, 4 * kc)
    return out_d, out_i


def boundary_unproven(metric: str, cand_search_d: torch.Tensor, kth: torch.Tensor, q_norm2: torch.Tensor,
                      n_db: int) -> torch.Tensor:
    """Rows whose k-th neighbour the candidate list does not prove. ``cand_search_d`` (m, kc):
    search-space distances of the candidates (any order, inf = none); ``kth`` (m,): the k-th
    re-ranked exact distance; ``q_norm2`` (m,): squared norms of the queries in search space
    (scale of the rounding error). A row is proven when its farthest candidate is clearly
    farther than the k-th neighbour: then every row not in the list is farther too (for chi2
    through ``chi2 >= h^2``), so ties at the k-th distance cannot have been cut off."""
    if cand_search_d.shape[1] >= n_db:  # every database row was a candidate
        return torch.zeros(cand_search_d.shape[0], dtype=torch.bool)
    s_max = cand_search_d.double().max(1).values
    kth = kth.double().cpu()
    if metric in ("l2", "hellinger"):
        kth_s = kth.square()
    elif metric == "cosine":
        kth_s = kth - 1.0
    else:  # ip, w1: same units; chi2: bounded below by the squared Hellinger search distance
        kth_s = kth
    # Expanded-formula search distances err by a few ulps of |q|^2 + |b|^2.
    tol = 1e-5 * (q_norm2.double().cpu() + s_max.abs().nan_to_num(0, 0, 0) + kth_s.abs()) + 1e-7
    return ~(s_max - tol > kth_s)


def iter_chunks(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, chunk):
        yield s, min(n, s + chunk)


def candidates(searcher: Callable, q_search: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 for one query chunk (m, d) in search space: the searcher's candidates as CPU
    (search distance (m, kc) float32, global id (m, kc) int64, -1 = none; ids shifted by ``offset``)."""
    d, i = searcher(q_search)
    return d.cpu().float(), torch.where(i >= 0, i + offset, -1).cpu()


def row_taker(rows: "_Rows", metric: str, offset: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``take(global ids (...,)) -> rows in exact space (..., d)`` for a database ``rows`` whose row
    ``j`` has global id ``offset + j`` (masked slots may hold any id: they are clamped into range)."""
    return lambda g: _exact_transform(metric, rows.take((g - offset).clamp(0, rows.n - 1)))


def exact_rows(rows: "_Rows", metric: str, q_raw: torch.Tensor, qidx: torch.Tensor, cand_d: torch.Tensor,
               cand_i: torch.Tensor, k: int, kc: int, *, exclude_self: bool, index: str,
               offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stages 2-4 for one chunk of queries ``q_raw`` (m, D) (global ids ``qidx`` (m,)) against the
    database ``rows`` (global ids ``offset + j``), from their candidates ``cand_d``/``cand_i`` (m, c)
    (search distances / global ids, see :func:`candidates`): exact re-rank (self removed with
    ``exclude_self``), then the rows whose k-th neighbour the list does not prove (``index="flat"``)
    or that an approximate index left short are searched again exactly.

    Returns:
        ``(dist (m, k') float32, idx (m, k') int64, rows left short by the index)`` on the CPU,
        ``k' = min(k, candidates)`` (``k`` unless the database has fewer rows).
    """
    dev = q_raw.device
    cd, ci = rerank(metric, _exact_transform(metric, q_raw), qidx if exclude_self else None, cand_i.to(dev),
                    row_taker(rows, metric, offset), k)
    cd, ci = cd.cpu().float(), ci.cpu()
    redo = torch.zeros(cd.shape[0], dtype=torch.bool)
    short = 0
    if index != "flat":  # an approximate index may return fewer than k neighbours
        redo = (ci < 0).any(1)
        short = int(redo.sum())
    elif cd.shape[1] == k:
        qn2 = search_transform(metric, q_raw).square().sum(1).cpu()
        redo = boundary_unproven(metric, cand_d, cd[:, -1], qn2, rows.n)
    if bool(redo.any()):
        bad = redo.nonzero().squeeze(1)
        ed, ei = repair_rows(rows, metric, qidx[bad], q_raw[bad.to(dev)], k, kc, exclude_self, offset=offset)
        cd[bad], ci[bad] = ed.float(), ei
    return cd, ci, short


def exact_search(rows: "_Rows", metric: str, chunks, k: int, kc: int, *, exclude_self: bool,
                 index: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`exact_rows` over ``chunks`` (an iterable of ``(q_raw, qidx, cand_d, cand_i)``), the
    results concatenated: ``(dist (m, k), idx (m, k), rows left short by the index)``."""
    out_d, out_i, short = [], [], 0
    for q_raw, qidx, cand_d, cand_i in chunks:
        cd, ci, m = exact_rows(rows, metric, q_raw, qidx, cand_d, cand_i, k, kc, exclude_self=exclude_self,
                               index=index)
        out_d.append(cd)
        out_i.append(ci)
        short += m
    return torch.cat(out_d), torch.cat(out_i), short
