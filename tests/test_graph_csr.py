"""CSR Graph, edge weights, Laplacian normalizations, subgraph extraction, NeighborBatchSampler."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pyaeplus.graph import Graph, NeighborBatchSampler, heat_kernel, symmetrize
from pyaeplus.graph.weights import binary_weights, median_kth_distance


def knn_of(x: torch.Tensor, k: int):
    """Exact k-NN (self excluded) as a duck-typed KnnGraph."""
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    dist, idx = d.topk(k, largest=False)
    return SimpleNamespace(indices=idx, distances=dist)


def test_heat_kernel_and_sigma():
    dist = torch.tensor([[0.5, 1.0, 2.0], [0.1, 0.3, 4.0], [1.0, 1.5, 3.0]])
    assert median_kth_distance(dist) == 3.0
    w = heat_kernel(dist)
    torch.testing.assert_close(w, torch.exp(-(dist ** 2) / 9.0))
    torch.testing.assert_close(heat_kernel(dist, sigma=2.0), torch.exp(-(dist ** 2) / 4.0))
    # padding (inf) entries: weight 0 and ignored by the median
    pad = dist.clone()
    pad[0, 2] = float("inf")
    assert median_kth_distance(pad) == 3.0  # rows' last finite: 1.0, 4.0, 3.0
    assert heat_kernel(pad)[0, 2] == 0
    assert torch.equal(binary_weights(pad), torch.isfinite(pad).float())
    # all-duplicate points: median 0 falls back to a positive sigma
    assert torch.isfinite(heat_kernel(torch.zeros(4, 2))).all()
    with pytest.raises(ValueError, match="sigma"):
        heat_kernel(dist, sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        heat_kernel(dist, sigma=float("nan"))
    with pytest.raises(TypeError, match="distances"):
        heat_kernel(torch.ones(3, 2, dtype=torch.int64))


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_symmetrize_matches_dense(mode):
    n = 23
    g = torch.Generator().manual_seed(3)
    w = (torch.rand(n, n, generator=g) < 0.2).float() * torch.rand(n, n, generator=g)
    gr = Graph.from_dense(w)
    ip, ix, ww = symmetrize(gr.indptr, gr.indices, gr.weights, n, mode)
    s = Graph(ip, ix, ww)
    expect = torch.maximum(w, w.T) if mode == "max" else (w + w.T) / 2
    torch.testing.assert_close(s.to_dense(), expect)
    assert s.is_symmetric()
    # columns sorted in each row
    rows = s.rows()
    key = rows * n + s.indices
    assert bool((key.diff() > 0).all())


@pytest.mark.parametrize("weighting", ["heat", "binary"])
@pytest.mark.parametrize("sym", ["max", "mean", None])
def test_from_knn(weighting, sym):
    x = torch.randn(57, 4, generator=torch.Generator().manual_seed(1))
    knn = knn_of(x, 5)
    g = Graph.from_knn(knn, weighting=weighting, sigma=None, symmetrize=sym)
    assert g.num_nodes == 57 and g.indptr.dtype == torch.int64 and g.weights.dtype == torch.float32
    sigma = float(knn.distances[:, -1].double().median())
    w = torch.zeros(57, 57)
    vals = torch.exp(-knn.distances ** 2 / sigma ** 2) if weighting == "heat" else torch.ones(57, 5)
    w.scatter_(1, knn.indices, vals)
    expect = {"max": torch.maximum(w, w.T), "mean": (w + w.T) / 2, None: w}[sym]
    torch.testing.assert_close(g.to_dense(), expect)
    assert g.is_symmetric() == (sym is not None)


def test_from_knn_drops_padding_and_validates():
    knn = SimpleNamespace(indices=torch.tensor([[1, -1], [0, 2], [1, 0]]),
                          distances=torch.tensor([[1.0, float("inf")], [1.0, 2.0], [2.0, 3.0]]))
    g = Graph.from_knn(knn, weighting="binary", symmetrize=None)
    assert g.nnz == 5 and g.indptr.tolist() == [0, 1, 3, 5]
    with pytest.raises(ValueError, match="weighting"):
        Graph.from_knn(knn, weighting="gauss")
    with pytest.raises(ValueError, match="symmetrize"):
        Graph.from_knn(knn, symmetrize="min")
    with pytest.raises(ValueError, match=r"\(N, k\)"):
        Graph.from_knn(SimpleNamespace(indices=torch.zeros(3, 2, dtype=torch.int64), distances=torch.zeros(3, 3)))


def test_from_edges_coalesces_and_transpose_degree():
    src = torch.tensor([0, 0, 2, 1, 0])
    dst = torch.tensor([1, 1, 0, 2, 2])
    w = torch.tensor([1.0, 2.0, 0.5, 4.0, 1.5])
    g = Graph.from_edges(src, dst, w, 4)
    assert g.indptr.tolist() == [0, 2, 3, 4, 4] and g.indices.tolist() == [1, 2, 2, 0]
    torch.testing.assert_close(g.weights, torch.tensor([3.0, 1.5, 4.0, 0.5]))
    torch.testing.assert_close(g.degree(), torch.tensor([4.5, 4.0, 0.5, 0.0]))
    torch.testing.assert_close(g.transpose().to_dense(), g.to_dense().T)
    assert not g.is_symmetric()
    gm = Graph.from_edges(src, dst, w, 4, reduce="max")
    assert gm.weights[0].item() == 2.0
    with pytest.raises(ValueError, match="num_nodes"):
        Graph.from_edges(src, dst, w, 2)
    with pytest.raises(ValueError, match="same shape"):
        Graph.from_edges(src, dst[:3], w)


@pytest.mark.parametrize("normalization", [None, "sym", "rw"])
def test_laplacian_matrix(normalization):
    x = torch.randn(31, 3, generator=torch.Generator().manual_seed(2))
    g = Graph.from_knn(knn_of(x, 4))
    w = g.to_dense().double()
    d = w.sum(1)
    lap = g.laplacian(normalization).to_dense().double()
    if normalization is None:
        expect = torch.diag(d) - w
    elif normalization == "sym":
        s = d.rsqrt()
        expect = torch.eye(31, dtype=torch.float64) - s[:, None] * w * s[None, :]
    else:
        expect = torch.eye(31, dtype=torch.float64) - w / d[:, None]
    torch.testing.assert_close(lap, expect, atol=1e-6, rtol=1e-6)


def test_subgraph_matches_dense_indexing():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(4))
    g = Graph.from_knn(knn_of(x, 6), symmetrize=None)
    b = torch.randperm(200, generator=torch.Generator().manual_seed(5))[:71]
    sub = g.subgraph(b)
    assert sub.num_nodes == 71
    torch.testing.assert_close(sub.to_dense(), g.to_dense()[b][:, b])
    assert g.subgraph(b.tolist()).nnz == sub.nnz
    assert g.subgraph(torch.zeros(0, dtype=torch.int64)).num_nodes == 0
    with pytest.raises(ValueError, match="duplicates"):
        g.subgraph(torch.tensor([1, 2, 1]))
    with pytest.raises(ValueError, match="batch_indices"):
        g.subgraph(torch.tensor([0, 200]))
    with pytest.raises(ValueError, match="batch_indices"):
        g.subgraph(torch.tensor([0.5, 1.0]))


def test_to_device_meta_and_repr():
    g = Graph.from_edges(torch.tensor([0, 1]), torch.tensor([1, 0]))
    m = g.to("meta")
    assert m.device.type == "meta" and m.num_nodes == 2 and g.to("cpu") is g
    assert "nnz=2" in repr(g)


# ---- NeighborBatchSampler ---------------------------------------------------------------

@pytest.fixture(scope="module")
def big_graph():
    # The 10-NN graph of 30000 points on a circle (node i's neighbours: i-5..i+5 without i),
    # built directly: large enough that a random batch holds almost no edges.
    gen = torch.Generator().manual_seed(7)
    n = 30000
    off = torch.tensor([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5])
    idx = (torch.arange(n)[:, None] + off[None, :]) % n
    dist = off.abs().float()[None, :] * (0.5 + torch.rand(n, 10, generator=gen))
    dist, order = dist.sort(dim=1)
    return Graph.from_knn(SimpleNamespace(indices=idx.gather(1, order), distances=dist), symmetrize="max")


def test_sampler_batches_hold_edges(big_graph):
    g = big_graph
    bs, m = 512, 7
    s = NeighborBatchSampler(g, bs, neighbors=m, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == math.ceil(g.num_nodes / (bs // (m + 1)))
    sizes = torch.tensor([len(b) for b in batches])
    assert bool((sizes == bs).all())
    assert all(len(set(b)) == len(b) for b in batches[:20])
    # every node is an anchor exactly once per epoch: the anchors are the first entries
    a = s.anchors_per_batch
    anchors = torch.cat([torch.tensor(b[:a]) for b in batches[:-1]] + [torch.tensor(batches[-1][: g.num_nodes % a or a])])
    assert torch.equal(torch.sort(anchors).values, torch.arange(g.num_nodes))
    # edges inside a sampled batch vs a uniformly random batch of the same size
    gen = torch.Generator().manual_seed(0)
    sampled = torch.tensor([g.subgraph(b).nnz for b in batches[:40]], dtype=torch.float64).mean()
    rand = torch.tensor([g.subgraph(torch.randperm(g.num_nodes, generator=gen)[:bs]).nnz for _ in range(40)],
                        dtype=torch.float64).mean()
    # random: ~ bs^2 * avg_deg / N ~ 90 stored edges; sampled: >= 2 * anchors * m = 896
    assert sampled > 2 * a * m
    assert sampled > 5 * rand


def test_sampler_neighbours_in_batch_and_weighted():
    # star: node 0 linked to 1..6 with weights 1..6 (only positive weights are sampled)
    src = torch.zeros(7, dtype=torch.int64)
    dst = torch.arange(1, 8)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0])
    g = Graph.from_edges(src, dst, w, 8)
    counts = torch.zeros(8)
    s = NeighborBatchSampler(g, 3, neighbors=2, shuffle=False, seed=1)
    for epoch in range(600):
        s.set_epoch(epoch)
        b = next(iter(s))  # anchor 0 first (no shuffle)
        assert b[0] == 0 and len(b) == 3
        counts[torch.tensor(b[1:])] += 1
    assert counts[7] == 0 and counts[0] == 0
    # weighted without replacement: heavier neighbours are taken more often
    assert counts[6] > counts[4] > counts[1] > 0

    # every anchor's sampled neighbours are in its batch (checked through the sampler's own draw)
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(9))
    g2 = Graph.from_knn(knn_of(x, 5))
    s2 = NeighborBatchSampler(g2, 40, neighbors=3, seed=5)
    gen = torch.Generator().manual_seed(11)
    anchors = torch.randperm(300, generator=gen)[:10]
    state = gen.get_state()
    nb = s2._sample_neighbors(anchors, gen)
    gen.set_state(state)  # _make_batch draws the same neighbours first
    batch = set(s2._make_batch(anchors, gen, torch.zeros(300, dtype=torch.bool)).tolist())
    assert set(nb.tolist()) <= batch and set(anchors.tolist()) <= batch
    deg = g2.indptr.diff()[anchors]
    assert nb.numel() == int(torch.clamp(deg, max=3).sum())
    # each sampled neighbour is a real neighbour of its anchor, grouped by anchor
    off = 0
    for a_, c in zip(anchors.tolist(), torch.clamp(deg, max=3).tolist()):
        nbrs = set(g2.indices[g2.indptr[a_]:g2.indptr[a_ + 1]].tolist())
        got = nb[off:off + c].tolist()
        assert set(got) <= nbrs and len(set(got)) == c
        off += c


def test_sampler_seeding_epochs_and_dataloader():
    x = torch.randn(150, 3, generator=torch.Generator().manual_seed(8))
    g = Graph.from_knn(knn_of(x, 4))
    a = NeighborBatchSampler(g, 32, neighbors=3, seed=1)
    b = NeighborBatchSampler(g, 32, neighbors=3, seed=1)
    e0 = list(a)
    assert e0 == list(b)
    assert list(a) != e0  # the next epoch reshuffles
    a.set_epoch(0)
    assert list(a) == e0
    assert list(NeighborBatchSampler(g, 32, neighbors=3, seed=2)) != e0
    d = NeighborBatchSampler(g, 32, neighbors=3, drop_last=True)
    assert len(d) == 150 // 8 and len(list(d)) == len(d)
    ds = torch.utils.data.TensorDataset(torch.arange(150))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=NeighborBatchSampler(g, 32, neighbors=3, seed=1))
    first = next(iter(loader))[0]
    assert first.tolist() == e0[0]


def test_sampler_bad_args():
    g = Graph.from_edges(torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="graph"):
        NeighborBatchSampler("g", 4)
    with pytest.raises(ValueError, match="batch_size"):
        NeighborBatchSampler(g, 0)
    with pytest.raises(TypeError, match="batch_size"):
        NeighborBatchSampler(g, 2.5)
    with pytest.raises(ValueError, match="neighbors"):
        NeighborBatchSampler(g, 4, neighbors=-1)
    with pytest.raises(TypeError, match="seed"):
        NeighborBatchSampler(g, 4, seed="x")


@pytest.mark.parametrize("symmetric", [True, False])
def test_grad_csr_operands(symmetric):
    g0 = torch.Generator().manual_seed(12)
    w = (torch.rand(17, 17, generator=g0) < 0.3).float() * torch.rand(17, 17, generator=g0)
    w[3, 3] = 0.7  # a self-loop: counts in the degree, contributes nothing to S
    w[5] = 0
    w[:, 5] = 0  # an isolated node
    if symmetric:
        w = torch.maximum(w, w.T)
    g = Graph.from_dense(w)
    d = w.sum(1)
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    off = 1 - torch.eye(17)
    for norm, ww in ((None, w), ("sym", w), ("rw", w * inv[:, None])):
        ip, ix, sw, scale = g._grad_csr(norm)
        s = Graph(ip, ix, sw).to_dense()
        torch.testing.assert_close(s, (ww + ww.T) * off)
        if norm == "sym":
            torch.testing.assert_close(scale, inv.sqrt())
        else:
            assert scale is None
        assert g._grad_csr(norm)[0] is ip  # cached


def test_sampled_batches_train_with_the_regularizer():
    import pyaeplus

    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(13))
    g = Graph.from_knn(knn_of(x, 5))
    enc = torch.nn.Linear(6, 3)
    reg = pyaeplus.nn.LaplacianRegularizer(lam=0.5, normalization="sym")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(400)),
                                         batch_sampler=NeighborBatchSampler(g, 64, neighbors=4, seed=0))
    for xb, idx in loader:
        sub = g.subgraph(idx)
        assert sub.nnz > 0
        loss = reg(enc(xb), sub)
        loss.backward()
        # the same value from the dense statement on the batch
        zb = enc(xb).detach().double()
        wb = g.to_dense()[idx][:, idx].double()
        db = wb.sum(1)
        s = torch.where(db > 0, db.rsqrt(), torch.zeros_like(db))
        yb = zb * s[:, None]
        expect = 0.5 * (wb * (yb[:, None] - yb[None]).pow(2).sum(-1)).sum()
        torch.testing.assert_close(loss.double(), expect, rtol=1e-4, atol=1e-5)
    assert enc.weight.grad is not None and torch.isfinite(enc.weight.grad).all()
