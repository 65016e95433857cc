"""The autoencoder zoo: training decreases each loss, shapes, configs, and the properties that
define each model (VAE KL, contractive Jacobian, Deep SVDD centre/radius/biases, OC-SVM ν)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import pyaeplus
from pyaeplus import models as M


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: one intra-op thread is faster than two, and far faster when the
    # machine is shared (OpenMP threads spin-waiting on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=64, shape=(1, 12, 12), seed=0):
    """Structured data in [0, 1]: a 3-d latent factor pushed through a fixed random map."""
    g = torch.Generator().manual_seed(seed)
    f = math.prod(shape)
    u = torch.randn(n, 3, generator=g)
    a = torch.randn(3, f, generator=g)
    return torch.sigmoid(u @ a).reshape(n, *shape)


def _train(model, x, steps=40, lr=1e-2, batch=None):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model.loss(x if batch is None else batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


FACTORIES = {
    "dense": lambda: M.DenseAE(144, [32], 6, input_shape=(1, 12, 12)),
    "dense_bce": lambda: M.DenseAE(144, [32], 6, output_activation="sigmoid", loss="bce"),
    "dense_mae_bn": lambda: M.DenseAE(144, [32], 6, loss="mae", batch_norm=True, dropout=0.1),
    "conv_max_nearest": lambda: M.ConvAE(1, [4, 8], 6, input_shape=(12, 12)),
    "conv_avg_transposed": lambda: M.ConvAE(1, [4, 8], 6, input_shape=(12, 12), pool="avg", upsample="transposed",
                                            padding_mode="reflect", output_activation="sigmoid"),
    "conv_stride_spatial": lambda: M.ConvAE(1, [4, 8], None, input_shape=(12, 12), pool="stride",
                                            padding_mode="replicate", batch_norm=True),
    "denoising_gauss": lambda: M.DenoisingAE(M.DenseAE(144, [32], 6), std=0.1),
    "denoising_mask": lambda: M.DenoisingAE({"name": "conv", "config": {"in_channels": 1, "channels": [4],
                                                                        "latent": 6, "input_shape": [12, 12]}},
                                            noise="masking", p=0.2),
    "contractive_closed": lambda: M.ContractiveAE(144, [], 8, lam=1e-2),
    "contractive_autograd": lambda: M.ContractiveAE(144, [8], 4, activation="tanh", lam=1e-2),
    "vae_dense": lambda: M.VAE("dense", 4, in_features=144, hidden=[32], output_activation="sigmoid", loss="bce"),
    "vae_conv": lambda: M.VAE("conv", 4, in_channels=1, channels=[4, 8], input_shape=(12, 12), beta=0.5),
    "deep_svdd_lenet": lambda: M.DeepSVDD((1, 12, 12), channels=[4, 2], rep_dim=8),
    "deep_svdd_dense_soft": lambda: M.DeepSVDD((144,), arch="dense", hidden=[32], rep_dim=8,
                                               objective="soft-boundary", nu=0.1),
    "deep_svdd_ae": lambda: M.DeepSVDD((1, 12, 12), channels=[4, 2], rep_dim=8).pretrain_autoencoder(),
    "deep_ocsvm": lambda: M.DeepOCSVM(M.DenseAE(144, [32], 6), nu=0.1, n_features=64),
    "sparse_topk": lambda: M.SparseAE(144, 48, k=6, alpha=1.5, dead_steps=5, input_shape=(1, 12, 12)),
    "sparse_topk_bce": lambda: M.SparseAE(144, 48, k=6, loss="bce", output_activation="sigmoid"),
    "sparse_l1": lambda: M.SparseAE(144, 32, sparsity="l1", l1=1e-3),
    "deep_ocsvm_on_topk": lambda: M.DeepOCSVM(M.SparseAE(144, 32, k=4), nu=0.1, n_features=64),
    "sparse_kl": lambda: M.SparseAE(144, 32, sparsity="kl", rho=0.1, beta=0.1),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_training_decreases_loss(name):
    x = _data()
    model = FACTORIES[name]()
    if isinstance(model, M.DeepSVDD):
        model.init_center(x)
    losses = _train(model, x)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # every model must really learn, not just wobble
    assert last < first - 0.1 * abs(first), (name, losses[:3], losses[-3:])
    out = model.loss((x, torch.zeros(len(x))))           # (x, y) batches work too
    assert "loss" in out and all(v.dim() == 0 for v in out.values())
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    s = model.score(x)
    assert s.shape == (len(x),) and torch.isfinite(s).all() and not s.requires_grad


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_config_round_trip(name):
    model = FACTORIES[name]()
    cfg = json.loads(json.dumps(model.config))           # JSON-able
    rebuilt = M.build(model.model_name, **cfg)
    rebuilt.load_state_dict(model.state_dict())
    assert M.MODELS[model.model_name] is type(model)
    model.eval()
    rebuilt.eval()
    x = _data(8)
    if isinstance(model, M.DeepSVDD):
        torch.testing.assert_close(rebuilt(x), model(x))
    else:
        torch.testing.assert_close(rebuilt.encode(x), model.encode(x))
        torch.testing.assert_close(rebuilt(x), model(x))
    # no tensor is registered twice (safetensors refuses shared storage)
    ptrs = [t.data_ptr() for t in model.state_dict().values() if t.numel()]
    assert len(ptrs) == len(set(ptrs))


# ---- shapes -------------------------------------------------------------------------------

def test_dense_shapes():
    m = M.DenseAE(144, [32, 16], 5, input_shape=(1, 12, 12))
    x = _data(7)
    assert m.encode(x).shape == (7, 5)
    assert m.decode(m.encode(x)).shape == (7, 1, 12, 12)
    assert m(x).shape == x.shape
    assert m(x.reshape(7, 144)).shape == (7, 144)


@pytest.mark.parametrize("pool", ["max", "avg", "stride"])
@pytest.mark.parametrize("upsample", ["nearest", "transposed"])
@pytest.mark.parametrize("hw", [(28, 28), (13, 9), (7, 16)])
def test_conv_any_size(pool, upsample, hw):
    m = M.ConvAE(2, [3, 4, 5], 7, input_shape=hw, pool=pool, upsample=upsample, padding_mode="circular")
    x = torch.randn(3, 2, *hw)
    assert m.encode(x).shape == (3, 7)
    assert m(x).shape == x.shape


def test_conv_sizes_and_spatial_latent():
    m = M.ConvAE(1, [4, 4, 4], None, input_shape=(28, 28))
    assert m.sizes == [(28, 28), (14, 14), (7, 7), (4, 4)]
    x = torch.randn(2, 1, 28, 28)
    assert m.encode(x).shape == (2, 4, 4, 4)
    assert m(x).shape == x.shape


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv_padding_mode_is_used(padding_mode):
    m = M.ConvAE(1, [2], 3, input_shape=(6, 6), padding_mode=padding_mode)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(c.padding_mode == padding_mode for c in convs)


def test_conv_too_small_input_is_rejected_at_build():
    with pytest.raises(ValueError, match="input_shape"):
        M.ConvAE(1, [4, 4, 4, 4], 8, input_shape=(5, 5))
    with pytest.raises(ValueError, match="reflect"):
        M.ConvAE(1, [4, 4], 8, input_shape=(3, 3), padding_mode="reflect", kernel_size=3)
    with pytest.raises(ValueError, match="input_shape"):
        M.ConvAE(1, [4], 8)


# ---- bad input ----------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    m = M.DenseAE(144, [16], 4, input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="x must have shape"):
        m.score(torch.randn(3, 10))
    with pytest.raises(ValueError, match="batch must have shape"):
        m.loss((torch.randn(3, 10), torch.zeros(3)))
    with pytest.raises(TypeError, match="x must have dtype"):
        m.loss(torch.zeros(3, 144, dtype=torch.int64))
    bad = torch.rand(3, 144)
    bad[1, 2] = float("nan")
    with pyaeplus.config.checks(True), pytest.raises(ValueError, match="x contains 1 NaN"):
        m.loss(bad)
    assert torch.isnan(m.loss(bad)["loss"])      # default "auto": no data read, NaN reaches the loss
    with pytest.raises(ValueError, match="must not be empty"):
        m.loss(torch.rand(0, 144))
    with pytest.raises(TypeError, match="batch must be"):
        m.loss("abc")
    with pytest.raises(TypeError, match="x has dtype float64 but the model's parameters are float32"):
        m.score(torch.rand(3, 144, dtype=torch.float64))
    with pytest.raises(ValueError, match="x is on cpu but the model is on meta"):
        M.DenseAE(144, [16], 4).to("meta").loss(torch.rand(3, 144))
    c = M.ConvAE(1, [4], 4, input_shape=(12, 12))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 12, 12\)"):
        c.score(torch.randn(2, 1, 12, 11))


@pytest.mark.parametrize("build, match", [
    (lambda: M.DenseAE(144, [16], 4, loss="huber"), "loss must be one of"),
    (lambda: M.DenseAE(144, [16], 4, loss="bce"), "output_activation='sigmoid'"),
    (lambda: M.DenseAE(144, [16], 4, loss="ssim"), "image input_shape"),
    (lambda: M.DenseAE(144, [16], 0), "latent must be >= 1"),
    (lambda: M.DenseAE(144, [16, -1], 4), r"hidden\[1\] must be >= 1"),
    (lambda: M.DenseAE(144, [16], 4, input_shape=(1, 12, 11)), "in_features"),
    (lambda: M.DenseAE(144, [16], 4, activation="swish"), "activation must be one of"),
    (lambda: M.ConvAE(1, [4], 4, input_shape=(8, 8), kernel_size=4), "kernel_size must be odd"),
    (lambda: M.ConvAE(1, [4], 4, input_shape=(8, 8), pool="min"), "pool must be one of"),
    (lambda: M.ConvAE(1, [4], 4, input_shape=(8, 8), upsample="bilinear"), "upsample must be one of"),
    (lambda: M.ConvAE(1, [4], 4, input_shape=(8, 8), padding_mode="mirror"), "padding_mode must be one of"),
    (lambda: M.ConvAE(1, [4], 4, input_shape=(3, 8, 8)), "in_channels"),
    (lambda: M.ConvAE(1, [], 4, input_shape=(8, 8)), "channels must not be empty"),
    (lambda: M.VAE("dense", 4, in_features=8, latent_activation="relu"), "latent"),
    (lambda: M.VAE("rnn", 4), "arch must be one of"),
    (lambda: M.VAE("dense", 4, in_features=8, beta=-1), "beta must be >= 0"),
    (lambda: M.ContractiveAE(8, [], 4, lam=-1.0), "lam must be >= 0"),
    (lambda: M.DenoisingAE(M.DenseAE(8, [], 2), noise="pink"), "noise must be one of"),
    (lambda: M.DenoisingAE(M.DenseAE(8, [], 2), p=1.5), "p must be in"),
    (lambda: M.DenoisingAE(torch.nn.Linear(2, 2)), "base must be"),
    (lambda: M.DeepSVDD((1, 12, 12), nu=0.0), "nu must be in"),
    (lambda: M.DeepSVDD((1, 12, 12), objective="hinge"), "objective must be one of"),
    (lambda: M.DeepSVDD((144,)), "arch='lenet' needs an image"),
    (lambda: M.DeepSVDD((1, 3, 3), channels=[4, 4]), "cannot be pooled"),
    (lambda: M.DeepOCSVM(M.DenseAE(8, [], 2), nu=1.5), "nu must be in"),
    (lambda: M.DeepOCSVM(M.DenseAE(8, [], 2), gamma=0.0), "gamma must be > 0"),
    (lambda: M.build("transformer"), "name must be one of"),
])
def test_bad_constructor_arguments(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


# ---- denoising ----------------------------------------------------------------------------

def test_denoising_noise_only_in_training():
    base = M.DenseAE(144, [16], 4)
    m = M.DenoisingAE(base, noise="gaussian", std=0.5)
    x = _data(16)
    m.eval()
    torch.testing.assert_close(m.loss(x)["loss"], base.loss(x)["loss"])
    torch.testing.assert_close(m.score(x), base.score(x))
    m.train()
    base.train()
    assert not torch.allclose(m.loss(x)["loss"], base.loss(x)["loss"])


def test_denoising_corruptions():
    x = torch.rand(200, 50) * 0.5 + 0.25
    mask = M.DenoisingAE(M.DenseAE(50, [], 2), noise="masking", p=0.3).corrupt(x)
    frac = float((mask == 0).float().mean())
    assert abs(frac - 0.3) < 0.03 and torch.equal(mask[mask != 0], x[mask != 0])
    sp = M.DenoisingAE(M.DenseAE(50, [], 2), noise="salt_pepper", p=0.2, clip=(0.0, 1.0)).corrupt(x)
    assert abs(float(((sp == 0) | (sp == 1)).float().mean()) - 0.2) < 0.03
    g = M.DenoisingAE(M.DenseAE(50, [], 2), std=0.1, clip=(0.0, 1.0)).corrupt(x)
    assert abs(float((g - x).std()) - 0.1) < 0.01 and g.min() >= 0 and g.max() <= 1


# ---- contractive --------------------------------------------------------------------------

def _fd_jacobian_norm(model, x, h=1e-6):
    """‖∂h/∂x‖²_F per sample by central finite differences (float64)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for i in range(x.shape[1]):
            e = torch.zeros_like(x)
            e[:, i] = h
            col = (model.encode(x + e) - model.encode(x - e)) / (2 * h)     # (B, d) = column i of J
            out += col.square().sum(1)
    return out


