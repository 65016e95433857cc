"""sparse_decode: every CUDA backend (conftest.GPU_BACKENDS) against the reference, on a GPU (moved from
tests/test_sparse_decode.py, whose helpers it uses). Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

import pyaeplus
from conftest import GPU_BACKENDS, use_backend
from test_sparse_decode import DTYPES, N_OUT, check_parity, grads_of, make

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,D,k", [(1, 1, 1), (3, 7, 5), (257, 1000, 5), (257, 4099, 4099), (257, 4099, 1),
                                   (3, 4099, 5), (1000, 70000, 64)])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_parity_gpu(backend, dtype, B, D, k):
    use_backend(backend)  # skips (fails under gpu_check.sh) when it cannot run here
    check_parity(backend, "cuda", B, D, k, dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_deterministic_and_int32(backend):
    with use_backend(backend):
        values, indices, weight, b = make(2048, 512, 32, N=257, device="cuda")
        grad_out = torch.randn(2048, 257, device="cuda")
        g1 = grads_of(pyaeplus.sparse_decode, values, indices, weight, b, grad_out)[2]
        g2 = grads_of(pyaeplus.sparse_decode, values, indices, weight, b, grad_out)[2]
        assert torch.equal(g1, g2)
        check_parity(backend, "cuda", 33, 1001, 7, torch.float32, index_dtype=torch.int32)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_opcheck_gpu(backend):
    with use_backend(backend):
        values, indices, weight, b = make(7, 13, 4, device="cuda")
        torch.library.opcheck(torch.ops.pyaeplus.sparse_decode.default,
                              (values.requires_grad_(), indices, weight.requires_grad_(), b))


def test_compile_gpu():
    values, indices, weight, b = make(19, 41, 5, device="cuda")
    grad_out = torch.randn(19, N_OUT, device="cuda")
    f = pyaeplus.sparse_decode
    compiled = torch.compile(f, fullgraph=True)
    for x, y in zip(grads_of(compiled, values, indices, weight, b, grad_out),
                    grads_of(f, values, indices, weight, b, grad_out)):
        torch.testing.assert_close(x, y)
