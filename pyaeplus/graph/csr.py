"""A small weighted CSR graph: the input of ``pyaeplus.laplacian_loss``.

``Graph(indptr, indices, weights)`` holds W in compressed-row form: the neighbours of node i are
``indices[indptr[i]:indptr[i+1]]`` with weights ``weights[indptr[i]:indptr[i+1]]``. Every
constructor validates (shapes, dtypes, monotone ``indptr``, indices in range, weights finite and
non-negative), so the kernels can trust it. Tensors are treated as immutable: build a new Graph
instead of editing them in place (derived operands are cached on the object).
"""

from __future__ import annotations

import torch

from . import weights as _w

__all__ = ["Graph"]

_NORMALIZATIONS = (None, "sym", "rw")


def _rows_of(indptr: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(nnz,) row index of every stored edge."""
    return torch.repeat_interleave(torch.arange(num_nodes, device=indptr.device), indptr.diff())


class Graph:
    """Weighted directed graph in CSR form.

    Args:
        indptr: (N+1,) int64, ``indptr[0] == 0``, non-decreasing, ``indptr[N] == nnz``.
        indices: (nnz,) int64 column (neighbour) indices in ``[0, N)``.
        weights: (nnz,) float32 non-negative finite edge weights (other float dtypes and
            ``None`` = all ones are accepted and converted).
        num_nodes: N (default ``len(indptr) - 1``).
        validate: check the arrays (default True; internal constructors that build valid
            arrays skip it). Without it, int32 ``indptr``/``indices`` (as scipy gives them) and
            other float ``weights`` are still converted to int64/float32 (the kernels' dtypes),
            and other dtypes or ranks are refused: only the values go unchecked.

    A symmetric graph stores each undirected edge twice (i->j and j->i).
    """

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None,
                 num_nodes: int | None = None, *, validate: bool = True):
        if validate:
            indptr, indices, weights, num_nodes = self._check(indptr, indices, weights, num_nodes)
        else:
            indptr, indices, weights = self._convert(indptr, indices, weights)
        self.indptr = indptr
        self.indices = indices
        self.weights = weights
        self.num_nodes = int(num_nodes if num_nodes is not None else indptr.numel() - 1)
        self._cache: dict = {}

    # ---- validation -------------------------------------------------------------------
    @staticmethod
    def _convert(indptr, indices, weights):
        """The kernels' dtypes without the value checks (``validate=False``): int32 -> int64,
        other floats -> float32, None weights -> ones; anything else is refused."""
        for name, t in (("indptr", indptr), ("indices", indices)):
            if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.dim() != 1:
                raise TypeError(f"graph {name} must be a 1-d int64 (or int32) tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if weights is None:
            weights = torch.ones(indices.numel(), dtype=torch.float32, device=indices.device)
        if not isinstance(weights, torch.Tensor) or not weights.is_floating_point() or weights.dim() != 1:
            raise TypeError(f"graph weights must be a 1-d floating tensor, got {getattr(weights, 'dtype', weights)}")
        return (indptr.to(torch.int64).contiguous(), indices.to(torch.int64).contiguous(),
                weights.to(torch.float32).contiguous())

    @staticmethod
    def _check(indptr, indices, weights, num_nodes):
        for name, t in (("indptr", indptr), ("indices", indices)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"graph {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"graph {name} must be int64, got {str(t.dtype).replace('torch.', '')}")
            if t.dim() != 1:
                raise ValueError(f"graph {name} must be 1-d, got shape {tuple(t.shape)}")
        if indptr.device != indices.device:
            raise ValueError(f"graph indices is on {indices.device} but indptr is on {indptr.device}")
        indptr = indptr.to(torch.int64).contiguous()
        indices = indices.to(torch.int64).contiguous()
        if indptr.numel() < 1:
            raise ValueError("graph indptr must have N+1 >= 1 entries, got 0")
        n = indptr.numel() - 1
        if num_nodes is not None:
            if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
                raise TypeError(f"graph num_nodes must be a non-negative int, got {num_nodes!r}")
            if num_nodes != n:
                raise ValueError(f"graph indptr has {n + 1} entries, which does not match num_nodes={num_nodes} "
                                 f"(expected num_nodes + 1)")
        nnz = indices.numel()
        if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
            raise ValueError(f"graph indptr must start at 0 and end at nnz={nnz} (len(indices)), "
                             f"got indptr[0]={int(indptr[0])}, indptr[-1]={int(indptr[-1])}")
        if n > 0 and bool((indptr.diff() < 0).any()):
            raise ValueError("graph indptr must be non-decreasing")
        if nnz and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise ValueError(f"graph indices must lie in [0, {n}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        if weights is None:
            weights = torch.ones(nnz, dtype=torch.float32, device=indices.device)
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"graph weights must be a torch.Tensor, got {type(weights).__name__}")
        if not weights.is_floating_point():
            raise TypeError(f"graph weights must be floating point, got {str(weights.dtype).replace('torch.', '')}")
        if weights.dim() != 1 or weights.numel() != nnz:
            raise ValueError(f"graph weights must have shape ({nnz},) like indices, got {tuple(weights.shape)}")
        if weights.device != indices.device:
            raise ValueError(f"graph weights is on {weights.device} but indices is on {indices.device}")
        weights = weights.to(torch.float32).contiguous()
        if nnz:
            if not bool(torch.isfinite(weights).all()):
                raise ValueError("graph weights contain NaN or Inf")
            if bool((weights < 0).any()):
                raise ValueError(f"graph weights must be >= 0, got min {float(weights.min())}")
        return indptr, indices, weights, n

    # ---- constructors -----------------------------------------------------------------
    @classmethod
    def from_edges(cls, src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None,
                   num_nodes: int | None = None, *, symmetrize: str | None = None,
                   reduce: str = "sum") -> "Graph":
        """Graph from an edge list ``src[e] -> dst[e]`` with weight ``weights[e]`` (default 1).

        Duplicate edges merge by ``reduce`` (``"sum"``, ``"max"``, ``"mean"``); ``symmetrize``
        (``"max"``/``"mean"``/None) as in :func:`pyaeplus.graph.weights.symmetrize`. Columns end
        up sorted within each row. ``num_nodes`` defaults to ``max(src, dst) + 1``.
        """
        for name, t in (("src", src), ("dst", dst)):
            if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.dim() != 1:
                raise TypeError(f"{name} must be a 1-d int64 tensor")
        if src.shape != dst.shape:
            raise ValueError(f"src and dst must have the same shape, got {tuple(src.shape)} and {tuple(dst.shape)}")
        src, dst = src.long(), dst.long()
        if num_nodes is None:
            num_nodes = int(torch.maximum(src.max(), dst.max())) + 1 if src.numel() else 0
        if src.numel() and (int(torch.minimum(src.min(), dst.min())) < 0
                            or int(torch.maximum(src.max(), dst.max())) >= num_nodes):
            raise ValueError(f"src and dst must lie in [0, num_nodes={num_nodes})")
        if weights is None:
            weights = torch.ones(src.numel(), dtype=torch.float32, device=src.device)
        if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
            raise TypeError(f"weights must be a floating tensor, got {getattr(weights, 'dtype', type(weights).__name__)}")
        if weights.dim() != 1 or weights.numel() != src.numel():
            raise ValueError(f"weights must have one value per edge: shape ({src.numel()},) like src, got "
                             f"{tuple(weights.shape)}")
        g0 = cls(*_w.coalesce(src, dst, weights.to(torch.float32), num_nodes, reduce), num_nodes)
        if symmetrize is None:
            return g0
        return cls(*_w.symmetrize(g0.indptr, g0.indices, g0.weights, num_nodes, symmetrize), num_nodes,
                   validate=False)

    @classmethod
    def from_knn(cls, knn, weighting: str = "heat", sigma: float | None = None,
                 symmetrize: str | None = "max") -> "Graph":
        """Graph from a k-NN result (anything with ``.indices`` (N, k) and ``.distances`` (N, k)).

        Args:
            knn: e.g. :class:`pyaeplus.graph.KnnGraph`. Negative indices (padding) are dropped.
            weighting: ``"heat"`` (``exp(-d^2/sigma^2)``) or ``"binary"`` (1 per edge).
            sigma: heat-kernel bandwidth; None = median k-th neighbour distance.
            symmetrize: ``"max"`` (default), ``"mean"`` or None (keep the directed k-NN graph).

        Returns:
            Graph with N = ``knn.indices.shape[0]`` nodes.
        """
        idx, dist = knn.indices, knn.distances
        if not isinstance(idx, torch.Tensor):
            idx = torch.as_tensor(idx)
        if not isinstance(dist, torch.Tensor):
            dist = torch.as_tensor(dist)
        if idx.dim() != 2 or dist.shape != idx.shape:
            raise ValueError(f"knn.indices and knn.distances must both be (N, k), got {tuple(idx.shape)} "
                             f"and {tuple(dist.shape)}")
        if weighting not in ("heat", "binary"):
            raise ValueError(f"weighting must be 'heat' or 'binary', got {weighting!r}")
        if symmetrize not in (None, "max", "mean"):
            raise ValueError(f"symmetrize must be 'max', 'mean' or None, got {symmetrize!r}")
        n, k = idx.shape
        valid = idx >= 0
        dist = torch.where(valid, dist.float(), torch.full_like(dist.float(), float("inf")))
        w = _w.heat_kernel(dist, sigma) if weighting == "heat" else _w.binary_weights(dist)
        rows = torch.arange(n, device=idx.device).repeat_interleave(k)
        keep = valid.reshape(-1)
        return cls.from_edges(rows[keep], idx.reshape(-1)[keep].long(), w.reshape(-1)[keep], n,
                              symmetrize=symmetrize, reduce="max")

    @classmethod
    def from_dense(cls, w: torch.Tensor) -> "Graph":
        """Graph of the nonzero entries of a dense (N, N) weight matrix."""
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.shape[0] != w.shape[1]:
            raise ValueError("w must be a square 2-d tensor")
        r, c = torch.nonzero(w, as_tuple=True)
        return cls.from_edges(r, c, w[r, c].float(), w.shape[0])

    # ---- basic properties -------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __repr__(self) -> str:
        return f"Graph(num_nodes={self.num_nodes}, nnz={self.nnz}, device={self.device})"

    def to(self, device) -> "Graph":
        """A copy on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return Graph(self.indptr.to(device), self.indices.to(device), self.weights.to(device), self.num_nodes,
                     validate=False)

    def rows(self) -> torch.Tensor:
        """(nnz,) source node of every stored edge."""
        if "rows" not in self._cache:
            self._cache["rows"] = _rows_of(self.indptr, self.num_nodes)
        return self._cache["rows"]

    def degree(self) -> torch.Tensor:
        """(N,) float32 weighted out-degree ``d_i = sum_j W_ij`` (row sums)."""
        if "degree" not in self._cache:
            d = torch.zeros(self.num_nodes, dtype=torch.float64, device=self.device)
            d.index_add_(0, self.rows(), self.weights.double())
            self._cache["degree"] = d.float()
        return self._cache["degree"]

    def to_dense(self) -> torch.Tensor:
        """(N, N) float32 dense W (duplicates summed)."""
        w = torch.zeros(self.num_nodes, self.num_nodes, dtype=torch.float32, device=self.device)
        w.index_put_((self.rows(), self.indices), self.weights, accumulate=True)
        return w

    def to_sparse_csr(self) -> torch.Tensor:
        """W as a ``torch.sparse_csr_tensor`` (float32)."""
        return torch.sparse_csr_tensor(self.indptr, self.indices, self.weights, (self.num_nodes, self.num_nodes),
                                       check_invariants=False)

    def transpose(self) -> "Graph":
        """Wᵀ (the in-edges of each node as its row), columns sorted within rows."""
        return Graph(*_w.coalesce(self.indices, self.rows(), self.weights, self.num_nodes, "sum"), self.num_nodes,
                     validate=False)

    def is_symmetric(self, atol: float = 0.0) -> bool:
        """Whether W equals Wᵀ (same edges, weights within ``atol``)."""
        a = Graph(*_w.coalesce(self.rows(), self.indices, self.weights, self.num_nodes, "sum"), self.num_nodes,
                  validate=False)
        b = self.transpose()
        if a.nnz != b.nnz or not torch.equal(a.indptr, b.indptr) or not torch.equal(a.indices, b.indices):
            return False
        return bool(((a.weights - b.weights).abs() <= atol).all())

    def laplacian(self, normalization: str | None = None) -> torch.Tensor:
        """The graph Laplacian as a sparse CSR tensor (float32), for use outside the fused loss.

        ``None``: ``L = D - W``; ``"sym"``: ``I - D^-1/2 W D^-1/2``; ``"rw"``: ``I - D^-1 W``
        (D = out-degree; rows of zero degree have an all-zero row, no identity entry).
        """
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        n, dev = self.num_nodes, self.device
        d = self.degree()
        rows, cols, w = self.rows(), self.indices, self.weights
        if normalization is None:
            diag = d
        else:
            inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
            if normalization == "sym":
                s = inv.sqrt()
                w = w * s[rows] * s[cols]
            else:
                w = w * inv[rows]
            diag = (d > 0).float()
        ar = torch.arange(n, device=dev)
        ip, ix, lw = _w.coalesce(torch.cat([rows, ar]), torch.cat([cols, ar]), torch.cat([-w, diag]), n, "sum")
        return torch.sparse_csr_tensor(ip, ix, lw, (n, n), check_invariants=False)

    # ---- batches ----------------------------------------------------------------------
    def subgraph(self, batch_indices) -> "Graph":
        """The induced subgraph on ``batch_indices``, renumbered to batch positions.

        Args:
            batch_indices: (B,) distinct node ids (tensor or sequence of ints), e.g. one batch of
                :class:`pyaeplus.graph.NeighborBatchSampler`.

        Returns:
            Graph with B nodes where node b is ``batch_indices[b]``, holding every edge of W whose
            two endpoints are in the batch (weights unchanged). Vectorized: no Python loop over
            nodes.
        """
        b = torch.as_tensor(batch_indices, device=self.device)
        if b.dim() != 1 or b.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"batch_indices must be a 1-d integer sequence, got shape {tuple(b.shape)} "
                             f"dtype {b.dtype}")
        b = b.long()
        n = self.num_nodes
        if b.numel() and (int(b.min()) < 0 or int(b.max()) >= n):
            raise ValueError(f"batch_indices must lie in [0, {n})")
        # O(batch edges * log B), no O(N) buffer: look columns up in the sorted batch.
        sb, perm = torch.sort(b)
        if sb.numel() > 1 and bool((sb[1:] == sb[:-1]).any()):
            raise ValueError("batch_indices must not contain duplicates")
        start, cnt = self.indptr[b], self.indptr[b + 1] - self.indptr[b]
        new_row = torch.repeat_interleave(torch.arange(b.numel(), device=self.device), cnt)
        # edge positions of the batch rows, in batch order: start[row] + rank within row
        offs = torch.cumsum(cnt, 0) - cnt
        e = start[new_row] + (torch.arange(new_row.numel(), device=self.device) - offs[new_row])
        c = self.indices[e]
        at = torch.searchsorted(sb, c).clamp_(max=max(sb.numel() - 1, 0))
        keep = sb[at] == c if sb.numel() else torch.zeros_like(c, dtype=torch.bool)
        new_row, col, w = new_row[keep], perm[at[keep]], self.weights[e[keep]]
        indptr = torch.zeros(b.numel() + 1, dtype=torch.int64, device=self.device)
        indptr[1:] = torch.cumsum(torch.bincount(new_row, minlength=b.numel()), 0)
        return Graph(indptr, col, w, b.numel(), validate=False)

    # ---- operands of the fused Laplacian kernels ----------------------------------------
    def prepare(self, normalization: str | None = None) -> "Graph":
        """Build (and cache) what ``pyaeplus.laplacian_loss`` needs for ``normalization``: the CSR
        of ``W + Wᵀ`` and the degree scaling. The first loss call does it anyway; call it before
        ``torch.compile`` tracing (its shapes depend on the data). Returns self."""
        self._grad_csr(normalization)
        return self

    def _grad_csr(self, normalization: str | None = None):
        """Operands of the fused loss+gradient kernels for ``normalization``, cached.

        The loss ``sum_i sum_{j in row i} w_ij ||s_i z_i - s_j z_j||^2`` equals
        ``1/2 sum_ij S_ij ||y_i - y_j||^2`` with ``y = s * z`` and ``S = w + wᵀ`` (symmetric), and
        its gradient is ``dL/dz_i = 2 s_i sum_j S_ij (y_i - y_j)``: one CSR of S gives each row
        both its loss share and its gradient, so a row-parallel pass needs no atomics.

        Returns ``(indptr, indices, weights, scale)``: the CSR of S with self-loops dropped
        (they contribute 0), and ``scale`` (N,) float32 = ``s`` for ``"sym"`` (``1/sqrt(d_i)``, 0
        for zero degree) or None. For ``"rw"``, ``w_ij = W_ij / d_i``.
        """
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        key = ("grad_csr", normalization)
        if key in self._cache:
            return self._cache[key]
        n = self.num_nodes
        rows, cols, w = self.rows(), self.indices, self.weights
        d = self.degree()
        inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
        if normalization == "rw":
            w = w * inv[rows]
        scale = inv.sqrt().contiguous() if normalization == "sym" else None
        off = rows != cols
        if normalization != "rw" and self._symmetric_cached():
            # W = Wᵀ: S = 2W on the same pattern (no transpose to build).
            keep_all = bool(off.all())
            ip = self.indptr if keep_all else torch.cat(
                [self.indptr.new_zeros(1), torch.cumsum(torch.bincount(rows[off], minlength=n), 0)])
            ops = (ip, cols if keep_all else cols[off], (2.0 * w if keep_all else 2.0 * w[off]).contiguous(), scale)
        else:
            r, c, ww = rows[off], cols[off], w[off]
            ip, ix, sw = _w.coalesce(torch.cat([r, c]), torch.cat([c, r]), torch.cat([ww, ww]), n, "sum")
            ops = (ip, ix, sw.contiguous(), scale)
        self._cache[key] = ops
        return ops

    def _symmetric_cached(self) -> bool:
        if "symmetric" not in self._cache:
            self._cache["symmetric"] = self.is_symmetric()
        return self._cache["symmetric"]
