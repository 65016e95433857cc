"""The zoo on real data: one-class MNIST (train on one digit, score the test set), where a model
that trains but does not learn the normal class would fail the AUROC bar. Skipped when
../shared/data (or PYAEPLUS_DATA) does not hold MNIST."""

from __future__ import annotations

import functools

import pytest
import torch

from pyaeplus import models as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # MNIST's exact zeros drive BCE/sigmoid gradients into denormal floats, which run ~20x
    # slower on CPUs; flushing them changes nothing the assertions look at
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(n)


@pytest.fixture
def split(data_root):
    return _load(str(data_root))


@functools.lru_cache(maxsize=None)
def _load(root: str):
    """Only the 10k test file is read (fast): images 0..5999 that show the normal digit train,
    1000 random images of 6000..9999 are scored (anomaly = any other digit)."""
    from pyaeplus import data as D

    te = D.mnist(root, "test")
    x = te.data.float().div(255).unsqueeze(1)
    y = te.targets
    normal = 0
    train = x[:6000][y[:6000] == normal]
    g = torch.Generator().manual_seed(0)
    pick = 6000 + torch.randperm(4000, generator=g)[:1000]
    return train, x[pick], (y[pick] != normal).long()


def _fit(model, x, epochs, batch=100, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            out = model.loss(x[idx])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch, x.split(batch))
    return model.eval()


def _auroc(model, x, y):
    s = torch.cat([model.score(b) for b in x.split(500)])
    return sklearn_metrics.roc_auc_score(y.numpy(), s.numpy())


def test_dense_ae_separates_digits(split):
    x_tr, x_te, y_te = split
    m = _fit(M.DenseAE(784, [64], 16, input_shape=(1, 28, 28), output_activation="sigmoid", loss="bce"), x_tr, 4)
    assert _auroc(m, x_te, y_te) > 0.9


ZOO = {
    "conv_ssim": lambda: M.ConvAE(1, [8, 16], 16, input_shape=(28, 28), output_activation="sigmoid", loss="l1_ssim",
                                  loss_options={"win_size": 7}),
    "vae_conv": lambda: M.VAE("conv", 8, in_channels=1, channels=[8, 16], input_shape=(28, 28),
                              output_activation="sigmoid", loss="bce"),
    "sparse_topk": lambda: M.SparseAE(784, 256, k=16, alpha=1.0, input_shape=(1, 28, 28)),
    "contractive": lambda: M.ContractiveAE(784, [], 32, lam=1e-3, output_activation="sigmoid", loss="bce"),
    "denoising": lambda: M.DenoisingAE(M.DenseAE(784, [64], 16, output_activation="sigmoid", loss="bce"),
                                       noise="masking", p=0.3),
    "deep_svdd": lambda: M.DeepSVDD((1, 28, 28), rep_dim=32),
    "deep_ocsvm": lambda: M.DeepOCSVM(M.DenseAE(784, [64], 8, output_activation="sigmoid", loss="bce"),
                                      nu=0.3, n_features=512, recon_weight=0.0),
}


# short training on ~570 images: the bars are sanity bars (published numbers need hundreds of
# epochs on 6000 images). Deep SVDD and above all the RFF OC-SVM on 8-d latents vary with the
# initialisation this early (0.88-0.97 and 0.68-0.85 seen); a broken model sits at 0.5 or below.
BAR = {"deep_svdd": 0.85, "deep_ocsvm": 0.6, "conv_ssim": 0.85}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_one_class_mnist(split, name):
    x_tr, x_te, y_te = split
    m = ZOO[name]()
    if isinstance(m, M.DeepSVDD):
        _fit(m.pretrain_autoencoder(), x_tr, 10)                # initialises m.net in place
        m.init_center(x_tr)
        m = _fit(m, x_tr, 10, lr=1e-3)
    elif isinstance(m, M.DeepOCSVM):
        _fit(m.base, x_tr, 10)                                  # the autoencoder first,
        m = _fit(m, x_tr, 20, lr=1e-2)                          # then the SVM on its latents
    else:
        m = _fit(m, x_tr, 8)
    assert _auroc(m, x_te, y_te) > BAR.get(name, 0.9), name
