"""Benchmark: the CPU kernels of issue 16 item 3 against their anchors, in interleaved rounds.

Configs (CPU; the issue's goals):

* ``ssim`` 8x3x256x256 fp32, forward and forward + backward ("full", gradient w.r.t. X):
  ``pytorch_msssim.ssim`` (anchor) and ``pyaeplus.ssim`` (valid padding, finite checks off);
* ``sparse_decode`` forward B=4096, D=16384, k=32, d_out=768 fp32:
  ``F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum") + b`` (anchor) and
  ``pyaeplus.sparse_decode``;
* ``topk`` sparse forward B=4096, D=16384, k=32, bf16 and fp32: ``torch.topk`` + ReLU (anchor)
  and ``pyaeplus.topk_activation(..., output="sparse")``.

The providers of one config are called in alternation (round r calls each once, the order
rotated every round), so that the load of a shared machine hits them alike; each row holds the
median and 20th/80th percentiles of its rounds. ``--base-so PATH`` (a ``pyaeplus/_C*.so`` built
from another commit) adds, in the same rounds, that build's raw kernel calls
(``pyaeplus[cpu] base raw``) beside this build's (``pyaeplus[cpu] raw``): the ratio of a kernel
change itself, without the Python dispatch both share. SSIM rows carry the useful FLOP count of
the separable algorithm and the achieved fraction of the 2-core fp32 FMA peak (``--peak-gflops``,
default 195: 2 cores x 2 FMA pipes x 8 lanes x 2 FLOP x 3.04 GHz, derived in ``benchmarks/NOTES.md``;
scaled to the threads used)
and of the measured fp32 matrix-product rate (``torch.mm`` 2048^3 on the same threads: the FMA ceiling
as a tuned BLAS reaches it under the same load); sparse_decode rows the minimum bytes and the
fraction of copy bandwidth. Each config first checks that its providers compute the same result.
The load average before and after is recorded (the machine is shared).

    python benchmarks/bench_cpu_kernels.py [--base-so /tmp/base/_C.cpython-311-x86_64-linux-gnu.so]
        [--repeats 21] [--only ssim,sparse_decode,topk] [--no-memory] [--peak-gflops 195] [--threads N]

(``--only`` here selects configs by name.) ``--threads N`` runs every provider on N threads
(``torch.set_num_threads``, which pyaeplus's OpenMP kernels share) and writes
``cpu_kernels_t<N>-<device>.*``: with N = 1 and a core left to spare, the figures of a loaded
machine come close to a quiet one's, as neither side then waits on a descheduled thread.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import harness

import pyaeplus
from pyaeplus import _ext, backends, config

DTYPE_CODES = _ext.DTYPE_CODES


def load_so(path: str, tag: str):
    """A second pyaeplus._C from `path` under its own package name (CPython caches single-phase
    extension modules by full name, so two builds of `_C` can live in one process)."""
    spec = importlib.util.spec_from_file_location(f"pyaeplus_{tag}._C", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def interleaved(r: harness.Runner, cfg: dict, mode: str, providers: dict[str, tuple[Callable[[], Any], bool]],
                extra: dict[str, dict] | None = None) -> None:
    """Rounds of one call per provider (order rotated per round), then one row per provider."""
    names = list(providers)
    for _ in range(r.warmup):
        for p in names:
            providers[p][0]()
    times: dict[str, list[float]] = {p: [] for p in names}
    for rnd in range(r.repeats):
        for p in names[rnd % len(names):] + names[:rnd % len(names)]:
            t0 = time.perf_counter()
            providers[p][0]()
            times[p].append((time.perf_counter() - t0) * 1e3)
    for p in names:
        ts = sorted(times[p])
        q = lambda f: ts[min(len(ts) - 1, int(round(f * (len(ts) - 1))))]  # noqa: E731
        mem = None if r.args.no_memory else harness.peak_memory_bytes(providers[p][0], r.device)
        row = {"provider": p, "config": cfg, "mode": mode, "anchor": providers[p][1],
               "median_ms": ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]),
               "p20_ms": q(0.2), "p80_ms": q(0.8), "n": len(ts), "peak_mem_bytes": mem, "bytes_moved": None,
               "note": "interleaved rounds"}
        row.update((extra or {}).get(p, {}))
        if row.get("bytes_moved"):
            row["gbs"] = row["bytes_moved"] / (row["median_ms"] * 1e-3) / 1e9
            row["bw_fraction"] = row["gbs"] / r.copy_bandwidth_gbs()
        if row.get("gflop"):
            row["gflops_per_s"] = row["gflop"] / (row["median_ms"] * 1e-3)
            row["matmul_fraction"] = row["gflops_per_s"] / r.env["matmul_gflops"]
            row["peak_fraction"] = row["gflops_per_s"] / r.env["fma_peak_gflops"]
        r.rows.append(row)
        print(f"[{r.name}] {mode:8s} {p:34s} {harness._cfg(cfg):44s} {row['median_ms']:9.3f} ms", flush=True)


def same(ref: torch.Tensor, got: torch.Tensor, rtol: float, what: str) -> None:
    """Refuse to time providers that do not compute the same thing (top-k: the same values, compared
    sorted, as equal selections may list ties in another order)."""
    if rtol == 0.0:
        ref, got = ref.float().sort(-1).values, got.float().sort(-1).values
    torch.testing.assert_close(got.float(), ref.float(), rtol=rtol, atol=rtol, msg=lambda m: f"{what}: {m}")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = harness._time(lambda: a @ b, "cpu", warmup=2, repeats=repeats)
    return 2 * n ** 3 / (t["median_ms"] * 1e-3) / 1e9


def ssim_flop(N: int, C: int, H: int, W: int, K: int) -> tuple[float, float]:
    """Useful FLOPs (an FMA = 2) of forward and backward (valid padding), four filtered statistics
    (x, y, x^2 + y^2, xy), K-tap separable passes: forward = products + horizontal + vertical
    passes + the per-pixel formula (~22); backward = the forward again + the per-pixel gradient
    (~40) + the transposed horizontal and vertical passes of four maps + dx, dy (~10)."""
    P, Ho, Wo = N * C, H - K + 1, W - K + 1
    fwd = P * (H * W * 4 + H * Wo * 4 * K * 2 + Ho * Wo * 4 * K * 2 + Ho * Wo * 22)
    bwd = fwd + P * (Ho * Wo * 40 + Ho * W * 4 * K * 2 + H * W * 4 * K * 2 + H * W * 10)
    return fwd / 1e9, bwd / 1e9


def ssim_rows(r: harness.Runner, base) -> None:
    import pytorch_msssim as pm

    N, C, S, K = (2, 3, 64, 11) if r.quick else (8, 3, 256, 11)
    cfg = {"op": "ssim", "N": N, "C": C, "H": S, "W": S, "dtype": "float32"}
    torch.manual_seed(0)
    y = torch.rand(N, C, S, S)
    x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)
    gf, gb = ssim_flop(N, C, S, S, K)

    def full(fn):
        def run():
            x.grad = None
            with config.checks(False), backends.use("cpu"):
                fn(x, y).backward()
        return run

    def fwd(fn):
        def run():
            with torch.no_grad(), config.checks(False), backends.use("cpu"):
                return fn(x, y)
        return run

    anchor, ours = (lambda a, b: pm.ssim(a, b, data_range=1.0)), (lambda a, b: pyaeplus.ssim(a, b, data_range=1.0))
    same(fwd(anchor)(), fwd(ours)(), 1e-5, "ssim")
    provs_f = {"pytorch_msssim": (fwd(anchor), True), "pyaeplus[cpu]": (fwd(ours), False)}
    provs = {"pytorch_msssim": (full(anchor), True), "pyaeplus[cpu]": (full(ours), False)}
    extra = {"pyaeplus[cpu]": {"gflop": gf + gb}}
    if base is not None:
        raw = _ssim_raw(x.detach(), y, K)
        provs["pyaeplus[cpu] raw"] = (lambda: raw(_ext.cpu_ext()), False)
        provs["pyaeplus[cpu] base raw"] = (lambda: raw(base), False)
        extra.update({p: {"gflop": gf + gb} for p in ("pyaeplus[cpu] raw", "pyaeplus[cpu] base raw")})
    interleaved(r, cfg, "forward", provs_f, {"pyaeplus[cpu]": {"gflop": gf}})
    interleaved(r, cfg, "full", provs, extra)


def _ssim_raw(x: torch.Tensor, y: torch.Tensor, K: int):
    """The two kernel calls of one forward + backward of the SSIM loss (valid padding)."""
    from pyaeplus.reference.ssim import gaussian_window

    N, C, H, W = x.shape
    w = gaussian_window(K, 1.5).contiguous()
    s = [torch.empty(N, C) for _ in range(3)]
    gs = torch.full((N, C), 1.0 / (N * C * (H - K + 1) * (W - K + 1)))
    gz = torch.zeros(N, C)
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    code = DTYPE_CODES[x.dtype]

    def run(m):
        m.ssim_forward(x.data_ptr(), *x.stride(), y.data_ptr(), *y.stride(), N, C, H, W, w.data_ptr(), K, 1e-4,
                       9e-4, 0, 0, s[0].data_ptr(), s[1].data_ptr(), s[2].data_ptr(), code)
        m.ssim_backward(gs.data_ptr(), gz.data_ptr(), gz.data_ptr(), 0, x.data_ptr(), *x.stride(), y.data_ptr(),
                        *y.stride(), dx.data_ptr(), *dx.stride(), dy.data_ptr(), *dy.stride(), N, C, H, W,
                        w.data_ptr(), K, 1e-4, 9e-4, 0, code)
    return run


def sparse_decode_rows(r: harness.Runner, base) -> None:
    B, D, k, N = (256, 2048, 16, 96) if r.quick else (4096, 16384, 32, 768)
    cfg = {"op": "sparse_decode", "B": B, "D": D, "k": k, "d_out": N, "dtype": "float32"}
    torch.manual_seed(0)
    idx = torch.rand(B, D).topk(k, dim=-1).indices  # distinct indices per row, as top-k gives
    vals = torch.rand(B, k)
    W = torch.randn(D, N) / N ** 0.5
    b = torch.zeros(N)
    out = torch.empty(B, N)
    nbytes = B * k * (8 + 4) + (min(D, B * k) + B) * N * 4  # codes in, touched weight rows, out

    def ours():
        with torch.no_grad(), backends.use("cpu"), config.checks(False):
            return pyaeplus.sparse_decode(vals, idx, W, b)

    def raw(m):
        m.sparse_decode_forward(vals.data_ptr(), idx.data_ptr(), W.data_ptr(), b.data_ptr(), out.data_ptr(), B, k,
                                D, N, DTYPE_CODES[torch.float32], DTYPE_CODES[torch.int64])

    provs = {"torch embedding_bag": (lambda: F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum") + b, True),
             "pyaeplus[cpu]": (ours, False)}
    with torch.no_grad():
        same(provs["torch embedding_bag"][0](), ours(), 1e-4, "sparse_decode")
    if base is not None:
        provs["pyaeplus[cpu] raw"] = (lambda: raw(_ext.cpu_ext()), False)
        provs["pyaeplus[cpu] base raw"] = (lambda: raw(base), False)
    with torch.no_grad():
        interleaved(r, cfg, "forward", provs, {p: {"bytes_moved": nbytes} for p in provs})


def topk_rows(r: harness.Runner, base) -> None:
    B, D, k = (64, 1024, 8) if r.quick else (4096, 16384, 32)
    for dtype in (torch.bfloat16, torch.float32):
        cfg = {"op": "topk", "B": B, "D": D, "k": k, "dtype": str(dtype).replace("torch.", ""), "output": "sparse"}
        torch.manual_seed(0)
        x = torch.randn(B, D, dtype=dtype)
        vals, ind = torch.empty(B, k, dtype=dtype), torch.empty(B, k, dtype=torch.int64)

        def anchor():
            v, i = torch.topk(x, k, dim=-1)
            return torch.relu(v), i

        def ours():
            with config.checks(False), backends.use("cpu"):
                return pyaeplus.topk_activation(x, k, relu=True, output="sparse")

        def raw(m):
            m.topk_forward(x.data_ptr(), B, D, D, k, True, DTYPE_CODES[dtype], vals.data_ptr(), ind.data_ptr(), 0)

        provs = {"torch.topk": (anchor, True), "pyaeplus[cpu]": (ours, False)}
        same(anchor()[0], ours()[0], 0.0, f"topk {cfg['dtype']}")
        if base is not None:
            provs["pyaeplus[cpu] raw"] = (lambda: raw(_ext.cpu_ext()), False)
            provs["pyaeplus[cpu] base raw"] = (lambda: raw(base), False)
        interleaved(r, cfg, "forward", provs)


def main() -> None:
    r = harness.Runner("cpu_kernels", description=__doc__.split("\n\n")[0])
    base_so, peak = None, 195.0
    for i, a in enumerate(r.extra):
        val = (lambda: a.split("=", 1)[1] if "=" in a else r.extra[i + 1])  # noqa: E731
        if a.startswith("--base-so"):
            base_so = val()
        elif a.startswith("--peak-gflops"):
            peak = float(val())
        elif a.startswith("--threads"):
            torch.set_num_threads(int(val()))
            r.name = f"cpu_kernels_t{int(val())}"
    r.env["torch_threads"] = torch.get_num_threads()
    if r.device != "cpu" or not backends.available()["cpu"]:
        raise SystemExit("bench_cpu_kernels: needs the CPU device and pyaeplus._C")
    base = load_so(base_so, "base") if base_so else None
    r.env["base_so"] = base_so
    r.env["loadavg_start"] = os.getloadavg()
    ncpu = os.cpu_count() or 1
    r.env["fma_peak_gflops"] = peak = peak * min(torch.get_num_threads(), ncpu) / ncpu
    r.env["matmul_gflops"] = round(matmul_gflops(512 if r.quick else 2048), 1)
    r.copy_bandwidth_gbs()
    only = r.args.only.split(",") if r.args.only else ["ssim", "sparse_decode", "topk"]
    r.args.only = None  # provider filtering is off here: --only picks configs
    for name, fn in (("ssim", ssim_rows), ("sparse_decode", sparse_decode_rows), ("topk", topk_rows)):
        if name in only:
            fn(r, base)
    r.env["loadavg_end"] = os.getloadavg()
    jpath = r.finish()
    load = " / ".join(f"{r.env[k][0]:.2f} {r.env[k][1]:.2f} {r.env[k][2]:.2f}" for k in ("loadavg_start", "loadavg_end"))
    lines = ["## Machine load", "", f"`/proc/loadavg` (1, 5, 15 min) at start / end: {load}.", ""]
    rate = [x for x in r.rows if x.get("gflop")]
    if rate:  # the FLOP rates, which the harness's tables do not show
        lines += ["## FLOP rate (useful FLOPs of the separable algorithm, `ssim_flop`)", "",
                  f"fp32 FMA peak of {r.env['torch_threads']} thread(s) (NOTES.md): {peak:g} GFLOP/s; fp32 matrix-product rate measured here "
                  f"(torch.mm): {r.env['matmul_gflops']} GFLOP/s.", "",
                  "| mode | provider | GFLOP | median ms | GFLOP/s | of FMA peak | of matmul rate |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {x['mode']} | {x['provider']} | {x['gflop']:.3f} | {x['median_ms']:.3f} | "
                  f"{x['gflops_per_s']:.1f} | {100 * x['peak_fraction']:.0f} % | {100 * x['matmul_fraction']:.0f} % |"
                  for x in rate]
    md = jpath.with_suffix(".md")
    md.write_text(md.read_text() + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
