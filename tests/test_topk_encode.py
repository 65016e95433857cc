"""pyaeplus.topk_encode (the fused Linear + top-k encoder): parity with nn.Linear + top-k (values,
indices and the gradients of x, weight and bias) per backend and dtype, BatchTopK, gradcheck,
a loss that is not last, determinism, opcheck, torch.compile, autocast, the module, bad input.

Exact parity needs exact pre-activations: small-integer inputs make every matmul exact in every
dtype and blocking (so the chunked forward and the reference select the same entries, ties by
lowest index); random inputs are compared with nn.Linear + torch.topk where the top-k is unambiguous.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pyaeplus
from pyaeplus import backends
from pyaeplus.ops import topk_encode as ops
from pyaeplus.reference import topk as ref_topk
from pyaeplus.reference import topk_encode as ref
from conftest import TOL

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def cpu_backends() -> list[str]:
    return ["torch"] + (["cpu"] if backends.available()["cpu"] else [])


def gpu_backends() -> list[str]:
    return [b for b in ("triton", "cuda") if backends.available()[b]] + ["auto"]


def int_inputs(B, N, D, dtype=torch.float32, device="cpu"):
    """Entries in {-1, 0, 1} (bias in {-2..2}): every pre-activation is an exact small integer."""
    x = torch.randint(-1, 2, (B, N)).to(device, dtype)
    w = torch.randint(-1, 2, (D, N)).to(device, dtype)
    b = torch.randint(-2, 3, (D,)).to(device, dtype)
    return x, w, b


def linear_topk(x, w, b, k, relu=True):
    """The formulation topk_encode replaces (pyaeplus's reference selection: ties by lowest index),
    differentiable through autograd; pre-activations in float64 (exact for the integer inputs)."""
    pre = F.linear(x.double(), w.double(), None if b is None else b.double())
    idx = ref_topk.select(pre.detach(), k)
    vals = pre.gather(-1, idx)
    return (torch.relu(vals) if relu else vals), idx


def grads(fn, x, w, b, gv):
    xs, ws = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    bs = None if b is None else b.detach().clone().requires_grad_()
    v, i = fn(xs, ws, bs)
    (v.float() * gv).sum().backward()
    return v.detach(), i, xs.grad, ws.grad, None if bs is None else bs.grad


def tol(dtype, scale=1.0):
    atol, rtol = TOL[dtype]
    return dict(atol=atol * scale, rtol=rtol)


def check_parity(backend, B, N, D, k, dtype, device="cpu", relu=True, bias=True):
    x, w, b = int_inputs(B, N, D, dtype, device)
    b = b if bias else None
    gv = torch.randn(B, k, device=device)
    with backends.use(backend):
        v, i, gx, gw, gb = grads(lambda *a: pyaeplus.topk_encode(*a, k, relu=relu), x, w, b, gv)
    rv, ri, rgx, rgw, rgb = grads(lambda *a: linear_topk(*a, k, relu), x.double(), w.double(),
                                  None if b is None else b.double(), gv.double())
    assert i.dtype == torch.int64 and v.dtype == gx.dtype == gw.dtype == dtype
    assert torch.equal(i, ri), (backend, B, N, D, k, dtype)
    assert torch.equal(v.double(), rv)                       # exact: small integers
    # grad_x sums k products per element, grad_weight/bias the entries of one latent
    torch.testing.assert_close(gx.double(), rgx, **tol(dtype, math.sqrt(k)))
    hits = max(1, int(torch.bincount(i.reshape(-1), minlength=D).max()))
    torch.testing.assert_close(gw.double(), rgw, **tol(dtype, math.sqrt(hits)))
    if bias:
        torch.testing.assert_close(gb.double(), rgb, **tol(dtype, math.sqrt(hits)))
    unused = torch.ones(D, dtype=torch.bool, device=device)
    unused[i.reshape(-1)] = False
    assert (gw[unused] == 0).all()                           # latents nobody selects: exactly zero


SHAPES = [(1, 1, 1, 1), (3, 7, 5, 5), (37, 23, 301, 7), (257, 33, 1000, 1), (5, 19, 4099, 64), (33, 48, 1025, 1025)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,N,D,k", SHAPES)
def test_parity_with_linear_topk(B, N, D, k, dtype):
    for backend in cpu_backends():
        if backend == "torch" and B * D > 10 ** 5:
            continue  # the reference backend on the small shapes is enough (its fp16 CPU matmul is slow)
        check_parity(backend, B, N, D, k, dtype, relu=k % 2 == 1)


@pytest.mark.parametrize("bias", [True, False])
def test_no_bias_and_chunked_forward(bias, monkeypatch):
    # Row chunks of the forward (a few elements per chunk here) give the result of one pass.
    monkeypatch.setitem(ops._CHUNK_ELEMENTS, "cpu", 1000)
    for backend in cpu_backends():
        check_parity(backend, 29, 17, 301, 6, torch.float32, bias=bias)


def test_random_inputs_match_nn_linear_and_torch_topk():
    torch.manual_seed(3)
    lin = torch.nn.Linear(96, 2000)
    x = torch.randn(130, 96, requires_grad=True)
    gv = torch.randn(130, 32)
    enc = pyaeplus.nn.TopKEncoder(96, 2000, 32)
    enc.load_state_dict(lin.state_dict())                    # the same parameters, by name
    v, i = enc(x)
    (v * gv).sum().backward()
    rv, ri = torch.topk(lin(x), 32)
    rv = torch.relu(rv)
    gx, x.grad = x.grad, None
    (rv * gv).sum().backward()
    pre = lin(x).detach().sort(1, descending=True).values
    clear = (pre[:, 31] - pre[:, 32]) > 1e-4                 # rows whose k-th entry is unambiguous
    assert clear.float().mean() > 0.9
    assert torch.equal(i[clear], ri[clear])
    torch.testing.assert_close(v, rv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.weight.grad, lin.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.bias.grad, lin.bias.grad, atol=1e-5, rtol=1e-5)


def test_leading_dims_and_noncontiguous():
    x, w, b = int_inputs(2 * 5, 13, 40)
    v, i = pyaeplus.topk_encode(x.reshape(2, 5, 13), w, b, 4)
    assert v.shape == i.shape == (2, 5, 4)
    rv, ri = linear_topk(x, w, b, 4)
    assert torch.equal(i.reshape(10, 4), ri) and torch.equal(v.reshape(10, 4).double(), rv)
    xt, wt = x.t().contiguous().t(), w.t().contiguous().t()   # column-major views
    assert not (xt.is_contiguous() or wt.is_contiguous())
    assert torch.equal(pyaeplus.topk_encode(xt, wt, b, 4).indices, ri)
    v1, i1 = pyaeplus.topk_encode(x[0], w, b, 4)               # one (N,) vector -> (k,)
    assert v1.shape == (4,) and torch.equal(i1, ri[0])


# ---- gradients ----------------------------------------------------------------------------

def _separated(B, N, D, seed=0):
    """float64 inputs whose pre-activations are far apart (>> gradcheck's eps) and away from 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, generator=g, dtype=torch.float64)
    w = torch.randn(D, N, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    pre = F.linear(x, w, b)
    s = pre.flatten().sort().values
    assert float(s.diff().min()) > 1e-4 and float(pre.abs().min()) > 1e-4, "pick another seed"
    return x, w, b


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_float64(relu, batch):
    x, w, b = _separated(4, 5, 9)
    for backend in cpu_backends():
        with backends.use(backend):
            def f(x, w, b):
                return pyaeplus.topk_encode(x, w, b, 3, relu=relu, batch=batch)[0]

            assert torch.autograd.gradcheck(f, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()),
                                            eps=1e-6, atol=1e-8)


def test_loss_not_last_and_needs_input_grad():
    x, w, b = int_inputs(31, 21, 117, torch.float32)
    other = torch.randn(31, 6)

    def loss(fn, xs, ws, bs):
        v = fn(xs, ws, bs)[0].float()
        return 3.7 * ((v - other) ** 2).mean() + 0.5 * v.sum()     # grad_output neither 1 nor constant

    for req in [(True, True, True), (True, False, False), (False, True, False), (False, False, True)]:
        got = []
        for fn in (lambda *a: pyaeplus.topk_encode(*a, 6), lambda *a: linear_topk(*a, 6)):
            ts = [t.clone().requires_grad_(r) for t, r in zip((x, w, b), req)]
            loss(fn, *ts).backward()
            got.append([t.grad for t in ts])
        for a, c, r in zip(*got, req):
            if r:
                torch.testing.assert_close(a.double(), c.double(), atol=1e-5, rtol=1e-5)
            else:
                assert a is None


def test_grad_weight_deterministic_with_hot_latents():
    # A few latents every row selects (a big positive bias): many entries per weight row.
    B, N, D, k = 777, 40, 300, 9
    x = torch.randn(B, N)
    w = torch.randn(D, N) * 0.1
    b = torch.zeros(D)
    b[:5] = 10.0
    runs = []
    for _ in range(3):
        ws = w.clone().requires_grad_()
        bs = b.clone().requires_grad_()
        v, i = pyaeplus.topk_encode(x, ws, bs, k)
        (v * torch.arange(k)).sum().backward()
        runs.append((ws.grad, bs.grad))
    assert all(torch.equal(runs[0][0], r[0]) and torch.equal(runs[0][1], r[1]) for r in runs[1:])
    g = torch.where(v > 0, torch.arange(k, dtype=torch.float32).expand(B, k), 0).reshape(-1)
    crow = torch.arange(0, B * k + 1, k)
    rgw, rgb = ref.grad_weight(g, crow, i.reshape(-1), x, D)
    torch.testing.assert_close(runs[0][0], rgw, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(runs[0][1], rgb, atol=1e-4, rtol=1e-5)
    assert float(runs[0][1][:5].min()) > 0                       # the hot latents


# ---- BatchTopK ----------------------------------------------------------------------------

@pytest.mark.parametrize("relu", [False, True])
def test_batch_topk_matches_topk_activation(relu):
    x, w, b = int_inputs(9, 11, 31)                             # many ties at the threshold
    for backend in cpu_backends():
        with backends.use(backend):
            coo = pyaeplus.topk_encode(x, w, b, 4, relu=relu, batch=True)
            csr = pyaeplus.topk_encode(x, w, b, 4, relu=relu, batch=True, sparse_format="csr")
            pre = F.linear(x, w, b)
            rcoo = pyaeplus.topk_activation(pre, 4, relu=relu, batch=True, output="sparse")
            rcsr = pyaeplus.topk_activation(pre, 4, relu=relu, batch=True, output="sparse", sparse_format="csr")
        assert isinstance(coo, pyaeplus.BatchTopKCOO) and isinstance(csr, pyaeplus.BatchTopKCSR)
        for a, c in zip(coo + csr, rcoo + rcsr):
            assert torch.equal(a, c), backend
        assert coo.values.shape == (36,) and csr.crow.shape == (10,)


def test_batch_topk_gradients():
    x, w, b = int_inputs(13, 9, 50)
    gv = torch.randn(13 * 3)
    got = grads(lambda *a: pyaeplus.topk_encode(*a, 3, batch=True)[::2], x, w, b, gv)

    def dense(xs, ws, bs):  # the same entries taken from a dense Linear
        pre = F.linear(xs, ws, bs)
        c = pyaeplus.topk_activation(pre.detach(), 3, relu=True, batch=True, output="sparse")
        return torch.relu(pre[c.rows, c.cols]), c.cols

    want = grads(dense, x, w, b, gv)
    assert torch.equal(got[1], want[1])
    for a, c in zip(got[2:], want[2:]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


# ---- torch.library, compile, autocast ----------------------------------------------------

def _opcheck_samples():
    x, w, b = _separated(4, 5, 9)
    x, w, b = x.float(), w.float(), b.float()
    v, i = torch.ops.pyaeplus.topk_encode(x, w, b, 3, True)
    crow = torch.arange(0, 13, 3)
    g = torch.randn(12)
    return [
        (torch.ops.pyaeplus.topk_encode.default, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 3, True)),
        (torch.ops.pyaeplus.topk_encode.default, (x, w, None, 9, False)),
        (torch.ops.pyaeplus.batch_topk_encode.default, (x, w, b, 2, True)),
        (torch.ops.pyaeplus._topk_encode_grad_input.default, (g, crow, i.reshape(-1), w.detach())),
        (torch.ops.pyaeplus._topk_encode_grad_weight.default, (g, crow, i.reshape(-1), x.detach(), 9)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_opcheck(case):
    op, args = _opcheck_samples()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("batch", [False, True])
def test_compile_fullgraph_matches_eager(batch):
    torch._dynamo.reset()
    x, w, b = int_inputs(19, 12, 41)
    gv = torch.randn(19 * 5 if batch else (19, 5))

    def f(x, w, b):
        v = pyaeplus.topk_encode(x - 0.5, w, b, 5, batch=batch)[0]
        return v * 2.0

    comp = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, c in zip(grads(lambda *t: (comp(*t), None), x, w, b, gv), grads(lambda *t: (f(*t), None), x, w, b, gv)):
        if a is not None:
            torch.testing.assert_close(a, c)


def test_autocast_bf16_behaves_as_linear():
    # fp32 parameters, fp32 input, CPU bf16 autocast: computed in bf16 like F.linear, grads back in fp32.
    x, w, b = int_inputs(23, 17, 120)
    gv = torch.randn(23, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, i, gx, gw, gb = grads(lambda *a: pyaeplus.topk_encode(*a, 6), x, w, b, gv)
        pre = F.linear(x, w, b)
    assert pre.dtype == v.dtype == torch.bfloat16
    assert gx.dtype == gw.dtype == gb.dtype == torch.float32
    rv, ri, rgx, rgw, rgb = grads(lambda *a: linear_topk(*a, 6), x, w, b, gv)
    assert torch.equal(i, ri) and torch.equal(v.double(), rv)
    for a, c in ((gx, rgx), (gw, rgw), (gb, rgb)):
        torch.testing.assert_close(a.double(), c.double(), **tol(torch.bfloat16, 4.0))
    # float64 stays float64 under autocast (as autocast treats F.linear's float64 operands)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pyaeplus.topk_encode(x.double(), w.double(), b.double(), 3).values.dtype == torch.float64


# ---- the module ---------------------------------------------------------------------------

def test_module_is_a_linear_dropin():
    torch.manual_seed(5)
    lin = torch.nn.Linear(20, 50)
    torch.manual_seed(5)
    enc = pyaeplus.nn.TopKEncoder(20, 50, 4, alpha=2.5)
    assert torch.equal(enc.weight, lin.weight) and torch.equal(enc.bias, lin.bias)    # same init draws
    assert set(enc.state_dict()) == set(lin.state_dict())
    lin.load_state_dict(enc.state_dict())
    x = torch.randn(7, 20)
    assert enc(x).values.shape == (7, 4)
    enc.eval()
    assert enc(x).values.shape == (7, 10)                      # round(alpha * k) at inference
    assert enc.train()(x).indices.shape == (7, 4)
    enc.k = 6                                                  # k may change between steps
    assert enc(x).values.shape == (7, 6)
    assert pyaeplus.nn.TopKEncoder(20, 50, 4, bias=False).bias is None
    assert "k=6" in repr(enc) and "alpha=2.5" in repr(enc)
    batch = pyaeplus.nn.TopKEncoder(20, 50, 4, batch=True, sparse_format="csr")
    assert isinstance(batch(x), pyaeplus.BatchTopKCSR)


# ---- bad input ----------------------------------------------------------------------------

def _bad_cases():
    x, w, b = int_inputs(4, 6, 10)
    nan_x = x.clone()
    nan_x[1, 2] = float("nan")
    inf_w = w.clone()
    inf_w[3, 0] = float("inf")
    E = pyaeplus.topk_encode
    return [
        (lambda: E(x.numpy(), w, b, 3), TypeError, "x must be a torch.Tensor"),
        (lambda: E(x.long(), w, b, 3), TypeError, "x must have dtype"),
        (lambda: E(x, w.double(), b, 3), TypeError, "weight must have the dtype of x"),
        (lambda: E(x, w, b.double(), 3), TypeError, "bias must have the dtype of x"),
        (lambda: E(x, w.t(), b, 3), ValueError, r"weight must have shape \(D, 6\)"),
        (lambda: E(x, w[0], b, 3), ValueError, "weight must be 2-d"),
        (lambda: E(x, w, b[:-1], 3), ValueError, r"bias must have shape \(10,\)"),
        (lambda: E(x, w, b[None], 3), ValueError, "bias must be 1-d"),
        (lambda: E(x, w, b, 0), ValueError, "k must be >= 1"),
        (lambda: E(x, w, b, 11), ValueError, "k must be <= 10"),
        (lambda: E(x, w, b, 2.0), TypeError, "k must be an int"),
        (lambda: E(x, w, b, 2, relu=1), TypeError, "relu must be a bool"),
        (lambda: E(x, w, b, 2, batch="no"), TypeError, "batch must be a bool"),
        (lambda: E(x, w, b, 2, batch=True, sparse_format="csc"), ValueError, "sparse_format must be one of"),
        (lambda: E(x, w, b, 2, training=False, alpha=0.0), ValueError, "alpha must be > 0"),
        (lambda: E(nan_x, w, b, 2, check_finite=True), ValueError, "x contains 1 NaN"),
        (lambda: E(x, inf_w, b, 2, check_finite=True), ValueError, "weight contains 0 NaN and 1 Inf"),
        (lambda: E(x[:0], w, b, 2), ValueError, "x must not be empty"),
        (lambda: E(torch.tensor(1.0), w, b, 2), ValueError, "x must have at least 1"),
        (lambda: E(x, w.to("meta"), b, 2), ValueError, "weight is on meta"),
        (lambda: E(x.to("meta"), w.to("meta"), b.to("meta"), 2), ValueError, "x must be on a cpu or cuda device"),
        (lambda: torch.ops.pyaeplus.topk_encode(x, w, b, 11, True), ValueError, "k must be in"),
        (lambda: torch.ops.pyaeplus.topk_encode(x, w[:, :5], b, 2, True), ValueError, "same N"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input(case):
    call, exc, match = _bad_cases()[case]
    with pytest.raises(exc, match=match):
        call()


def test_finite_check_can_be_disabled():
    x, w, b = int_inputs(4, 6, 10)
    x[0, 0] = float("nan")
    with pyaeplus.config.checks(False):
        v, i = pyaeplus.topk_encode(x, w, b, 3, relu=False)
    assert torch.isnan(v[0]).all() and torch.isfinite(v[1:]).all()


def test_cpu_kernels_check_their_indices():
    # The backward ops are reachable through torch.ops: the C++ kernels refuse what would read
    # or write out of bounds.
    if not backends.available()["cpu"]:
        pytest.skip("pyaeplus._C not built")
    g, w, x = torch.randn(6), torch.randn(10, 4), torch.randn(2, 4)
    crow = torch.tensor([0, 3, 6])
    bad_cols = torch.tensor([0, 1, 10, 2, 3, 4])
    for op, args, msg in [
        (torch.ops.pyaeplus._topk_encode_grad_input, (g, crow, bad_cols, w), "out of range"),
        (torch.ops.pyaeplus._topk_encode_grad_weight, (g, crow, bad_cols, x, 10), "out of range"),
        (torch.ops.pyaeplus._topk_encode_grad_input, (g, torch.tensor([0, 4, 3]), bad_cols.clamp(0, 9), w), "crow"),
        (torch.ops.pyaeplus._topk_encode_grad_weight, (g, torch.tensor([0, 3, 7]), bad_cols.clamp(0, 9), x, 10),
         "crow"),
    ]:
        with pytest.raises(ValueError, match=msg):
            op(*args)
    with pytest.raises(TypeError, match="int64"):
        torch.ops.pyaeplus._topk_encode_grad_input(g, crow.int(), bad_cols, w)
