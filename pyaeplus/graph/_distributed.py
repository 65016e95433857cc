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

from . import knn as _knn


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def knn_graph_distributed(x, k, *, metric: str, backend: str, exclude_self: bool, chunk_size: int | None,
                          progress: bool, tf32: bool) -> "_knn.KnnGraph":
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("knn_graph(distributed=True) needs an initialized torch.distributed process group "
                           "(run under torchrun and call torch.distributed.init_process_group first)")
    world, rank = dist.get_world_size(), dist.get_rank()
    cdev = _comm_device()
    rows = _knn._Rows(x)
    meta = torch.tensor([rows.n, rows.d, int(rows.dtype == torch.float64)], dtype=torch.int64, device=cdev)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    metas = [m.cpu().tolist() for m in metas]
    if len({m[1] for m in metas}) != 1:
        raise ValueError(f"x must have the same number of columns on every rank, got {[m[1] for m in metas]}")
    if len({m[2] for m in metas}) != 1:
        raise TypeError("x must have the same dtype family on every rank (all float64 or none)")
    sizes = [m[0] for m in metas]
    offsets = [sum(sizes[:r]) for r in range(world)]
    n = sum(sizes)
    k = _knn._integer("k", k, lo=1, hi=n - 1 if exclude_self else n)
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    backend = _knn.resolve_backend(backend, device, metric, "flat")
    chunk = chunk_size or _knn._default_chunk(backend)
    _knn._check_rows(rows, metric, max(chunk, 1 << 14))

    # This rank's shard is the database (in the search space, in memory).
    off = offsets[rank]
    kc = _knn.candidate_count(k, n, metric, exclude_self, "flat")
    kc_local = min(kc, rows.n)
    db = _knn.search_transform(metric, rows.get(0, rows.n))
    if backend.startswith("faiss"):
        db = db.cpu()
    searcher = _knn.make_searcher(backend, db, _knn._SEARCH_SPACE[metric], kc_local, "flat", {}, 1 << 25, tf32)
    del db
    # Masked (invalid) slots arrive as index 0, which may lie outside this shard: clamp.
    take = lambda g: _knn._exact_transform(metric, rows.take((g - off).clamp(0, rows.n - 1)))  # noqa: E731

    out_d = torch.empty(n, k)
    out_i = torch.empty(n, k, dtype=torch.int64)
    steps = [(src, s) for src in range(world) for s in range(0, sizes[src], chunk)]
    for src, s in _knn._progress(steps, len(steps), progress and rank == 0, f"knn_graph[{backend}, distributed]"):
        e = min(sizes[src], s + chunk)
        buf = rows.get(s, e).to(cdev) if rank == src else torch.empty(e - s, rows.d, dtype=rows.dtype, device=cdev)
        dist.broadcast(buf, src)
        q_raw = buf.to(device)
        qidx = torch.arange(offsets[src] + s, offsets[src] + e)
        d, i = searcher(_knn.search_transform(metric, q_raw))
        gi = torch.where(i >= 0, i + off, -1).cpu()
        cd, ci = _knn.rerank(metric, _knn._exact_transform(metric, q_raw), qidx if exclude_self else None,
                             gi.to(q_raw.device), take, k)
        cd, ci = cd.cpu().float(), ci.cpu()
        if cd.shape[1] == k:
            qs = _knn.search_transform(metric, q_raw)
            bad = _knn.boundary_unproven(metric, d.cpu().float(), cd[:, -1], qs.square().sum(1), rows.n)
            if bool(bad.any()):
                rd, ri = _knn.repair_rows(rows, metric, qidx[bad], q_raw[bad.to(q_raw.device)], k, kc_local,
                                          exclude_self, offset=off)
                cd[bad], ci[bad] = rd.float(), ri
        if cd.shape[1] < k:  # a shard with fewer than k rows
            pad = k - cd.shape[1]
            cd = torch.cat([cd, torch.full((cd.shape[0], pad), torch.inf)], 1)
            ci = torch.cat([ci, torch.full((ci.shape[0], pad), -1, dtype=torch.int64)], 1)
        all_d = [torch.empty(cd.shape, device=cdev) for _ in range(world)]
        all_i = [torch.empty(ci.shape, dtype=torch.int64, device=cdev) for _ in range(world)]
        dist.all_gather(all_d, cd.to(cdev))
        dist.all_gather(all_i, ci.to(cdev))
        md, mi = _knn.sort_candidates(torch.cat([t.cpu() for t in all_d], 1), torch.cat([t.cpu() for t in all_i], 1), k)
        out_d[qidx] = md
        out_i[qidx] = mi
    return _knn.KnnGraph(out_i, out_d, metric)
