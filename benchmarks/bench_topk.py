"""Benchmark: the top-k sparse activation, pyaeplus.topk_activation, against what people use.

Providers (every row with ReLU on the kept values, the k-sparse autoencoder setting):

* ``torch.topk+scatter`` (anchor): ``torch.topk`` then ``zeros_like(x).scatter_(-1, idx, relu(vals))``
  with autograd, what OpenAI sparse_autoencoder's ``TopK`` module does;
* ``torch dense relu``: a dense ReLU of the same tensor, the floor of any (B, D) -> (B, D) op;
* ``pyaeplus[<backend>]``: each pyaeplus backend that can run here (cpu; triton, cuda on a GPU),
  with ``pyaeplus.config.check_finite`` off (throughput setting), plus one row with it on.

Groups: dense output (forward / backward / full), sparse output (forward; achieved bandwidth
against the device's copy bandwidth, counting x read once and values + int64 indices written),
and BatchTopK (dense forward, anchored on ``torch.topk`` over the flattened batch + scatter).

Targets (issue 2): CPU (2 cores) fp32 B=4096, D=16384, k=32: dense full >= 2x the anchor.
GPU (H100): dense full >= 3x the anchor; sparse forward >= 50 % of copy bandwidth.
"""

from __future__ import annotations

import torch

import harness

import pyaeplus
from pyaeplus import backends, config


def _providers(device: str) -> list[tuple[str, str]]:
    avail = backends.available()
    if device == "cpu":
        return [("pyaeplus[cpu]", "cpu")] if avail["cpu"] else []
    return [(f"pyaeplus[{b}]", b) for b in ("triton", "cuda") if avail[b]]


