"""Headline GPU benchmarks (issue 13): every op on the Triton and the CUDA backend against its anchor.

One process, one results document ``headline-<device>.json`` + ``.md`` (the harness: device, driver,
versions, date, measured copy bandwidth), rewritten after each op so that a run stopped by its time
budget keeps what it measured. Rows (pyaeplus rows with ``config.check_finite`` off):

* ``ssim``: fwd+bwd (mode ``full``, gradient w.r.t. X) of 5x3x1080x1920 and 8x3x256x256, fp32 and bf16:
  ``pytorch_msssim`` (anchor), ``fused_ssim (same)`` (anchor, fp32, when importable), ``pyaeplus[b]``
  (valid padding, pytorch-msssim's numbers) and ``pyaeplus[b] (same)`` (fused-ssim's numbers).
  Bytes: X and Y read twice, dX written once.
* ``topk``: 4096x16384, k=32, fp32/bf16: dense fwd+bwd against ``torch.topk+scatter``; sparse forward
  against ``torch.topk`` (bytes: x read, values + int64 indices written).
* ``sparse_decode``: B=4096, D=16384, k=32, d_out=768, fp32/bf16: the top-k + decode training step
  against ``torch topk+embedding_bag`` and the dense path, and the decoder alone against
  ``F.embedding_bag``.
* ``laplacian``: N=1M, d=64, k=10 (symmetrized: ~20M edges), fp32/bf16, fwd+bwd against
  ``torch.sparse.mm`` (CSR) and the naive gather (bytes as bench_laplacian.py).
* ``knn``: exact 1M x 128, k=10, fp32: ``pyaeplus[triton]`` (IEEE fp32 and TF32) against chunked
  ``torch.cdist`` + ``topk`` (one timed run each).

Then two sections: **routing** (per op and config, pyaeplus[triton] against pyaeplus[cuda]; the
faster one, and the ``AUTO_CUDA`` line for ``pyaeplus/backends.py``) and **goals** (issue 13's targets,
each met or missed by its measured ratio).

    python benchmarks/gpu_headline.py [--ops ssim,topk] [--budget-s 150] [--out DIR] [harness flags]
    python benchmarks/gpu_headline.py --dry-run --device cpu     # CPU rehearsal: tiny shapes, cpu backend
"""

from __future__ import annotations

import argparse
import importlib
import math
import time

import torch
import torch.nn.functional as F

import harness
from bench_knn import torch_cdist_topk
from bench_laplacian import make_graph

import pyaeplus
from pyaeplus import backends, config
from pyaeplus.graph import knn_graph

OPS = ("ssim", "topk", "sparse_decode", "laplacian", "knn")
# Seconds an op needs at least (GPU, measured sizes): under that much budget left it is skipped.
MIN_S = {"ssim": 25, "topk": 10, "sparse_decode": 12, "laplacian": 20, "knn": 45}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _providers(device: str) -> list[tuple[str, str]]:
    avail = backends.available()
    if device == "cpu":
        return [("pyaeplus[cpu]", "cpu")] if avail["cpu"] else [("pyaeplus[torch]", "torch")]
    return [(f"pyaeplus[{b}]", b) for b in ("triton", "cuda") if avail[b]]


def _on(backend: str, fn):
    """``fn`` run under ``backend`` with the finite checks off (the throughput setting)."""
    def run():
        with backends.use(backend), config.checks(False):
            return fn()
    return run


def _full(loss_fn, *leaves):
    """fwd+bwd of a scalar loss, the gradients of ``leaves`` reset each time."""
    def run():
        for t in leaves:
            t.grad = None
        loss_fn().backward()
    return run


