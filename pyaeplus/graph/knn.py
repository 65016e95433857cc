"""Exact and approximate k-nearest-neighbour graphs over feature rows.

Every backend works in two stages:

1. **candidates**: each query row gets ``kc`` candidate neighbours from a fast search in a
   *search space* (FAISS flat/IVF/HNSW, the Triton tiled brute force, or chunked torch GEMMs).
   Search distances come from expanded formulas (``|q|^2 + |b|^2 - 2 q.b``) and carry
   rounding error; FAISS and ``torch.topk`` also break ties in no documented order.
2. **re-rank**: the distance of each (query, candidate) pair is recomputed directly from the
   rows (``sum((q - b)^2)``, not the expanded form) in float32 (float64 for float64 input), the
   query itself is dropped when ``exclude_self=True``, and the candidates are sorted by
   (distance, index). The first ``k`` are returned.

What is guaranteed (exact backends: ``index="flat"``): the result is the exact k-NN list
under the directly computed distance, ties broken by ascending index (duplicates: lower index
first; only the query's own index is removed, never its duplicates). The candidate stage asks
for ``k + 1 + TIE_MARGIN`` rows (``TIE_MARGIN = 4``); a row is accepted only when its farthest
candidate is clearly (beyond rounding) farther than its k-th neighbour, which proves that no
row outside the list ties with or beats the k-th one. Rows that fail (a tie group wider than
the margin, heavy duplication) are searched again with 4x as many candidates until proven.
Identical rows give bit-identical re-ranked distances, so the graph is the same for every
backend, chunk size and process count (the tests check this bit for bit). Distances are
returned in float32 and ordered by their float32 values.
Limits: at most 2**32 - 2 rows (indices are packed in 32 bits for sorting).

Metrics (``x`` rows are feature vectors; for the histogram metrics rows must be non-negative
with a positive sum and are L1-normalized first):

* ``l2``: Euclidean distance (not squared); search: L2 on the rows.
* ``cosine``: ``1 - cos(q, b)`` (clamped at 0); search: inner product of L2-normalized rows
  (a zero row is left as zero: cosine 0 to everything).
* ``ip``: ``-<q, b>``, the negated inner product (a distance-like value: smaller is nearer);
  search: inner product. Note that a row need not be its own nearest neighbour under ``ip``.
* ``hellinger``: ``||sqrt(p) - sqrt(q)||_2``, which is ``sqrt(2)`` times the Hellinger
  distance; search: L2 on square-rooted histograms.
* ``chi2``: ``sum (p - q)^2 / (p + q)`` with 0/0 := 0; search: ``CHI2_RERANK * k`` Hellinger
  candidates.
* ``w1``: ``sum |cumsum(p) - cumsum(q)|`` (1-Wasserstein between histograms over ordered,
  unit-spaced bins); search: L1 on cumulative histograms.

Chi-squared has no metric index; it is computed exactly on the ``CHI2_RERANK * k``
(``CHI2_RERANK = 4``) nearest Hellinger candidates. With ``h = ||sqrt(p) - sqrt(q)||_2``,
``h^2 <= chi2 <= 2 h^2`` (because ``(sqrt(p) + sqrt(q))^2 / (p + q)`` lies in [1, 2]), so a row
outside the candidates has ``chi2 >= h_max^2``; rows where this bound does not prove the k-th
chi2 neighbour exact are searched again with 4x as many Hellinger candidates per round. The
chi2 graph is therefore exact, like the others.
"""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Callable

import numpy as np
import torch

from .._validate import integer as _integer
from ..runtime.files import atomic_write
from ._search import (BACKENDS, CHI2_RERANK, INDEXES, METRICS, TIE_MARGIN, _SEARCH_SPACE, _Rows,  # noqa: F401
                      _check_names, _check_rows, _default_chunk, _merge, _progress, _validate_x, boundary_unproven,
                      candidate_count, candidates, check_index_params, exact_rows, exact_search, faiss_gpu_available,
                      iter_chunks, make_searcher, pair_distances, repair_rows, rerank, resolve_backend,
                      search_transform, sort_candidates)

