"""topk_encode: every CUDA backend (conftest.GPU_BACKENDS) against the reference, on a GPU (moved from
tests/test_topk_encode.py, whose helpers it uses). Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyaeplus
from pyaeplus import backends
from conftest import GPU_BACKENDS, use_backend
from test_topk_encode import check_parity, grads, int_inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS + ("auto",))
def test_gpu_parity(backend, dtype):
    use_backend(backend)  # skips (fails under gpu_check.sh) when it cannot run here
    for B, N, D, k in [(1, 1, 1, 1), (3, 7, 5, 5), (37, 23, 301, 7), (257, 33, 4099, 64), (2048, 96, 16384, 32)]:
        check_parity(backend, B, N, D, k, dtype, device="cuda")
    x, w, b = int_inputs(64, 48, 1000, dtype, "cuda")
    with backends.use(backend):
        coo = pyaeplus.topk_encode(x, w, b, 5, batch=True)
        ref_coo = pyaeplus.topk_activation(F.linear(x, w, b), 5, relu=True, batch=True, output="sparse")
        assert all(torch.equal(a, c) for a, c in zip(coo, ref_coo))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_deterministic_opcheck_compile(backend):
    use_backend(backend)  # skips (fails under gpu_check.sh) when it cannot run here
    x, w, b = int_inputs(2048, 64, 4096, torch.float32, "cuda")
    gv = torch.randn(2048, 32, device="cuda")
    with backends.use(backend):
        r1 = grads(lambda *a: pyaeplus.topk_encode(*a, 32), x, w, b, gv)
        r2 = grads(lambda *a: pyaeplus.topk_encode(*a, 32), x, w, b, gv)
        assert all(torch.equal(a, c) for a, c in zip(r1, r2))
        xs, ws, bs = x[:7, :9].clone(), w[:11, :9].clone(), b[:11].clone()
        torch.library.opcheck(torch.ops.pyaeplus.topk_encode.default,
                              (xs.requires_grad_(), ws.requires_grad_(), bs.requires_grad_(), 3, True))
        comp = torch.compile(lambda *a: pyaeplus.topk_encode(*a, 32), fullgraph=True)
        r3 = grads(comp, x, w, b, gv)
        for a, c in zip(r1, r3):
            torch.testing.assert_close(a, c)
