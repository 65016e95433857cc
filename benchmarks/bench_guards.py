"""What the memory-safety checks of issue 18 cost, as interleaved A/B timings in one process.

1. Entry checks of the custom ops (``pyaeplus/ops/_guard.py`` and the ops' own ``_check``s):
   ``torch.ops.pyaeplus.<op>`` with the checks as shipped (B) against the same call with the check
   functions replaced by no-ops (A), at a tiny size (per-call overhead) and a training-step size.
2. The CPU Laplacian kernel's index and ``indptr`` checks: this tree's ``_C.laplacian_rows_grad`` (B)
   against the kernel of an older build (A, ``--base-so``: the ``_C*.so`` of df5d778, which has no
   checks), called on the same pointers.

A and B alternate call by call in rounds; each row gives both medians and the ratio B/A. Results go
to ``results/guards-<device>.{json,md}``.

    python benchmarks/bench_guards.py --base-so /path/to/df5d778/pyaeplus/_C.cpython-311-x86_64-linux-gnu.so
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import json
import pathlib
import statistics
import sys
import time
import timeit

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

import pyaeplus  # noqa: E402,F401  (registers the ops)
from pyaeplus import _ext  # noqa: E402
from pyaeplus.ops import _guard, ssim as ops_ssim, topk as ops_topk  # noqa: E402

ops = torch.ops.pyaeplus


@contextlib.contextmanager
def checks_off():
    """The entry checks replaced by no-ops (A side)."""
    saved = [(m, n, getattr(m, n)) for m in (_guard,) for n in ("laplacian", "laplacian_backward", "sparse_decode",
                                                                "sparse_decode_grad", "ssim", "ssim_backward")]
    saved += [(ops_topk, "_check_bwd", ops_topk._check_bwd), (ops_ssim, "_entry", ops_ssim._entry)]
    try:
        for m, n, _ in saved:
            setattr(m, n, lambda *a, **k: None)
        yield
    finally:
        for m, n, f in saved:
            setattr(m, n, f)


def ab(a, b, *, rounds: int, inner: int, a_ctx=contextlib.nullcontext) -> dict:
    """Interleaved timings: each round times ``inner`` calls of a (inside ``a_ctx()``, entered
    outside the timed loop), then of b; the order alternates from round to round."""
    ta, tb = [], []
    sides = ((a, ta, a_ctx), (b, tb, contextlib.nullcontext))
    for fn, _, ctx in sides:  # warm-up
        with ctx():
            for _ in range(3):
                fn()
    for r in range(rounds):
        for fn, out, ctx in sides if r % 2 == 0 else sides[::-1]:
            with ctx():
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                out.append((time.perf_counter() - t0) / inner * 1e6)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"a_us": round(ma, 3), "b_us": round(mb, 3), "ratio": round(mb / ma, 4), "delta_us": round(mb - ma, 3),
            "rounds": rounds, "inner": inner}


def _lap_operands(n: int, k: int, d: int):
    from pyaeplus.graph import Graph

    g = torch.Generator().manual_seed(0)
    src = torch.arange(n).repeat_interleave(k)
    dst = torch.randint(0, n, (n * k,), generator=g)
    graph = Graph.from_edges(src, dst, torch.rand(n * k, generator=g), n, symmetrize="max")
    ip, ix, w, _ = graph._grad_csr(None)
    return torch.randn(n, d, generator=g), ip, ix, w


def op_cases(quick: bool):
    """(name, config, call) of each op at a tiny and a training size."""
    cases = []
    for size, (B, K, D, N) in (("tiny", (4, 3, 16, 8)), ("train", (256, 32, 4096, 784))):
        v, i, w = torch.randn(B, K), torch.randint(0, D, (B, K)), torch.randn(D, N)
        bias, go = torch.randn(N), torch.randn(B, N)
        cfg = {"B": B, "k": K, "D": D, "N": N}
        cases.append(("sparse_decode", size, cfg, lambda v=v, i=i, w=w, b=bias: ops.sparse_decode(v, i, w, b)))
        cases.append(("_sparse_decode_backward", size, cfg,
                      lambda go=go, v=v, i=i, w=w: ops._sparse_decode_backward(go, v, i, w)))
        gv = torch.randn(B, K)
        cases.append(("_topk_sparse_backward", size, {"B": B, "k": K, "D": D},
                      lambda gv=gv, i=i, D=D, m=torch.rand(B, K): ops._topk_sparse_backward(gv, i, m, D)))
    for size, (n, k, d) in (("tiny", (16, 3, 4)), ("train", (512, 10, 32))):
        z, ip, ix, w = _lap_operands(n, k, d)
        cases.append(("laplacian_loss", size, {"N": n, "k": k, "d": d, "nnz": int(ix.numel())},
                      lambda z=z, ip=ip, ix=ix, w=w: ops.laplacian_loss(z, ip, ix, w, None, 1, 1.0, True)))
    for size, shape in (("tiny", (1, 1, 16, 16)), ("train", (32, 1, 28, 28))):
        x, y, win = torch.rand(shape), torch.rand(shape), torch.ones(7) / 7
        cases.append(("ssim_stats", size, {"shape": list(shape), "K": 7},
                      lambda x=x, y=y, win=win: ops.ssim_stats(x, y, win, 1e-4, 9e-4, 1, False)))
    return cases


def guard_calls():
    """Each entry check on valid operands, alone (no op around it): its intrinsic cost."""
    z, ip, ix, w = _lap_operands(16, 3, 4)
    v, i, wt, b = torch.randn(4, 3), torch.randint(0, 16, (4, 3)), torch.randn(16, 8), torch.randn(8)
    go = torch.randn(4, 8)
    x, y, win = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), torch.ones(7) / 7
    g2 = torch.ones(1, 1)
    return [("laplacian", lambda: _guard.laplacian("op", z, ip, ix, w, None, 1)),
            ("sparse_decode", lambda: _guard.sparse_decode("op", v, i, wt, b)),
            ("sparse_decode_grad (values given)", lambda: _guard.sparse_decode_grad("op", go, i, wt, v)),
            ("topk _check_bwd (with mask)", lambda: ops_topk._check_bwd(v, i, 16, v, False)),
            ("ssim _entry (forward)", lambda: ops_ssim._entry(x, y, win, 1)),
            ("ssim _entry (backward)", lambda: ops_ssim._entry(x, y, win, 1, (g2, g2, g2), None))]


def load_base_ext(path: str):
    spec = importlib.util.spec_from_file_location("pyaeplus_base._C", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kernel_cases(base, quick: bool):
    """(config, old call, new call) of the CPU Laplacian kernel, same operands."""
    new = _ext.cpu_ext()
    out = []
    for n, k, d in ((512, 10, 32), (8192 if quick else 60000, 10, 32)):
        z, ip, ix, w = _lap_operands(n, k, d)
        rows = torch.empty(n)
        grad = torch.empty(n, d)
        P = _ext.ptr
        common = (P(z), n, d, z.stride(0), P(ip), P(ix))
        tail = (P(w), 0, 0, 1.0, P(rows), P(grad), _ext.dtype_code(z))
        keep = (z, ip, ix, w, rows, grad)  # the pointers above stay valid while the lambdas live
        out.append(({"N": n, "k": k, "d": d, "nnz": int(ix.numel())},
                    lambda c=common, t=tail, keep=keep: base.laplacian_rows_grad(*c, *t),
                    lambda c=common, t=tail, nnz=int(ix.numel()), keep=keep: new.laplacian_rows_grad(*c, nnz, *t)))
    return out


def render(doc: dict) -> str:
    lines = [f"# {doc['name']}", "", doc["description"], "",
             f"device: {doc['env']['device']}; torch {doc['env']['versions'].get('torch')}; {doc['env']['date']}",
             f"machine load (1-min average) at start/end: {doc['env']['load']}", "",
             "| what | size | config | A (µs) | B (µs) | B − A (µs) | B / A |", "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ratio = "—" if r["ratio"] != r["ratio"] else f"{r['ratio']:.3f}"
        a = "—" if r["size"] == "any" else f"{r['a_us']:.2f}"
        lines.append(f"| {r['what']} | {r['size']} | {json.dumps(r['config'])} | {a} | {r['b_us']:.2f} | "
                     f"{r['delta_us']:+.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-so", help="_C*.so of a build without the checks (df5d778) for the kernel A/B")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=str(harness.RESULTS))
    ap.add_argument("--only", choices=("ops", "kernel"), help="only the op entry checks, or only the kernel A/B")
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 41)
    load0 = open("/proc/loadavg").read().split()[0]
    rows = []
    for name, size, cfg, call in op_cases(args.quick) if args.only != "kernel" else []:
        inner = 200 if size == "tiny" else 5
        r = ab(call, call, rounds=rounds, inner=inner, a_ctx=checks_off)
        rows.append({"what": f"entry checks: torch.ops.pyaeplus.{name} (A: checks no-op, B: checks on)",
                     "size": size, "config": cfg, **r})
        print(rows[-1], flush=True)
    for name, fn in guard_calls() if args.only != "kernel" else []:
        n = 20000
        t = min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6
        rows.append({"what": f"the check alone: {name}", "size": "any", "config": {}, "a_us": 0.0, "b_us": round(t, 3),
                     "delta_us": round(t, 3), "ratio": float("nan"), "rounds": 7, "inner": n})
        print(rows[-1], flush=True)
    if args.base_so and args.only != "ops":
        base = load_base_ext(args.base_so)
        for cfg, old, new in kernel_cases(base, args.quick):
            r = ab(old, new, rounds=rounds, inner=3)
            rows.append({"what": "CPU laplacian_rows_grad kernel (A: df5d778, B: index/indptr checks)",
                         "size": "full" if cfg["N"] > 512 else "minibatch", "config": cfg, **r})
            print(rows[-1], flush=True)
    env = {"device": harness.device_info("cpu"), "versions": harness.versions(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(), "argv": sys.argv[1:],
           "load": [load0, open("/proc/loadavg").read().split()[0]]}
    doc = {"name": "guards", "description": __doc__.split("\n\n")[0].replace("\n", " "), "env": env, "rows": rows}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = harness.device_slug("cpu")
    (out / f"guards-{slug}.json").write_text(json.dumps(doc, indent=2))
    (out / f"guards-{slug}.md").write_text(render(doc))
    print(render(doc))



if __name__ == "__main__":
    main()
