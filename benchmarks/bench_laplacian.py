"""Benchmark: the graph-Laplacian regularizer ``sum_ij W_ij ||z_i - z_j||^2`` (pyaeplus.laplacian_loss)
against the two ways people write it in PyTorch.

Providers, on a symmetric k-NN-like graph (each node gets k random neighbours with heat-kernel
weights, then max-symmetrized: random gathers, as for a k-NN graph of shuffled data):

* ``torch naive gather`` (anchor): ``(w * (z[rows] - z[cols]).pow(2).sum(1)).sum()`` with autograd;
* ``torch.sparse.mm``: ``2 * (z * (L @ z)).sum()`` with ``L = D - W`` as a sparse CSR tensor
  (``L`` built once, outside the timing) and autograd; ``(COO)``: the same with a COO ``L``;
* ``pyaeplus[<backend>]``: ``pyaeplus.laplacian_loss`` (fused loss + gradient in one pass; the
  backward only scales the saved gradient), with ``pyaeplus.config.check_finite`` off (one row
  keeps it on to show its cost).

Modes: ``full`` (forward + backward, the training step) and ``forward`` (no grad).
Targets (issue 4): CPU 2 cores, N=65536, d=64, k=10, fp32, full: >= 10x naive and >= 2x
torch.sparse.mm. GPU, N=1M, d=64, k=10: >= 5x naive and >= 50 % of measured copy bandwidth
(bytes: z read, gradient written then read, grad_z written, the CSR read once).
"""

from __future__ import annotations

import torch

import harness

import pyaeplus
from pyaeplus import backends
from pyaeplus.graph import Graph


