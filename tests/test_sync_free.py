"""No host-device synchronisation inside the losses and kernels with the default settings
(issue 12 item 2): one forward + backward of every loss, op and module, in float32 and under
bfloat16 autocast, reads no tensor value on the host.

On the CPU a read is counted where a CUDA run would synchronise: the Python conversions
(``bool``, ``item``, ``int``, ``float``, ``__index__``, ``tolist``, ``cpu``, ``numpy``) by
wrapping ``torch.Tensor``'s methods (this sees inside the custom ops' Python bodies too), and the
aten ops whose output size or value needs the data on the host (``_local_scalar_dense``,
``nonzero``, boolean-mask indexing, ``equal``, ``unique``, ``repeat_interleave`` without
``output_size``, ...) through a ``TorchDispatchMode``. The counter is tested to see each of
them. On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` turns the same runs into errors
(the ``gpu`` tests at the end).
"""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pyaeplus
from pyaeplus import models as M
from pyaeplus import nn as pnn

_METHODS = ("__bool__", "item", "tolist", "cpu", "numpy", "__int__", "__float__", "__index__", "__array__")
_ATEN = {"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "is_nonzero", "equal", "allclose",
         "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "masked_scatter", "argwhere"}
_BOOL = (torch.bool, torch.uint8)


class _AtenReads(TorchDispatchMode):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype in _BOOL for t in (args[1] or ()))
        sized_by_data = name == "repeat_interleave" and kwargs.get("output_size") is None
        if name in _ATEN or bool_index or sized_by_data:
            self.counts[f"aten.{name}"] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def host_reads():
    """Counts host reads of tensor data inside the block: ``with host_reads() as counts: ...``."""
    counts: collections.Counter = collections.Counter()
    saved = {n: getattr(torch.Tensor, n) for n in _METHODS}

    def wrap(name):
        orig = saved[name]

        def counted(self, *a, **k):
            counts[name] += 1
            return orig(self, *a, **k)
        return counted

    try:
        for n in _METHODS:
            setattr(torch.Tensor, n, wrap(n))
        with _AtenReads(counts):
            yield counts
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def test_the_counter_sees_every_kind_of_host_read():
    t = torch.tensor([0.5, -1.0, 2.0])
    reads = [lambda: bool(t.sum() > 0), lambda: t.sum().item(), lambda: int(t[0]), lambda: float(t[0]),
             lambda: t.tolist(), lambda: t.cpu(), lambda: t.numpy(), lambda: [1, 2][t.long()[0]],
             lambda: t[t > 0], lambda: torch.nonzero(t), lambda: torch.equal(t, t), lambda: torch.unique(t),
             lambda: torch.repeat_interleave(torch.tensor([1, 2])), lambda: t.masked_select(t > 0)]
    for i, read in enumerate(reads):
        with host_reads() as counts:
            read()
        assert sum(counts.values()) >= 1, i
    with host_reads() as counts:   # and not what stays on the device
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        t.masked_fill(t > 0, 0.0).sum().mul(2)
    assert not counts