def _elt(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _cfg(**kw) -> dict:
    return {k: (str(v).replace("torch.", "") if isinstance(v, torch.dtype) else v) for k, v in kw.items()}


# ---- ops -------------------------------------------------------------------------------------

def bench_ssim(r: harness.Runner, dry: bool) -> None:
    pm = _try(r, "pytorch_msssim")
    fs = _try(r, "fused_ssim") if r.device == "cuda" else None
    shapes = [(2, 3, 67, 91), (2, 1, 32, 32)] if dry else [(5, 3, 1080, 1920), (8, 3, 256, 256)]
    for dt in DTYPES.values():
        for N, C, H, W in shapes:
            cfg = _cfg(op="ssim", N=N, C=C, H=H, W=W, dtype=dt)
            y = torch.rand(N, C, H, W, device=r.device, dtype=dt)
            x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)
            nbytes = 5 * x.numel() * _elt(dt)
            if pm is not None:
                r.add("pytorch_msssim", cfg, "full", _full(lambda: pm.ssim(x, y, data_range=1.0), x), anchor=True)
            if fs is not None and dt == torch.float32:
                r.add("fused_ssim (same)", cfg, "full", _full(lambda: fs.fused_ssim(x, y), x), anchor=True)
            for label, b in _providers(r.device):
                r.add(label, cfg, "full", _on(b, _full(lambda: pyaeplus.ssim(x, y, data_range=1.0), x)),
                      bytes_moved=nbytes)
                r.add(f"{label} (same)", cfg, "full",
                      _on(b, _full(lambda: pyaeplus.ssim(x, y, data_range=1.0, padding="same"), x)), bytes_moved=nbytes)
            del x, y


def bench_topk(r: harness.Runner, dry: bool) -> None:
    B, D, k = (64, 1024, 8) if dry else (4096, 16384, 32)
    for dt in DTYPES.values():
        x = torch.randn(B, D, device=r.device, dtype=dt, requires_grad=True)
        g = torch.randn(B, D, device=r.device, dtype=dt)
        cfg = _cfg(op="topk", B=B, D=D, k=k, dtype=dt, output="dense")

        def anchor():
            vals, idx = torch.topk(x, k, dim=-1)
            return torch.zeros_like(x).scatter(-1, idx, torch.relu(vals))

        r.add("torch.topk+scatter", cfg, "full", _full(lambda: (anchor() * g).sum(), x), anchor=True)
        dense_bytes = 4 * B * D * _elt(dt) + 2 * B * k * 8
        for label, b in _providers(r.device):
            r.add(label, cfg, "full", _on(b, _full(lambda: (pyaeplus.topk_activation(x, k, relu=True) * g).sum(), x)),
                  bytes_moved=dense_bytes)
        cfg = _cfg(op="topk", B=B, D=D, k=k, dtype=dt, output="sparse")
        xs = x.detach()
        sparse_bytes = B * D * _elt(dt) + B * k * (_elt(dt) + 8)
        r.add("torch.topk", cfg, "forward", lambda: torch.topk(xs, k, dim=-1), anchor=True, bytes_moved=sparse_bytes)
        for label, b in _providers(r.device):
            r.add(label, cfg, "forward", _on(b, lambda: pyaeplus.topk_activation(xs, k, relu=True, output="sparse")),
                  bytes_moved=sparse_bytes)
        del x, g, xs


def _sae_rows(r: harness.Runner, B: int, D: int, k: int, n: int, dt) -> None:
    cfg = _cfg(op="sparse_decode", step="topk+decode", B=B, D=D, k=k, d_out=n, dtype=dt)
    pre = torch.randn(B, D, device=r.device, dtype=dt, requires_grad=True)
    W = (torch.randn(D, n, device=r.device, dtype=dt) / n ** 0.5).requires_grad_()
    bias = torch.zeros(n, device=r.device, dtype=dt, requires_grad=True)
    g = torch.randn(B, n, device=r.device, dtype=dt)

    def embedding_bag():
        vals, idx = torch.topk(pre, k, dim=-1)
        return (F.embedding_bag(idx, W, per_sample_weights=torch.relu(vals), mode="sum") + bias) * g

    def dense():
        vals, idx = torch.topk(pre, k, dim=-1)
        return (torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals)) @ W + bias) * g

    def ours():
        codes = pyaeplus.topk_activation(pre, k, relu=True, output="sparse")
        return pyaeplus.sparse_decode(codes.values, codes.indices, W, bias) * g

    r.add("torch topk+embedding_bag", cfg, "full", _full(lambda: embedding_bag().sum(), pre, W, bias), anchor=True)
    r.add("torch dense (topk+scatter+matmul)", cfg, "full", _full(lambda: dense().sum(), pre, W, bias), anchor=True)
    for label, b in _providers(r.device):
        r.add(label, cfg, "full", _on(b, _full(lambda: ours().sum(), pre, W, bias)))