def make_graph(n: int, k: int, device: str, seed: int = 0, build_on_device: bool = False) -> Graph:
    """The benchmark graph (edges drawn on the CPU, seeded). ``build_on_device``: sort and symmetrize
    on ``device`` (seconds instead of ~20 s on 2 CPU cores at N = 1M): the same edge list, merged and
    sorted by the same (deterministic) torch ops."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.arange(n).repeat_interleave(k)
    dst = torch.randint(0, n - 1, (n * k,), generator=gen)
    dst = dst + (dst >= src).long()  # no self-loops
    dist = torch.rand(n * k, generator=gen) + 0.5
    w = torch.exp(-dist ** 2 / float(dist.median()) ** 2)
    if build_on_device:
        src, dst, w = src.to(device), dst.to(device), w.to(device)
    return Graph.from_edges(src, dst, w, n, symmetrize="max").to(device)


def _providers(device: str) -> list[tuple[str, str]]:
    avail = backends.available()
    if device == "cpu":
        return [("pyaeplus[cpu]", "cpu")] if avail["cpu"] else []
    return [(f"pyaeplus[{b}]", b) for b in ("triton", "cuda") if avail[b]]


def rows_for(r: harness.Runner, n: int, d: int, k: int, dtype: torch.dtype) -> None:
    dev = r.device
    g = make_graph(n, k, dev)
    cfg = {"N": n, "d": d, "k": k, "nnz": g.nnz, "dtype": str(dtype).replace("torch.", "")}
    z = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
    rows, cols, w = g.rows(), g.indices, g.weights.to(dtype)
    lap = g.laplacian(None).to(dtype)
    lap_coo = lap.to_sparse_coo().coalesce()
    g.prepare(None)
    esz = z.element_size()
    csr_bytes = g.nnz * (8 + 4) + (n + 1) * 8

    def naive():
        z.grad = None
        (w * (z[rows] - z[cols]).pow(2).sum(1)).sum().backward()

    def naive_fwd():
        with torch.no_grad():
            (w * (z[rows] - z[cols]).pow(2).sum(1)).sum()

    def sparse():
        z.grad = None
        (2 * (z * torch.sparse.mm(lap, z)).sum()).backward()

    def sparse_fwd():
        with torch.no_grad():
            (2 * (z * torch.sparse.mm(lap, z)).sum())

    def sparse_coo():
        z.grad = None
        (2 * (z * torch.sparse.mm(lap_coo, z)).sum()).backward()

    r.add("torch naive gather", cfg, "full", naive, anchor=True)
    r.add("torch.sparse.mm", cfg, "full", sparse)
    r.add("torch.sparse.mm (COO)", cfg, "full", sparse_coo)
    r.add("torch naive gather", cfg, "forward", naive_fwd, anchor=True)
    r.add("torch.sparse.mm", cfg, "forward", sparse_fwd)

    for label, be in _providers(dev):
        def full(be=be):
            z.grad = None
            with backends.use(be):
                pyaeplus.laplacian_loss(z, g).backward()

        def fwd(be=be):
            with torch.no_grad(), backends.use(be):
                pyaeplus.laplacian_loss(z, g)

        with pyaeplus.config.checks(False):
            r.add(label, cfg, "full", full, bytes_moved=4 * n * d * esz + csr_bytes)
            r.add(label, cfg, "forward", fwd, bytes_moved=n * d * esz + csr_bytes)
        with pyaeplus.config.checks(True):
            r.add(label + " +finite-check", cfg, "full", full)
    # the sanity of what is being timed: every provider computes the same loss
    with torch.no_grad():
        a = float((w.float() * (z[rows] - z[cols]).float().pow(2).sum(1)).sum())
        b = float(pyaeplus.laplacian_loss(z, g))
    if abs(a - b) > 1e-2 * abs(a):
        raise RuntimeError(f"pyaeplus loss {b} differs from the naive loss {a}")


def sweep_rows(r: harness.Runner, main_n: int, sizes: list[int], d: int, k: int, dtype: torch.dtype) -> None:
    """Time against N (d, k, dtype fixed at the main config): the naive anchor and the main pyaeplus
    provider, mode "full"; the main-size point comes from the main rows."""
    provs = _providers(r.device)[:1]
    for n in harness.sweep_points(main_n, sizes):
        g = make_graph(n, k, r.device)
        cfg = {"N": n, "d": d, "k": k, "nnz": g.nnz, "dtype": str(dtype).replace("torch.", ""), "sweep": "N,nnz"}
        z = torch.randn(n, d, device=r.device, dtype=dtype, requires_grad=True)
        rows, cols, w = g.rows(), g.indices, g.weights.to(dtype)
        g.prepare(None)
        reps = 5 if n >= 65536 else None

        def naive():
            z.grad = None
            (w * (z[rows] - z[cols]).pow(2).sum(1)).sum().backward()

        r.add("torch naive gather", cfg, "full", naive, anchor=True, repeats=reps)
        for label, be in provs:
            def full(be=be):
                z.grad = None
                with backends.use(be):
                    pyaeplus.laplacian_loss(z, g).backward()

            with pyaeplus.config.checks(False):
                r.add(label, cfg, "full", full, bytes_moved=4 * n * d * z.element_size() + g.nnz * 12 + (n + 1) * 8,
                      repeats=reps)


def finite_check_rows(r: harness.Runner) -> None:
    """``--finite-check``: laplacian_loss forward + backward with check_finite off / "auto" / True."""
    n, d, k = (4096, 32, 10) if r.quick else (65536, 64, 10)
    g = make_graph(n, k, r.device).prepare(None)
    torch.manual_seed(0)
    z = torch.randn(n, d, device=r.device, requires_grad=True)

    def step():
        z.grad = None
        pyaeplus.laplacian_loss(z, g).backward()
    r.add_finite_check({"N": n, "d": d, "k": k, "dtype": "float32"}, step)


def main() -> None:
    r = harness.Runner("laplacian", description=__doc__.split("\n\n")[0])
    if r.finite_check:
        finite_check_rows(r)
        r.finish()
        return
    if r.device == "cpu":
        shapes = [(4096, 32, 10, torch.float32)] if r.quick else [(65536, 64, 10, torch.float32),
                                                                  (65536, 64, 10, torch.bfloat16)]
    else:
        shapes = [(65536, 64, 10, torch.float32)] if r.quick else [(1 << 20, 64, 10, torch.float32),
                                                                   (1 << 20, 64, 10, torch.bfloat16),
                                                                   (1 << 20, 128, 10, torch.float32)]
    if not _providers(r.device):
        r.skip("pyaeplus", f"no pyaeplus backend can run on {r.device}: {backends.available()}")
    for n, d, k, dt in shapes:
        rows_for(r, n, d, k, dt)
    if r.sweep:
        main_n, d, k, dt = shapes[0]
        if r.quick:
            sizes = [1024, 2048, 4096]
        elif r.device == "cpu":
            sizes = [4096, 16384, 65536]
        else:
            sizes = [4096, 16384, 65536, 262144, 1 << 20]
        sweep_rows(r, main_n, sizes, d, k, dt)
    r.finish()


if __name__ == "__main__":
    main()
