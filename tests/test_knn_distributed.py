"""knn_graph(distributed=True) with 2 CPU processes (gloo) equals the single-process graph."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyaeplus.graph import knn_graph

pytest.importorskip("faiss")

CASES = [("l2", "faiss", (0, 70)), ("chi2", "torch", (0, 130)), ("cosine", "torch", (0, 3)), ("w1", "faiss", (0, 100))]


def _data(metric: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 11, generator=g)
    if metric in ("chi2", "w1"):
        x = x.abs() + 0.01
    x[150] = x[3]
    x[151] = x[3]
    x[40:55] = x[40]  # a tie group wider than the candidate margin, split across the shards
    return x


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        for metric, backend, cut in CASES:
            x = _data(metric)
            bounds = [0, cut[1], x.shape[0]]
            shard = x[bounds[rank]:bounds[rank + 1]]
            g = knn_graph(shard.numpy() if backend == "faiss" else shard, 6, metric=metric, backend=backend,
                          distributed=True, chunk_size=47, progress=False)
            np.savez(os.path.join(out_dir, f"{metric}-{rank}.npz"), i=g.indices.numpy(), d=g.distances.numpy())
    finally:
        dist.destroy_process_group()


def test_distributed_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.start_processes(_worker, args=(2, store, tmp), nprocs=2, join=True, start_method="spawn")
        for metric, backend, _ in CASES:
            ref = knn_graph(_data(metric), 6, metric=metric, backend="faiss", progress=False)
            for rank in range(2):
                z = np.load(os.path.join(tmp, f"{metric}-{rank}.npz"))
                np.testing.assert_array_equal(z["i"], ref.indices.numpy(), err_msg=f"{metric} rank {rank}")
                np.testing.assert_array_equal(z["d"], ref.distances.numpy(), err_msg=f"{metric} rank {rank}")
