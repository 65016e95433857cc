"""pyaeplus.sparse_decode: parity with the reference per backend and dtype, gradients
(gradcheck, loss not last, needs_input_grad), determinism, opcheck, torch.compile, the module,
and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import pyaeplus
from pyaeplus import backends
from pyaeplus.reference import sparse_decode as ref
from conftest import HAS_CUDA, TOL

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
N_OUT = 33  # odd output width


def fast_backends(device: str) -> list[str]:
    if device == "cpu":
        return ["cpu"] if backends.available()["cpu"] else []
    return [b for b in ("triton", "cuda") if backends.available()[b]]


def make(B, D, k, N=N_OUT, dtype=torch.float32, device="cpu", bias=True, unique=False, index_dtype=torch.int64):
    """Codes scaled so that outputs and gradients are O(1) whatever k is."""
    values = torch.randn(B, k, dtype=torch.float32, device=device).to(dtype)
    if unique:
        indices = torch.stack([torch.randperm(D, device=device)[:k] for _ in range(B)])
    else:
        indices = torch.randint(0, D, (B, k), device=device)  # duplicates allowed: they add
    weight = (torch.randn(D, N, device=device) / math.sqrt(k)).to(dtype)
    b = torch.randn(N, device=device).to(dtype) if bias else None
    return values, indices.to(index_dtype), weight, b


def grads_of(fn, values, indices, weight, bias, grad_out):
    v = values.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    b = None if bias is None else bias.detach().clone().requires_grad_(True)
    out = fn(v, indices, w, b)
    out.backward(grad_out)
    return out.detach(), v.grad, w.grad, (None if b is None else b.grad)


def tol(dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    return dict(atol=atol * scale, rtol=rtol)


def check_parity(backend, device, B, D, k, dtype, *, bias=True, index_dtype=torch.int64):
    values, indices, weight, b = make(B, D, k, dtype=dtype, device=device, bias=bias, index_dtype=index_dtype)
    grad_out = torch.randn(B, N_OUT, device=device).to(dtype)
    with backends.use(backend):
        out, gv, gw, gb = grads_of(pyaeplus.sparse_decode, values, indices, weight, b, grad_out)
    r_out = ref.sparse_decode(values, indices, weight, b)
    r_gv = ref.sparse_decode_grad_values(grad_out, indices, weight)
    r_gw = ref.sparse_decode_grad_weight(grad_out, values, indices, weight)
    assert out.dtype == gv.dtype == gw.dtype == dtype
    torch.testing.assert_close(out, r_out, **tol(dtype))
    torch.testing.assert_close(gv, r_gv, **tol(dtype, math.sqrt(N_OUT)))
    # a weight row sums up to B*k products (all of them when D == 1)
    hits = torch.bincount(indices.reshape(-1).long(), minlength=D).max().item()
    torch.testing.assert_close(gw, r_gw, **tol(dtype, math.sqrt(max(hits, 1))))
    if bias:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        torch.testing.assert_close(gb, grad_out.to(acc).sum(0).to(dtype), **tol(dtype, math.sqrt(B)))
    # rows that no index touches get exactly zero
    untouched = torch.ones(D, dtype=torch.bool, device=device)
    untouched[indices.reshape(-1).long()] = False
    assert (gw[untouched] == 0).all()


# The reference materializes (B, k, N): the two largest k = D cases are slow; (3, 4099, 4099) stays fast.
SHAPES = [pytest.param(B, D, k, marks=[pytest.mark.slow] if B * k >= 257 * 1000 else [])
          for B in (1, 3, 257) for D in (1, 7, 1000, 4099) for k in (1, 5, D)]


@pytest.mark.parametrize("B,D,k", SHAPES)
def test_parity_float32_cpu(B, D, k):
    for backend in fast_backends("cpu"):
        check_parity(backend, "cpu", B, D, k, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("B,D,k", [(1, 1, 1), (3, 7, 5), (3, 7, 7), (257, 1000, 5), (3, 4099, 4099), (257, 4099, 1)])
def test_parity_dtypes_cpu(dtype, B, D, k):
    for backend in fast_backends("cpu"):
        check_parity(backend, "cpu", B, D, k, dtype)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("bias", [True, False])
def test_index_dtype_and_no_bias(index_dtype, bias):
    for backend in fast_backends("cpu"):
        check_parity(backend, "cpu", 37, 101, 9, torch.float32, bias=bias, index_dtype=index_dtype)


def test_torch_backend_is_the_reference():
    values, indices, weight, b = make(5, 11, 3)
    with backends.use("torch"):
        out = pyaeplus.sparse_decode(values, indices, weight, b)
    torch.testing.assert_close(out, ref.sparse_decode(values, indices, weight, b))


def test_matches_dense_decoder_and_embedding_bag():
    # The two formulations people use today: dense codes @ W, and F.embedding_bag.
    values, indices, weight, b = make(64, 300, 16, unique=True)
    dense = torch.zeros(64, 300).scatter_(1, indices, values)
    out = pyaeplus.sparse_decode(values, indices, weight, b)
    torch.testing.assert_close(out, dense @ weight + b, atol=1e-5, rtol=1e-5)
    eb = torch.nn.functional.embedding_bag(indices, weight, per_sample_weights=values, mode="sum") + b
    torch.testing.assert_close(out, eb, atol=1e-5, rtol=1e-5)


def test_leading_dims_and_noncontiguous():
    values, indices, weight, b = make(2 * 5, 23, 4)
    v3, i3 = values.reshape(2, 5, 4), indices.reshape(2, 5, 4)
    out = pyaeplus.sparse_decode(v3, i3, weight, b)
    assert out.shape == (2, 5, N_OUT)
    torch.testing.assert_close(out.reshape(10, N_OUT), ref.sparse_decode(values, indices, weight, b))
    # transposed views and a column-sliced weight
    vt = values.t().contiguous().t()
    it = indices.t().contiguous().t()
    wbig = torch.randn(23, 2 * N_OUT)
    wnc = wbig[:, ::2]
    assert not (vt.is_contiguous() or it.is_contiguous() or wnc.is_contiguous())
    torch.testing.assert_close(pyaeplus.sparse_decode(vt, it, wnc, b), ref.sparse_decode(values, indices, wnc, b))
    # a single code vector (k,) -> (d_out,)
    out1 = pyaeplus.sparse_decode(values[0], indices[0], weight, b)
    assert out1.shape == (N_OUT,)
    torch.testing.assert_close(out1, out[0, 0])


def test_gradcheck_float64():
    values, indices, weight, b = make(4, 6, 5, N=3, dtype=torch.float64)  # duplicates within rows
    inputs = (values.requires_grad_(), indices, weight.requires_grad_(), b.requires_grad_())
    for backend in ["torch"] + fast_backends("cpu"):
        with backends.use(backend):
            assert torch.autograd.gradcheck(pyaeplus.sparse_decode, inputs)


def test_loss_not_last_and_needs_input_grad():
    values, indices, weight, b = make(29, 57, 6)
    other = torch.randn(29, N_OUT)

    def loss_fn(fn, v, w, bb):
        out = fn(v, indices, w, bb)
        return 3.7 * ((out - other) ** 2).mean() + 0.5 * out.sum()   # grad_out is neither 1 nor constant

    for requires in [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]:
        grads = []
        for fn in (pyaeplus.sparse_decode, ref.sparse_decode):
            v = values.clone().requires_grad_(requires[0])
            w = weight.clone().requires_grad_(requires[1])
            bb = b.clone().requires_grad_(requires[2])
            loss_fn(fn, v, w, bb).backward()
            grads.append((v.grad, w.grad, bb.grad))
        for got, want, req in zip(grads[0], grads[1], requires):
            if req:
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            else:
                assert got is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_matches_separate_ops(dtype):
    # Both gradients at once (one sweep on the CPU) == each alone == the reference.
    values, indices, weight, _ = make(131, 77, 9, dtype=dtype, bias=False)
    grad_out = torch.randn(131, N_OUT).to(dtype)
    gv, gw = torch.ops.pyaeplus._sparse_decode_backward(grad_out, values, indices, weight)
    torch.testing.assert_close(gv, torch.ops.pyaeplus._sparse_decode_grad_values(grad_out, indices, weight),
                               **tol(dtype, math.sqrt(N_OUT)))
    torch.testing.assert_close(gw, torch.ops.pyaeplus._sparse_decode_grad_weight(grad_out, values, indices, weight),
                               **tol(dtype))
    torch.testing.assert_close(gv, ref.sparse_decode_grad_values(grad_out, indices, weight),
                               **tol(dtype, math.sqrt(N_OUT)))
    torch.testing.assert_close(gw, ref.sparse_decode_grad_weight(grad_out, values, indices, weight),
                               **tol(dtype, 4.0))


def test_grad_weight_deterministic_with_hot_rows():
    # Skewed codes (a few "hot" latents, as in real SAEs): many entries per weight row.
    B, D, k = 513, 64, 12
    values = torch.randn(B, k)
    indices = torch.where(torch.rand(B, k) < 0.7, torch.randint(0, 3, (B, k)), torch.randint(0, D, (B, k)))
    weight = torch.randn(D, 129)
    grad_out = torch.randn(B, 129)
    runs = []
    for _ in range(3):
        w = weight.clone().requires_grad_()
        pyaeplus.sparse_decode(values, indices, w).backward(grad_out)
        runs.append(w.grad)
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    torch.testing.assert_close(runs[0], ref.sparse_decode_grad_weight(grad_out, values, indices, weight),
                               atol=1e-4, rtol=1e-5)


def test_reverse_index():
    indices = torch.tensor([[3, 1, 3], [0, 3, 1]])
    order, indptr = ref.sparse_decode_reverse_index(indices, 5)
    assert indptr.tolist() == [0, 1, 3, 3, 6, 6]
    assert order.tolist() == [3, 1, 5, 0, 2, 4]  # stable: increasing b*k+j inside each row


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    values, indices, weight, b = make(7, 13, 4, bias=bias)
    values.requires_grad_()
    weight.requires_grad_()
    if b is not None:
        b.requires_grad_()
    grad_out = torch.randn(7, N_OUT)
    torch.library.opcheck(torch.ops.pyaeplus.sparse_decode.default, (values, indices, weight, b))
    torch.library.opcheck(torch.ops.pyaeplus._sparse_decode_grad_values.default,
                          (grad_out, indices, weight.detach()))
    torch.library.opcheck(torch.ops.pyaeplus._sparse_decode_grad_weight.default,
                          (grad_out, values.detach(), indices, weight.detach()))
    torch.library.opcheck(torch.ops.pyaeplus._sparse_decode_backward.default,
                          (grad_out, values.detach(), indices, weight.detach()))


def test_compile_fullgraph_matches_eager():
    values, indices, weight, b = make(19, 41, 5)
    grad_out = torch.randn(19, N_OUT)

    def f(v, i, w, bb):
        return torch.tanh(pyaeplus.sparse_decode(v, i, w, bb)) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    eager = grads_of(f, values, indices, weight, b, grad_out)
    comp = grads_of(compiled, values, indices, weight, b, grad_out)
    for x, y in zip(comp, eager):
        torch.testing.assert_close(x, y)


def test_module():
    torch.manual_seed(1)
    dec = pyaeplus.nn.SparseDecoder(50, 17)
    assert dec.weight.shape == (50, 17) and dec.bias.shape == (17,)
    bound = 1 / math.sqrt(50)
    assert dec.weight.abs().max() <= bound and dec.bias.abs().max() <= bound
    assert dec.weight.std() > 0.5 * bound / math.sqrt(3)  # really uniform over the range, not zeros
    values, indices = torch.randn(6, 4), torch.randint(0, 50, (6, 4))
    out = dec(values, indices)
    torch.testing.assert_close(out, ref.sparse_decode(values, indices, dec.weight.detach(), dec.bias.detach()))
    torch.testing.assert_close(dec((values, indices)), out)
    out.sum().backward()
    assert dec.weight.grad is not None and dec.bias.grad is not None
    assert pyaeplus.nn.SparseDecoder(50, 17, bias=False).bias is None
    assert "num_latents=50" in repr(dec)
    with pytest.raises(TypeError, match="values, indices"):
        dec(values)


def _bad_cases():
    v, i, w, b = make(4, 10, 3)
    nan_v = v.clone()
    nan_v[1, 2] = float("nan")
    inf_w = w.clone()
    inf_w[3, 0] = float("inf")
    return [
        ((v.numpy(), i, w, b), TypeError, "values"),
        ((v.long(), i, w, b), TypeError, "values"),
        ((v, i.float(), w, b), TypeError, "indices"),
        ((v, i.to(torch.int16), w, b), TypeError, "indices"),
        ((v, i[:, :2], w, b), ValueError, "indices"),
        ((v, i, w[0], b), ValueError, "weight"),
        ((v, i, w, b[:-1]), ValueError, "bias"),
        ((v, i, w, b[None]), ValueError, "bias"),
        ((v, i.clone().fill_(10), w, b), ValueError, "indices"),
        ((v, i.clone().fill_(-1), w, b), ValueError, "indices"),
        ((v, i, w, b, ), None, None),  # sanity: the valid call works
        ((nan_v, i, w, b), ValueError, "values"),
        ((v, i, inf_w, b), ValueError, "weight"),
        ((v[:0], i[:0], w, b), ValueError, "values"),
        ((v, i, w[:0], b), ValueError, "weight"),
        ((torch.randn(()), torch.tensor(0), w, b), ValueError, "values"),
        ((v, i.to("meta"), w, b), ValueError, "indices"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input(case):
    # check_finite=True: the value checks (NaN/Inf, index range) too, each naming its argument
    args, exc, name = _bad_cases()[case]
    if exc is None:
        pyaeplus.sparse_decode(*args, check_finite=True)
        return
    with pytest.raises(exc, match=name):
        pyaeplus.sparse_decode(*args, check_finite=True)


def test_default_reads_no_data_and_the_cpu_kernel_still_rejects_bad_indices():
    """By default ("auto") nothing reads the indices on the host; the CPU kernel checks them
    itself (the CUDA kernels mask them), so a bad index is still an error, never a bad read."""
    v, i, w, b = make(4, 10, 3)
    for fill in (10, -1):
        with pytest.raises(ValueError, match="index is out of range"):
            pyaeplus.sparse_decode(v, i.clone().fill_(fill), w, b)
    v[0, 0] = float("nan")
    assert torch.isnan(pyaeplus.sparse_decode(v, i, w, b)[0]).all()      # NaN propagates


def test_finite_check_can_be_disabled():
    v, i, w, b = make(4, 10, 3)
    v[0, 0] = float("nan")
    with pyaeplus.config.checks(False):
        out = pyaeplus.sparse_decode(v, i, w, b)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()


def test_cpu_kernel_bounds_checks_itself():
    # Under torch.compile the Python range check is skipped; the C++ kernels must still refuse.
    if not backends.available()["cpu"]:
        pytest.skip("pyaeplus._C not built")
    v, i, w, b = make(4, 10, 3)
    i[2, 1] = 10
    for op, args in [(torch.ops.pyaeplus.sparse_decode, (v, i, w, b)),
                     (torch.ops.pyaeplus._sparse_decode_grad_values, (torch.randn(4, N_OUT), i, w)),
                     (torch.ops.pyaeplus._sparse_decode_grad_weight, (torch.randn(4, N_OUT), v, i, w)),
                     (torch.ops.pyaeplus._sparse_decode_backward, (torch.randn(4, N_OUT), v, i, w))]:
        with pytest.raises(ValueError, match="out of range"):
            op(*args)
