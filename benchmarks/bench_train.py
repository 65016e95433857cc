"""Benchmark: end-to-end training throughput of a convolutional autoencoder with an SSIM loss.

One training step = forward of ``pyaeplus.models.ConvAE`` on a batch of Fashion-MNIST 28x28
images, the loss, backward and an Adam step. Providers differ only in the loss:

* ``pytorch_msssim`` (anchor): ``1 - pytorch_msssim.ssim(recon, x, data_range=1, win_size=7)``;
* ``pyaeplus[<backend>]``: ``pyaeplus.nn.SSIMLoss(data_range=1, win_size=7)`` (the fused kernels),
  with input finite-checks on (the default) and off;
* ``mse``: the same model with ``F.mse_loss``, the floor a loss cannot beat.

Images/s = batch / median step time. Target (issue 5): >= 1.5x the pytorch_msssim step, CPU and GPU.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
import torch.nn.functional as F

import harness

import pyaeplus
from pyaeplus import backends, config, models

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"


def batch_of_images(n: int, device: str) -> torch.Tensor:
    path = DATA / "train-images-idx3-ubyte.gz"
    if path.exists():
        imgs = pyaeplus.data.read_idx(path)[:n]
        x = torch.from_numpy(np.ascontiguousarray(imgs)).float().div_(255).unsqueeze(1)
    else:  # no real data: a stand-in of the same shape and range
        x = torch.rand(n, 1, 28, 28)
    return x.to(device)


def main() -> None:
    r = harness.Runner("train", description=__doc__.split("\n\n")[0])
    dev = r.device
    B = 32 if r.quick else 128
    x = batch_of_images(B, dev)
    try:
        import pytorch_msssim
    except ImportError:
        pytorch_msssim = None
        r.skip("pytorch_msssim", "not importable")

    def step_fn(loss_fn, checks: bool = True, backend: str | None = None):
        torch.manual_seed(0)
        model = models.ConvAE(1, channels=[32, 64], latent=32, input_shape=(1, 28, 28), loss="mse").to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            with config.checks(checks), backends.use(backend or "auto"):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), x)
                loss.backward()
                opt.step()
        return step

    cfg = {"model": "ConvAE[32,64]->32", "B": B, "H": 28, "W": 28, "win": 7, "dtype": "float32"}
    if pytorch_msssim is not None:
        r.add("pytorch_msssim", cfg, "full",
              step_fn(lambda a, b: 1 - pytorch_msssim.ssim(a, b, data_range=1.0, win_size=7)), anchor=True)
    ours = pyaeplus.nn.SSIMLoss(data_range=1.0, win_size=7)
    impls = ["cpu"] if dev == "cpu" else [b for b in ("triton", "cuda") if backends.available()[b]]
    for b in impls:
        r.add(f"pyaeplus[{b}]", cfg, "full", step_fn(ours, checks=True, backend=b))
        r.add(f"pyaeplus[{b}] checks off", cfg, "full", step_fn(ours, checks=False, backend=b))
    r.add("mse (floor)", cfg, "full", step_fn(F.mse_loss))
    for row in r.rows:
        row["images_per_s"] = B / (row["median_ms"] * 1e-3)
        print(f"[train] {row['provider']:28s} {row['images_per_s']:10.0f} images/s")
    r.finish()


if __name__ == "__main__":
    main()