@pytest.mark.parametrize("hidden, act, expect_closed", [([], "sigmoid", True), ([7], "tanh", False),
                                                         ([5, 4], "elu", False)])
def test_contractive_penalty_matches_finite_differences(hidden, act, expect_closed):
    m = M.ContractiveAE(9, hidden, 4, activation=act).double()
    assert m.closed_form is expect_closed
    x = torch.randn(6, 9, dtype=torch.float64)
    pen = m.jacobian_penalty(x)
    torch.testing.assert_close(pen, _fd_jacobian_norm(m, x), rtol=1e-6, atol=1e-9)
    # the closed form and the autograd Jacobian agree on the same weights
    auto = M.ContractiveAE(9, hidden, 4, activation=act, jacobian="autograd").double()
    auto.load_state_dict(m.state_dict())
    assert not auto.closed_form
    torch.testing.assert_close(auto.jacobian_penalty(x), pen, rtol=1e-10, atol=1e-12)


class _Penalty(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.jacobian_penalty(x)


@pytest.mark.parametrize("hidden", [[], [7]])
def test_contractive_penalty_gradient(hidden):
    """The penalty is differentiable w.r.t. the encoder weights (closed form and double backward)."""
    m = M.ContractiveAE(9, hidden, 4, activation="tanh" if hidden else "sigmoid").double()
    x = torch.randn(5, 9, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters() if n.startswith("encoder")]
    wrapper = _Penalty(m)
    vals = tuple(dict(m.named_parameters())[n].detach().clone().requires_grad_(True) for n in names)

    def f(*v):
        return torch.func.functional_call(wrapper, {f"m.{n}": t for n, t in zip(names, v)}, (x,))

    assert torch.autograd.gradcheck(f, vals)
    out = m.loss(x)
    assert float(out["contractive"]) > 0
    torch.testing.assert_close(out["loss"].detach(), out["recon"] + m.lam * out["contractive"])


# ---- VAE ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_vae_kl_is_there_and_matches_closed_form(arch):
    kw = dict(in_features=144, hidden=[16]) if arch == "dense" else dict(in_channels=1, channels=[4], input_shape=(12, 12))
    m = M.VAE(arch, 5, beta=2.0, **kw)
    x = _data(10)
    mu, logvar = m.encode_dist(x)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl_ref = torch.distributions.kl_divergence(q, p).sum(1)
    torch.manual_seed(3)
    out = m.loss(x)
    assert float(out["kl"]) > 0
    torch.testing.assert_close(out["kl"], kl_ref.mean().detach())
    torch.testing.assert_close(out["loss"], out["recon"] + 2.0 * out["kl"])
    # score is the negative ELBO (β = 1) with the posterior mean decoded: recon(sum) + KL
    m.eval()
    s = m.score(x)
    rec = (m.decode(mu).reshape(10, -1) - x.reshape(10, -1)).square().sum(1)
    torch.testing.assert_close(s, (rec + kl_ref).detach())
    torch.testing.assert_close(m.score(x), s)  # deterministic
    mc = m.score(x, n_samples=4)
    assert mc.shape == (10,) and (mc >= kl_ref.detach() - 1e-5).all()


def test_vae_kl_trains_towards_prior_and_samples_in_training():
    m = M.VAE("dense", 3, in_features=144, hidden=[16], beta=1.0)
    x = _data(32)
    m.train()
    assert not torch.equal(m(x), m(x))          # reparameterized samples
    m.eval()
    assert torch.equal(m(x), m(x))
    with torch.no_grad():
        m.logvar_head.bias.fill_(2.0)           # far from the prior
    kl0 = float(m.loss(x)["kl"])
    _train(m, x, steps=30)
    assert float(m.loss(x)["kl"]) < kl0


# ---- Deep SVDD ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["lenet", "dense"])
def test_deep_svdd_has_no_bias_at_all(arch):
    shape = (1, 12, 12) if arch == "lenet" else (144,)
    m = M.DeepSVDD(shape, arch=arch, channels=[4, 2], hidden=[16, 8], rep_dim=8)
    names = [n for n, _ in m.named_parameters()]
    assert names and not any("bias" in n for n in names)
    for mod in m.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            assert mod.bias is None
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert not mod.affine
    ae = m.pretrain_autoencoder()
    assert not any("bias" in n for n, _ in ae.named_parameters())


def test_deep_svdd_centre_not_collapsed():
    m = M.DeepSVDD((1, 12, 12), channels=[4, 2], rep_dim=16, eps=0.1)
    x = _data(40)
    loader = [(x[i:i + 16], torch.zeros(len(x[i:i + 16]))) for i in range(0, 40, 16)]
    c = m.init_center(loader)
    m.eval()
    with torch.no_grad():
        mean = m(x).mean(0)
    far = mean.abs() >= 0.1
    torch.testing.assert_close(c[far], mean[far])
    assert (c.abs() >= 0.1 - 1e-7).all()
    assert torch.equal(c[~far], torch.where(mean[~far] < 0, -0.1, 0.1))
    # training keeps φ away from a collapsed constant: distances shrink but stay positive
    m.train()
    _train(m, x, steps=20)
    assert float(m.score(x).min()) > 0


def test_deep_svdd_lazy_centre_warns():
    m = M.DeepSVDD((144,), arch="dense", hidden=[8], rep_dim=4)
    with pytest.warns(RuntimeWarning, match="centre"):
        m.loss(_data(8))
    assert bool(m.center_ready)
    m2 = M.DeepSVDD((144,), arch="dense", hidden=[8], rep_dim=4)
    m2.on_train_begin([_data(8)])
    assert bool(m2.center_ready)


def test_deep_svdd_soft_boundary_radius_is_the_quantile():
    m = M.DeepSVDD((144,), arch="dense", hidden=[16], rep_dim=8, objective="soft-boundary", nu=0.2,
                   warm_up_epochs=2, radius_every=2)
    x = _data(50)
    m.init_center(x)
    m.on_epoch_end(0, [x])
    assert float(m.R) == 0.0                       # still warming up
    bn_before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    m.on_epoch_end(1, [x[:25], x[25:]])
    for k, v in bn_before.items():                 # the update leaves BatchNorm's running stats alone
        assert torch.equal(m.state_dict()[k], v)
    m.eval()
    with torch.no_grad():
        m.train()                                  # R is taken from training-mode distances, batch by batch
        d = torch.cat([(m(b) - m.c).square().sum(1).sqrt() for b in (x[:25], x[25:])])
        m.load_state_dict({**m.state_dict(), **bn_before})
    expect = torch.quantile(d.double(), 0.8)
    assert float(m.R) > 0
    assert math.isclose(float(m.R), float(expect), rel_tol=1e-5)
    assert abs(float((d > m.R).float().mean()) - 0.2) <= 0.03
    r = float(m.R)
    with torch.no_grad():
        m.net.fc.weight.mul_(2.0)
    m.on_epoch_end(2, [x])                         # not an update epoch (every 2 after warm-up)
    assert float(m.R) == r
    m.on_epoch_end(3, [x])
    assert float(m.R) != r
    with torch.no_grad():
        d = (m(x) - m.c).square().sum(1).sqrt()    # training mode, one batch
        m.load_state_dict({**m.state_dict(), **bn_before})
    assert math.isclose(float(m.R), float(torch.quantile(d.double(), 0.8)), rel_tol=1e-5)
    assert math.isclose(m.update_radius(x, mode="eval"),
                        float(torch.quantile(m.eval()._distances(x).sqrt().double(), 0.8)), rel_tol=1e-5)
    with pytest.raises(ValueError, match="mode must be one of"):
        m.update_radius(x, mode="test")
    # loss = R² + 1/ν · mean(max(0, d² − R²)); score = d² − R²
    m.train()
    assert float(m.loss(x)["radius"]) == float(m.R)


def test_deep_svdd_soft_boundary_loss_formula():
    m = M.DeepSVDD((144,), arch="dense", hidden=[16], rep_dim=8, objective="soft-boundary", nu=0.25).eval()
    x = _data(20)
    m.init_center(x)
    m.R.fill_(0.3)
    d2 = (m(x) - m.c).square().sum(1)
    expect = 0.09 + torch.relu(d2 - 0.09).mean() / 0.25
    torch.testing.assert_close(m.loss(x)["loss"], expect)
    torch.testing.assert_close(m.score(x), d2.detach() - 0.09)


def test_deep_svdd_pretraining_initialises_the_network():
    m = M.DeepSVDD((1, 12, 12), channels=[4, 2], rep_dim=8)
    ae = m.pretrain_autoencoder()
    assert ae.net is m.net
    before = m.net.fc.weight.detach().clone()
    x = _data(32)
    losses = _train(ae, x, steps=20)
    assert losses[-1] < losses[0]
    assert not torch.equal(before, m.net.fc.weight)            # trained in place
    # a separately built (e.g. restored) autoencoder is copied in
    ae2 = M.build("deep_svdd_ae", **ae.config)
    m.load_pretrained(ae2)
    assert torch.equal(m.net.fc.weight, ae2.net.fc.weight) and not bool(m.center_ready)
    with pytest.raises(TypeError, match="ae must be"):
        m.load_pretrained(M.DenseAE(144, [], 2))
    with pytest.raises(TypeError, match="no decoder"):
        m.decode(torch.zeros(2, 8))


# ---- Deep OC-SVM --------------------------------------------------------------------------

def test_rff_approximates_the_rbf_kernel():
    m = M.DeepOCSVM(M.DenseAE(6, [], 3), gamma=0.7, n_features=8192, seed=1)
    z = torch.randn(5, 3)
    f = m.features(z)
    k = torch.exp(-0.7 * torch.cdist(z, z).square())
    assert (f @ f.T - k).abs().max() < 0.05
    assert {n for n, _ in m.named_parameters()} >= {"w", "rho"}
    assert "omega" in dict(m.named_buffers()) and "omega" not in dict(m.named_parameters())
    m2 = M.DeepOCSVM(M.DenseAE(6, [], 3), gamma=0.7, n_features=8192, seed=1)
    assert torch.equal(m.omega, m2.omega)                      # seeded


@pytest.mark.parametrize("nu", [0.05, 0.2])
def test_deep_ocsvm_uses_nu(nu):
    torch.manual_seed(0)
    x = torch.randn(300, 4)
    x[:30] *= 3.0                                              # a few far-out points
    m = M.DeepOCSVM(M.DenseAE(4, [], 2, activation="identity"), nu=nu, gamma=0.5, n_features=256,
                    recon_weight=0.0)
    _train(m, x, steps=600, lr=2e-2)
    m.eval()
    s = m.score(x)
    outside = float((s > 0).float().mean())
    assert abs(outside - nu) < 0.05, (nu, outside)
    # the margin, not the reconstruction, ranks the points: far-out points score higher
    assert float(s[:30].mean()) > float(s[30:].mean())
    torch.testing.assert_close(s, -m.margin(x).detach())


def test_deep_ocsvm_gamma_scale():
    m = M.DeepOCSVM(M.DenseAE(6, [4], 3), n_features=16)
    x = torch.randn(50, 6)
    with pytest.raises(RuntimeError, match="gamma='scale' is not resolved"):
        m.score(x)
    m.eval()
    with torch.no_grad():
        z = m.encode(x)
    g = m.init_gamma([x[:20], (x[20:], torch.zeros(30))])
    assert math.isclose(g, 1.0 / (3 * float(z.var(unbiased=False))), rel_tol=1e-5)
    assert m.config["gamma"] == "scale" and math.isclose(float(m.gamma), g)
    m2 = M.DeepOCSVM(M.DenseAE(6, [4], 3), n_features=16)
    m2.load_state_dict(m.state_dict())                 # a checkpoint keeps the resolved gamma
    assert m2.score(x).shape == (50,)
    m3 = M.DeepOCSVM(M.DenseAE(6, [4], 3), n_features=16)
    m3.loss(x)                                         # the first training batch resolves it
    assert float(m3.gamma) > 0


def test_deep_ocsvm_loss_is_the_primal_objective():
    m = M.DeepOCSVM(M.DenseAE(4, [], 2), nu=0.3, n_features=32, recon_weight=0.5, gamma=0.5)
    with torch.no_grad():
        m.w.normal_()
        m.rho.fill_(0.2)
    x = torch.randn(20, 4)
    f = m.features(m.encode(x))
    svm = 0.5 * m.w.square().sum() + torch.relu(m.rho - f @ m.w).sum() / (0.3 * 20) - m.rho
    out = m.loss(x)
    torch.testing.assert_close(out["svm"], svm.detach())
    torch.testing.assert_close(out["loss"], svm + 0.5 * out["recon"])
    # detach_latent: the SVM term leaves the encoder alone
    m2 = M.DeepOCSVM(M.DenseAE(4, [], 2), nu=0.3, n_features=32, recon_weight=0.0, gamma=0.5)
    m2.loss(x)["loss"].backward()
    assert all(p.grad is None for p in m2.base.parameters())


# ---- sparse autoencoders ------------------------------------------------------------------

def test_sparse_topk_matches_plain_torch_and_uses_alpha_at_eval():
    m = M.SparseAE(144, 40, k=5, alpha=2.0, input_shape=(1, 12, 12))
    x = _data(9)
    with torch.no_grad():
        m.decoder.bias.normal_()
        m.encoder.bias.normal_()
    pre = torch.nn.functional.linear(x.reshape(9, 144) - m.decoder.bias, m.encoder.weight, m.encoder.bias)
    torch.testing.assert_close(m.pre_activation(x), pre)
    for training, k in ((True, 5), (False, 10)):
        m.train(training)
        v, i = torch.topk(pre, k, dim=1)
        dense = torch.zeros_like(pre).scatter(1, i, torch.relu(v))
        ref = (dense @ m.decoder.weight + m.decoder.bias).reshape(9, 1, 12, 12)
        codes = m.encode(x)
        assert codes.values.shape == (9, k) and codes.indices.shape == (9, k)
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.dense_codes(x), dense)
        assert int((m.dense_codes(x) != 0).sum(1).max()) <= k
    # decoder rows start at unit norm and the encoder is tied to them
    fresh = M.SparseAE(20, 30, k=3)
    torch.testing.assert_close(fresh.decoder.weight.norm(dim=1), torch.ones(30))
    torch.testing.assert_close(fresh.encoder.weight, fresh.decoder.weight)