def _elt(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dense_rows(r: harness.Runner, B: int, D: int, k: int, dtype: torch.dtype) -> None:
    dev = r.device
    cfg = {"B": B, "D": D, "k": k, "dtype": str(dtype).replace("torch.", ""), "output": "dense"}
    x = torch.randn(B, D, device=dev, dtype=dtype, requires_grad=True)
    g = torch.randn(B, D, device=dev, dtype=dtype)

    def torch_topk_scatter(t):
        vals, idx = torch.topk(t, k, dim=-1)
        return torch.zeros_like(t).scatter_(-1, idx, torch.relu(vals))

    def pyaeplus_dense(t):
        return pyaeplus.topk_activation(t, k, relu=True)

    def add3(provider, f, backend=None, anchor=False, checks=False, modes=("forward", "backward", "full")):
        def wrap(fn):
            def run():
                with config.checks(checks):
                    if backend is None:
                        return fn()
                    with backends.use(backend):
                        return fn()
            return run

        def fwd():
            with torch.no_grad():
                return f(x)

        def full():
            x.grad = None
            f(x).backward(g)

        if "forward" in modes:
            r.add(provider, cfg, "forward", wrap(fwd), anchor=anchor)
        if "backward" in modes:
            r.add(provider, cfg, "backward", harness.backward_only(wrap(lambda: f(x)), grad=lambda out: g),
                  anchor=anchor)
        if "full" in modes:
            r.add(provider, cfg, "full", wrap(full), anchor=anchor)

    add3("torch.topk+scatter", torch_topk_scatter, anchor=True)
    add3("torch dense relu", torch.relu)
    for name, backend in _providers(dev):
        add3(name, pyaeplus_dense, backend=backend)
        add3(name + " checks on", pyaeplus_dense, backend=backend, checks=True, modes=("full",))


def sparse_rows(r: harness.Runner, B: int, D: int, k: int, dtype: torch.dtype) -> None:
    dev = r.device
    cfg = {"B": B, "D": D, "k": k, "dtype": str(dtype).replace("torch.", ""), "output": "sparse"}
    x = torch.randn(B, D, device=dev, dtype=dtype)
    nbytes = B * D * _elt(dtype) + B * k * (_elt(dtype) + 8)

    def torch_topk():
        vals, idx = torch.topk(x, k, dim=-1)
        return torch.relu(vals), idx

    r.add("torch.topk", cfg, "forward", torch_topk, anchor=True, bytes_moved=nbytes)
    for name, backend in _providers(dev):
        def fwd(backend=backend):
            with config.checks(False), backends.use(backend):
                return pyaeplus.topk_activation(x, k, relu=True, output="sparse")

        r.add(name, cfg, "forward", fwd, bytes_moved=nbytes)


def batch_rows(r: harness.Runner, B: int, D: int, k: int, dtype: torch.dtype) -> None:
    dev = r.device
    cfg = {"B": B, "D": D, "k": k, "dtype": str(dtype).replace("torch.", ""), "output": "batch dense"}
    x = torch.randn(B, D, device=dev, dtype=dtype)

    def torch_batch():
        flat = x.reshape(-1)
        vals, idx = torch.topk(flat, k * B)
        return torch.zeros_like(flat).scatter_(0, idx, torch.relu(vals)).reshape(B, D)

    r.add("torch.topk(flat)+scatter", cfg, "forward", torch_batch, anchor=True)
    for name, backend in _providers(dev):
        def fwd(backend=backend):
            with config.checks(False), backends.use(backend):
                return pyaeplus.topk_activation(x, k, relu=True, batch=True)

        r.add(name, cfg, "forward", fwd)


def sweep_rows(r: harness.Runner, main_b: int, sizes: list[int], D: int, k: int) -> None:
    """Time against the batch B (dense fp32 output, D and k fixed at the main config): the
    torch.topk+scatter anchor and the main pyaeplus provider, mode "full"; the main-size point
    comes from the main rows."""
    provs = _providers(r.device)[:1]
    for B in harness.sweep_points(main_b, sizes):
        cfg = {"B": B, "D": D, "k": k, "dtype": "float32", "output": "dense", "sweep": "B"}
        x = torch.randn(B, D, device=r.device, requires_grad=True)
        g = torch.randn(B, D, device=r.device)
        reps = 5 if B * D >= (1 << 27) else None

        def anchor():
            x.grad = None
            vals, idx = torch.topk(x, k, dim=-1)
            torch.zeros_like(x).scatter(-1, idx, torch.relu(vals)).backward(g)

        r.add("torch.topk+scatter", cfg, "full", anchor, anchor=True, repeats=reps)
        for name, backend in provs:
            def full(backend=backend):
                x.grad = None
                with config.checks(False), backends.use(backend):
                    pyaeplus.topk_activation(x, k, relu=True).backward(g)

            r.add(name, cfg, "full", full, repeats=reps)
        del x, g


def finite_check_rows(r: harness.Runner) -> None:
    """``--finite-check``: top-k (dense, ReLU) forward + backward with check_finite off / "auto" / True."""
    B, D, k = (64, 1024, 8) if r.quick else (4096, 16384, 32)
    torch.manual_seed(0)
    x = torch.randn(B, D, device=r.device, requires_grad=True)

    def step():
        x.grad = None
        pyaeplus.topk_activation(x, k, relu=True).sum().backward()
    r.add_finite_check({"B": B, "D": D, "k": k, "dtype": "float32"}, step)


def main() -> None:
    r = harness.Runner("topk", description=__doc__.split("\n\n")[0])
    if r.finite_check:
        finite_check_rows(r)
        r.finish()
        return
    cuda = r.device.startswith("cuda")
    if r.quick:
        shapes = [(64, 1024, 8)]
        dtypes = [torch.float32]
    elif cuda:
        shapes = [(4096, 16384, 32), (4096, 16384, 128), (16384, 65536, 64)]
        dtypes = [torch.float32, torch.bfloat16, torch.float16]
    else:
        shapes = [(4096, 16384, 32), (4096, 16384, 128)]
        dtypes = [torch.float32, torch.bfloat16]
    if not _providers(r.device):
        r.skip("pyaeplus", f"no pyaeplus backend can run on {r.device}: {backends.available()}")
    for dtype in dtypes:
        for B, D, k in shapes:
            dense_rows(r, B, D, k, dtype)
            sparse_rows(r, B, D, k, dtype)
    batch_shape = (64, 1024, 8) if r.quick else (1024, 16384, 32)
    batch_rows(r, *batch_shape, torch.float32)
    if r.sweep:
        B, D, k = shapes[0]
        sizes = [16, 64, 256] if r.quick else ([256, 1024, 4096, 8192] if not cuda
                                              else [256, 1024, 4096, 8192, 32768])
        sweep_rows(r, B, sizes, D, k)
    r.finish()


if __name__ == "__main__":
    main()
