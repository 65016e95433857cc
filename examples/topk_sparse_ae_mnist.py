"""Top-k sparse autoencoder on MNIST (Makhzani & Frey, "k-Sparse Autoencoders", ICLR 2014).

A k-sparse autoencoder with 1000 hidden units is trained on the MNIST training images for each
k in {10, 25, 40} (``pyaeplus.models.build("sparse", sparsity="topk")``: the fused top-k encoder
``pyaeplus.topk_encode``, the sparse decoder, AuxK for dead latents), with
the paper's k schedule (k starts at 100 and decreases linearly to its target over the first half of
training, so that no unit dies early). Its features, encoded with ``alpha·k`` active units as in
the paper (alpha = 3), are classified by a multinomial logistic regression fitted on the 60,000
training images and tested on the 10,000 test images (no fine-tuning): the paper's "unsupervised
features + logistic regression" error. The same probe on raw pixels is the baseline. Then the same
model is trained one class at a time (one digit as the normal class) and the test split is scored by
reconstruction error (``pyaeplus.scoring.score(score="mse")``) with the other nine digits as
anomalies (AUROC).

    python examples/topk_sparse_ae_mnist.py --data ../shared/data            # full run
    python examples/topk_sparse_ae_mnist.py --data ../shared/data --quick    # CI version (< 60 s)
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

from pyaeplus import scoring, viz  # noqa: E402
from pyaeplus.data import mnist  # noqa: E402
from pyaeplus.models import build  # noqa: E402
from pyaeplus.train import fit  # noqa: E402

NAME = "topk_sparse_ae_mnist"
LATENT = 1000
K_START = 100  # the paper's schedule starts at k = 100

# Makhzani & Frey 2014, Table 1 (MNIST, 1000 hidden units, logistic regression on the features,
# no fine-tuning). k=25: 1.35 % is the number the issue quotes; see PUBLISHED_SOURCE.
PUBLISHED_ERROR = {10: 2.10, 25: 1.35, 40: 1.54}
PUBLISHED_RAW = 7.20
PUBLISHED_SOURCE = ("Makhzani & Frey, k-Sparse Autoencoders (ICLR 2014, arXiv:1312.5663), Table 1. The "
                    "k=25 value (1.35 %) is the one quoted in the issue; k=10 (2.10 %), k=40 (1.54 %) and raw "
                    "pixels (7.20 %) are the table's values as recalled: the search tools here hold only the "
                    "paper's abstract, so they could not be checked against the PDF.")

# schedules by device: (train images, test images, ks, epochs per k, one-class digits, one-class epochs)
SCHEDULES = {
    "quick": dict(n_train=5000, n_test=2000, ks=[25], epochs=3, digits=[0, 1], oc_epochs=8, batch_size=128),
    "cpu": dict(n_train=60000, n_test=10000, ks=[10, 25, 40], epochs=12, digits=list(range(10)),
                oc_epochs=10, batch_size=256),
    "cuda": dict(n_train=60000, n_test=10000, ks=[10, 25, 40], epochs=100, digits=list(range(10)),
                 oc_epochs=50, batch_size=256),
}


def k_schedule(model, k: int, total_steps: int):
    """on_step callback: k from K_START down to its target linearly over the first half of the steps
    (Makhzani & Frey, section 3.3), then fixed. The model starts at K_START (set before fit)."""
    k0 = max(k, min(K_START, model.latent))
    half = max(1, total_steps // 2)
    model.encoder.k = k0

    def on_step(step: int, _terms) -> None:
        model.encoder.k = int(round(k0 + (k - k0) * min(1.0, step / half)))

    return on_step


def train_sae(x: torch.Tensor, k: int, epochs: int, batch_size: int, args, device, on_epoch_end=None) -> tuple:
    model = build("sparse", in_features=784, latent=LATENT, sparsity="topk", k=k, alpha=args.alpha,
                  input_shape=(1, 28, 28), tied=args.tied,
                  unit_norm=True if args.unit_norm else None)
    if on_epoch_end is not None:  # fit calls model.on_epoch_end(epoch, loader) after every epoch
        model.on_epoch_end = lambda epoch, _loader: on_epoch_end(model, epoch)
    steps = epochs * -(-x.shape[0] // batch_size)
    res = fit(model, x, epochs=epochs, batch_size=batch_size, lr=args.lr, optimizer="adam", device=device,
              seed=args.seed, progress=args.progress, on_step=k_schedule(model, k, steps))
    assert model.encoder.k == k
    return model.eval(), res


@torch.no_grad()
def sparse_features(model, x: torch.Tensor, device, batch: int = 4096):
    """Eval-mode codes (alpha·k active units per image) as a scipy CSR matrix (N, LATENT)."""
    import scipy.sparse as sp

    vals, idx = [], []
    for xb in x.split(batch):
        v, i = model.encode(xb.to(device))                                 # (b, alpha·k) each
        vals.append(v.float().cpu().numpy())
        idx.append(i.cpu().numpy())
    v, i = np.concatenate(vals), np.concatenate(idx)
    n, kk = v.shape
    return sp.csr_matrix((v.ravel(), i.ravel(), np.arange(0, n * kk + 1, kk)), shape=(n, LATENT))


def _logreg(f_fit, y_fit, c: float):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    # one BLAS/OpenMP thread: numpy's and scipy's OpenBLAS pools plus OpenMP oversubscribe 2 cores
    # (measured 2.9 s with one thread vs 16.7 s with the default on a 5,000-image raw-pixel fit)
    with threadpool_limits(limits=1):
        return LogisticRegression(C=c, solver="lbfgs", max_iter=1000, tol=1e-4).fit(f_fit, y_fit)


def probe_error(f_train, y_train, f_test, y_test, grid, seed: int = 0) -> tuple[float, float, float]:
    """Multinomial logistic regression (L-BFGS) on features scaled by their largest training
    magnitude. The L2 strength C is chosen from ``grid`` on the training set alone (fit on a
    subset of at most 20,000 images, validated on up to 10,000 others), then the probe is refit
    on the whole training set. Returns (test error in %, chosen C, seconds)."""
    t = time.time()
    s = float(abs(f_train).max()) or 1.0
    f_train, f_test = f_train / s, f_test / s
    c = grid[0]
    if len(grid) > 1:
        perm = np.random.default_rng(seed).permutation(f_train.shape[0])
        n_val = min(10000, f_train.shape[0] // 3)
        fit_i, val_i = perm[n_val:][:20000], perm[:n_val]
        val_err = {g: float((_logreg(f_train[fit_i], y_train[fit_i], g).predict(f_train[val_i])
                             != y_train[val_i]).mean()) for g in grid}
        c = min(grid, key=lambda g: (val_err[g], g))
    err = 100.0 * float((_logreg(f_train, y_train, c).predict(f_test) != y_test).mean())
    return err, c, time.time() - t


def filter_grid(weight: torch.Tensor, usage: np.ndarray, path: pathlib.Path, n: int = 100) -> None:
    """The n most used decoder directions (rows of W_dec, 784 each) as a 10x10 grid of 28x28 images,
    each scaled to its own range."""
    plt = viz._plt()
    order = np.argsort(-usage, kind="stable")[:n]
    w = weight.detach().float().cpu().numpy()[order].reshape(-1, 28, 28)
    side = int(np.ceil(np.sqrt(n)))
    fig, axes = plt.subplots(side, side, figsize=(side * 0.8, side * 0.8))
    for j, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if j < len(w):
            ax.imshow(w[j], cmap="gray", interpolation="nearest")
    fig.suptitle("k=25 decoder filters (the 100 most used units)", fontsize=9)
    fig.tight_layout(pad=0.1, rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=60)
    plt.close(fig)


def error_vs_k(ours: dict, raw: float, path: pathlib.Path) -> None:
    plt = viz._plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ks = sorted(ours)
    ax.plot(ks, [ours[k] for k in ks], "o-", label="pyaeplus (this run)")
    pk = sorted(PUBLISHED_ERROR)
    ax.plot(pk, [PUBLISHED_ERROR[k] for k in pk], "s--", label="Makhzani & Frey 2014")
    ax.axhline(raw, color="gray", ls=":", label=f"raw pixels (this run, {raw:.2f} %)")
    ax.set_xlabel("k (training); alpha·k units at encoding")
    ax.set_ylabel("test error of the linear probe (%)")
    ax.set_xticks(sorted(set(ks) | set(pk)))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, default=3.0, help="alpha: alpha·k units are kept at encoding")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--untied", dest="tied", action="store_false",
                   help="separate encoder and decoder weights (default: tied, as in the paper)")
    p.add_argument("--unit-norm", action="store_true",
                   help="keep the decoder rows at unit norm every step (the library's default for untied weights; "
                        "with the tied default it cost 1.06 points of k=25 probe error in a 12-epoch run)")
    p.add_argument("--probe-c", default="1,10,100,1000",
                   help="grid of logistic-probe C values (inverse L2 strength) for the codes, chosen on the "
                        "training set")
    p.add_argument("--raw-c", default="0.01,0.1,1",
                   help="C grid of the raw-pixel probe (larger C only overfits raw pixels and slows L-BFGS)")
    p.add_argument("--epochs", type=int, default=None, help="override the schedule's epochs per k")
    p.add_argument("--ks", default=None, help="override the schedule's k values (comma-separated)")
    p.add_argument("--digits", default=None, help="override the schedule's one-class digits (comma-separated)")
    args = p.parse_args(argv)
    device = _common.setup(args)
    t0 = time.time()
    sched_name = "quick" if args.quick else ("cuda" if device.type == "cuda" else "cpu")
    sc = dict(SCHEDULES[sched_name])
    if args.epochs is not None:
        sc["epochs"] = args.epochs
    for key in ("ks", "digits"):  # a reduced run, e.g. --ks 25 --digits 0 to check one number
        if getattr(args, key) is not None:
            sc[key] = [int(v) for v in getattr(args, key).split(",")]
    out = _common.out_dir(args)
    tag = "-quick" if args.quick else ""

    train, test = mnist(args.data, "train"), mnist(args.data, "test")
    # images as (N, 784) float in [0, 1]; the quick run takes the first n of each split
    x_tr = train.data[:sc["n_train"]].reshape(-1, 784).float() / 255.0
    y_tr = train.targets[:sc["n_train"]].numpy()
    x_te = test.data[:sc["n_test"]].reshape(-1, 784).float() / 255.0
    y_te = test.targets[:sc["n_test"]].numpy()

    # ---- baseline: the probe on raw pixels -------------------------------------------------
    grid = [float(c) for c in args.probe_c.split(",")]
    raw_grid = [float(c) for c in args.raw_c.split(",")]
    raw_err, raw_c, raw_s = probe_error(x_tr.numpy(), y_tr, x_te.numpy(), y_te, raw_grid, args.seed)
    print(f"raw pixels: probe error {raw_err:.2f} % (C={raw_c:g}, {raw_s:.0f} s)")

    # ---- k-sparse autoencoders + linear probe ----------------------------------------------
    errors, rows, fits, curve = {}, [], {}, {}
    # probe error of the k=25 model along training (fixed C, after the k schedule has ended): does
    # it still fall at the end of our schedule, i.e. would more epochs close the gap to the paper?
    track = {e for e in (sc["epochs"] // 2, (3 * sc["epochs"]) // 4, sc["epochs"]) if e > 0}

    def probe_along(model, epoch: int) -> None:
        if epoch + 1 in track:
            t = time.time()
            model.eval()
            curve[epoch + 1] = probe_error(sparse_features(model, x_tr, device), y_tr,
                                           sparse_features(model, x_te, device), y_te, [grid[-1]], args.seed)[0]
            model.train()
            print(f"  k=25 after epoch {epoch + 1}: probe error {curve[epoch + 1]:.2f} % (C={grid[-1]:g}, "
                  f"{time.time() - t:.0f} s)")

    for k in sc["ks"]:
        t = time.time()
        model, res = train_sae(x_tr, k, sc["epochs"], sc["batch_size"], args, device,
                               on_epoch_end=probe_along if k == 25 else None)
        train_s = time.time() - t
        f_tr, f_te = sparse_features(model, x_tr, device), sparse_features(model, x_te, device)
        err, c, probe_s = probe_error(f_tr, y_tr, f_te, y_te, grid, args.seed)
        usage = np.bincount(f_tr.indices, minlength=LATENT)
        last = res.history[-1]["train"]
        errors[k] = err
        fits[k] = (model, usage, res)
        rows.append(f"| {k} | {round(args.alpha * k)} | {sc['epochs']} | {last['recon']:.5f} | "
                    f"{100 * last['dead']:.1f} % | {int((usage > 0).sum())} | {c:g} | {err:.2f} % | "
                    f"{PUBLISHED_ERROR.get(k, float('nan')):.2f} % | {train_s:.0f} s | {probe_s:.0f} s |")
        print(f"k={k}: recon {last['recon']:.5f}, dead {last['dead']:.3f}, probe error {err:.2f} % (C={c:g}) "
              f"(train {train_s:.0f} s, probe {probe_s:.0f} s)")

    # ---- one-class anomaly detection: train on one digit, other digits are anomalies -------
    k_oc = 25 if 25 in sc["ks"] else sc["ks"][0]
    auroc, auroc_k, oc_rows, roc = {}, {}, [], None
    for d in sc["digits"]:
        x_d = x_tr[torch.from_numpy(y_tr == d)]
        model, _ = train_sae(x_d, k_oc, sc["oc_epochs"], sc["batch_size"], args, device)
        labels = (y_te != d).astype(np.int64)                                # 1 = anomaly
        s_alpha = scoring.score(model, x_te, score="mse", device=device, progress=False)
        # the same model decoding from its k training units only (no alpha): a tighter bottleneck
        model.encoder.alpha = None
        s_k = scoring.score(model, x_te, score="mse", device=device, progress=False)
        auroc[d] = scoring.metrics(s_alpha, labels)["auroc"]
        auroc_k[d] = scoring.metrics(s_k, labels)["auroc"]
        oc_rows.append(f"| {d} | {x_d.shape[0]} | {auroc[d]:.4f} | {auroc_k[d]:.4f} |")
        print(f"one-class digit {d}: AUROC {auroc[d]:.4f} (alpha·k units), {auroc_k[d]:.4f} (k units)")
        if roc is None:  # ROC/PR curves of the first digit, both encodings
            roc = viz.roc_pr_curves([s_alpha, s_k], labels, out / f"{NAME}-oneclass-roc{tag}.png",
                                    names=[f"digit {d}, alpha·k units", f"digit {d}, k units"])

    # ---- figures ----------------------------------------------------------------------------
    figures = []
    k_fig = 25 if 25 in fits else sc["ks"][0]
    model, usage, res = fits[k_fig]
    filter_grid(model.decoder.weight, usage, out / f"{NAME}-filters{tag}.png")
    figures.append(f"{NAME}-filters{tag}.png")
    error_vs_k(errors, raw_err, out / f"{NAME}-error-vs-k{tag}.png")
    figures.append(f"{NAME}-error-vs-k{tag}.png")
    viz.training_curves([h["train"] for h in res.history], out / f"{NAME}-training-k{k_fig}{tag}.png")
    figures.append(f"{NAME}-training-k{k_fig}{tag}.png")
    figures.append(pathlib.Path(roc).name)

    results = {"probe_error_raw_pixels_pct": raw_err}
    published = {"probe_error_raw_pixels_pct": PUBLISHED_RAW}
    for k in sc["ks"]:
        results[f"probe_error_k{k}_pct"] = errors[k]
        if k in PUBLISHED_ERROR:
            published[f"probe_error_k{k}_pct"] = PUBLISHED_ERROR[k]
    for e, v in sorted(curve.items()):
        results[f"probe_error_k25_epoch{e}_C{grid[-1]:g}_pct"] = v
    results["oneclass_auroc_alpha_k"] = _common.mean_std(list(auroc.values()))
    results["oneclass_auroc_k"] = _common.mean_std(list(auroc_k.values()))
    for d in sc["digits"]:
        results[f"oneclass_auroc_digit{d}_alpha_k"] = auroc[d]
        results[f"oneclass_auroc_digit{d}_k"] = auroc_k[d]

    n_tr, n_te = sc["n_train"], sc["n_test"]
    unit_norm = fits[k_fig][0].unit_norm
    protocol = (
        f"Schedule '{sched_name}'. MNIST pixels in [0, 1] as 784-vectors, {n_tr} training / {n_te} test images. "
        f"k-sparse AE (pyaeplus.models 'sparse', sparsity='topk'): {LATENT} units, "
        f"{'tied' if args.tied else 'untied'} encoder/decoder weights (pyaeplus.topk_encode encoder; decoder rows "
        f"{'kept at unit norm every step, gradient projected' if unit_norm else 'unit-norm at initialization'}), "
        f"ReLU on "
        f"the kept values, pre-encoder bias, AuxK on dead units (library defaults), MSE loss; Adam lr {args.lr}, "
        f"batch {sc['batch_size']}, {sc['epochs']} epochs per k, k decreasing linearly "
        f"from {K_START} to its target over the first half of the steps; "
        f"encoding with round(alpha·k) units, alpha = {args.alpha}. Probe: scikit-learn multinomial logistic "
        f"regression (L-BFGS, features scaled by their largest training value, C from {grid} chosen on a "
        f"held-out part of the training set) refit on the {n_tr} training codes, error on the {n_te} test "
        f"codes; the same probe on raw pixels (C from {raw_grid}) is the baseline. "
        f"One-class: the same model (k = {k_oc}) trained for {sc['oc_epochs']} epochs on the training images of "
        f"one digit (digits {sc['digits']}), the {n_te} test images scored by per-image MSE "
        f"(pyaeplus.scoring.score), the other digits are anomalies; AUROC reported with alpha·k units at "
        f"encoding (the model's inference rule) and with k units.")
    gaps = "; ".join(f"k={k}: {errors[k]:.2f} % vs {PUBLISHED_ERROR[k]:.2f} % ({errors[k] - PUBLISHED_ERROR[k]:+.2f} "
                     "points)" for k in sc["ks"] if k in PUBLISHED_ERROR)
    trend = ""
    if len(curve) > 1:
        trend = ("Probe error of the k=25 model along training (C=" + f"{grid[-1]:g}): "
                 + ", ".join(f"epoch {e}: {v:.2f} %" for e, v in sorted(curve.items())))
        (e0, v0), (e1, v1) = sorted(curve.items())[-2:]
        # a fact, not a forecast: whether a longer schedule closes the gap needs a longer run
        trend += f" ({v1 - v0:+.2f} points over the last {e1 - e0} epochs). "
    differences = (
        f"Published: {PUBLISHED_SOURCE} Gap to the paper: {gaps}. {trend}The paper trains a tied-weight, "
        f"linear-activation k-sparse AE with SGD + momentum for many more epochs (its exact schedule is not "
        f"reproduced here); ours {'ties the weights too' if args.tied else 'has untied weights'} but keeps the "
        f"library's ReLU on the kept values and AuxK, and trains {sc['epochs']} epochs per k with Adam so that all "
        f"three k fit the 12-minute CPU budget. The paper has no "
        f"one-class anomaly results: the AUROC rows have no published number.")
    table_probe = "\n".join(
        ["| k | units at encoding | epochs | train MSE | dead units | units used | C | probe error | published | "
         "train | probe |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows,
         f"| raw pixels | 784 | – | – | – | – | {raw_c:g} | {raw_err:.2f} % | {PUBLISHED_RAW:.2f} % | – | "
         f"{raw_s:.0f} s |"])
    table_oc = "\n".join(["| normal digit | training images | AUROC (alpha·k units) | AUROC (k units) |",
                          "|---|---|---|---|", *oc_rows])
    return _common.save(NAME, args, device, t0, results=results, published=published, protocol=protocol,
                        differences=differences, tables=[table_probe, table_oc], figures=figures)


if __name__ == "__main__":
    main()