def test_sparse_topk_tied_weights_share_one_parameter():
    x = _data(7)
    tied = M.SparseAE(144, 24, k=4, input_shape=(1, 12, 12), tied=True)
    assert tied.encoder.weight is tied.decoder.weight
    assert len(list(tied.parameters())) == 3                             # W, b_enc, b_dec
    # the same weights untied: the tied gradient is the sum of the encoder and decoder gradients
    free = M.SparseAE(144, 24, k=4, input_shape=(1, 12, 12))
    free.load_state_dict(tied.state_dict())
    for m in (tied, free):
        m.train()
        (3.0 * m.loss(x)["loss"]).backward()                               # a loss that is not last
    torch.testing.assert_close(tied.decoder.weight.grad, free.encoder.weight.grad + free.decoder.weight.grad)
    opt = torch.optim.SGD(tied.parameters(), lr=0.1)
    opt.step()
    assert tied.encoder.weight is tied.decoder.weight
    # rebuilt from config (and a state dict) it stays tied
    again = M.build("sparse", **tied.config)
    again.load_state_dict(tied.state_dict())
    assert again.encoder.weight is again.decoder.weight
    torch.testing.assert_close(again.decoder.weight, tied.decoder.weight)
    with pytest.raises(ValueError, match="tied"):
        M.SparseAE(144, 24, sparsity="l1", tied=True)
    with pytest.raises(TypeError, match="tied"):
        M.SparseAE(144, 24, k=4, tied=1)


