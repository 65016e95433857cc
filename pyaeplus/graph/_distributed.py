"""``knn_graph(..., distributed=True)``: the database sharded over the ranks of a
``torch.distributed`` process group (torchrun), exact merge of the per-rank candidates.

Every rank holds its shard of the rows (shards concatenate in rank order to the full data).
For each chunk of query rows (each rank's shard in turn, broadcast by its owner), every rank
searches its own shard with the single-process machinery (candidates, exact re-rank of its
own rows, chi2 proof), the per-rank top-k lists (exact distances, global indices) are
all-gathered and merged by (distance, index). The pair distances are computed by the same
direct formula as in one process, so the merged graph equals the single-process graph.
Traffic: every row is broadcast once, plus ``N * k * world`` (distance, index) pairs.
"""

from __future__ import annotations

import torch

from .._validate import integer
from ..runtime import dist as rdist
from ._search import (_SEARCH_SPACE, _Rows, _check_rows, _default_chunk, _progress, candidate_count, candidates,
                      exact_rows, make_searcher, resolve_backend, search_transform, sort_candidates)


def _shard_sizes(rows: _Rows) -> list[int]:
    """Every rank's row count (all-gathered), after checking that the shards agree on width and dtype."""
    meta = torch.tensor([rows.n, rows.d, int(rows.dtype == torch.float64)], dtype=torch.int64)
    metas = [m.tolist() for m in rdist.all_gather_tensor(meta)]
    if len({m[1] for m in metas}) != 1:
        raise ValueError(f"x must have the same number of columns on every rank, got {[m[1] for m in metas]}")
    if len({m[2] for m in metas}) != 1:
        raise TypeError("x must have the same dtype family on every rank (all float64 or none)")
    return [m[0] for m in metas]


def _merge_ranks(cd: torch.Tensor, ci: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's top-k list for the same queries (all-gathered) merged by (distance, index)."""
    if cd.shape[1] < k:  # a shard with fewer than k rows
        pad = k - cd.shape[1]
        cd = torch.cat([cd, torch.full((cd.shape[0], pad), torch.inf)], 1)
        ci = torch.cat([ci, torch.full((ci.shape[0], pad), -1, dtype=torch.int64)], 1)
    return sort_candidates(torch.cat(rdist.all_gather_tensor(cd), 1), torch.cat(rdist.all_gather_tensor(ci), 1), k)


def knn_graph_distributed(x, k, *, metric: str, backend: str, exclude_self: bool, chunk_size: int | None,
                          progress: bool, tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices (N, k) int64, distances (N, k) float32)`` of the graph over all ranks' rows."""
    import torch.distributed as dist

    if not rdist.initialized():
        raise RuntimeError("knn_graph(distributed=True) needs an initialized torch.distributed process group "
                           "(run under torchrun and call torch.distributed.init_process_group first)")
    rank, world = rdist.rank_world()
    cdev = rdist.comm_device()
    rows = _Rows(x)
    sizes = _shard_sizes(rows)
    offsets = [sum(sizes[:r]) for r in range(world)]
    n = sum(sizes)
    k = integer("k", k, lo=1, hi=n - 1 if exclude_self else n)
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    backend = resolve_backend(backend, device, metric, "flat")
    chunk = chunk_size or _default_chunk(backend)
    _check_rows(rows, metric, max(chunk, 1 << 14))

    # This rank's shard is the database (in the search space, in memory).
    off = offsets[rank]
    kc_local = min(candidate_count(k, n, metric, exclude_self, "flat"), rows.n)
    db = search_transform(metric, rows.get(0, rows.n))
    if backend.startswith("faiss"):
        db = db.cpu()
    searcher = make_searcher(backend, db, _SEARCH_SPACE[metric], kc_local, "flat", {}, 1 << 25, tf32)
    del db

    out_d = torch.empty(n, k)
    out_i = torch.empty(n, k, dtype=torch.int64)
    steps = [(src, s) for src in range(world) for s in range(0, sizes[src], chunk)]
    for src, s in _progress(steps, len(steps), progress and rank == 0, f"knn_graph[{backend}, distributed]"):
        e = min(sizes[src], s + chunk)
        buf = rows.get(s, e).to(cdev) if rank == src else torch.empty(e - s, rows.d, dtype=rows.dtype, device=cdev)
        dist.broadcast(buf, src)
        q_raw = buf.to(device)
        qidx = torch.arange(offsets[src] + s, offsets[src] + e)
        cand_d, cand_i = candidates(searcher, search_transform(metric, q_raw), offset=off)
        cd, ci, _ = exact_rows(rows, metric, q_raw, qidx, cand_d, cand_i, k, kc_local, exclude_self=exclude_self,
                               index="flat", offset=off)
        out_d[qidx], out_i[qidx] = _merge_ranks(cd, ci, k)
    return out_i, out_d
