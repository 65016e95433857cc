"""Benchmark: the top-k sparse autoencoder decoder, pyaeplus.sparse_decode, against what people use.

Two groups of rows:

* ``sae``: a k-sparse autoencoder's latent-to-output step, forward + backward ("full"):
  top-k of the pre-activations (B, D) with ReLU, then decode to (B, d_out), loss gradient back
  into the pre-activations, the decoder weight and bias.
    - ``torch dense``: ``torch.topk`` + scatter into a dense (B, D) code + ``codes @ W`` (anchor);
    - ``torch embedding_bag``: ``torch.topk`` + ``F.embedding_bag(per_sample_weights, mode="sum")``
      (EleutherAI sparsify's eager decoder);
    - ``pyaeplus``: ``pyaeplus.topk_activation(..., output="sparse")`` + ``pyaeplus.sparse_decode``.
* ``decode``: the decoder alone on given codes (values, indices), forward / backward / full,
  anchored on ``F.embedding_bag``.

pyaeplus rows run with ``pyaeplus.config.check_finite`` off (throughput setting; the check reads
every input once more); one ``sae`` row keeps it on to show its cost.
Targets (issue 2): CPU fp32 B=4096, D=16384, k=32, d_out=768: ``sae`` full >= 10x torch dense and
>= 1.5x torch embedding_bag; GPU: sparse_decode fwd+bwd >= 5x the dense path at k/D <= 1 %.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import harness

import pyaeplus
from pyaeplus import backends


def _pyaeplus_providers(device: str) -> list[tuple[str, str]]:
    """(provider label, backend name) for the pyaeplus implementations that can run here."""
    avail = backends.available()
    if device == "cpu":
        return [("pyaeplus[cpu]", "cpu")] if avail["cpu"] else []
    return [(f"pyaeplus[{b}]", b) for b in ("triton", "cuda") if avail[b]]


def sae_rows(r: harness.Runner, B: int, D: int, k: int, d_out: int, dtype: torch.dtype) -> None:
    dev = r.device
    cfg = {"step": "topk+decode", "B": B, "D": D, "k": k, "d_out": d_out, "dtype": str(dtype).replace("torch.", "")}
    pre = torch.randn(B, D, device=dev, dtype=dtype, requires_grad=True)
    W = (torch.randn(D, d_out, device=dev, dtype=dtype) / d_out ** 0.5).requires_grad_()
    b = torch.zeros(d_out, device=dev, dtype=dtype, requires_grad=True)
    g = torch.randn(B, d_out, device=dev, dtype=dtype)

    def clear():
        pre.grad = W.grad = b.grad = None

    def dense():
        clear()
        vals, idx = torch.topk(pre, k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        (codes @ W + b).backward(g)

    def embedding_bag():
        clear()
        vals, idx = torch.topk(pre, k, dim=-1)
        out = F.embedding_bag(idx, W, per_sample_weights=torch.relu(vals), mode="sum") + b
        out.backward(g)

    r.add("torch dense (topk+scatter+matmul)", cfg, "full", dense, anchor=True)
    r.add("torch embedding_bag (sparsify)", cfg, "full", embedding_bag)
    for label, backend in _pyaeplus_providers(dev):
        for checks in (False, True):
            def step(backend=backend, checks=checks):
                clear()
                with backends.use(backend), pyaeplus.config.checks(checks):
                    codes = pyaeplus.topk_activation(pre, k, relu=True, output="sparse")
                    pyaeplus.sparse_decode(codes.values, codes.indices, W, b).backward(g)
            r.add(label + ("" if not checks else " (finite checks on)"), cfg, "full", step)


def decode_rows(r: harness.Runner, B: int, D: int, k: int, d_out: int, dtype: torch.dtype) -> None:
    dev = r.device
    cfg = {"step": "decode", "B": B, "D": D, "k": k, "d_out": d_out, "dtype": str(dtype).replace("torch.", "")}
    # distinct indices per row, as top-k produces
    idx = torch.rand(B, D, device=dev).topk(k, dim=-1).indices
    vals = torch.rand(B, k, device=dev, dtype=dtype).requires_grad_()
    W = (torch.randn(D, d_out, device=dev, dtype=dtype) / d_out ** 0.5).requires_grad_()
    b = torch.zeros(d_out, device=dev, dtype=dtype, requires_grad=True)
    g = torch.randn(B, d_out, device=dev, dtype=dtype)
    # minimum traffic of the forward: codes in, the selected weight rows (at most D), out
    rows = min(D, B * k)
    fwd_bytes = B * k * (8 + vals.element_size()) + (rows + B) * d_out * vals.element_size()

    def eb():
        return F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum") + b

    def clear():
        vals.grad = W.grad = b.grad = None

    with torch.no_grad():
        r.add("torch embedding_bag (sparsify)", cfg, "forward", eb, anchor=True, bytes_moved=fwd_bytes)
    r.add("torch embedding_bag (sparsify)", cfg, "backward", harness.backward_only(eb, lambda o: g), anchor=True)
    r.add("torch embedding_bag (sparsify)", cfg, "full", lambda: (clear(), eb().backward(g)), anchor=True)
    for label, backend in _pyaeplus_providers(dev):
        def fwd(backend=backend):
            with backends.use(backend), pyaeplus.config.checks(False):
                return pyaeplus.sparse_decode(vals, idx, W, b)

        def full(backend=backend):
            clear()
            fwd(backend).backward(g)

        with torch.no_grad():
            r.add(label, cfg, "forward", fwd, bytes_moved=fwd_bytes)
        r.add(label, cfg, "backward", harness.backward_only(fwd, lambda o: g))
        r.add(label, cfg, "full", full)


def sweep_rows(r: harness.Runner, main_b: int, sizes: list[int], D: int, k: int, d_out: int) -> None:
    """Time against the batch B for the top-k + decode training step (fp32, D, k, d_out fixed at the
    main config): the dense torch anchor and the main pyaeplus provider, mode "full"; the main-size
    point comes from the main rows."""
    provs = _pyaeplus_providers(r.device)[:1]
    W = (torch.randn(D, d_out, device=r.device) / d_out ** 0.5).requires_grad_()
    b = torch.zeros(d_out, device=r.device, requires_grad=True)
    for B in harness.sweep_points(main_b, sizes):
        cfg = {"step": "topk+decode", "B": B, "D": D, "k": k, "d_out": d_out, "dtype": "float32", "sweep": "B"}
        pre = torch.randn(B, D, device=r.device, requires_grad=True)
        g = torch.randn(B, d_out, device=r.device)
        reps = 5 if B * D >= (1 << 27) else None

        def clear():
            pre.grad = W.grad = b.grad = None

        def dense():
            clear()
            vals, idx = torch.topk(pre, k, dim=-1)
            (torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals)) @ W + b).backward(g)

        r.add("torch dense (topk+scatter+matmul)", cfg, "full", dense, anchor=True, repeats=reps)
        for label, backend in provs:
            def step(backend=backend):
                clear()
                with backends.use(backend), pyaeplus.config.checks(False):
                    codes = pyaeplus.topk_activation(pre, k, relu=True, output="sparse")
                    pyaeplus.sparse_decode(codes.values, codes.indices, W, b).backward(g)

            r.add(label, cfg, "full", step, repeats=reps)
        del pre, g


def finite_check_rows(r: harness.Runner) -> None:
    """``--finite-check``: sparse_decode forward + backward (values and weight) with check_finite
    off / "auto" / True (True also checks the index range)."""
    B, D, k, d_out = (256, 2048, 16, 96) if r.quick else (4096, 16384, 32, 768)
    torch.manual_seed(0)
    v = torch.rand(B, k, device=r.device, requires_grad=True)
    i = torch.randint(0, D, (B, k), device=r.device)
    w = (torch.randn(D, d_out, device=r.device) / D ** 0.5).requires_grad_(True)

    def step():
        v.grad = w.grad = None
        pyaeplus.sparse_decode(v, i, w).sum().backward()
    r.add_finite_check({"B": B, "D": D, "k": k, "d_out": d_out, "dtype": "float32"}, step)


def main() -> None:
    r = harness.Runner("sparse_decode", description=__doc__.split("\n\n")[0])
    if r.finite_check:
        finite_check_rows(r)
        r.finish()
        return
    if r.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
        if r.quick:
            shapes = [(256, 2048, 16, 96, torch.float32)]
        else:
            shapes = [(4096, 16384, 32, 768, torch.float32)]
    else:
        if r.quick:
            shapes = [(1024, 4096, 32, 256, torch.float32)]
        else:
            shapes = [(4096, 16384, 32, 768, dt) for dt in (torch.float32, torch.bfloat16)]
            shapes += [(16384, 131072, 64, 2048, torch.bfloat16)]
    if not _pyaeplus_providers(r.device):
        r.skip("pyaeplus", f"no pyaeplus backend available on {r.device} ({backends.available()})")
    for B, D, k, d_out, dtype in shapes:
        sae_rows(r, B, D, k, d_out, dtype)
        decode_rows(r, B, D, k, d_out, dtype)
    if r.sweep:
        B, D, k, d_out, _ = shapes[0]
        sizes = [64, 128, 256] if r.quick else ([256, 1024, 4096, 8192] if r.device == "cpu"
                                               else [256, 1024, 4096, 8192, 32768])
        sweep_rows(r, B, sizes, D, k, d_out)
    r.finish()


if __name__ == "__main__":
    main()
