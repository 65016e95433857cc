"""The baseline-ISA build of the CPU kernels against the AVX2 build.

The C++ kernels are compiled twice (baseline ISA, AVX2+FMA) and picked at run time
(csrc/cpu_dispatch.h); on an AVX2 machine the other tests only reach the AVX2 build.
``PYAEPLUS_CPU_BASELINE=1`` makes a process take the baseline build: a subprocess computes
every op's outputs on fixed inputs that way, and they must match this process's (the same
arithmetic, only FMA contraction differs; selections exactly).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import PYTHON
from pyaeplus import backends

pytestmark = pytest.mark.skipif(not backends.available()["cpu"], reason="pyaeplus._C is not built")

SCRIPT = r"""
import sys, torch
from pyaeplus import backends
from pyaeplus.ops import sparse_decode as sd, ssim, topk
from pyaeplus.reference import ssim as ref
torch.manual_seed(0)
out = {}
with backends.use("cpu"):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.rand(1, 2, 150, 37, dtype=torch.float64)
        y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
        x, y = x.to(dtype), y.to(dtype)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for K in (11, 17):
            w = ref.gaussian_window(K, 1.5).to(acc)
            for p in range(5):
                s, cs, l1, m = ssim.ssim_stats(x, y, w, 1e-4, 9e-4, p, True)
                g = torch.linspace(-1, 1, 2, dtype=acc).view(1, 2)
                dx, dy = ssim._ssim_stats_backward(g, 0.5 * g, 0.25 * g, None, x, y, w, 1e-4, 9e-4, p)
                out[f"ssim {dtype} K{K} p{p}"] = [s, cs, l1, m, dx, dy]
    for dtype in (torch.float32, torch.bfloat16):
        for D, k in ((4099, 7), (300, 100)):  # block-maximum path, streaming path
            xt = torch.randn(5, D).to(dtype)
            out[f"topk {dtype} {D} {k}"] = list(topk.topk_sparse(xt, k, True))
    vals = torch.rand(33, 7)
    idx = torch.randint(0, 50, (33, 7))
    W = torch.randn(50, 45)
    b = torch.randn(45)
    g = torch.randn(33, 45)
    out["sparse_decode"] = [sd.sparse_decode(vals, idx, W, b), sd._sparse_decode_grad_values(g, idx, W),
                            sd._sparse_decode_grad_weight(g, vals, idx, W)] + list(
        sd._sparse_decode_backward(g, vals, idx, W))
torch.save(out, sys.argv[1])
"""


def _run(path, baseline: bool):
    env = dict(os.environ, PYAEPLUS_CPU_BASELINE="1" if baseline else "0")
    subprocess.run([*PYTHON, "-c", SCRIPT, str(path)], check=True, env=env, timeout=300)
    return torch.load(path)


def test_baseline_build_matches_avx2_build(tmp_path):
    base = _run(tmp_path / "base.pt", True)
    fast = _run(tmp_path / "fast.pt", False)
    assert base.keys() == fast.keys()
    for key in base:
        for a, b in zip(base[key], fast[key]):
            if key.startswith("topk"):
                assert torch.equal(a, b), key
            else:
                tol = 1e-12 if a.dtype == torch.float64 else (1e-2 if a.dtype == torch.bfloat16 else 2e-5)
                scale = max(b.abs().max().item(), 1e-30)
                torch.testing.assert_close(a, b, atol=tol * scale, rtol=0, msg=key)
