"""MNIST convolutional autoencoder: the convolutional model of the Keras blog post "Building
Autoencoders in Keras" (F. Chollet, 2016), with binary cross-entropy.

Encoder Conv(16)-MaxPool-Conv(8)-MaxPool-Conv(8)-MaxPool("same") down to a 4x4x8 code (128
numbers); decoder Conv(8)-UpSampling-Conv(8)-UpSampling-Conv(16, "valid": 16 -> 14)-UpSampling-
Conv(1, sigmoid). The decoder's order (convolution *before* each upsampling, one unpadded
convolution to get from 16 to 14 pixels) is not what ``pyaeplus.models.ConvAE`` builds, so the
network is written here as a subclass of ``pyaeplus.models.AutoEncoder``, the documented way to
bring an architecture of one's own: it then trains with ``pyaeplus.train.fit`` and scores with
``pyaeplus.scoring.score`` like any model of the zoo.

    python examples/mnist_conv_ae.py --data ../shared/data            # full run
    python examples/mnist_conv_ae.py --data ../shared/data --quick    # CI: 4,000 images, 2 epochs
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

from pyaeplus import data as D  # noqa: E402
from pyaeplus import scoring, train, viz  # noqa: E402
from pyaeplus.models import AutoEncoder  # noqa: E402

NAME = "mnist_conv_ae"


class KerasBlogConvAE(AutoEncoder):
    """The Keras blog's convolutional autoencoder for (B, 1, 28, 28) images in [0, 1].

    Shapes: ``encode`` (B, 1, 28, 28) -> (B, 8, 4, 4); ``decode`` (B, 8, 4, 4) -> (B, 1, 28, 28).
    """

    model_name = "keras_blog_conv_ae"  # not registered: the script defines it, no checkpoint rebuilds it

    def __init__(self, loss: str = "bce"):
        super().__init__()
        self._config = {"loss": loss}
        self._init_recon(loss, (1, 28, 28), (1, 28, 28))

        def conv(cin: int, cout: int, padding: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=padding), nn.ReLU()]

        self.encoder = nn.Sequential(
            *conv(1, 16), nn.MaxPool2d(2),            # 28 -> 14
            *conv(16, 8), nn.MaxPool2d(2),            # 14 -> 7
            # Keras MaxPooling2D(padding="same") on 7 pads one row/column at the end: ceil mode
            *conv(8, 8), nn.MaxPool2d(2, ceil_mode=True))  # 7 -> 4
        self.decoder = nn.Sequential(
            *conv(8, 8), nn.Upsample(scale_factor=2),          # 4 -> 8
            *conv(8, 8), nn.Upsample(scale_factor=2),          # 8 -> 16
            *conv(8, 16, padding=0), nn.Upsample(scale_factor=2),  # 16 -> 14 (valid) -> 28
            nn.Conv2d(16, 1, 3, padding=1))                    # logits; the sigmoid is in decode
        for m in self.modules():  # Keras' defaults (Glorot uniform, zero bias): a faster start than
            if isinstance(m, nn.Conv2d):  # PyTorch's default init on this small ReLU network
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._as_image(x))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).reshape(x.shape)


def mean_image_errors(train_x: torch.Tensor, test_x: torch.Tensor) -> dict[str, float]:
    """Test MSE/BCE of the best constant predictor: the per-pixel mean training image. A model
    that learnt nothing about the individual image cannot beat it."""
    m = train_x.mean(0, keepdim=True).clamp(1e-7, 1 - 1e-7).expand_as(test_x)
    return {"mse": float((m - test_x).square().mean()),
            "bce": float(nn.functional.binary_cross_entropy(m, test_x))}


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 50 as in the blog; 4 with --quick)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop after the last epoch that fits this many seconds of training (default: 480 on a "
                        "CPU, so that the full run stays within 12 minutes; none on a GPU)")
    p.add_argument("--tag", default="", help="suffix of the result name, for a run with another schedule "
                                             "(e.g. --tag 20ep --epochs 20 --budget-s 0 writes mnist_conv_ae-20ep.*)")
    args = p.parse_args(argv)
    name = f"{NAME}-{args.tag}" if args.tag else NAME
    device = _common.setup(args)
    out = _common.out_dir(args)
    t0 = time.time()

    train_ds = D.mnist(args.data, "train")
    test_ds = D.mnist(args.data, "test")
    if args.quick:  # a fixed random subset: 6,000 training and 1,000 test digits
        g = torch.Generator().manual_seed(args.seed)
        train_ds = train_ds.subset(torch.randperm(len(train_ds), generator=g)[:6000])
        test_ds = test_ds.subset(torch.randperm(len(test_ds), generator=g)[:1000])
    max_epochs = args.epochs or (4 if args.quick else 50)
    budget = args.budget_s if args.budget_s is not None else (480.0 if device.type == "cpu" and not args.quick else None)
    budget = budget or None  # --budget-s 0: no budget
    batch_size = 128

    torch.manual_seed(args.seed)
    model = KerasBlogConvAE(loss="bce")
    n_params = sum(p.numel() for p in model.parameters())
    kw = dict(batch_size=batch_size, lr=1e-3, optimizer="adam", val_data=test_ds, restore_best=False,
              device=device, seed=args.seed, progress=args.progress)
    if budget is None:
        fit = train.fit(model, train_ds, epochs=max_epochs, **kw)
    else:
        # one epoch per call, resumed from fit's own checkpoint: bit-identical to one uninterrupted
        # run of the same number of epochs, stopped before an epoch that would overrun the budget
        with tempfile.TemporaryDirectory() as ckdir:
            t_train = time.time()
            for e in range(1, max_epochs + 1):
                fit = train.fit(model, train_ds, epochs=e, checkpoint_dir=ckdir, resume=True, keep_checkpoints=1, **kw)
                spent = time.time() - t_train
                if spent + spent / e > budget:
                    break
    epochs = len(fit.history)
    model = fit.model.eval()

    kw = dict(device=device, progress=False, batch_size=512)
    test_mse = float(scoring.score(model, test_ds, score="mse", **kw).mean())
    test_bce = float(scoring.score(model, test_ds, score="bce", **kw).mean())
    x_tr, _ = train_ds.tensors()
    x_te, y_te = test_ds.tensors()
    base = mean_image_errors(x_tr, x_te)
    results = {"test_bce": test_bce, "test_mse": test_mse, "train_bce_last_epoch": fit.history[-1]["train"]["loss"],
               "mean_image_test_bce": base["bce"], "mean_image_test_mse": base["mse"]}

    sfx = "-quick" if args.quick else ""
    figures = []
    first = torch.tensor([int(torch.nonzero(y_te == d)[0]) for d in range(10) if (y_te == d).any()])
    with torch.no_grad():
        rec = model(x_te[first].to(device)).cpu()
    f = viz.reconstruction_grid(x_te[first], rec, out / f"{name}-reconstructions{sfx}.png", n=len(first))
    figures.append(f.name)
    curves = {"train BCE": [h["train"]["loss"] for h in fit.history],
              "test BCE": [h["val"]["loss"] for h in fit.history]}
    figures.append(viz.training_curves(curves, out / f"{name}-training{sfx}.png").name)

    epoch_table = "\n".join(["| epoch | train BCE | test BCE |", "|---|---|---|"] + [
        f"| {h['epoch'] + 1} | {h['train']['loss']:.4f} | {h['val']['loss']:.4f} |" for h in fit.history])
    protocol = (f"MNIST {'random subset of 6,000 training / 1,000 test digits' if args.quick else '60,000 training / 10,000 test digits'} "
                f"in [0, 1]. The Keras blog's convolutional AE ({n_params} parameters, 4x4x8 code), sigmoid "
                f"output, per-pixel binary cross-entropy (computed from logits), Adam lr 1e-3, batch {batch_size}, "
                f"{epochs} epochs on {device.type} (the schedule is chosen by device: 50 epochs as in the blog on "
                "a GPU; on a CPU as many epochs as fit in 480 s of training, so that the run stays within 12 "
                f"minutes; --epochs/--budget-s override; this run: at most {max_epochs} epochs, "
                + ("no time budget" if budget is None else f"a training budget of {budget:.0f} s") + "). Conv weights Glorot-uniform with zero biases (Keras' "
                "defaults). "
                "Test MSE and BCE are per-pixel means over the test set (pyaeplus.scoring.score, score='mse'/'bce'); "
                "'mean_image_*' is the same error for the per-pixel mean training image, the floor that a "
                "model that learnt nothing reaches.")
    differences = ("Published number: the blog states that the model 'converges to a loss of 0.094' after 50 epochs "
                   "of Adadelta at batch 128 (Keras' per-pixel binary cross-entropy, the same scale as ours); its "
                   "figure shows training and validation (= test set) curves and the text does not say which one "
                   "the 0.094 is, so it is listed against our test BCE. The blog reports no MSE. Optimizer: Adam "
                   "lr 1e-3 instead of Adadelta (Keras 2's Adadelta defaults, lr 1.0, are not those of current "
                   "Keras; Adam converges in fewer epochs). "
                   + ("" if epochs >= 50 or len(fit.history) < 2 else
                      f"Schedule: {epochs} epochs instead of 50 "
                      f"({'CPU time budget of ' + format(budget, '.0f') + ' s' if budget else 'set by --epochs'}); "
                      "the test BCE still fell by "
                      f"{fit.history[-2]['val']['loss'] - fit.history[-1]['val']['loss']:.4f} in the last epoch, "
                      "so the gap to 0.094 is mostly the schedule (a longer run: --tag NAME --epochs N --budget-s 0)."))
    return _common.save(name, args, device, t0, results=results, published={"test_bce": 0.094}, protocol=protocol,
                        differences=differences, tables=[epoch_table], figures=figures)


if __name__ == "__main__":
    main()
