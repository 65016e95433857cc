"""knn_graph on the CPU backends (faiss-cpu, torch) against a NumPy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyaeplus
from pyaeplus.graph import KnnGraph, KnnIndex, knn_graph, knn_search
from pyaeplus.graph import knn as knn_mod

faiss = pytest.importorskip("faiss")

METRICS = ["l2", "cosine", "ip", "hellinger", "chi2", "w1"]
HIST = ("hellinger", "chi2", "w1")
# (atol, rtol) of returned distances vs the float64 oracle, per input dtype
DIST_TOL = {torch.float32: (2e-5, 2e-5), torch.float64: (1e-7, 2e-7)}  # float64 input: computed in float64, returned as float32


def _oracle_space(x: np.ndarray, metric: str) -> np.ndarray:
    x = x.astype(np.float64)
    if metric in HIST:
        p = x / x.sum(1, keepdims=True)
        return {"hellinger": np.sqrt(p), "chi2": p, "w1": np.cumsum(p, axis=1)}[metric]
    if metric == "cosine":
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _oracle_dist(v: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Direct distances from one row ``q`` to every row of ``v`` (float64)."""
    if metric in ("l2", "hellinger"):
        return np.sqrt(((v - q) ** 2).sum(1))
    if metric == "cosine":
        return np.maximum(1.0 - v @ q, 0.0)
    if metric == "ip":
        return -(v @ q)
    if metric == "chi2":
        den = v + q
        return np.where(den > 0, (v - q) ** 2 / np.where(den > 0, den, 1.0), 0.0).sum(1)
    return np.abs(v - q).sum(1)  # w1


def numpy_knn(x: np.ndarray, k: int, metric: str, exclude_self: bool = True, queries: np.ndarray | None = None):
    """Direct-formula brute force in float64, one query row at a time; ties by ascending index.
    With ``queries``: the k nearest rows of ``x`` for each query row (nothing excluded)."""
    v = _oracle_space(x, metric)
    n = v.shape[0]
    qv = v if queries is None else _oracle_space(queries, metric)
    dist = np.empty((qv.shape[0], k))
    idx = np.empty((qv.shape[0], k), np.int64)
    for i in range(qv.shape[0]):
        d = _oracle_dist(v, qv[i], metric)
        if exclude_self and queries is None:
            d[i] = np.inf
        o = np.lexsort((np.arange(n), d))[:k]
        idx[i], dist[i] = o, d[o]
    return dist, idx


