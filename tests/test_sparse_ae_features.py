"""SparseAE's SAE training features: the fused top-k encoder, unit-norm decoder rows with the
parallel gradient removed (the two optimizer-step hooks, called by train.fit), AuxK on dead latents
from the gathered dead rows, the dead-latent count per epoch, BatchTopK with a learned inference
threshold, and old checkpoints loading into the new layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pyaeplus
from pyaeplus import models as M
from pyaeplus import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=64, f=144, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(n, 3, generator=g) @ torch.randn(3, f, generator=g))


def test_unit_norm_hooks_project_the_gradient_and_renormalize():
    torch.manual_seed(0)
    m = M.SparseAE(144, 40, k=5)
    assert m.unit_norm and m.config["unit_norm"] is True
    (2.0 * m.loss(_data())["loss"]).backward()
    w = m.decoder.weight.detach().clone()
    g = m.decoder.weight.grad.clone()
    m.on_before_optimizer_step()
    u = F.normalize(w, dim=1)
    torch.testing.assert_close(m.decoder.weight.grad, g - (g * u).sum(1, keepdim=True) * u)
    assert float((m.decoder.weight.grad * u).sum(1).abs().max()) < 1e-6     # no component along the rows
    assert float((g * u).sum(1).abs().max()) > 1e-4                         # there was one to remove
    torch.optim.SGD(m.parameters(), lr=5.0).step()
    assert float((m.decoder.weight.detach().norm(dim=1) - 1).abs().max()) > 1e-4
    m.on_after_optimizer_step()
    torch.testing.assert_close(m.decoder.weight.norm(dim=1), torch.ones(40))
    off = M.SparseAE(144, 40, k=5, unit_norm=False)
    (off.loss(_data())["loss"]).backward()
    g_off = off.decoder.weight.grad.clone()
    off.on_before_optimizer_step()
    assert torch.equal(off.decoder.weight.grad, g_off)                     # a no-op when off


def test_fit_calls_the_hooks_around_every_step():
    torch.manual_seed(0)
    x = _data(96)
    calls = []
    for unit_norm in (True, False):
        m = M.SparseAE(144, 40, k=5, unit_norm=unit_norm)
        before, after = m.on_before_optimizer_step, m.on_after_optimizer_step
        m.on_before_optimizer_step = lambda b=before: (calls.append("before"), b())
        m.on_after_optimizer_step = lambda a=after: (calls.append("after"), a())
        res = train.fit(m, x, epochs=2, batch_size=32, lr=0.05, progress=False)
        norms = m.decoder.weight.detach().norm(dim=1)
        if unit_norm:
            torch.testing.assert_close(norms, torch.ones(40))
        else:
            assert float((norms - 1).abs().max()) > 1e-3                   # the rows drift without it
        assert calls[-12:] == ["before", "after"] * 6                     # 2 epochs x 3 steps
        train_terms = res.history[-1]["train"]
        assert math.isclose(train_terms["dead_count"], 40 * train_terms["dead"], rel_tol=1e-6, abs_tol=1e-9)


def test_wrappers_forward_the_hooks():
    m = M.DenoisingAE(M.SparseAE(144, 30, k=4), std=0.1)
    with torch.no_grad():
        m.base.decoder.weight.mul_(3.0)
    m.on_after_optimizer_step()
    torch.testing.assert_close(m.base.decoder.weight.norm(dim=1), torch.ones(30))


def test_tied_weight_stays_tied_and_unit_norm():
    assert M.SparseAE(144, 24, k=4, tied=True).unit_norm is False           # off by default when tied
    m = M.SparseAE(144, 24, k=4, tied=True, unit_norm=True)
    m.loss(_data())["loss"].backward()
    m.on_before_optimizer_step()
    torch.optim.SGD(m.parameters(), lr=1.0).step()
    m.on_after_optimizer_step()
    assert m.encoder.weight is m.decoder.weight
    torch.testing.assert_close(m.encoder.weight.norm(dim=1), torch.ones(24))


def test_auxk_equals_the_dense_masked_formulation():
    # The dead rows are gathered and encoded alone; the result (and its gradient) equals taking
    # the top aux_k of the full pre-activation masked to the dead latents.
    torch.manual_seed(2)
    x = _data(32)
    m = M.SparseAE(144, 32, k=4, aux_k=6, dead_steps=10)
    m.steps_since_active[::3] = 100
    dead = m.dead_latents()
    xc = m._flat(x) - m.decoder.bias
    residual = torch.randn(32, 144)
    got = m._auxk(xc, residual)
    (g_got,) = torch.autograd.grad(got, m.encoder.weight)
    pre = m.pre_activation(x)
    masked = torch.where(dead, pre, torch.full_like(pre, -1e30))
    v, i = torch.topk(masked, 6)
    aux = F.embedding_bag(i, m.decoder.weight, per_sample_weights=torch.relu(v), mode="sum")
    want = ((aux - residual).square().mean(1) / residual.square().mean(1)).mean()
    (g_want,) = torch.autograd.grad(want, m.encoder.weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
    assert (g_got[~dead] == 0).all() and g_got[dead].abs().sum() > 0


def test_batch_topk_training_and_batch_independent_inference():
    torch.manual_seed(0)
    x = _data(48)
    m = M.SparseAE(144, 40, k=3, batch_topk=True, threshold_lr=0.25)
    assert (m.threshold < 0).all()                                         # not learned yet
    m.train()
    codes = m.encode(x)
    assert isinstance(codes, pyaeplus.BatchTopKCSR) and codes.values.shape == (3 * 48,)
    out = m.loss(x)
    first = float(codes.values.detach()[codes.values > 0].min())
    torch.testing.assert_close(m.threshold, torch.full((40,), first))       # the first batch sets it
    m.loss(x[:16])
    c2 = m.encode(x[:16])
    low = float(c2.values.detach()[c2.values > 0].min())
    torch.testing.assert_close(m.threshold, torch.full((40,), 0.75 * first + 0.25 * low))
    torch.testing.assert_close(out["loss"].detach(), out["recon"] + m.aux_coef * out["auxk"])
    # the reconstruction is the decoder applied to the CSR codes
    dense = m.dense_codes(x)
    torch.testing.assert_close(m.decode(codes).reshape(48, -1), dense @ m.decoder.weight + m.decoder.bias,
                               atol=1e-5, rtol=1e-5)
    # inference: a JumpReLU at the learned threshold, the same codes whatever the batch
    m.eval()
    full = m.dense_codes(x)
    part = m.dense_codes(x[5:9])
    torch.testing.assert_close(part, full[5:9])
    pre = m.pre_activation(x)
    torch.testing.assert_close(full, torch.where(pre > m.threshold, pre, torch.zeros_like(pre)))
    losses = [h["train"]["loss"] for h in train.fit(m, x, epochs=4, batch_size=16, lr=1e-2,
                                                   progress=False).history]
    assert losses[-1] < losses[0]
    rebuilt = M.build("sparse", **m.config)
    rebuilt.load_state_dict(m.state_dict())                                # the threshold is a buffer
    torch.testing.assert_close(rebuilt.threshold, m.threshold)


def test_batch_topk_under_autocast():
    m = M.SparseAE(144, 40, k=3, batch_topk=True)
    m.steps_since_active[::2] = 10 ** 6                                     # AuxK active too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.loss(_data(32))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in m.parameters())


def test_old_checkpoint_layout_loads():
    # The encoder was an nn.Linear: its state dict keys and shapes are the TopKEncoder's.
    m = M.SparseAE(144, 30, k=4)
    assert set(m.state_dict()) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias",
                                   "steps_since_active"}
    lin = torch.nn.Linear(144, 30)
    old = {f"encoder.{k}": v for k, v in lin.state_dict().items()}
    old.update({"decoder.weight": torch.randn(30, 144), "decoder.bias": torch.randn(144),
                "steps_since_active": torch.zeros(30, dtype=torch.int64)})
    m.load_state_dict(old)
    m.eval()
    x = _data(5)
    v, i = torch.topk(lin(x - old["decoder.bias"]), 4)
    ref = F.embedding_bag(i, old["decoder.weight"], per_sample_weights=torch.relu(v), mode="sum") + old["decoder.bias"]
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
    assert m.topk is m.encoder and m.topk.k == 4                            # the former submodule's name


def test_bad_arguments():
    with pytest.raises(TypeError, match="unit_norm must be a bool"):
        M.SparseAE(144, 20, k=2, unit_norm=1)
    with pytest.raises(ValueError, match="unit_norm=True is supported for sparsity='topk' only"):
        M.SparseAE(144, 20, sparsity="l1", unit_norm=True)
    with pytest.raises(ValueError, match="batch_topk=True is supported"):
        M.SparseAE(144, 20, sparsity="kl", batch_topk=True)
    with pytest.raises(ValueError, match="k_eval and alpha must be None"):
        M.SparseAE(144, 20, k=2, batch_topk=True, alpha=2.0)
    with pytest.raises(ValueError, match="threshold_lr must be > 0"):
        M.SparseAE(144, 20, k=2, batch_topk=True, threshold_lr=0.0)
    assert M.SparseAE(144, 20, sparsity="l1").unit_norm is False
