"""topk: every CUDA backend (conftest.GPU_BACKENDS) against the reference, on a GPU (moved from
tests/test_topk.py, whose helpers it uses). Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from pyaeplus import backends, config
from pyaeplus import functional as F
from pyaeplus.reference import topk as ref
from conftest import GPU_BACKENDS, use_backend
from test_topk import GPU_DTYPES, _distinct, _ref_sparse

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_use_backends(backend, dtype):
    use_backend(backend)  # skips (fails under gpu_check.sh) when it cannot run here
    shapes = [(1, 1, 1), (3, 7, 5), (257, 1000, 5), (257, 4099, 1), (3, 4099, 4099), (64, 16384, 32),
              (5, 70001, 64), (7, 3000, 2000), (2, 200000, 1500)]
    with backends.use(backend):
        for B, D, k in shapes:
            x = torch.randn(B, D, device="cuda").to(dtype)
            if D > 100:
                x[0, : D // 2] = x[0, 0]  # a long run of ties in row 0
            for relu in (False, True):
                vals, idx = F.topk_activation(x, k, relu=relu, output="sparse")
                rv, ri = _ref_sparse(x, k, relu)
                assert torch.equal(idx, ri), (B, D, k, relu)
                assert torch.equal(vals, rv), (B, D, k, relu)
                y = F.topk_activation(x, k, relu=relu)
                assert torch.equal(y, ref.topk_activation(x, k, relu=relu)), (B, D, k, relu)
                # deterministic across runs
                vals2, idx2 = F.topk_activation(x, k, relu=relu, output="sparse")
                assert torch.equal(idx, idx2) and torch.equal(vals, vals2)
            xg = x.clone().requires_grad_()
            w = torch.randn_like(x)
            (F.topk_activation(xg, k, relu=True) * w).sum().backward()
            xr = x.clone().requires_grad_()
            (ref.topk_activation(xr, k, relu=True) * w).sum().backward()
            assert torch.equal(xg.grad, xr.grad)
            xg.grad = None
            v = F.topk_activation(xg, k, output="sparse").values
            (v * 3.0).sum().backward()
            xr.grad = None
            (ref.topk_activation(xr, k, output="sparse")[0] * 3.0).sum().backward()
            assert torch.equal(xg.grad, xr.grad)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_nan_and_opcheck(backend):
    use_backend(backend)  # skips (fails under gpu_check.sh) when it cannot run here
    with backends.use(backend):
        x = torch.randn(5, 300, device="cuda")
        x[1, 7] = float("nan")
        x[1, 200] = -float("nan")
        x[2, :] = -0.0
        x[2, ::3] = 0.0
        with config.checks(False):
            vals, idx = F.topk_activation(x, 9, output="sparse")
        assert torch.equal(idx, ref.select(x, 9))
        xs = _distinct(4, 13, torch.float32, device="cuda", gap=0.1).requires_grad_()
        torch.library.opcheck(torch.ops.pyaeplus.topk_sparse.default, (xs, 5, True))
        torch.library.opcheck(torch.ops.pyaeplus.topk_dense.default, (xs, 5, False))