def data_with_duplicates(n: int, d: int, metric: str, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if metric in HIST:
        x = x.abs() + 0.01
    x[n - 1] = x[3]  # duplicates of row 3 at a higher and a lower index
    x[n - 2] = x[3]
    x[1] = x[3]
    return x.to(dtype)


def assert_matches(g: KnnGraph, x: torch.Tensor, k: int, metric: str, exclude_self: bool = True):
    ref_d, ref_i = numpy_knn(x.double().numpy(), k, metric, exclude_self)
    atol, rtol = DIST_TOL[x.dtype if x.dtype in DIST_TOL else torch.float32]
    assert g.indices.dtype == torch.int64 and g.distances.dtype == torch.float32
    assert g.indices.shape == (x.shape[0], k)
    np.testing.assert_allclose(g.distances.double().numpy(), ref_d, atol=atol, rtol=rtol)
    mismatch = g.indices.numpy() != ref_i
    if mismatch.any():
        # Only tolerated where the oracle itself has a float32-level near-tie.
        r, c = np.nonzero(mismatch)
        near = np.abs(ref_d[r, c] - g.distances.numpy()[r, c]) <= atol + rtol * np.abs(ref_d[r, c])
        assert near.all(), f"neighbour lists differ at rows {sorted(set(r.tolist()))[:10]}"
        assert mismatch.mean() < 0.01


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("metric", METRICS)
def test_matches_numpy_brute_force(backend, metric):
    x = data_with_duplicates(157, 23, metric)
    g = knn_graph(x, 7, metric=metric, backend=backend, progress=False)
    assert g.metric == metric and g.k == 7 and g.num_nodes == 157
    assert_matches(g, x, 7, metric)
    # duplicates of row 3 come first, in ascending index order; row 3 itself is excluded
    assert g.indices[3, :3].tolist() == [1, 155, 156]
    assert g.indices[1, :3].tolist() == [3, 155, 156]
    if metric not in ("ip",):
        assert g.distances[3, :3].abs().max() <= 1e-6


@pytest.mark.parametrize("metric", ["l2", "chi2", "w1"])
def test_float64_and_numpy_input(metric):
    x = data_with_duplicates(91, 9, metric, dtype=torch.float64, seed=1)
    g = knn_graph(x, 5, metric=metric, backend="torch", progress=False)
    assert_matches(g, x, 5, metric)
    g2 = knn_graph(x.numpy(), 5, metric=metric, backend="faiss", progress=False)
    assert torch.equal(g.indices, g2.indices)
    torch.testing.assert_close(g.distances, g2.distances, atol=1e-6, rtol=1e-6)


def test_backends_and_chunks_agree_bitwise():
    x = data_with_duplicates(203, 31, "l2", seed=2)
    ref = knn_graph(x, 9, backend="faiss", progress=False)
    for kw in ({"backend": "torch"}, {"backend": "torch", "chunk_size": 17}, {"backend": "faiss", "chunk_size": 50},
               {"backend": "auto"}):
        g = knn_graph(x, 9, progress=False, **kw)
        assert torch.equal(g.indices, ref.indices), kw
        assert torch.equal(g.distances, ref.distances), kw


def test_include_self_and_heavy_ties():
    x = torch.randn(60, 5)
    x[10:30] = x[10]  # 20 copies: more ties than TIE_MARGIN around the k-th neighbour
    g = knn_graph(x, 4, exclude_self=False, backend="torch", progress=False)
    assert g.indices[0, 0] == 0
    assert g.indices[15].tolist() == [10, 11, 12, 13]
    g = knn_graph(x, 4, backend="faiss", progress=False)
    assert g.indices[10].tolist() == [11, 12, 13, 14]
    assert g.indices[12].tolist() == [10, 11, 13, 14]
    assert_matches(knn_graph(x, 3, exclude_self=False, backend="faiss", progress=False), x, 3, "l2", False)


def test_k_equal_n_minus_one_and_n():
    x = torch.randn(12, 3)
    g = knn_graph(x, 11, backend="faiss", progress=False)
    assert_matches(g, x, 11, "l2")
    assert (np.sort(g.indices.numpy(), 1) == np.array([[j for j in range(12) if j != i] for i in range(12)])).all()
    assert_matches(knn_graph(x, 12, exclude_self=False, backend="torch", progress=False), x, 12, "l2", False)


def test_memmap_out_of_core_fp16(tmp_path, monkeypatch):
    x = data_with_duplicates(301, 13, "l2", seed=3).half()
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=tuple(x.shape))
    mm[:] = x.numpy()
    mm.flush()
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    # database blocks of 64 rows: several blocks merged into the running candidates
    monkeypatch.setattr(knn_mod, "MEMMAP_BLOCK_BYTES", 64 * 4 * 13)
    for backend in ("faiss", "torch"):
        g = knn_graph(mm, 6, backend=backend, chunk_size=40, progress=False)
        assert_matches(g, x.float(), 6, "l2")
        ref = knn_graph(x.float(), 6, backend=backend, progress=False)
        assert torch.equal(g.indices, ref.indices) and torch.equal(g.distances, ref.distances)


def clustered(n=3000, d=16, clusters=30, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)) * 4
    lab = rng.integers(0, clusters, n)
    return (centers[lab] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("index, bound", [("ivf", 0.90), ("hnsw", 0.95)])
def test_approximate_recall(index, bound):
    x = clustered()
    k = 10
    exact = knn_graph(x, k, backend="faiss", progress=False).indices.numpy()
    g = knn_graph(x, k, backend="faiss", index=index, progress=False)
    approx = g.indices.numpy()
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(approx, exact)])
    assert recall >= bound, recall
    # still sorted by (distance, index), self excluded, exact distances for what was found
    assert (np.diff(g.distances.numpy(), axis=1) >= 0).all()
    assert not (approx == np.arange(len(x))[:, None]).any()
    xt = torch.from_numpy(x)
    direct = (xt[:, None, :] - xt[g.indices]).square().sum(-1).sqrt()
    torch.testing.assert_close(g.distances, direct, atol=1e-5, rtol=1e-5)


