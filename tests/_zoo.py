"""The model zoo as the mixed-precision and sync tests build it: every model of
``pyaeplus.models.MODELS`` for 1x16x16 images, with each of its losses."""

from __future__ import annotations

import functools
import math

import torch

from pyaeplus import models as M


def _data(n=32, shape=(1, 16, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    f = math.prod(shape)
    return torch.sigmoid(torch.randn(n, 3, generator=g) @ torch.randn(3, f, generator=g)).reshape(n, *shape)


X = _data()
_OPTS = {"ssim": {"win_size": 7}, "l1_ssim": {"win_size": 7, "padding": "reflect"},
         "ms_ssim": {"win_size": 3, "weights": [0.3, 0.3, 0.4]}}


def _loss_kw(loss: str, sigmoid: bool = True) -> dict:
    kw = {"loss": loss}
    if loss == "bce" and sigmoid:
        kw["output_activation"] = "sigmoid"
    if loss in _OPTS:
        kw["loss_options"] = _OPTS[loss]
    return kw


def _conv(loss: str) -> dict:
    return {"in_channels": 1, "channels": [4, 8], "latent": 8, "input_shape": [16, 16], **_loss_kw(loss)}


def _dense(loss: str) -> dict:
    return {"in_features": 256, "hidden": [16], "latent": 8, "input_shape": [1, 16, 16], **_loss_kw(loss)}


@functools.lru_cache(maxsize=1)
def _knn_graph():
    return M.LaplacianAE.knn_graph_of(X, 5)


# Every model of pyaeplus.models.MODELS, built for 1x16x16 images with a given reconstruction loss.
ZOO = {
    "dense": lambda loss: M.DenseAE(**_dense(loss)),
    "conv": lambda loss: M.ConvAE(**_conv(loss)),
    "sparse": lambda loss: M.SparseAE(256, 48, k=6, input_shape=(1, 16, 16), **_loss_kw(loss)),
    "contractive": lambda loss: M.ContractiveAE(256, [16], 8, input_shape=(1, 16, 16), **_loss_kw(loss)),
    "vae": lambda loss: M.VAE("conv", 4, **{k: v for k, v in _conv(loss).items() if k != "latent"}),
    "denoising": lambda loss: M.DenoisingAE({"name": "conv", "config": _conv(loss)}),
    "laplacian": lambda loss: M.LaplacianAE({"name": "conv", "config": _conv(loss)}, lam=0.5, graph=_knn_graph()),
    "deep_ocsvm": lambda loss: M.DeepOCSVM({"name": "dense", "config": _dense(loss)}, nu=0.1, n_features=32),
    "deep_svdd_ae": lambda loss: M.DeepSVDDAutoEncoder((1, 16, 16), channels=[4, 2], rep_dim=8,
                                                       **_loss_kw(loss, sigmoid=False)),
    "deep_svdd": lambda objective: M.DeepSVDD((1, 16, 16), channels=[4, 2], rep_dim=8, objective=objective),
}
LOSSES = {name: M.RECON_LOSSES for name in ZOO}
LOSSES["deep_svdd"] = ("one-class", "soft-boundary")   # Deep SVDD's objectives are its losses
CASES = [(name, loss) for name in ZOO for loss in LOSSES[name]]


def batch_of(model):
    return (X[:16], torch.arange(16)) if isinstance(model, M.LaplacianAE) else X[:16]


def build(name, loss):
    torch.manual_seed(0)
    model = ZOO[name](loss)
    if isinstance(model, M.DeepSVDD):
        model.init_center(X)
    return model