def _decode_rows(r: harness.Runner, B: int, D: int, k: int, n: int, dt) -> None:
    cfg = _cfg(op="sparse_decode", step="decode", B=B, D=D, k=k, d_out=n, dtype=dt)
    idx = torch.rand(B, D, device=r.device).topk(k, dim=-1).indices  # distinct per row, as top-k gives
    vals = torch.rand(B, k, device=r.device, dtype=dt).requires_grad_()
    W = (torch.randn(D, n, device=r.device, dtype=dt) / n ** 0.5).requires_grad_()
    g = torch.randn(B, n, device=r.device, dtype=dt)
    r.add("F.embedding_bag", cfg, "full",
          _full(lambda: (F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum") * g).sum(), vals, W),
          anchor=True)
    for label, b in _providers(r.device):
        r.add(label, cfg, "full", _on(b, _full(lambda: (pyaeplus.sparse_decode(vals, idx, W) * g).sum(), vals, W)))


def bench_sparse_decode(r: harness.Runner, dry: bool) -> None:
    B, D, k, n = (64, 1024, 8, 96) if dry else (4096, 16384, 32, 768)
    for dt in DTYPES.values():
        _sae_rows(r, B, D, k, n, dt)
        _decode_rows(r, B, D, k, n, dt)


def _graph(r: harness.Runner, n: int, k: int):
    if r.device == "cuda":
        try:
            return make_graph(n, k, r.device, build_on_device=True)
        except Exception as e:  # noqa: BLE001 - then the slower CPU build
            r.skip("laplacian graph built on the GPU", f"{type(e).__name__}: {e}; built on the CPU")
    return make_graph(n, k, r.device)


def bench_laplacian(r: harness.Runner, dry: bool) -> None:
    n, d, k = (4096, 16, 10) if dry else (1 << 20, 64, 10)
    g = _graph(r, n, k)
    g.prepare(None)
    rows, cols = g.rows(), g.indices
    for dt in DTYPES.values():
        cfg = _cfg(op="laplacian", N=n, d=d, k=k, nnz=g.nnz, dtype=dt)
        z = torch.randn(n, d, device=r.device, dtype=dt, requires_grad=True)
        w, lap = g.weights.to(dt), g.laplacian(None).to(dt)
        r.add("torch.sparse.mm", cfg, "full", _full(lambda: 2 * (z * torch.sparse.mm(lap, z)).sum(), z), anchor=True)
        r.add("torch naive gather", cfg, "full", _full(lambda: (w * (z[rows] - z[cols]).pow(2).sum(1)).sum(), z),
              anchor=True)
        nbytes = 4 * n * d * _elt(dt) + g.nnz * 12 + (n + 1) * 8
        for label, b in _providers(r.device):
            r.add(label, cfg, "full", _on(b, _full(lambda: pyaeplus.laplacian_loss(z, g), z)), bytes_moved=nbytes)
        del z, w, lap


def bench_knn(r: harness.Runner, dry: bool) -> None:
    n, d, k = (2048, 32, 10) if dry else (1 << 20, 128, 10)
    r.warmup, r.args.no_memory = 0, True  # one timed run each (seconds per graph); no memory run
    x = torch.randn(n, d, device=r.device)
    cfg = _cfg(op="knn", N=n, D=d, k=k, dtype="float32")
    if r.device == "cuda":
        small = x[:4096]
        for tf32 in (False, True):  # compile outside the timing
            knn_graph(small, k, backend="triton", tf32=tf32, progress=False)
        for label, tf32 in (("pyaeplus[triton]", False), ("pyaeplus[triton,tf32]", True)):
            r.add(label, cfg, "forward",
                  _on("auto", lambda tf32=tf32: knn_graph(x, k, backend="triton", tf32=tf32, progress=False)), repeats=1)
    else:
        r.add("pyaeplus[torch]", cfg, "forward",
              _on("auto", lambda: knn_graph(x, k, backend="torch", progress=False)), repeats=1)
    r.add("torch cdist+topk", cfg, "forward", lambda: torch_cdist_topk(x, k), anchor=True, repeats=1)


BENCH = {"ssim": bench_ssim, "topk": bench_topk, "sparse_decode": bench_sparse_decode, "laplacian": bench_laplacian,
         "knn": bench_knn}


def _try(r: harness.Runner, mod: str):
    try:
        return importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - any import failure: the anchor is skipped, with the reason
        r.skip(mod, f"not importable ({type(e).__name__}: {e})")
        return None


# ---- verdicts --------------------------------------------------------------------------------

def _key(row: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in row["config"].items() if k != "op")


def routing(rows: list[dict]) -> dict:
    """Per op: per config where both ran, triton vs cuda medians; the choice = the faster by the
    geometric mean over the op's configs (fwd+bwd rows; the decoder alone for sparse_decode)."""
    out: dict = {}
    for r in rows:
        op = r["config"].get("op")
        if op not in backends.AUTO_CUDA or r["mode"] != "full" or r["config"].get("step") == "topk+decode":
            continue
        if r["provider"] in ("pyaeplus[triton]", "pyaeplus[cuda]"):
            out.setdefault(op, {}).setdefault(_key(r), {})[r["provider"][9:-1] + "_ms"] = r["median_ms"]
    for op, cfgs in out.items():
        both = {c: v for c, v in cfgs.items() if "triton_ms" in v and "cuda_ms" in v}
        for v in both.values():
            v["faster"] = "cuda" if v["cuda_ms"] < v["triton_ms"] else "triton"
            v["cuda_speedup_over_triton"] = round(v["triton_ms"] / v["cuda_ms"], 3)
        if both:
            logs = [math.log(v["triton_ms"] / v["cuda_ms"]) for v in both.values()]
            cfgs["choice"] = "cuda" if sum(logs) > 0 else "triton"
            cfgs["geomean_cuda_speedup"] = round(math.exp(sum(logs) / len(logs)), 3)
    return out


def routing_lines(route: dict) -> list[str]:
    lines = ["| op | config | triton ms | cuda ms | faster |", "|---|---|---:|---:|---|"]
    for op, cfgs in route.items():
        for c, v in cfgs.items():
            if isinstance(v, dict):
                lines.append(f"| {op} | {c} | {v.get('triton_ms', float('nan')):.3f} | "
                             f"{v.get('cuda_ms', float('nan')):.3f} | {v.get('faster', '-')} |")
    table = {op: cfgs.get("choice", backends.auto_cuda_choice(op)) for op, cfgs in route.items()}
    table = {**{k: v for k, v in backends.AUTO_CUDA.items() if k not in table}, **table}
    lines += ["", "Measured choice for `pyaeplus/backends.py` (geometric mean over the configs above):", "",
              f"    AUTO_CUDA: dict[str, str] = {table!r}"]
    return lines


def _best(rows, op, provider_test, mode="full", **match):
    cands = [r for r in rows if r["config"].get("op") == op and r["mode"] == mode and provider_test(r["provider"])
             and all(r["config"].get(k) == v for k, v in match.items())]
    return min(cands, key=lambda r: r["median_ms"]) if cands else None


def _ratio(row, anchor):
    return None if row is None else row.get("speedup", {}).get(anchor)


def goals(rows: list[dict]) -> list[dict]:
    """Issue 13's targets, from the fp32 rows at the headline shapes (best pyaeplus backend)."""
    plain = lambda p: p in ("pyaeplus[triton]", "pyaeplus[cuda]", "pyaeplus[cpu]")  # noqa: E731
    same = lambda p: p.startswith("pyaeplus[") and p.endswith("(same)")  # noqa: E731
    big = dict(dtype="float32", N=5, C=3, H=1080, W=1920)
    s, s_same = _best(rows, "ssim", plain, **big), _best(rows, "ssim", same, **big)
    t = _best(rows, "topk", plain, dtype="float32", output="dense")
    lap = _best(rows, "laplacian", plain, dtype="float32")
    knn = _best(rows, "knn", lambda p: p.startswith("pyaeplus[triton"), mode="forward")
    spec = [("SSIM fwd+bwd 5x3x1080x1920 fp32 >= 10x pytorch-msssim", _ratio(s, "pytorch_msssim"), 10, s),
            ("SSIM fwd+bwd (same padding) >= 1.5x fused-ssim", _ratio(s_same, "fused_ssim (same)"), 1.5, s_same),
            ("SSIM fwd+bwd >= 50 % of copy bandwidth", s and s.get("bw_fraction"), 0.5, s),
            ("top-k 4096x16384 k=32 fwd+bwd >= 3x torch.topk+scatter", _ratio(t, "torch.topk+scatter"), 3, t),
            ("Laplacian N=1M d=64 k=10 fwd+bwd >= 50 % of copy bandwidth", lap and lap.get("bw_fraction"), 0.5, lap)]
    out = [{"goal": g, "measured": v, "target": tgt, "met": None if v is None else v >= tgt,
            "provider": row and row["provider"]} for g, v, tgt, row in spec]
    ks = None if knn is None else knn["median_ms"] / 1e3
    out.append({"goal": "exact k-NN 1M x 128 k=10 <= 10 s", "measured": ks, "target": 10.0,
                "met": None if ks is None else ks <= 10.0, "provider": knn and knn["provider"]})
    return out


def goal_lines(gs: list[dict]) -> list[str]:
    lines = ["| goal | measured | by | verdict |", "|---|---:|---|---|"]
    for g in gs:
        m = "-" if g["measured"] is None else f"{g['measured']:.3g}"
        verdict = "not measured" if g["met"] is None else ("**met**" if g["met"] else "**missed**")
        lines.append(f"| {g['goal']} | {m} | {g['provider'] or '-'} | {verdict} |")
    return lines


def _verdicts(r: harness.Runner) -> None:
    r._ratios()
    r.doc_extra["routing"] = route = routing(r.rows)
    r.doc_extra["goals"] = gs = goals(r.rows)
    r.sections["Routing: Triton against CUDA per op"] = routing_lines(route)
    r.sections["Goals (issue 13)"] = goal_lines(gs)


def _own_args(extra: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_headline.py", add_help=False)
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated: " + ",".join(OPS))
    ap.add_argument("--budget-s", type=float, default=None, help="skip the ops that no longer fit (seconds)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes (the CPU rehearsal); not a measurement")
    args, rest = ap.parse_known_args(extra)
    if rest:
        ap.error(f"unknown arguments {rest}")
    unknown = sorted(set(args.ops.split(",")) - set(OPS))
    if unknown:
        ap.error(f"--ops: unknown {unknown}; ops: {list(OPS)}")
    return args


def main() -> None:
    r = harness.Runner("headline", description=__doc__.split("\n\n")[0])
    args = _own_args(r.extra)
    if args.dry_run:
        r.quick = r.env["quick"] = True
        r.repeats = r.args.repeats or 3
        r.warmup = r.args.warmup if r.args.warmup is not None else 1
        torch.set_num_threads(1)  # tiny shapes on a shared CPU: a thread team only spins (30x slower)
    t0 = time.time()
    bw = r.copy_bandwidth_gbs(16 << 20 if args.dry_run else None)
    print(f"[headline] copy bandwidth {bw:.0f} GB/s (read + write) on {r.device}", flush=True)
    for op in [o for o in OPS if o in args.ops.split(",")]:
        left = None if args.budget_s is None else args.budget_s - (time.time() - t0)
        if left is not None and left < MIN_S[op] * (0.05 if args.dry_run else 1):
            r.skip(op, f"time budget: {left:.0f} s left, the op needs about {MIN_S[op]} s")
            continue
        t1 = time.time()
        try:
            BENCH[op](r, args.dry_run)
        except Exception as e:  # noqa: BLE001 - one op failing must not lose the others
            r.skip(op, f"{type(e).__name__}: {e}")
        print(f"[headline] {op}: {time.time() - t1:.1f} s", flush=True)
        if r.device == "cuda":
            torch.cuda.empty_cache()
        _verdicts(r)
        r.finish()  # rewritten after each op: a run stopped by its budget keeps what it measured
    _verdicts(r)
    r.finish()


if __name__ == "__main__":
    main()