def test_approximate_short_rows_are_repaired():
    x = clustered(n=800, clusters=40, seed=1)
    with pytest.warns(RuntimeWarning, match="fewer than"):
        g = knn_graph(x, 10, backend="faiss", index="ivf", index_params={"nlist": 40, "nprobe": 1}, progress=False)
    assert (g.indices >= 0).all()
    assert torch.isfinite(g.distances).all()


def test_save_load_roundtrip(tmp_path):
    x = torch.randn(50, 4)
    g = knn_graph(x, 3, metric="cosine", progress=False)
    p = tmp_path / "graph.npz"
    g.save(p)
    h = KnnGraph.load(p)
    assert torch.equal(g.indices, h.indices) and torch.equal(g.distances, h.distances)
    assert h.metric == "cosine" and h.k == 3 and h.num_nodes == 50
    np.savez(tmp_path / "bad.npz", indices=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="distances"):
        KnnGraph.load(tmp_path / "bad.npz")


def test_knngraph_validation():
    with pytest.raises(ValueError, match="indices and distances"):
        KnnGraph(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 3))
    with pytest.raises(TypeError, match="int64"):
        KnnGraph(torch.zeros(3, 2, dtype=torch.int32), torch.zeros(3, 2))


def test_progress_bar_runs():
    x = torch.randn(40, 3)
    g = knn_graph(x, 2, progress=True, chunk_size=16)
    assert g.k == 2


def test_feeds_csr_graph():
    Graph = getattr(pyaeplus.graph, "Graph", None)
    if Graph is None or not hasattr(Graph, "from_knn"):
        pytest.skip("pyaeplus.graph.Graph.from_knn not available yet")
    x = torch.randn(64, 5)
    g = knn_graph(x, 4, progress=False)
    csr = Graph.from_knn(g, weighting="heat")
    assert csr.num_nodes == 64


# ---------------------------------------------------------------------------------------------
# bad input: clear errors naming the argument, raised before any search


@pytest.mark.parametrize("k", [0, -1, 20, 21])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        knn_graph(torch.randn(20, 3), k, progress=False)


