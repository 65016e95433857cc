"""Benchmark: what ``train.fit`` and ``scoring.score`` cost around the computation they run, against the same
computation written as a plain PyTorch loop over the same batches.

One process; the providers of a config are timed in alternation (A B C, A B C, ...) and the medians compared.

* ``fit overhead`` (issue 14 goal: ``train.fit`` <= 1.05x the plain loop): one epoch of ``DenseAE(140)``
  (ECG5000's 140 features; 4998 rows = the 500 real beats of ``../shared/data/ecg5000`` (or ``$PYAEPLUS_DATA``) tiled, or random rows
  without the data) at batch 32, MSE. Providers: ``plain loop`` (anchor: ``x[idx]``, ``F.mse_loss(model(xb), xb)``,
  ``zero_grad``/``backward``/``step`` with ``torch.optim.Adam`` as constructed by default), ``plain loop, fused
  Adam`` (the optimizer ``fit`` picks: the difference to it is the loop's overhead proper), ``train.fit``
  (default settings, ``progress=False``), ``train.fit progress=True`` (the tqdm bar), ``train.fit
  check_finite=False`` (without the models' NaN/Inf input check, ``pyaeplus.config.check_finite``: what is left is
  the loop's own cost), and ``train.fit @df5d778`` (the loop before issue 14, loaded from git; ``--no-before``
  skips it).
* ``end to end`` (goal: >= 1.5x on CPU): ``ConvAE(1, [16, 32], latent 32, loss="ssim", win_size 7)`` (the README's
  model) trained one epoch on ``--n-train`` Fashion-MNIST training images at batch 128, then
  ``--n-test`` test images scored. Providers: ``train.fit + scoring.score`` (``score="ssim"``, batch 512),
  ``plain loop + pytorch-msssim`` (anchor: ``1 - pytorch_msssim.ssim(recon, x, data_range=1, win_size=7)`` and a
  no-grad scoring loop with ``size_average=False``), and ``plain loop + MSE`` (the floor any loss can reach).

    python benchmarks/bench_fit.py [--repeats R] [--rows 4998] [--n-train 4096] [--n-test 4096] [--no-before]
        [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

import harness

import pyaeplus
from pyaeplus import models, scoring, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("PYAEPLUS_DATA", ROOT.parent / "shared" / "data"))


def ecg_rows(n: int) -> torch.Tensor:
    path = DATA / "ecg5000" / "ECG5000_TRAIN.txt"
    if path.exists():
        x = torch.from_numpy(np.loadtxt(path, dtype=np.float32)[:, 1:])
    else:  # no data here: rows of the same size and scale
        x = torch.randn(500, 140)
    return x.repeat(-(-n // x.shape[0]), 1)[:n].contiguous()


def fashion(split: str, n: int) -> torch.Tensor:
    if (DATA / "fashion-mnist").exists():
        return pyaeplus.data.fashion_mnist(DATA / "fashion-mnist", split=split).tensors()[0][:n].contiguous()
    return torch.rand(n, 1, 28, 28)


def fit_before():
    """``pyaeplus.train`` as of df5d778 (before issue 14), imported from git as a sibling module."""
    src = subprocess.run(["git", "show", "df5d778:pyaeplus/train.py"], cwd=ROOT, capture_output=True, text=True)
    if src.returncode:
        return None
    path = pathlib.Path(pyaeplus.__file__).parent / "_train_df5d778.py"
    path.write_text(src.stdout)
    try:
        spec = importlib.util.spec_from_file_location("pyaeplus._train_df5d778", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    finally:
        path.unlink()
    return mod.fit


def plain_epoch(model, x, batch: int, seed: int, loss_fn, opt_kwargs=None):
    """One epoch as a user writes it: shuffled batches, forward, loss, backward, Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **(opt_kwargs or {}))
    g = torch.Generator().manual_seed(seed)
    for idx in torch.randperm(x.shape[0], generator=g).split(batch):
        xb = x[idx]
        loss = loss_fn(model(xb), xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _unchecked(fn):
    with pyaeplus.config.checks(False):  # the models' own NaN/Inf input check (issue 12's) off
        fn()


def overhead_rows(r: harness.Runner, n: int, before: bool) -> None:
    dev = r.device
    x = ecg_rows(n).to(dev)
    torch.manual_seed(0)
    model = models.DenseAE(140).to(dev)
    kw = dict(epochs=1, batch_size=32, device=dev, progress=False)
    fns = {
        "plain loop": lambda: plain_epoch(model, x, 32, 0, F.mse_loss),
        "plain loop, fused Adam": lambda: plain_epoch(model, x, 32, 0, F.mse_loss, {"fused": True}),
        "train.fit": lambda: train.fit(model, x, **kw),
        "train.fit progress=True": lambda: train.fit(model, x, **{**kw, "progress": True}),
        "train.fit check_finite=False": lambda: _unchecked(lambda: train.fit(model, x, **kw)),
    }
    old = fit_before() if before else None
    if old is not None:
        fns["train.fit @df5d778"] = lambda: old(model, x, **kw)
    elif before:
        r.skip("train.fit @df5d778", "git show df5d778:pyaeplus/train.py failed")
    cfg = {"group": "fit overhead", "model": "DenseAE(140)[256,64]->32", "rows": n, "batch": 32, "epochs": 1}
    r.add_interleaved(cfg, "full", fns, anchor="plain loop")


def end_to_end_rows(r: harness.Runner, n_train: int, n_test: int) -> None:
    dev = r.device
    xtr, xte = fashion("train", n_train).to(dev), fashion("test", n_test).to(dev)

    def conv():
        torch.manual_seed(0)
        return models.ConvAE(1, channels=[16, 32], latent=32, input_shape=(1, 28, 28), loss="ssim",
                             loss_options={"win_size": 7}).to(dev)

    ours, anchor, floor = conv(), conv(), conv()

    def pyaeplus_job():
        train.fit(ours, xtr, epochs=1, batch_size=128, device=dev, progress=False)
        scoring.score(ours, xte, score="ssim", batch_size=512, device=dev, progress=False)

    def plain_job(model, loss_fn, score_fn):
        plain_epoch(model, xtr, 128, 0, loss_fn)
        model.eval()
        with torch.inference_mode():
            torch.cat([score_fn(model(xb), xb) for xb in xte.split(512)]).cpu()
        model.train()

    fns = {"train.fit + scoring.score": pyaeplus_job}
    try:
        import pytorch_msssim as pm

        fns["plain loop + pytorch-msssim"] = lambda: plain_job(
            anchor, lambda a, b: 1 - pm.ssim(a, b, data_range=1.0, win_size=7),
            lambda a, b: 1 - pm.ssim(a, b, data_range=1.0, win_size=7, size_average=False))
    except ImportError:
        r.skip("plain loop + pytorch-msssim", "pytorch_msssim not importable")
    fns["plain loop + MSE (floor)"] = lambda: plain_job(
        floor, F.mse_loss, lambda a, b: (a - b).square().flatten(1).mean(1))
    cfg = {"group": "end to end", "model": "ConvAE[16,32]->32 ssim win7", "train": n_train, "test": n_test,
           "batch": 128, "epochs": 1}
    r.add_interleaved(cfg, "full", fns, anchor="plain loop + pytorch-msssim")


def main() -> None:
    r = harness.Runner("fit", description=__doc__.split("\n\n")[0])
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=None, help="rows of the fit-overhead epoch (default 4998)")
    ap.add_argument("--n-train", type=int, default=None, help="Fashion-MNIST training images (default 4096)")
    ap.add_argument("--n-test", type=int, default=None, help="Fashion-MNIST test images scored (default 4096)")
    ap.add_argument("--no-before", action="store_true", help="skip the train.fit @df5d778 row")
    own = r.own_args(ap)
    if r.args.repeats is None:
        r.repeats = 3 if r.quick else 9
    if r.args.warmup is None:
        r.warmup = 1
    overhead_rows(r, own.rows or (640 if r.quick else 4998), not own.no_before)
    end_to_end_rows(r, own.n_train or (256 if r.quick else 4096), own.n_test or (512 if r.quick else 4096))
    r.finish()


if __name__ == "__main__":
    main()