def test_sparse_auxk_revives_dead_latents():
    x = _data(32)
    torch.manual_seed(1)
    m = M.SparseAE(144, 32, k=4, aux_k=8, dead_steps=50)
    m.train()
    out = m.loss(x)
    assert float(out["auxk"]) == 0.0 and float(out["dead"]) == 0.0      # nobody is dead yet
    grads = {}
    for coef in (0.0, 1 / 32):
        m2 = M.build("sparse", **dict(m.config, aux_coef=coef))
        m2.load_state_dict(m.state_dict())
        m2.steps_since_active[16:] = 1000                               # latents 16.. are dead
        out = m2.loss(x)
        dead = m2.dead_latents()
        assert dead[16:].any() and not dead[:16].any()
        assert float(out["auxk"]) > 0
        assert math.isclose(float(out["dead"]), float(dead.float().mean()))
        torch.testing.assert_close(out["loss"].detach(), out["recon"] + coef * out["auxk"])
        out["loss"].backward()
        grads[coef] = m2.encoder.weight.grad[dead].abs().sum(1)
    assert float(grads[0.0].sum()) == 0.0                                 # only AuxK reaches them
    assert float(grads[1 / 32].sum()) > 0
    # activity bookkeeping: training steps only
    m.eval()
    before = m.steps_since_active.clone()
    m.loss(x)
    assert torch.equal(before, m.steps_since_active)