def test_bad_k_type_and_args():
    x = torch.randn(20, 3)
    with pytest.raises(TypeError, match="k must be an int"):
        knn_graph(x, 2.5, progress=False)
    with pytest.raises(ValueError, match="metric"):
        knn_graph(x, 2, metric="l3", progress=False)
    with pytest.raises(ValueError, match="backend"):
        knn_graph(x, 2, backend="cuda", progress=False)
    with pytest.raises(ValueError, match="index"):
        knn_graph(x, 2, index="pq", progress=False)
    with pytest.raises(ValueError, match="index='ivf'"):
        knn_graph(x, 2, index="ivf", backend="torch", progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_graph(x, 2, chunk_size=0, progress=False)
    with pytest.raises(TypeError, match="index_params"):
        knn_graph(x, 2, index_params=[1], progress=False)
    with pytest.raises(ValueError, match="distributed=True supports index='flat'"):
        knn_graph(x, 2, index="hnsw", distributed=True, progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite(bad):
    x = torch.randn(30, 4)
    x[17, 2] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf.*row 17"):
        knn_graph(x, 3, progress=False)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        knn_graph(x.numpy(), 3, backend="torch", progress=False)


def test_check_finite_switch_skips_scan():
    x = torch.randn(30, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError):
        knn_graph(x, 3, backend="torch", progress=False)
    with pyaeplus.config.checks(False):
        g = knn_graph(x, 3, backend="torch", progress=False)
    assert g.indices.shape == (30, 3)


def test_bad_x():
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        knn_graph(torch.arange(20).reshape(10, 2), 2, progress=False)
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        knn_graph(np.zeros((10, 2), np.int32), 2, progress=False)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        knn_graph([[1.0, 2.0]] * 5, 2, progress=False)
    with pytest.raises(ValueError, match="x must be 2-d"):
        knn_graph(torch.randn(10), 2, progress=False)
    with pytest.raises(ValueError, match="x must not be empty"):
        knn_graph(torch.randn(0, 3), 1, progress=False)
    with pytest.raises(ValueError, match="x must not be empty"):
        knn_graph(torch.randn(5, 0), 1, progress=False)
    with pytest.raises(ValueError, match="x must be on a CPU or CUDA"):
        knn_graph(torch.randn(10, 2, device="meta"), 2, progress=False)


@pytest.mark.parametrize("metric", HIST)
def test_histogram_metrics_reject_bad_rows(metric):
    x = torch.rand(20, 5)
    x[4, 1] = -0.1
    with pytest.raises(ValueError, match="non-negative.*row 4"):
        knn_graph(x, 3, metric=metric, progress=False)
    x = torch.rand(20, 5)
    x[6] = 0
    with pytest.raises(ValueError, match="positive sum.*row 6"):
        knn_graph(x, 3, metric=metric, progress=False)


def test_unavailable_backends(monkeypatch):
    x = torch.randn(20, 3)
    if not knn_mod.faiss_gpu_available():
        with pytest.raises(RuntimeError, match="faiss-gpu"):
            knn_graph(x, 2, backend="faiss-gpu", progress=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if pyaeplus._ext.triton_available():
        with pytest.raises(ValueError, match="x is on cpu.*triton"):
            knn_graph(x, 2, backend="triton", progress=False)


def test_auto_resolution_on_cpu():
    expected = "faiss-gpu" if knn_mod.faiss_gpu_available() else "faiss"
    assert knn_mod.resolve_backend("auto", torch.device("cpu"), "l2", "flat") == expected


def test_auto_follows_the_op_backend():
    # backend="auto" follows pyaeplus.backends: "torch" -> the torch brute force (the reference),
    # "cpu" -> faiss-cpu (the compiled CPU path), a CUDA-only setting refuses CPU tensors as the ops do.
    pytest.importorskip("faiss")
    cpu = torch.device("cpu")
    x = torch.randn(97, 5, generator=torch.Generator().manual_seed(4))
    with pyaeplus.backends.use("torch"):
        assert knn_mod.resolve_backend("auto", cpu, "l2", "flat") == "torch"
        assert knn_mod.resolve_backend("faiss", cpu, "l2", "flat") == "faiss"  # an explicit backend wins
        g = knn_graph(x, 4, progress=False)
    ref = knn_graph(x, 4, backend="torch", progress=False)
    assert torch.equal(g.indices, ref.indices) and torch.equal(g.distances, ref.distances)
    with pyaeplus.backends.use("cpu"):
        assert knn_mod.resolve_backend("auto", cpu, "l2", "flat") == "faiss"
    with pyaeplus.backends.use("triton"), pytest.raises(RuntimeError, match="CUDA tensors only"):
        knn_mod.resolve_backend("auto", cpu, "l2", "flat")
    with pyaeplus.backends.use("torch"):  # approximate indexes are FAISS indexes whatever the setting
        assert knn_mod.resolve_backend("auto", cpu, "l2", "hnsw") == "faiss"


def test_distributed_needs_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(RuntimeError, match="process group"):
        knn_graph(torch.randn(10, 2), 2, distributed=True, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_storage(dtype):
    x = data_with_duplicates(83, 10, "l2", dtype=dtype, seed=4)
    g = knn_graph(x, 5, backend="torch", progress=False)
    ref = knn_graph(x.float(), 5, backend="faiss", progress=False)
    assert torch.equal(g.indices, ref.indices) and torch.equal(g.distances, ref.distances)


def test_memmap_histograms_with_repairs(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.random((240, 12)).astype(np.float32) + 0.01
    x[100:130] = x[100]  # 30 copies: every copy needs the widened (repair) search
    np.save(tmp_path / "h.npy", x)
    mm = np.load(tmp_path / "h.npy", mmap_mode="r")
    monkeypatch.setattr(knn_mod, "MEMMAP_BLOCK_BYTES", 50 * 4 * 12)
    for metric in ("chi2", "w1", "hellinger"):
        g = knn_graph(mm, 5, metric=metric, backend="faiss", chunk_size=50, progress=False)
        assert_matches(g, torch.from_numpy(x), 5, metric)
        assert g.indices[100].tolist() == [101, 102, 103, 104, 105]
        assert g.indices[129].tolist() == [100, 101, 102, 103, 104]


def test_non_contiguous_and_requires_grad_input():
    x = torch.randn(64, 14, requires_grad=True)
    g = knn_graph(x[:, ::2], 4, backend="torch", progress=False)
    assert not g.distances.requires_grad
    ref = knn_graph(x.detach()[:, ::2].contiguous(), 4, backend="faiss", progress=False)
    assert torch.equal(g.indices, ref.indices) and torch.equal(g.distances, ref.distances)


def test_fashion_mnist_pixels_and_hog(data_root):
    import gzip

    p = data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    if not p.exists():
        pytest.skip(f"{p} not found")
    with gzip.open(p) as f:
        imgs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:300]
    from pyaeplus.graph import features

    raw = features.raw_pixels(imgs, scale=1 / 255)
    assert_matches(knn_graph(raw, 10, progress=False), raw, 10, "l2")
    h = features.hog(imgs, pixels_per_cell=(7, 7), cells_per_block=(2, 2), block_norm="L1")
    for metric in ("hellinger", "chi2"):
        assert_matches(knn_graph(h + 1e-6, 10, metric=metric, progress=False), h + 1e-6, 10, metric)


# ---- KnnIndex / knn_search: queries against a fixed database ---------------------------------
@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("metric", METRICS)
def test_search_matches_numpy_brute_force(backend, metric):
    db = data_with_duplicates(211, 13, metric, seed=2)
    q = data_with_duplicates(67, 13, metric, seed=3)
    q[5] = db[3]  # a query equal to row 3, duplicated at rows 1, 209 and 210: ties by index
    d, i = knn_search(q, db, 6, metric=metric, backend=backend, chunk_size=25)
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and d.shape == i.shape == (67, 6)
    ref_d, ref_i = numpy_knn(db.double().numpy(), 6, metric, queries=q.double().numpy())
    atol, rtol = DIST_TOL[torch.float32]
    np.testing.assert_allclose(d.double().numpy(), ref_d, atol=atol, rtol=rtol)
    assert (i.numpy() == ref_i).mean() > 0.99
    assert i[5, :4].tolist() == [1, 3, 209, 210]


def test_index_reused_across_batches_equals_one_shot():
    db, q = torch.randn(300, 8), torch.randn(90, 8)
    idx = KnnIndex(db, backend="torch")
    parts = [idx.search(q[s:s + 32], 4) for s in range(0, 90, 32)]
    d1, i1 = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    d2, i2 = knn_search(q, db, 4, backend="faiss")
    assert torch.equal(i1, i2) and torch.equal(d1, d2)
    assert len(idx) == 300 and "torch" in repr(idx)
    # k up to the database size, float64 database, numpy queries
    d, i = KnnIndex(db.double()).search(q.numpy(), 300)
    assert torch.equal(i.sort(1).values, torch.arange(300).expand(90, 300))


def test_search_approximate_index_recall():
    x = torch.from_numpy(clustered(3300))
    db, q = x[:3000], x[3000:]  # held-out queries from the same clusters
    _, exact = knn_search(q, db, 10, backend="torch")
    for index, bound in (("ivf", 0.9), ("hnsw", 0.95)):
        d, approx = knn_search(q, db, 10, backend="faiss", index=index)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(approx, exact))
        assert hits / exact.numel() >= bound, index
        direct = (q[:, None, :] - db[approx]).square().sum(-1).sqrt()  # exact distances for what was found
        torch.testing.assert_close(d, direct, atol=1e-5, rtol=1e-5)


def test_search_bad_input():
    db = torch.rand(20, 4)
    with pytest.raises(ValueError, match="queries must have 4 columns"):
        knn_search(torch.rand(3, 5), db, 2)
    with pytest.raises(ValueError, match="k must be <= 20"):
        knn_search(torch.rand(3, 4), db, 21)
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_search(torch.rand(3, 4), db, 0)
    with pytest.raises(ValueError, match="database contains NaN"):
        KnnIndex(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="queries contains NaN"):
        knn_search(torch.tensor([[float("inf")] * 4]), db, 1)
    with pytest.raises(ValueError, match="database must not be empty"):
        KnnIndex(torch.rand(0, 4))
    with pytest.raises(ValueError, match="queries must be 2-d"):
        knn_search(torch.rand(4), db, 1)
    with pytest.raises(TypeError, match="database must be a floating-point"):
        KnnIndex(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="queries must be non-negative"):
        knn_search(-torch.rand(2, 4), db, 1, metric="hellinger")
    with pytest.raises(ValueError, match="metric"):
        KnnIndex(db, metric="l3")
    with pytest.raises(ValueError, match="backend"):
        KnnIndex(db, backend="annoy")