def _images(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    return x, (x + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)


_G = None


def _graph():
    global _G
    if _G is None:
        from pyaeplus.graph import Graph

        g = torch.Generator().manual_seed(0)
        src = torch.arange(10).repeat_interleave(3)
        _G = Graph.from_edges(src, torch.randint(0, 10, (30,), generator=g), torch.rand(30, generator=g) + 0.1, 10)
        for norm in (None, "sym", "rw"):
            _G.prepare(norm)      # the graph's operands are built once, outside the training step
    return _G


def _ssim(fn, shape=(2, 3, 24, 25)):
    def case(device):
        x, y = _images(shape)
        return fn, x.to(device), y.to(device)
    return case


def _latents(fn, shape=(10, 6)):
    return lambda device: (fn, torch.randn(shape, device=device), None)


def _sparse(device):
    dec = pnn.SparseDecoder(40, 9).to(device)
    enc = torch.nn.Linear(9, 40).to(device)

    def fn(x, _):
        return dec(pyaeplus.topk_activation(enc(x), 5, relu=True, output="sparse"))
    return fn, torch.randn(7, 9, device=device), None


def _laplacian(fn):
    def case(device):
        g = _graph().to(device)
        if g.device.type != "cpu":
            for norm in (None, "sym", "rw"):
                g.prepare(norm)
        return (lambda z, _: fn(z, g)), torch.randn(10, 6, device=device), None
    return case


# Every loss and op of the public API with its default settings (and the padding modes).
CASES = {
    "ssim": _ssim(lambda p, t: pyaeplus.ssim(p, t, data_range=1.0)),
    "ssim_none_same": _ssim(lambda p, t: pyaeplus.ssim(p, t, data_range=1.0, padding="same", reduction="none")),
    "ms_ssim": _ssim(lambda p, t: pyaeplus.ms_ssim(p, t, data_range=1.0, win_size=3), (2, 1, 40, 41)),
    "ssim_map_reflect": _ssim(lambda p, t: pyaeplus.ssim_map(p, t, data_range=1.0, padding="reflect")),
    "ssim_loss": _ssim(lambda p, t: pyaeplus.functional.ssim_loss(p, t)),
    "l1_ssim_loss": _ssim(lambda p, t: pyaeplus.l1_ssim_loss(p, t, padding="replicate")),
    "ssim_5d": _ssim(lambda p, t: pyaeplus.ssim(p, t, data_range=1.0, win_size=3, padding="circular"),
                     (2, 1, 6, 9, 8)),
    "nn.SSIM": _ssim(lambda p, t: pnn.SSIM(data_range=1.0)(p, t)),
    "nn.MS_SSIM": _ssim(lambda p, t: pnn.MS_SSIM(data_range=1.0, win_size=3, channel=1)(p, t), (2, 1, 40, 41)),
    "nn.SSIMLoss": _ssim(lambda p, t: pnn.SSIMLoss()(p, t)),
    "nn.MS_SSIMLoss": _ssim(lambda p, t: pnn.MS_SSIMLoss(win_size=3)(p, t), (2, 1, 40, 41)),
    "nn.L1SSIMLoss": _ssim(lambda p, t: pnn.L1SSIMLoss()(p, t)),
    "topk_dense": _latents(lambda h, _: pyaeplus.topk_activation(h, 3, relu=True)),
    "topk_sparse": _latents(lambda h, _: pyaeplus.topk_activation(h, 3, output="sparse").values),
    "batch_topk_dense": _latents(lambda h, _: pyaeplus.topk_activation(h, 2, batch=True)),
    "batch_topk_csr": _latents(lambda h, _: pyaeplus.topk_activation(h, 2, batch=True, output="sparse",
                                                                     sparse_format="csr").values),
    "nn.TopK_eval_alpha": _latents(lambda h, _: pnn.TopK(2, alpha=2.0).eval()(h)),
    "sparse_decode": _sparse,
    "laplacian_loss": _laplacian(lambda z, g: pyaeplus.laplacian_loss(z, g)),
    "laplacian_loss_sym_mean": _laplacian(lambda z, g: pyaeplus.laplacian_loss(z, g, normalization="sym",
                                                                               reduction="mean")),
    "nn.LaplacianRegularizer_rw": _laplacian(lambda z, g: pnn.LaplacianRegularizer(lam=0.5, normalization="rw",
                                                                                   reduction="none")(z, g)),
}


def _step(fn, pred, target, amp):
    pred = pred.detach().requires_grad_()
    with torch.autocast(pred.device.type, dtype=torch.bfloat16, enabled=amp):
        out = fn(pred, target)
    out = out.values if hasattr(out, "values") and not isinstance(out, torch.Tensor) else out
    (out.float() * 1.5).sum().backward()
    return out


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_host_read_in_forward_and_backward(name, amp):
    fn, pred, target = CASES[name]("cpu")
    _step(fn, pred, target, amp)                      # first call: lazy imports, cached taps
    with host_reads() as counts:
        _step(fn, pred, target, amp)
    assert not counts, dict(counts)


def test_the_explicit_check_is_a_counted_read():
    """check_finite=True (per call or global) does read: the counter is not blind to it."""
    x, y = _images((1, 1, 16, 16))
    with host_reads() as counts:
        pyaeplus.ssim(x, y, data_range=1.0, check_finite=True)
    assert counts["__bool__"] >= 2
    with pyaeplus.config.checks(True), host_reads() as counts:
        pyaeplus.sparse_decode(torch.rand(2, 3), torch.randint(0, 5, (2, 3)), torch.randn(5, 4))
    assert counts["__int__"] >= 2 and counts["__bool__"] >= 1


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", [n for n in sorted(M.MODELS) if n != "laplacian"])
def test_no_host_read_in_a_model_training_step(name, amp):
    """Every model's loss() and backward (LaplacianAE excepted: extracting a batch's subgraph
    has a data-dependent size; see the README)."""
    from _zoo import X, build   # tests/_zoo.py

    model = build(name, "one-class" if name == "deep_svdd" else "ssim").train()
    batch = X[:16]
    for _ in range(2):                                # lazy state (OC-SVM gamma, window cache) settles
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model.loss(batch)["loss"].backward()
    with host_reads() as counts:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model.loss(batch)
        out["loss"].backward()
    assert not counts, dict(counts)


# ---- CUDA: the same runs with synchronising calls turned into errors -------------------------

@contextlib.contextmanager
def _sync_errors():
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_sync_on_cuda(name, amp, backend):
    from pyaeplus import backends

    if not backends.available().get(backend):
        pytest.skip(f"backend {backend} not available")
    with backends.use(backend):
        fn, pred, target = CASES[name]("cuda")
        _step(fn, pred, target, amp)
        torch.cuda.synchronize()
        with _sync_errors():
            _step(fn, pred, target, amp)
        torch.cuda.synchronize()
