"""Mini-batches that keep graph edges: anchors plus weighted samples of their neighbours.

A uniformly random batch of B nodes from an N-node k-NN graph holds about ``B^2 k / N`` of its
edges (almost none when N >> B), so a Laplacian regularizer on ``graph.subgraph(batch)`` sees
nothing. ``NeighborBatchSampler`` puts each anchor's sampled neighbours in the anchor's batch.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .csr import Graph

__all__ = ["NeighborBatchSampler"]


class NeighborBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of node indices with each anchor's neighbours included.

    Every epoch visits each node once as an anchor (without replacement; shuffled when
    ``shuffle``). A batch takes ``anchors_per_batch = max(1, batch_size // (neighbors + 1))``
    anchors and, for each, ``neighbors`` distinct neighbours sampled with probability
    proportional to W without replacement (all of them when the anchor has fewer positive-weight
    neighbours). The batch is deduplicated (anchors first, then neighbours in order of first
    appearance) and filled up to ``batch_size`` with uniformly drawn other nodes (a batch is
    larger than ``batch_size`` only when ``neighbors + 1 > batch_size``: one anchor and all its
    sampled neighbours are never split). Usable as
    ``DataLoader(dataset, batch_sampler=sampler)``; pair it with ``graph.subgraph(batch)``.

    Args:
        graph: :class:`pyaeplus.graph.Graph` over the dataset's N items (any device; sampling
            runs on the CPU).
        batch_size: nodes per batch (>= 1). The last batch may be smaller (``drop_last=False``).
        neighbors: m, neighbours sampled per anchor (>= 0).
        shuffle: random anchor order per epoch (else 0..N-1).
        seed: base seed; epoch e uses seed ``seed * 1_000_003 + e``: reproducible.
        drop_last: drop the last batch when it has fewer anchors than ``anchors_per_batch``.

    ``set_epoch(e)`` selects the epoch explicitly (as with ``DistributedSampler``); without it,
    each full or partial iteration advances the epoch by one.
    """

    def __init__(self, graph: Graph, batch_size: int, neighbors: int = 5, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a pyaeplus.graph.Graph, got {type(graph).__name__}")
        for name, v, lo in (("batch_size", batch_size, 1), ("neighbors", neighbors, 0)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if graph.num_nodes == 0:
            raise ValueError("graph must have at least one node")
        self.graph = graph
        self._indptr = graph.indptr.cpu()
        self._indices = graph.indices.cpu()
        self._weights = graph.weights.cpu()
        self.num_nodes = graph.num_nodes
        self.batch_size = batch_size
        self.neighbors = neighbors
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.anchors_per_batch = max(1, batch_size // (neighbors + 1))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, a = self.num_nodes, self.anchors_per_batch
        return n // a if self.drop_last else math.ceil(n / a)

    def _sample_neighbors(self, anchors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(<= A*m,) sampled neighbours of ``anchors``, grouped by anchor, vectorized.

        Weighted sampling without replacement by exponential keys: edge e gets ``E_e / w_e`` with
        ``E_e ~ Exp(1)``; the m smallest keys of a row are a sample proportional to w without
        replacement (zero-weight edges get key +inf and are never taken).
        """
        m = self.neighbors
        start = self._indptr[anchors]
        cnt = self._indptr[anchors + 1] - start
        if m == 0 or int(cnt.sum()) == 0:
            return anchors.new_empty(0)
        row = torch.repeat_interleave(torch.arange(anchors.numel()), cnt)
        offs = torch.cumsum(cnt, 0) - cnt
        e = start[row] + (torch.arange(row.numel()) - offs[row])
        w = self._weights[e].double()
        u = torch.rand(e.numel(), generator=gen, dtype=torch.float64)
        key = torch.where(w > 0, -torch.log1p(-u) / w, torch.full_like(w, float("inf")))
        # Sort by key, then stably by row: rows stay grouped, keys ascending inside each row.
        order = torch.argsort(key)
        order = order[torch.argsort(row[order], stable=True)]
        rank = torch.arange(order.numel()) - offs[row[order]]
        take = (rank < m) & torch.isfinite(key[order])
        return self._indices[e[order[take]]]

    def _make_batch(self, anchors: torch.Tensor, gen: torch.Generator, member: torch.Tensor) -> torch.Tensor:
        cand = torch.cat([anchors, self._sample_neighbors(anchors, gen)])
        # Deduplicate keeping the first occurrence (anchors come first).
        uniq, inv = torch.unique(cand, return_inverse=True)
        first = torch.full((uniq.numel(),), cand.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inv, torch.arange(cand.numel()), reduce="amin")
        batch = uniq[torch.argsort(first)]
        need = self.batch_size - batch.numel()
        if need > 0:
            member[batch] = True
            free = self.num_nodes - batch.numel()
            extra = []
            got = 0
            while got < min(need, free):
                c = torch.randint(0, self.num_nodes, (2 * (need - got) + 16,), generator=gen)
                c = c[~member[c]]
                c = torch.unique(c)  # sorted: reshuffle so no low-index bias when truncating
                c = c[torch.randperm(c.numel(), generator=gen)][: need - got]
                member[c] = True
                extra.append(c)
                got += c.numel()
            member[batch] = False
            if extra:
                ex = torch.cat(extra)
                member[ex] = False
                batch = torch.cat([batch, ex])
        return batch

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n, a = self.num_nodes, self.anchors_per_batch
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        member = torch.zeros(n, dtype=torch.bool)
        for i in range(len(self)):
            anchors = order[i * a:(i + 1) * a]
            yield self._make_batch(anchors, gen, member).tolist()