# Database block of a memmap input, in bytes of float32 search-space rows.
MEMMAP_BLOCK_BYTES = 1 << 28

__all__ = ["KnnGraph", "KnnIndex", "knn_graph", "knn_search", "METRICS", "BACKENDS", "INDEXES", "check_index_params",
           "faiss_gpu_available", "resolve_backend"]


# ----------------------------------------------------------------------------------------------
# the result


@dataclasses.dataclass
class KnnGraph:
    """A k-nearest-neighbour graph in dense (N, k) form.

    Attributes:
        indices: (N, k) int64 tensor; row ``i`` lists the neighbours of node ``i`` sorted by
            ascending distance, ties by ascending index.
        distances: (N, k) float32 tensor, the distances matching ``indices`` (for ``cosine``
            ``1 - cos``, for ``ip`` the negated inner product; see ``pyaeplus.graph.knn``).
        metric: the metric the graph was built with.
    """

    indices: torch.Tensor
    distances: torch.Tensor
    metric: str = "l2"

    def __post_init__(self) -> None:
        if not isinstance(self.indices, torch.Tensor) or not isinstance(self.distances, torch.Tensor):
            raise TypeError("KnnGraph indices and distances must be torch.Tensors")
        if self.indices.dim() != 2 or self.indices.shape != self.distances.shape:
            raise ValueError(f"KnnGraph indices and distances must both be (N, k), got "
                             f"{tuple(self.indices.shape)} and {tuple(self.distances.shape)}")
        if self.indices.dtype != torch.int64:
            raise TypeError(f"KnnGraph indices must be int64, got {self.indices.dtype}")
        if not self.distances.is_floating_point():
            raise TypeError(f"KnnGraph distances must be floating point, got {self.distances.dtype}")

    @property
    def num_nodes(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def to(self, device) -> "KnnGraph":
        return KnnGraph(self.indices.to(device), self.distances.to(device), self.metric)

    def save(self, path) -> None:
        """Write the graph to ``path`` as an uncompressed ``.npz`` (indices, distances, metric)."""
        # a file object: numpy would otherwise append ".npz"
        atomic_write(path, lambda f: np.savez(f, indices=self.indices.cpu().numpy(),
                                              distances=self.distances.cpu().numpy(), metric=np.array(self.metric)))

    @classmethod
    def load(cls, path) -> "KnnGraph":
        """Read a graph written by :meth:`save`."""
        with np.load(pathlib.Path(path), allow_pickle=False) as z:
            for key in ("indices", "distances", "metric"):
                if key not in z:
                    raise ValueError(f"{path} is not a KnnGraph file: missing {key!r}")
            return cls(torch.from_numpy(z["indices"].astype(np.int64, copy=False)),
                       torch.from_numpy(z["distances"].copy()), str(z["metric"]))

    def __repr__(self) -> str:
        return f"KnnGraph(num_nodes={self.num_nodes}, k={self.k}, metric={self.metric!r})"



@torch.no_grad()
def knn_graph(x, k: int, *, metric: str = "l2", backend: str = "auto", index: str = "flat",
              exclude_self: bool = True, chunk_size: int | None = None, progress: bool = True,
              distributed: bool = False, index_params: dict | None = None, tf32: bool = False) -> KnnGraph:
    """k-nearest-neighbour graph of the rows of ``x``.

    Args:
        x: (N, D) features: a torch tensor (CPU or CUDA; float32/float64/float16/bfloat16), a
            NumPy array, or a ``numpy.memmap`` larger than memory (read in blocks of
            ``chunk_size`` rows; float16 storage is fine, computation is float32). With
            ``distributed=True``, this rank's shard of the rows (see below).
        k: neighbours per row, ``1 <= k <= N - 1`` (``N`` when ``exclude_self=False``).
        metric: ``"l2"``, ``"cosine"``, ``"ip"``, ``"hellinger"``, ``"chi2"`` or ``"w1"``; the
            histogram metrics need non-negative rows with a positive sum. See the module
            docstring for the distances returned.
        backend: ``"auto"`` (FAISS GPU when ``faiss.get_num_gpus() > 0``, else the Triton
            kernel for CUDA tensors, else faiss-cpu, else torch), ``"faiss-gpu"``, ``"faiss"``,
            ``"triton"`` (CUDA tensors; streaming tiled brute force, never an N x N matrix) or
            ``"torch"`` (chunked exact brute force on ``x``'s device, needs nothing else).
        index: for ``backend="faiss"``: ``"flat"`` (exact), ``"ivf"`` (IVFFlat, approximate;
            ``index_params`` ``nlist`` default ``4 sqrt(N)``, ``nprobe`` default ``nlist/8 + 1``
            capped at 64: recall@k >= 0.9 on clustered data in the tests) or ``"hnsw"``
            (HNSWFlat; ``M`` 32, ``ef_construction`` 200, ``ef_search`` default
            ``max(128, 2 kc)``: recall@k >= 0.95 in the tests). Approximate indexes hold the
            whole database in memory, as FAISS does.
        exclude_self: drop each row's own index (exactly that index, not its duplicates).
        chunk_size: query rows per search call (and database rows per block for a memmap);
            default 16384 for faiss-cpu, 65536 for faiss-gpu and Triton, 4096 for torch.
        progress: show a tqdm progress bar over the chunks.
        distributed: run under ``torch.distributed`` (e.g. torchrun): every rank passes its
            own shard of the rows (in rank order); queries are exchanged chunk by chunk, each
            rank searches its shard, and the per-rank candidates are merged exactly with the
            same tie rule. Every rank returns the full graph over the concatenated rows.
        index_params: parameters of the approximate FAISS indexes (see ``index``), checked before
            FAISS sees them (:func:`check_index_params`: ``nlist`` in [1, N], ``nprobe`` >= 1 and at
            most ``nlist`` searched, ``M`` in [2, 1024], ``ef_construction``/``ef_search`` >= 1;
            other keys are refused).
        tf32: let the Triton kernel use TF32 tensor cores for the candidate search (faster;
            the returned distances are recomputed exactly in float32 either way).

    Returns:
        :class:`KnnGraph` with ``indices`` (N, k) int64 and ``distances`` (N, k) float32 on the
        CPU.
    """
    metric = _check_names(metric, backend, index)
    _validate_x(x)
    if chunk_size is not None:
        chunk_size = _integer("chunk_size", chunk_size, lo=1)
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    if distributed:
        if index != "flat" or index_params:
            raise ValueError(f"distributed=True supports index='flat' only (exact merge), got index={index!r}")
        from . import _distributed
        idx, dist = _distributed.knn_graph_distributed(x, k, metric=metric, backend=backend, exclude_self=exclude_self,
                                                       chunk_size=chunk_size, progress=progress, tf32=tf32)
        return KnnGraph(idx, dist, metric)
    n = int(x.shape[0])
    if n >= 0xFFFFFFFF:
        raise ValueError(f"x has {n} rows; knn_graph packs row indices in 32 bits (at most 2**32 - 2 rows)")
    k = _integer("k", k, lo=1, hi=n - 1 if exclude_self else n)
    params = check_index_params(index, {} if index_params is None else index_params, n)
    backend = resolve_backend(backend, device, metric, index)
    rows = _Rows(x)
    chunk = chunk_size or _default_chunk(backend)
    _check_rows(rows, metric, max(chunk, 1 << 14))
    kc = candidate_count(k, n, metric, exclude_self, index)
    run_d, run_i = _candidate_lists(rows, metric, backend, kc, index, params, chunk, progress, tf32)

    # Exact re-rank, proof and repair, query chunk by query chunk; rows come from x again.
    chunks = ((rows.get(s, e), torch.arange(s, e), run_d[s:e], run_i[s:e]) for s, e in iter_chunks(n, chunk))
    dist, idx, short = exact_search(rows, metric, chunks, k, kc, exclude_self=exclude_self, index=index)
    if short:
        warnings.warn(f"knn_graph: index={index!r} returned fewer than {k} neighbours for {short} "
                      "row(s); searched those rows exactly (raise nprobe / ef_search)", RuntimeWarning, stacklevel=2)
    return KnnGraph(idx, dist, metric)


def _candidate_lists(rows: _Rows, metric: str, backend: str, kc: int, index: str, params: dict, chunk: int,
                     progress: bool, tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1 over the whole database: each row's ``kc`` candidates (search distance, global id),
    (N, kc) each on the CPU. An in-memory database is searched whole; a memmap in blocks of
    ``MEMMAP_BLOCK_BYTES``, the per-block lists merged by (distance, index)."""
    n = rows.n
    db_block = n if not rows.out_of_core else max(chunk, MEMMAP_BLOCK_BYTES // (4 * rows.d))
    steps = [(b, s) for b in range(0, n, db_block) for s in range(0, n, chunk)]
    run_d = run_i = searcher = None
    d_parts: list[torch.Tensor] = []
    i_parts: list[torch.Tensor] = []
    for b, s in _progress(steps, len(steps), progress, f"knn_graph[{backend}]"):
        if s == 0:  # a new database block
            db = search_transform(metric, rows.get(b, min(n, b + db_block)))
            if backend in ("faiss", "faiss-gpu"):
                db = db.cpu()
            searcher = make_searcher(backend, db, _SEARCH_SPACE[metric], kc, index, params, 1 << 25, tf32)
            del db
            d_parts, i_parts = [], []
        d, i = candidates(searcher, search_transform(metric, rows.get(s, min(n, s + chunk))), offset=b)
        d_parts.append(d)
        i_parts.append(i)
        if s + chunk >= n:  # end of this database block: merge into the running candidates
            run_d, run_i = _merge(run_d, run_i, torch.cat(d_parts), torch.cat(i_parts), kc)
    return run_d, run_i


# ----------------------------------------------------------------------------------------------
# queries against a fixed database (latent k-NN anomaly scores, out-of-sample neighbours)


class KnnIndex:
    """k-NN search of new query rows against a fixed database, on the same backends and with
    the same guarantees as :func:`knn_graph` (exact under the directly computed distance for
    ``index="flat"``, ties broken by ascending database index).

    The index (FAISS, the Triton kernel's database, or the torch GEMM blocks) is built once, so
    scoring streams query batches through it: ``pyaeplus.scoring.score(..., score="latent_knn")``
    keeps one ``KnnIndex`` over the training latents.

    Args:
        database: (M, D) rows to search (tensor on CPU/CUDA, NumPy array or memmap; held in
            memory in the compute dtype: float64 for float64 input, float32 otherwise).
        metric: one of ``pyaeplus.graph.knn.METRICS`` (see :func:`knn_graph`).
        backend: ``"auto"``, ``"faiss-gpu"``, ``"faiss"``, ``"triton"`` or ``"torch"`` (see
            :func:`knn_graph`; ``"auto"`` picks by the database's device).
        index: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (approximate, ``backend="faiss"``).
        index_params: parameters of the approximate indexes (see :func:`knn_graph`).
        tf32: let the Triton kernel use TF32 for the candidate search (distances are recomputed
            exactly either way).

    Example::

        idx = KnnIndex(train_latents)            # (M, d)
        dist, nbr = idx.search(test_latents, 5)  # (Q, 5) each, sorted by distance
    """

    def __init__(self, database, *, metric: str = "l2", backend: str = "auto", index: str = "flat",
                 index_params: dict | None = None, tf32: bool = False):
        metric = _check_names(metric, backend, index)
        if index_params is not None and not isinstance(index_params, dict):
            raise TypeError(f"index_params must be a dict, got {type(index_params).__name__}")
        _validate_x(database, "database")
        device = database.device if isinstance(database, torch.Tensor) else torch.device("cpu")
        self.metric, self.index, self.tf32 = metric, index, bool(tf32)
        self.params = dict(index_params or {})
        self.backend = resolve_backend(backend, device, metric, index)
        rows = _Rows(database)
        self.params = check_index_params(index, self.params, rows.n)
        _check_rows(rows, metric, 1 << 14, "database")
        # The whole database in memory as a tensor: one gather path for re-rank and repair.
        self._rows = _Rows(rows.get(0, rows.n).to(device))
        self.n, self.d = rows.n, rows.d
        self._search_db = search_transform(metric, self._rows.x)
        if self.backend in ("faiss", "faiss-gpu"):
            self._search_db = self._search_db.cpu()
        self._searchers: dict[int, Callable] = {}

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"KnnIndex(n={self.n}, d={self.d}, metric={self.metric!r}, backend={self.backend!r}, index={self.index!r})"

    def _searcher(self, kc: int) -> Callable:
        if kc not in self._searchers:
            self._searchers[kc] = make_searcher(self.backend, self._search_db, _SEARCH_SPACE[self.metric], kc,
                                                self.index, self.params, 1 << 25, self.tf32)
        return self._searchers[kc]

    def search(self, queries, k: int, *, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest database rows of each query row.

        Args:
            queries: (Q, D) rows (tensor, array or memmap; same width as the database).
            k: neighbours per query, ``1 <= k <= M``.
            chunk_size: query rows per search call (default as in :func:`knn_graph`).

        Returns:
            ``(distances, indices)``: (Q, k) float32 and (Q, k) int64 on the CPU, each row sorted
            by ascending distance, ties by ascending database index.
        """
        _validate_x(queries, "queries")
        if int(queries.shape[1]) != self.d:
            raise ValueError(f"queries must have {self.d} columns (the database's), got shape {tuple(queries.shape)}")
        k = _integer("k", k, lo=1, hi=self.n)
        if chunk_size is not None:
            chunk_size = _integer("chunk_size", chunk_size, lo=1)
        q_rows = _Rows(queries)
        _check_rows(q_rows, self.metric, 1 << 14, "queries")
        kc = candidate_count(k, self.n, self.metric, False, self.index)
        searcher = self._searcher(kc)
        chunk = chunk_size or _default_chunk(self.backend)
        dist, idx, short = exact_search(self._rows, self.metric, self._chunks(q_rows, searcher, chunk), k, kc,
                                        exclude_self=False, index=self.index)
        if short:
            warnings.warn(f"KnnIndex: index={self.index!r} returned fewer than {k} neighbours for {short} query "
                          "row(s); searched those exactly (raise nprobe / ef_search)", RuntimeWarning, stacklevel=2)
        return dist, idx

    def _chunks(self, q_rows: _Rows, searcher: Callable, chunk: int):
        """The query chunks with their candidates (see ``_search.exact_search``)."""
        dev = self._rows.device
        for s, e in iter_chunks(q_rows.n, chunk):
            raw = q_rows.get(s, e).to(dev, self._rows.dtype)
            yield (raw, torch.arange(e - s), *candidates(searcher, search_transform(self.metric, raw)))


def knn_search(queries, database, k: int, *, metric: str = "l2", backend: str = "auto", index: str = "flat",
               index_params: dict | None = None, chunk_size: int | None = None,
               tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``database`` (M, D) for each row of ``queries`` (Q, D): a
    one-shot :class:`KnnIndex` (build it yourself to search many query batches).

    Returns:
        ``(distances, indices)``, (Q, k) float32 / int64 on the CPU, sorted by (distance, index).
    """
    return KnnIndex(database, metric=metric, backend=backend, index=index, index_params=index_params,
                    tf32=tf32).search(queries, k, chunk_size=chunk_size)
