"""Triton top-k launchers under TRITON_INTERPRET=1 on CPU tensors: exact indices and values
against pyaeplus.reference.topk (small shapes: the interpreter is ~1000x slower)."""

from __future__ import annotations

import pytest
import torch

from pyaeplus.reference import topk as ref

pytestmark = pytest.mark.interpret


@pytest.fixture(scope="module")
def tk():
    from pyaeplus.kernels import topk

    return topk


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_forward_single_block(tk, dtype):
    # (B, D, k): odd D, k = 1, k = D
    for B, D, k in ((3, 37, 5), (2, 13, 13), (1, 1, 1)):
        x = torch.randn(B, D).to(dtype)
        relu = dtype != torch.float64
        vals, idx = tk.topk_forward(x, k, relu, dense=False)
        rv, ri = ref.topk_sparse(x, k, relu)
        assert torch.equal(idx, ri) and torch.equal(vals, rv), (B, D, k)
        y, didx = tk.topk_forward(x, k, relu, dense=True)
        assert torch.equal(y, ref.topk_dense(x, k, relu)[0])
        assert torch.equal(didx.sort(1).values, ri.sort(1).values)  # same set, index order


def test_forward_ties_nan_signed_zero_strided(tk):
    nan = float("nan")
    x = torch.tensor([[1.0, 1.0, nan, 0.0, -0.0, 1.0, -nan, 0.0, 2.0, 1.0, -0.0],
                      [0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0],
                      [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    big = torch.cat([x, x], 1)[:, :11]  # row stride 22, unit element stride
    for k in (1, 3, 4, 7):
        vals, idx = tk.topk_forward(big, k, False, dense=False)
        rv, ri = ref.topk_sparse(x, k, False)
        assert torch.equal(idx, ri), k
        assert torch.equal(vals.isnan(), rv.isnan())


def test_forward_chunked(tk, monkeypatch):
    # Rows longer than one block: the search re-reads the row in chunks.
    monkeypatch.setattr(tk, "_MAX_SINGLE_BLOCK", 16)
    x = torch.randint(-3, 4, (2, 45)).float()  # many ties across chunk borders
    for k in (1, 20, 45):
        vals, idx = tk.topk_forward(x, k, False, dense=False)
        rv, ri = ref.topk_sparse(x, k, False)
        assert torch.equal(idx, ri) and torch.equal(vals, rv), k
    y, _ = tk.topk_forward(x, 20, True, dense=True)
    assert torch.equal(y, ref.topk_dense(x, 20, True)[0])


def test_backward(tk):
    x = torch.randn(3, 29)
    vals, idx = ref.topk_sparse(x, 6, True)
    g = torch.randn(3, 6)
    assert torch.equal(tk.topk_backward(g, False, vals, idx, 29), ref.topk_sparse_backward(g, idx, vals, 29))
    assert torch.equal(tk.topk_backward(g, False, None, idx, 29), ref.topk_sparse_backward(g, idx, None, 29))
    y, didx = ref.topk_dense(x, 6, True)
    gy = torch.randn(3, 29)
    assert torch.equal(tk.topk_backward(gy, True, y, didx, 29), ref.topk_dense_backward(gy, didx, y))
