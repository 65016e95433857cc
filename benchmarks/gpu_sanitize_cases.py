"""One small call of every pyaeplus kernel, forward and backward, for ``compute-sanitizer``.

Run under the sanitizer with the CUDA backend (``gpu_check.sh quick`` does)::

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 86 \\
        python benchmarks/gpu_sanitize_cases.py --backend cuda

(no caching allocator: each tensor is its own allocation, so an access past its end is seen).
Shapes are small and odd (tails in every tile loop); each case goes through the public API and
its backward, so every custom op of ``torch.ops.pyaeplus`` runs once. The ops that ran are
recorded (a dispatch mode) and compared with every ``pyaeplus::`` op registered: an op no case
reaches (a new op) is listed as "not exercised" and the exit status is 3, so the case list keeps
up. ``--backend cpu --device cpu`` is the CPU rehearsal (gpu_check.sh --dry-run).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pyaeplus
from pyaeplus import backends
from pyaeplus.graph import Graph


class _Seen(TorchDispatchMode):
    """Records every ``pyaeplus::`` op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith("pyaeplus::"):
            self.ops.add(name.split("::", 1)[1].split(".")[0])
        return func(*args, **(kwargs or {}))


def _grad(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    torch.autograd.grad(out, inputs, torch.randn_like(out))


def case_ssim(dev: str) -> None:
    x = torch.rand(2, 3, 37, 45, device=dev, requires_grad=True)
    y = torch.rand(2, 3, 37, 45, device=dev, requires_grad=True)
    for padding in ("valid", "same", "reflect"):
        _grad(pyaeplus.ssim(x, y, data_range=1.0, size_average=False, padding=padding), x, y)
    _grad(pyaeplus.ssim_map(x, y, data_range=1.0), x, y)
    _grad(pyaeplus.l1_ssim_loss(x, y, reduction="none"), x, y)
    xb, yb = x.detach().bfloat16().requires_grad_(), y.detach().bfloat16()
    _grad(pyaeplus.ssim(xb, yb, data_range=1.0, size_average=False), xb)
    big = torch.rand(1, 1, 171, 165, device=dev, requires_grad=True)
    _grad(pyaeplus.ms_ssim(big, big.detach().flip(-1), data_range=1.0, size_average=False), big)


def case_topk(dev: str) -> None:
    x = torch.randn(5, 1001, device=dev, requires_grad=True)
    for relu in (False, True):
        _grad(pyaeplus.topk_activation(x, 7, relu=relu), x)
        _grad(pyaeplus.topk_activation(x, 7, relu=relu, output="sparse").values, x)
    _grad(pyaeplus.topk_activation(x, 3, relu=True, batch=True), x)
    xh = x.detach().half().requires_grad_()
    _grad(pyaeplus.topk_activation(xh, 1001), xh)  # k == D


def case_sparse_decode(dev: str) -> None:
    values = torch.randn(7, 5, device=dev, requires_grad=True)
    indices = torch.randint(0, 301, (7, 5), device=dev)
    weight = torch.randn(301, 33, device=dev, requires_grad=True)
    bias = torch.randn(33, device=dev, requires_grad=True)
    _grad(pyaeplus.sparse_decode(values, indices, weight, bias), values, weight, bias)
    # one gradient at a time (the other input does not require grad): the separate backward ops
    _grad(pyaeplus.sparse_decode(values, indices.int(), weight.detach()), values)
    _grad(pyaeplus.sparse_decode(values.detach(), indices, weight), weight)


def case_laplacian(dev: str) -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.arange(301).repeat_interleave(4)
    dst = torch.randint(0, 301, (301 * 4,), generator=gen)
    g = Graph.from_edges(src, dst, torch.rand(301 * 4, generator=gen) + 0.1, 303, symmetrize="max").to(dev)
    z = torch.randn(303, 13, device=dev, requires_grad=True)  # two isolated nodes
    for norm in (None, "sym", "rw"):
        for red in ("sum", "mean", "none"):
            _grad(pyaeplus.laplacian_loss(z, g, normalization=norm, reduction=red), z)
    with torch.no_grad():
        pyaeplus.laplacian_loss(z, g)


def case_topk_encode(dev: str) -> None:
    x = torch.randn(9, 23, device=dev, requires_grad=True)
    w = torch.randn(301, 23, device=dev, requires_grad=True)
    b = torch.randn(301, device=dev, requires_grad=True)
    _grad(pyaeplus.topk_encode(x, w, b, 7)[0], x, w, b)
    _grad(pyaeplus.topk_encode(x, w, None, 3, batch=True)[0], x, w)  # BatchTopK: COO (values, rows, cols)


CASES = {"ssim": case_ssim, "topk": case_topk, "sparse_decode": case_sparse_decode, "laplacian": case_laplacian,
         "topk_encode": case_topk_encode}


def registered_ops() -> set[str]:
    return {n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names()
            if n.startswith("pyaeplus::")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cuda", help="cuda | triton | cpu | torch")
    ap.add_argument("--device", default=None, help="default: cuda for cuda/triton, else cpu")
    ap.add_argument("--only", default=None, help="comma-separated cases: " + ",".join(CASES))
    args = ap.parse_args(argv)
    dev = args.device or ("cuda" if args.backend in ("cuda", "triton") else "cpu")
    torch.manual_seed(0)
    names = args.only.split(",") if args.only else list(CASES)
    failed = []
    seen = _Seen()
    with backends.use(args.backend), pyaeplus.config.checks(False), seen:
        for name in names:
            try:
                CASES[name](dev)
                if dev == "cuda":
                    torch.cuda.synchronize()  # a kernel fault surfaces here, in its case
                print(f"[sanitize-cases] {name}: ran ({args.backend}, {dev})", flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                failed.append(name)
                print(f"[sanitize-cases] {name}: FAILED {type(e).__name__}: {e}", flush=True)
    missing = sorted(registered_ops() - seen.ops) if not args.only else []
    print(f"[sanitize-cases] pyaeplus ops exercised: {', '.join(sorted(seen.ops))}", flush=True)
    if missing:
        print(f"[sanitize-cases] NOT exercised (add a case): {', '.join(missing)}", flush=True)
    print(f"[sanitize-cases] done: {len(names) - len(failed)}/{len(names)} cases ran", flush=True)
    return 1 if failed else (3 if missing else 0)


if __name__ == "__main__":
    sys.exit(main())