def test_sparse_l1_and_kl_terms():
    x = _data(16)
    m = M.SparseAE(144, 20, sparsity="l1", l1=0.01)
    h = torch.relu(m.encoder(x.reshape(16, -1)))
    out = m.loss(x)
    torch.testing.assert_close(out["l1"], h.abs().sum(1).mean().detach())
    torch.testing.assert_close(out["loss"].detach(), out["recon"] + 0.01 * out["l1"])
    k = M.SparseAE(144, 20, sparsity="kl", rho=0.05, beta=0.5)
    h = torch.sigmoid(k.encoder(x.reshape(16, -1))).mean(0)
    kl = (0.05 * torch.log(0.05 / h) + 0.95 * torch.log(0.95 / (1 - h))).sum()
    out = k.loss(x)
    torch.testing.assert_close(out["kl"], kl.detach())
    assert float(out["kl"]) > 0
    with pytest.raises(ValueError, match="k must be <= 20"):
        M.SparseAE(144, 20, k=21)
    with pytest.raises(ValueError, match="sparsity must be one of"):
        M.SparseAE(144, 20, sparsity="l0")
    with pytest.raises(ValueError, match="rho must be in"):
        M.SparseAE(144, 20, sparsity="kl", rho=1.0)


# ---- Laplacian autoencoder ----------------------------------------------------------------

