"""Benchmark: the fused top-k encoder, pyaeplus.topk_encode, in a k-sparse autoencoder training step.

One step of an OpenAI-style k-sparse autoencoder (``SparseAE``'s recipe: pre-encoder bias
``x - b_dec``, encoder ``W_enc`` (D, N) + ``b_enc``, top-k with ReLU, decoder ``W_dec`` (D, N) +
``b_dec``, MSE loss), forward + backward + Adam step ("full"). Providers differ in the encoder and
decoder only:

* ``torch Linear+topk+embedding_bag`` (anchor): ``F.linear`` + ``torch.topk`` + ReLU +
  ``F.embedding_bag(per_sample_weights, mode="sum")`` (EleutherAI sparsify's eager path);
* ``pyaeplus[<backend>] dense encoder`` (anchor): ``F.linear`` + ``pyaeplus.topk_activation(output="sparse")``
  + ``pyaeplus.sparse_decode``, the pyaeplus step before ``topk_encode``;
* ``pyaeplus[<backend>]``: ``pyaeplus.topk_encode`` + ``pyaeplus.sparse_decode``.

The providers of a config are timed interleaved (one step each per round, the order rotated), so the
drift of a shared machine hits all of them alike. Optimizer rows: ``adam(fused)`` (torch's fused Adam,
the fastest Adam on CPU) and ``adam`` (torch's default). An ``encoder`` group times the encoder alone
(forward, and forward + backward with the input requiring a gradient, as the pre-encoder bias makes it).
pyaeplus rows run with ``pyaeplus.config.check_finite`` off (throughput setting).

Target (issue 16): CPU fp32 B=2048, N=768, D=16384, k=32: the step with ``topk_encode`` >= 2.5x the
dense-encoder step.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import harness

import pyaeplus
from pyaeplus import backends, config


def _backend(device: str) -> str | None:
    avail = backends.available()
    if device == "cpu":
        return "cpu" if avail["cpu"] else None
    return next((b for b in ("triton", "cuda") if avail[b]), None)


def _encoder(kind: str, k: int):
    """(x_centered, W, b) -> (values, indices) of the top-k, for one provider kind."""
    if kind == "torch":
        def enc(x, w, b):
            v, i = torch.topk(F.linear(x, w, b), k, dim=-1)
            return torch.relu(v), i
    elif kind == "dense":
        def enc(x, w, b):
            return pyaeplus.topk_activation(F.linear(x, w, b), k, relu=True, output="sparse")
    else:
        def enc(x, w, b):
            return pyaeplus.topk_encode(x, w, b, k, relu=True)
    return enc


def sae_step(kind: str, backend: str, B: int, N: int, D: int, k: int, dtype, optimizer: str, dev: str):
    """One training step of the k-sparse AE for a provider kind ("torch", "dense", "fused")."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, generator=g).to(dev, dtype)
    w_dec = torch.nn.functional.normalize(torch.randn(D, N, generator=g), dim=1).to(dev, dtype)
    params = [torch.nn.Parameter(t) for t in (w_dec.clone(), torch.zeros(D, dtype=dtype, device=dev),
                                              w_dec, torch.zeros(N, dtype=dtype, device=dev))]
    w_enc, b_enc, w_dec, b_dec = params
    opt = torch.optim.Adam(params, lr=1e-4, **({"fused": True} if optimizer == "adam(fused)" else {}))
    enc = _encoder(kind, k)

    def decode(v, i):
        if kind == "torch":
            return F.embedding_bag(i, w_dec, per_sample_weights=v, mode="sum") + b_dec
        return pyaeplus.sparse_decode(v, i, w_dec, b_dec)

    def step():
        with config.checks(False), backends.use(backend):
            opt.zero_grad(set_to_none=True)
            out = decode(*enc(x - b_dec, w_enc, b_enc))
            ((out - x).square().mean()).backward()
            opt.step()

    return step


def step_rows(r: harness.Runner, backend: str, B: int, N: int, D: int, k: int, dtype, optimizer: str) -> None:
    cfg = {"step": "sae", "B": B, "N": N, "D": D, "k": k, "dtype": str(dtype).replace("torch.", ""),
           "optimizer": optimizer}
    label = f"pyaeplus[{backend}]"
    kinds = {"torch Linear+topk+embedding_bag": ("torch", True), f"{label} dense encoder": ("dense", True),
             label: ("fused", False)}
    fns = {p: (sae_step(kind, backend, B, N, D, k, dtype, optimizer, r.device), anchor)
           for p, (kind, anchor) in kinds.items()}
    r.add_interleaved(cfg, "full", fns)


def encoder_rows(r: harness.Runner, backend: str, B: int, N: int, D: int, k: int, dtype) -> None:
    cfg = {"step": "encoder", "B": B, "N": N, "D": D, "k": k, "dtype": str(dtype).replace("torch.", "")}
    x = torch.randn(B, N, device=r.device, dtype=dtype, requires_grad=True)
    w = (torch.randn(D, N, device=r.device, dtype=dtype) / N ** 0.5).requires_grad_()
    b = torch.zeros(D, device=r.device, dtype=dtype, requires_grad=True)
    gv = torch.randn(B, k, device=r.device, dtype=dtype)
    label = f"pyaeplus[{backend}]"
    kinds = {"torch Linear+topk": ("torch", True), f"{label} Linear+topk_activation": ("dense", False),
             label: ("fused", False)}

    def fwd(kind):
        enc = _encoder(kind, k)

        def run():
            with torch.no_grad(), config.checks(False), backends.use(backend):
                return enc(x, w, b)
        return run

    def full(kind):
        enc = _encoder(kind, k)

        def run():
            x.grad = w.grad = b.grad = None
            with config.checks(False), backends.use(backend):
                (enc(x, w, b)[0] * gv).sum().backward()
        return run

    r.add_interleaved(cfg, "forward", {p: (fwd(kind), a) for p, (kind, a) in kinds.items()})
    r.add_interleaved(cfg, "full", {p: (full(kind), a) for p, (kind, a) in kinds.items()})


def main() -> None:
    r = harness.Runner("topk_encode", description=__doc__.split("\n\n")[0])
    ap = argparse.ArgumentParser()
    ap.add_argument("--optimizers", default="adam(fused),adam", help="optimizer rows of the step, comma-separated")
    ap.add_argument("--no-encoder", action="store_true", help="skip the encoder-alone rows")
    own = ap.parse_args(r.extra)
    backend = _backend(r.device)
    if backend is None:
        r.skip("pyaeplus", f"no pyaeplus backend can run on {r.device}: {backends.available()}")
        r.finish()
        return
    shape = (128, 96, 2048, 16) if r.quick else (2048, 768, 16384, 32)
    optimizers = own.optimizers.split(",")
    if r.args.repeats is None and not r.quick:
        r.repeats = 9  # a CPU step is seconds long; 9 interleaved rounds per config
    for opt in optimizers:
        step_rows(r, backend, *shape, torch.float32, opt)
    if not own.no_encoder:
        encoder_rows(r, backend, *shape, torch.float32)
    r.finish()


if __name__ == "__main__":
    main()
