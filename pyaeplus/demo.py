"""The demo behind ``pyaeplus demo``: a convolutional Laplacian autoencoder trained with the SSIM loss
on neighbour-sampled batches of a k-NN graph, then scored by its reconstruction error and by latent
k-NN distance (:func:`pyaeplus.scoring.score`), with AUROC/AP, plots (:mod:`pyaeplus.viz`) and, on
the generated images, pixel AUROC / AUPRO of the planted defects.

:func:`run_demo` does it all and returns the results it writes to ``<out>/results.json``.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable

import torch

SCORE_NAMES = {"ssim": "1 - SSIM", "ms_ssim": "1 - MS-SSIM", "l1_ssim": "L1 + SSIM error", "mse": "MSE"}
_AMP = {"auto": True, "off": False, "bf16": "bf16", "fp16": "fp16"}


def demo_data(data: str | None, *, normal_class: int = 0, quick: bool = False, seed: int = 0):
    """The demo's data: ``(train x (N, 1, H, W) normal only, test x, test labels (1 = anomaly),
    description, test defect masks (N, H, W) or None)``.

    Args:
        data: None (generated 28x28 images with planted scratch/checker/ring defects) or
            ``mnist:ROOT`` / ``fashion-mnist:ROOT`` / ``kmnist:ROOT`` (one class against the others).
        normal_class: with ``data``, the class trained on.
        quick: 768 training and 400 test images (else 2000 and 1000).
        seed: sampling seed.
    """
    from . import data as D

    n_train, n_test = (768, 400) if quick else (2000, 1000)
    if data is None:
        train = D.synthetic_anomalies(n_train, anomaly_fraction=0.0, seed=seed)
        test = D.synthetic_anomalies(n_test, anomaly_fraction=0.2, seed=seed + 1)
        xt, yt = test.tensors()
        return train.tensors()[0], xt, yt, (f"generated 28x28 images: {n_train} normal for training, {n_test} for "
                                            f"testing of which {int(yt.sum())} have a scratch/checker/ring defect"), \
            test.masks
    kind = data.split(":", 1)[0]
    if kind not in ("mnist", "fashion-mnist", "kmnist"):
        raise ValueError(f"--data must be mnist:ROOT, fashion-mnist:ROOT or kmnist:ROOT, got {data!r}")
    train = D.open_dataset(data, split="train", classes=[normal_class])
    test = D.open_dataset(data, split="test")
    g = torch.Generator().manual_seed(seed)
    tr_idx = torch.randperm(len(train), generator=g)[:n_train]
    te_idx = torch.randperm(len(test), generator=g)[:n_test]
    xt, yt = test.get_batch(te_idx)
    labels = (yt != normal_class).long()
    return (train.get_batch(tr_idx)[0], xt, labels,
            f"{kind}: {len(tr_idx)} training images of class {normal_class}; {len(te_idx)} test images, the "
            f"{int(labels.sum())} of other classes are the anomalies", None)


def _train(x_train, *, real_data: bool, quick: bool, epochs, batch_size, lr, lam, loss, device, amp, seed,
           out: pathlib.Path, progress: bool, log: Callable[[str], None]):
    """The k-NN graph of the training images, the model, and ``fit``: (model, FitResult, epochs, seconds)."""
    from .data import WithIndex
    from .models import LaplacianAE
    from .train import fit

    t0 = time.perf_counter()
    # k-NN graph of the training images: the Laplacian term pulls neighbours' latents together.
    graph = LaplacianAE.knn_graph_of(x_train, k=10)
    torch.manual_seed(seed)
    channels = [16, 32] if real_data and not quick else [8, 16]  # generated images need little capacity
    base = {"name": "conv", "config": {"in_channels": 1, "channels": channels, "latent": 32,
                                       "input_shape": list(x_train.shape[1:]), "loss": loss,
                                       "output_activation": "sigmoid", "batch_norm": True}}
    model = LaplacianAE(base, lam=lam, graph=graph)
    epochs = epochs if epochs is not None else (3 if quick else 8 if real_data else 6)
    log(f"model: LaplacianAE(ConvAE {channels} + BatchNorm -> 32, loss={loss}, lam={lam}) on a {graph.num_nodes}-node "
        f"k=10 graph ({time.perf_counter() - t0:.1f} s); training {epochs} epochs")
    t1 = time.perf_counter()
    res = fit(model, WithIndex(x_train), epochs=epochs, lr=lr, seed=seed, device=device,
              batch_sampler=model.sampler(batch_size, neighbors=4, seed=seed), progress=progress,
              checkpoint_dir=out / "checkpoint", keep_checkpoints=1, amp={"auto": True, "off": False}.get(amp, amp))
    return model, res, epochs, time.perf_counter() - t1


def _model_score(amp: str):
    """``(score, amp)`` for :func:`pyaeplus.scoring.score`: the model's own score, under fp16 autocast
    inside the score function for ``amp="fp16"`` (scoring's own ``amp`` knows bf16 only)."""
    if amp != "fp16":
        return "model", _AMP[amp]

    def fp16_score(model, x):
        with torch.autocast(x.device.type, dtype=torch.float16):
            return model.score(x).float()
    return fp16_score, False


def _plots(out: pathlib.Path, model, x_test, scores, labels, latent, score_name: str) -> dict:
    """Reconstructions of the 8 most normal-looking normals and the 8 top-scored anomalies, the score
    histogram, and ROC / PR curves of both scores."""
    import numpy as np

    from . import viz

    y = labels.numpy().astype(bool)
    order = np.argsort(scores, kind="stable")
    cols = [i for i in order if not y[i]][:8] + [i for i in order[::-1] if y[i]][:8]
    dev = next(model.parameters()).device
    with torch.no_grad():
        recon = model(x_test[cols].to(dev)).float().cpu()
    titles = [f"{'anom' if y[i] else 'norm'} {scores[i]:.3f}" for i in cols]
    return {"reconstructions": viz.reconstruction_grid(x_test[cols], recon, out / "reconstructions.png",
                                                       n=len(cols), titles=titles),
            "histogram": viz.score_histogram(scores, y.astype(int), out / "score_histogram.png",
                                             xlabel=f"anomaly score ({score_name})"),
            "roc": viz.roc_pr_curves([scores, latent], y.astype(int), out / "roc.png",
                                     names=[score_name, "latent 5-NN distance"])}


def run_demo(*, data: str | None = None, normal_class: int = 0, quick: bool = False, epochs: int | None = None,
             batch_size: int = 64, lr: float = 3e-3, lam: float = 0.1, loss: str = "ssim", device="auto",
             amp: str = "auto", seed: int = 0, out="pyaeplus-demo", progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Train, score and evaluate the demo model; write plots, ``results.json`` and a checkpoint to ``out``.

    Args:
        data, normal_class, quick, seed: see :func:`demo_data`.
        epochs: default 6 on generated data, 8 on real data, 3 with ``quick``.
        batch_size, lr: training settings (neighbour-sampled batches of ``batch_size``).
        lam: the Laplacian weight. loss: ``"ssim"``, ``"l1_ssim"``, ``"ms_ssim"`` or ``"mse"``.
        device: ``"auto"`` or a device. amp: ``"auto"`` (bf16 on CUDA, off on the CPU), ``"off"``,
            ``"bf16"``, ``"fp16"``: for training and scoring.
        out: output folder (created). progress: progress bars. log: receives each line to show.

    Returns:
        dict of ``results.json``: ``auroc``, ``ap`` (reconstruction score), ``auroc_latent``, ``ap_latent``
        (latent 5-NN distance), ``pixel_auroc``/``aupro`` (generated data), sizes, timings, plot paths.
    """
    from . import scoring

    t0 = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, labels, what, masks = demo_data(data, normal_class=normal_class, quick=quick, seed=seed)
    log(f"data: {what}")
    model, res, epochs, train_s = _train(x_train, real_data=data is not None, quick=quick, epochs=epochs,
                                         batch_size=batch_size, lr=lr, lam=lam, loss=loss, device=device, amp=amp,
                                         seed=seed, out=out, progress=progress, log=log)
    dev = next(model.parameters()).device
    model.eval()
    score_fn, score_amp = _model_score(amp)
    run = dict(batch_size=256, device=dev, amp=score_amp, progress=False)
    scores = scoring.score(model, x_test, score=score_fn, **run)
    latent = scoring.score(model, x_test, score="latent_knn", knn_reference=x_train, k=5, **run)
    m, m_lat = scoring.metrics(scores, labels), scoring.metrics(latent, labels)
    score_name = SCORE_NAMES[loss]
    paths = _plots(out, model, x_test, scores, labels, latent, score_name)
    pixel = {}
    if masks is not None:  # the planted defects' masks: localization metrics of the maps
        pixel, _ = scoring.localize(model, x_test, masks, score="mse" if loss == "mse" else "ssim", device=dev)
    results = {"auroc": m["auroc"], "ap": m["ap"], "auroc_latent": m_lat["auroc"], "ap_latent": m_lat["ap"],
               "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]), "n_anomalies": int(labels.sum()),
               "epochs": epochs, "amp": amp, "final_train_loss": res.history[-1]["train"]["loss"],
               "train_seconds": train_s, "total_seconds": time.perf_counter() - t0, "data": what,
               "plots": {k: str(v) for k, v in paths.items()}, "checkpoint": str(res.checkpoint),
               **{k: pixel[k] for k in ("pixel_auroc", "aupro") if k in pixel}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    log(f"{'reconstruction ' + score_name:<30}: AUROC {m['auroc']:.4f}  AP {m['ap']:.4f}")
    log(f"{'latent 5-NN distance':<30}: AUROC {m_lat['auroc']:.4f}  AP {m_lat['ap']:.4f}")
    if pixel:
        from .scoring.localization import describe
        log(f"{'pixels (planted defects)':<30}: {describe(pixel)}")
    log(f"trained in {train_s:.1f} s, total {results['total_seconds']:.1f} s")
    log(f"plots  : {', '.join(str(p) for p in paths.values())}")
    log(f"results: {out / 'results.json'}   checkpoint: {res.checkpoint}")
    return results