def _laplacian_setup(lam=1.0, base=None):
    from torch.utils.data import DataLoader

    x = _data(120)
    graph = M.LaplacianAE.knn_graph_of(x, 6)
    base = base or M.ConvAE(1, [4, 8], 6, input_shape=(12, 12))
    m = M.LaplacianAE(base, lam=lam, graph=graph)
    loader = DataLoader(M.IndexedDataset(x), batch_sampler=m.sampler(40, neighbors=4, seed=0))
    return x, graph, m, loader


def test_laplacian_ae_trains_on_neighbour_batches():
    x, graph, m, loader = _laplacian_setup(lam=0.5)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    epochs = []
    for _ in range(6):
        tot = []
        for batch in loader:
            out = m.loss(batch)
            assert float(out["edges"]) > 0                 # the sampler puts neighbours together
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            tot.append(float(out["loss"].detach()))
        epochs.append(sum(tot) / len(tot))
    assert epochs[-1] < 0.8 * epochs[0]
    assert m.score(x).shape == (120,)


def test_laplacian_term_is_the_weighted_graph_penalty():
    x, graph, m, loader = _laplacian_setup(lam=0.7)
    xb, idx = next(iter(loader))
    out = m.loss((xb, idx))
    z = m.encode(xb).detach()
    w = graph.subgraph(idx).to_dense()
    d2 = torch.cdist(z, z).square()
    expect = 0.7 * (w * d2).sum() / (w != 0).sum()          # reduction="mean": per stored edge
    torch.testing.assert_close(out["laplacian"], expect, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"].detach(), out["recon"] + out["laplacian"])


@pytest.mark.parametrize("base", [lambda: M.VAE("dense", 4, in_features=144, hidden=[16]),
                                  lambda: M.SparseAE(144, 32, k=4),
                                  lambda: M.DenoisingAE(M.DenseAE(144, [16], 4))])
def test_laplacian_wraps_the_whole_objective_of_any_model(base):
    x, graph, m, loader = _laplacian_setup(lam=0.3, base=base())
    batch = next(iter(loader))
    torch.manual_seed(5)
    out = m.loss(batch)
    torch.manual_seed(5)
    inner = m.base.loss(batch[0])
    for k, v in inner.items():
        if k != "loss":
            torch.testing.assert_close(out[k], v)           # e.g. the VAE's KL is still there
    torch.testing.assert_close(out["loss"].detach(), inner["loss"].detach() + out["laplacian"])
    out["loss"].backward()
    rebuilt = M.build("laplacian", **json.loads(json.dumps(m.config)))
    assert rebuilt.graph is None


def test_laplacian_bad_batches():
    x, graph, m, loader = _laplacian_setup()
    with pytest.raises(ValueError, match="idx"):
        m.loss(x[:8])
    with pytest.raises(ValueError, match="idx"):
        m.loss((x[:8], torch.arange(7)))
    with pytest.raises(ValueError, match="idx"):
        m.loss({"x": x[:8], "y": torch.arange(8)})      # labels are not node indices
    assert torch.isfinite(m.loss({"x": x[:8], "idx": torch.arange(8)})["loss"])
    with pytest.raises(RuntimeError, match="no graph"):
        M.LaplacianAE(M.DenseAE(144, [], 2)).loss((x[:8], torch.arange(8)))
    with pytest.raises(TypeError, match="graph must be"):
        M.LaplacianAE(M.DenseAE(144, [], 2), graph="knn")
    with pytest.raises(TypeError, match="scale_invariant"):
        M.LaplacianAE(M.DenseAE(144, [], 2), scale_invariant=1)


def test_laplacian_scale_invariant_ignores_the_latent_scale():
    # Without it, shrinking every latent by c shrinks the penalty by c^2: the encoder can satisfy
    # the regularizer without arranging neighbours (it collapsed the latents on MNIST).
    x = _data(120)
    graph = M.LaplacianAE.knn_graph_of(x, 6)
    idx = torch.arange(0, 120, 3)
    xb = x[idx]
    for inv in (False, True):
        torch.manual_seed(0)
        m = M.LaplacianAE(M.DenseAE(144, [16], 4), lam=0.7, graph=graph, scale_invariant=inv)
        lap = m.loss((xb, idx))["laplacian"]
        z = m.encode(xb).detach()
        w = graph.subgraph(idx).to_dense()
        expect = 0.7 * (w * torch.cdist(z, z).square()).sum() / (w != 0).sum()
        if inv:
            expect = expect / torch.cdist(z, z).square().mean()     # mean over all ordered pairs
        torch.testing.assert_close(lap, expect, rtol=1e-4, atol=1e-6)
        with torch.no_grad():                                        # latents x 0.1
            last = [mod for mod in m.base.encoder.modules() if isinstance(mod, torch.nn.Linear)][-1]
            last.weight.mul_(0.1)
            last.bias.mul_(0.1)
        out = m.loss((xb, idx))
        torch.testing.assert_close(out["laplacian"], lap * (1.0 if inv else 0.01), rtol=1e-4, atol=1e-7)
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        rebuilt = M.build("laplacian", **json.loads(json.dumps(m.config)))
        assert rebuilt.scale_invariant is inv


# ---- image losses (fused SSIM kernels) ----------------------------------------------------

def _need(name):
    from pyaeplus import nn as pnn

    if not hasattr(pnn, name):
        pytest.skip(f"pyaeplus.nn.{name} is not available in this build")
    return getattr(pnn, name)


@pytest.mark.parametrize("loss, module", [("ssim", "SSIMLoss"), ("l1_ssim", "L1SSIMLoss")])
def test_image_losses_train_and_score_with_the_fused_kernels(loss, module):
    cls = _need(module)
    x = _data(16, shape=(2, 16, 16))
    m = M.ConvAE(2, [4, 8], 8, input_shape=(16, 16), output_activation="sigmoid", loss=loss,
                 loss_options={"win_size": 7, "padding": "reflect"})
    assert isinstance(m.ssim_loss, cls)
    losses = _train(m, x, steps=25)
    assert losses[-1] < losses[0]
    m.eval()
    s = m.score(x)
    ref = cls(data_range=1.0, win_size=7, padding="reflect", reduction="none")(m(x), x)
    torch.testing.assert_close(s, ref.detach())
    assert M.build("conv", **json.loads(json.dumps(m.config))).ssim_loss is not None


def test_ms_ssim_loss_and_bad_loss_options():
    cls = _need("MS_SSIM")
    x = _data(2, shape=(1, 48, 48))
    m = M.DenseAE(48 * 48, [8], 4, input_shape=(1, 48, 48), output_activation="sigmoid", loss="ms_ssim",
                  loss_options={"win_size": 3})
    m.eval()
    ref = 1 - cls(data_range=1.0, win_size=3, channel=1, reduction="none")(m(x), x)
    torch.testing.assert_close(m.score(x), ref.detach())
    m.loss(x)["loss"].backward()
    assert m.decoder[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="loss_options"):
        M.ConvAE(1, [4], 4, input_shape=(16, 16), loss="ssim", loss_options={"window_size": 7})
    with pytest.raises(ValueError, match="loss_options"):
        M.ConvAE(1, [4], 4, input_shape=(16, 16), loss="mse", loss_options={"win_size": 7})
    with pytest.raises(TypeError, match="loss_options"):
        M.ConvAE(1, [4], 4, input_shape=(16, 16), loss="ssim", loss_options=[7])


# ---- torch.compile ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["conv_avg_transposed", "vae_conv", "contractive_closed", "deep_svdd_dense_soft",
                                  "deep_ocsvm"])
