"""Benchmark: exact k-NN graphs (pyaeplus.graph.knn_graph) against the ways people build them,
and HOG features against scikit-image.

Providers (mode ``forward``: one full graph of N rows, self excluded):

* ``faiss-cpu direct`` (CPU anchor): ``IndexFlatL2`` add + ``search(x, k + 1)``, nothing else;
* ``pyaeplus[faiss]``: ``knn_graph(x, k, backend="faiss")`` (adds the exact re-rank and the
  deterministic tie order; ``+finite-check`` rows keep ``pyaeplus.config.check_finite`` on);
* ``pyaeplus[faiss-hnsw]`` / ``pynndescent`` (approximate; recall@k in the note);
* ``pyaeplus[torch]``: the chunked torch brute force behind ``backend="torch"``;
* ``sklearn brute``: ``NearestNeighbors(algorithm="brute")``;
* ``torch cdist+topk`` (GPU anchor): chunked ``torch.cdist`` + ``topk``, what one writes by hand;
* GPU: ``pyaeplus[triton]`` (fp32 ieee and TF32), ``pyaeplus[faiss-gpu]`` and ``faiss-gpu direct``
  when FAISS has GPU support.

HOG: ``pyaeplus hog`` (batched) vs a ``skimage.feature.hog`` loop, on the same images.

Targets (issue 4): CPU, pyaeplus on faiss-cpu within 1.1x of calling faiss directly;
Fashion-MNIST train (60000 x 784) exact k=10 graph and its HOG features: report the time.
GPU: our brute force on 1M x 128 fp32, k=10, exact: <= 10 s and >= 2x chunked cdist + topk.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np
import torch

import harness

import pyaeplus
from pyaeplus.graph import features, knn_graph
from pyaeplus.graph import knn as knn_mod

DATA = pathlib.Path(os.environ.get("PYAEPLUS_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def fashion_mnist_train(n: int | None) -> np.ndarray | None:
    p = DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    if not p.exists():
        return None
    with gzip.open(p) as f:
        raw = f.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)
    return imgs[:n] if n else imgs


def recall(a: np.ndarray, b: np.ndarray) -> float:
    k = b.shape[1]
    return float(np.mean([len(set(x[:k]) & set(y)) / k for x, y in zip(a, b)]))


def torch_cdist_topk(x: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    out = torch.empty(x.shape[0], k, dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], chunk):
        d = torch.cdist(x[s:s + chunk], x)
        d[torch.arange(d.shape[0], device=x.device), torch.arange(s, s + d.shape[0], device=x.device)] = float("inf")
        out[s:s + chunk] = d.topk(k, dim=1, largest=False).indices
    return out


def cpu_rows(r: harness.Runner, name: str, x: np.ndarray, k: int) -> None:
    import faiss

    n, d = x.shape
    cfg = {"data": name, "N": n, "D": d, "k": k, "dtype": "float32"}
    xt = torch.from_numpy(x)
    exact: dict = {}

    def faiss_direct():
        index = faiss.IndexFlatL2(d)
        index.add(x)
        exact["I"] = index.search(x, k + 1)[1]

    r.add("faiss-cpu direct", cfg, "forward", faiss_direct, anchor=True)
    with pyaeplus.config.checks(False):
        r.add("pyaeplus[faiss]", cfg, "forward", lambda: knn_graph(x, k, backend="faiss", progress=False))
    r.add("pyaeplus[faiss] +finite-check", cfg, "forward", lambda: knn_graph(x, k, backend="faiss", progress=False))
    ours = knn_graph(x, k, backend="faiss", progress=False).indices.numpy()
    ref = exact["I"][:, 1:] if "I" in exact else ours
    if recall(ours, ref) < 0.999:
        raise RuntimeError(f"pyaeplus[faiss] disagrees with faiss: recall {recall(ours, ref):.4f}")

    g_h = knn_graph(x, k, backend="faiss", index="hnsw", progress=False)
    r.add("pyaeplus[faiss-hnsw]", cfg, "forward", lambda: knn_graph(x, k, backend="faiss", index="hnsw", progress=False),
          note=f"approximate, recall@{k} {recall(g_h.indices.numpy(), ours):.4f}")
    with pyaeplus.config.checks(False):
        r.add("pyaeplus[torch]", cfg, "forward", lambda: knn_graph(xt, k, backend="torch", progress=False))
    r.add("torch cdist+topk", cfg, "forward", lambda: torch_cdist_topk(xt, k))
    try:
        from sklearn.neighbors import NearestNeighbors

        r.add("sklearn brute", cfg, "forward",
              lambda: NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x))
    except ImportError as e:
        r.skip("sklearn brute", str(e))
    try:
        import pynndescent

        res: dict = {}

        def nnd():
            res["I"] = pynndescent.NNDescent(x, n_neighbors=k + 1, random_state=0).neighbor_graph[0]

        nnd()  # numba compilation outside the timing
        got = np.array([[j for j in row if j != i][:k] for i, row in enumerate(res["I"])])
        r.add("pynndescent", cfg, "forward", nnd, note=f"approximate, recall@{k} {recall(got, ours):.4f}")
    except ImportError as e:
        r.skip("pynndescent", str(e))


def cpu_sweep_rows(r: harness.Runner, main_n: int, sizes: list[int], d: int, k: int) -> None:
    """Time against N (Gaussian, D and k fixed at the main config): faiss-cpu direct (anchor) and
    pyaeplus[faiss], mode "forward"; the main-size point comes from the main rows."""
    import faiss

    rng = np.random.default_rng(1)
    for n in harness.sweep_points(main_n, sizes):
        x = rng.standard_normal((n, d), dtype=np.float32)
        cfg = {"data": "gaussian", "N": n, "D": d, "k": k, "dtype": "float32", "sweep": "N"}

        def faiss_direct(x=x):
            index = faiss.IndexFlatL2(d)
            index.add(x)
            index.search(x, k + 1)

        r.add("faiss-cpu direct", cfg, "forward", faiss_direct, anchor=True)
        with pyaeplus.config.checks(False):
            r.add("pyaeplus[faiss]", cfg, "forward", lambda x=x: knn_graph(x, k, backend="faiss", progress=False))


def gpu_sweep_rows(r: harness.Runner, main_n: int, sizes: list[int], d: int, k: int) -> None:
    """GPU: time against N for the cdist+topk anchor and pyaeplus[triton] (forward)."""
    for n in harness.sweep_points(main_n, sizes):
        cfg = {"data": "gaussian", "N": n, "D": d, "k": k, "dtype": "float32", "sweep": "N"}
        x = torch.randn(n, d, device="cuda")
        r.add("torch cdist+topk", cfg, "forward", lambda x=x: torch_cdist_topk(x, k), anchor=True)
        with pyaeplus.config.checks(False):
            r.add("pyaeplus[triton]", cfg, "forward", lambda x=x: knn_graph(x, k, backend="triton", progress=False))


def gpu_rows(r: harness.Runner, n: int, d: int, k: int) -> None:
    cfg = {"data": "gaussian", "N": n, "D": d, "k": k, "dtype": "float32"}
    x = torch.randn(n, d, device="cuda")
    r.add("torch cdist+topk", cfg, "forward", lambda: torch_cdist_topk(x, k), anchor=True)
    with pyaeplus.config.checks(False):
        r.add("pyaeplus[triton]", cfg, "forward", lambda: knn_graph(x, k, backend="triton", progress=False))
        r.add("pyaeplus[triton,tf32]", cfg, "forward",
              lambda: knn_graph(x, k, backend="triton", tf32=True, progress=False))
        r.add("pyaeplus[torch]", cfg, "forward", lambda: knn_graph(x, k, backend="torch", progress=False))
        if knn_mod.faiss_gpu_available():
            import faiss

            res = faiss.StandardGpuResources()
            xn = x.cpu().numpy()
            r.add("faiss-gpu direct", cfg, "forward", lambda: faiss.knn_gpu(res, xn, xn, k + 1))
            r.add("pyaeplus[faiss-gpu]", cfg, "forward", lambda: knn_graph(x, k, backend="faiss-gpu", progress=False))
        else:
            r.skip("faiss-gpu", "the installed faiss has no GPU support (faiss.get_num_gpus() == 0)")
    a = knn_graph(x, k, backend="triton", progress=False).indices[:4096].numpy()
    b = torch_cdist_topk(x, k)[:4096].cpu().numpy()
    if recall(a, b) < 0.99:
        raise RuntimeError(f"triton graph disagrees with cdist+topk: recall {recall(a, b):.4f}")


def hog_rows(r: harness.Runner, imgs: np.ndarray) -> None:
    cfg = {"data": "fashion-mnist", "N": len(imgs), "image": "28x28", "params": "9/8x8/3x3 L2-Hys"}
    r.add("pyaeplus hog", cfg, "forward", lambda: features.hog(imgs))
    try:
        from skimage.feature import hog as skhog

        r.add("skimage hog loop", cfg, "forward", lambda: [skhog(im) for im in imgs], anchor=True)
    except ImportError as e:
        r.skip("skimage hog loop", str(e))


def main() -> None:
    r = harness.Runner("knn", description=__doc__.split("\n\n")[0])
    # One graph is seconds to minutes: a few repeats are enough.
    r.repeats = r.args.repeats or (1 if r.quick else 3)
    r.warmup = r.args.warmup if r.args.warmup is not None else (0 if r.quick else 1)
    k = 10
    if r.device == "cpu":
        try:
            import faiss  # noqa: F401
        except ImportError:
            r.skip("faiss", "faiss is not installed")
            r.finish()
            return
        imgs = fashion_mnist_train(1000 if r.quick else None)
        if imgs is None:
            r.skip("fashion-mnist", f"not found under {DATA}; using Gaussian data only")
        rng = np.random.default_rng(0)
        n_gauss = 1500 if r.quick else 65536
        cpu_rows(r, "gaussian", rng.standard_normal((n_gauss, 64), dtype=np.float32), k)
        if r.sweep:
            cpu_sweep_rows(r, n_gauss, [500, 1000, 1500] if r.quick else [4096, 16384, 65536], 64, k)
        if imgs is not None:
            raw = features.raw_pixels(imgs, scale=1 / 255).numpy()
            cpu_rows(r, "fashion-mnist raw", raw, k)
            hog_rows(r, imgs[:200] if r.quick else imgs)
            h = features.hog(imgs).numpy()
            cpu_rows(r, "fashion-mnist hog", h, k)
    else:
        for n, d in ([(65536, 128)] if r.quick else [(1 << 20, 128)]):
            gpu_rows(r, n, d, k)
            if r.sweep:
                gpu_sweep_rows(r, n, [16384, 65536] if r.quick else [65536, 262144, 1 << 20], d, k)
    r.finish()


if __name__ == "__main__":
    main()