def test_loss_compiles_without_graph_breaks(name, backend):
    torch._dynamo.reset()
    model = FACTORIES[name]()
    x = _data(8)
    if isinstance(model, M.DeepSVDD):
        model.init_center(x)
    if isinstance(model, M.DeepOCSVM):
        model.init_gamma(x)
    model.eval()                      # deterministic (no dropout / noise / sampling) for comparison
    loss = torch.compile(lambda b: model.loss(b)["loss"], fullgraph=True, backend=backend)
    got = loss(x)
    if isinstance(model, M.VAE):      # the loss draws a posterior sample; compiled RNG streams differ
        assert torch.isfinite(got) and got.requires_grad
    else:
        torch.testing.assert_close(got, model.loss(x)["loss"], rtol=1e-4, atol=1e-5)
    score = torch.compile(model.score, fullgraph=True, backend=backend)
    torch.testing.assert_close(score(x), model.score(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_sparse_topk_inference_compiles(backend):
    torch._dynamo.reset()
    model = FACTORIES["sparse_topk"]().eval()
    x = _data(8)
    f = torch.compile(model, fullgraph=True, backend=backend)
    torch.testing.assert_close(f(x), model(x), rtol=1e-4, atol=1e-5)


# ---- mixed precision ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sparse_topk", "conv_max_nearest", "vae_dense", "deep_svdd_dense_soft",
                                  "deep_ocsvm", "contractive_closed"])
def test_loss_under_autocast(name):
    """fit() trains under autocast on GPUs; CPU bfloat16 autocast exercises the same casts."""
    model = FACTORIES[name]()
    x = _data(32)
    if isinstance(model, M.DeepSVDD):
        model.init_center(x)
    if isinstance(model, M.SparseAE):
        model.steps_since_active[::2] = 10 ** 6          # AuxK active too
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.loss(x)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    torch.manual_seed(7)
    ref = float(model.loss(x)["loss"].detach())
    assert abs(float(out["loss"].detach()) - ref) <= 0.05 * abs(ref) + 1e-3


def test_wrappers_forward_shapes_latent_and_hooks_of_the_wrapped_model():
    # WrapperAE: the wrapped model's image shape, latent width (dense_latent of top-k codes, which
    # score="latent_knn" needs) and training hooks are the wrapper's; a hook the wrapped model lacks
    # stays missing (fit looks hooks up with getattr: nothing to call per run).
    conv = M.ConvAE(1, [4, 8], 6, input_shape=(12, 12))
    sparse = M.SparseAE(144, 48, k=6, input_shape=(1, 12, 12))
    svdd = M.DeepSVDD((144,), arch="dense", hidden=[32], rep_dim=8, objective="soft-boundary")
    for w in (M.DenoisingAE(conv), M.LaplacianAE(conv), M.DeepOCSVM(conv)):
        assert isinstance(w, M.WrapperAE) and w.image_shape == (1, 12, 12) and w.feature_shape == conv.feature_shape
        assert getattr(w, "on_epoch_end", None) is None
    d = M.DenoisingAE(sparse)
    assert d.latent == 48
    x = torch.rand(5, 144)
    assert M.base.dense_latent(d, d.encode(x)).shape == (5, 48)
    d = M.DenoisingAE(svdd)
    assert d.on_train_begin.__self__ is svdd and d.on_epoch_end.__self__ is svdd
    with pytest.raises(AttributeError):
        d.no_such_attribute  # noqa: B018
    # a wrapper with its own hook still runs the wrapped model's (Deep SVDD sets its centre)
    oc = M.DeepOCSVM(svdd)
    oc.on_train_begin([x])
    assert bool((svdd.c != 0).any()) and float(oc.gamma) > 0
