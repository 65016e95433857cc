"""Laplacian autoencoder on one-class MNIST with a HOG/Hellinger k-NN graph (issue 7, example 5).

For each normal digit d: the training images of d get a k-NN graph (k = 10) over their HOG
descriptors under the Hellinger distance, with heat-kernel weights exp(-d²/σ²) (σ = median
10th-neighbour distance). One dense autoencoder is trained three times from the same initialization on
the same neighbour-sampled batches (pyaeplus.graph.NeighborBatchSampler): (a) with the
graph-Laplacian regularizer λ·mean_edges W_ij‖z_i − z_j‖² on its latents (pyaeplus LaplacianAE),
in two forms: as is ("unnormalized") and divided by the batch's mean squared latent pair distance
(LaplacianAE(scale_invariant=True)), (b) with λ = 0. Both score the whole MNIST test split by latent k-NN distance to the training latents
(k = 5) and by reconstruction error; the other nine digits are the anomalies. Neighbourhood
preservation: the share of each training image's 10 HOG/Hellinger neighbours that are among its
10 latent-space neighbours, for the autoencoders and for PCA of the pixels to the same dimension.
λ of each form is chosen once, by a sweep on one digit, by preservation (no anomaly labels), and
kept fixed for all digits.

    python examples/laplacian_ae_mnist.py --data ../shared/data --threads 1   # all digits
    python examples/laplacian_ae_mnist.py --digits 3 --lam 0.1                 # one digit, fixed λ
    python examples/laplacian_ae_mnist.py --quick                              # CI version

On CUDA the 'full' schedule runs (every training image of the digit, 30 epochs); on a CPU the
'cpu' one (1500 training images per digit, 6 epochs) so that all ten digits fit in 12 minutes.
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

from pyaeplus import data as pdata  # noqa: E402
from pyaeplus import graph as pgraph  # noqa: E402
from pyaeplus import scoring, viz  # noqa: E402
from pyaeplus.models import LaplacianAE  # noqa: E402
from pyaeplus.train import fit  # noqa: E402

NAME = "laplacian_ae_mnist"
HOG = {"orientations": 9, "pixels_per_cell": (7, 7), "cells_per_block": (2, 2), "block_norm": "L1"}
K_GRAPH = 10      # graph neighbours, and the k of neighbourhood preservation
K_SCORE = 5       # latent k-NN anomaly score
# The two forms of the penalty: "si" = LaplacianAE(scale_invariant=True) (divided by the batch's
# mean squared latent pair distance), "un" = the unnormalized λ·mean_edges W‖zi−zj‖².
FORMS = {"si": "scale-invariant", "un": "unnormalized"}
# λ without a sweep (the quick run, --lam not given): the CPU sweep's choice for both forms.
LAM_DEFAULT = {"si": 0.01, "un": 0.01}
SWEEP = {"si": (0.01, 0.03, 0.1), "un": (0.003, 0.01, 0.03)}
CHECK_EPOCHS = 20  # longer-schedule check of the first digit on the shortened 'cpu' schedule


# NamedTuples, not dataclasses: the test fixture loads this file without registering it in
# sys.modules, and a dataclass field annotated "module.Type" (a string under the __future__
# import) makes dataclasses look its module up there (AttributeError on None).
class Schedule(NamedTuple):
    name: str
    epochs: int
    train_limit: int | None        # normal training images per digit (None: all ~6000)
    sweep: bool                    # run the λ sweep on the first digit
    lr: float = 1e-3
    batch_size: int = 128
    neighbors: int = 5             # sampled graph neighbours per anchor in a batch

    def describe(self) -> str:
        return (f"'{self.name}' schedule: Adam lr {self.lr:g}, {self.epochs} epochs of "
                f"NeighborBatchSampler batches ({self.batch_size} images: anchors + {self.neighbors} heat-weighted "
                f"graph neighbours each; one epoch visits every image once as an anchor, so it holds "
                f"~{self.neighbors + 1}x as many samples as the training set); training images per digit: "
                f"{'all' if self.train_limit is None else self.train_limit}")


SCHEDULES = {
    "full": Schedule("full", epochs=30, train_limit=None, sweep=True),
    # 2-core CPU: sweep + ten digits x three models in <= 12 minutes (measured, --threads 1).
    "cpu": Schedule("cpu", epochs=6, train_limit=1500, sweep=True),
    # CI: one digit, 1500 training images, fixed λ.
    "quick": Schedule("quick", epochs=5, train_limit=1500, sweep=False),
}


def base_config(latent: int) -> dict:
    return {"name": "dense", "config": {"in_features": 784, "hidden": [256, 64], "latent": latent,
                                        "input_shape": [1, 28, 28], "output_activation": "sigmoid",
                                        "loss": "mse"}}


def preservation(knn_in: torch.Tensor, z: torch.Tensor, k: int = K_GRAPH) -> float:
    """Mean over rows of |input k-NN ∩ latent k-NN| / k. knn_in: (N, >=k) indices; z: (N, d)."""
    kz = pgraph.knn_graph(z.float(), k, metric="l2", progress=False).indices      # (N, k)
    ki = knn_in[:, :k]
    return float((ki[:, :, None] == kz[:, None, :]).any(-1).float().mean())


def participation_ratio(z: torch.Tensor) -> float:
    """(Σλ)² / Σλ² of the latent covariance: ~1 when one direction holds all the variance."""
    ev = torch.linalg.eigvalsh(torch.cov(z.T.double())).clamp_min(0)
    return float(ev.sum() ** 2 / (ev ** 2).sum())


class DigitData(NamedTuple):
    digit: int
    train: pdata.IDXDataset
    x: torch.Tensor                # (N, 1, 28, 28) float in [0, 1]
    knn: pgraph.KnnGraph           # HOG/Hellinger 10-NN (directed, self excluded)
    graph: pgraph.Graph            # heat-kernel weights, symmetrized (max)
    sigma: float
    time_graph_s: float


def digit_data(digit: int, sched: Schedule, args) -> DigitData:
    train = pdata.mnist(args.data, "train", classes=[digit])
    if sched.train_limit is not None and sched.train_limit < len(train):
        g = torch.Generator().manual_seed(args.seed + digit)
        train = train.subset(torch.randperm(len(train), generator=g)[:sched.train_limit].sort().values)
    x = train.tensors()[0]
    t = time.time()
    feats = pgraph.features.hog(x[:, 0], **HOG)                                  # (N, 324)
    knn = pgraph.knn_graph(feats, K_GRAPH, metric="hellinger", progress=False)
    sigma = pgraph.weights.median_kth_distance(knn.distances)
    graph = pgraph.Graph.from_knn(knn, weighting="heat", sigma=sigma, symmetrize="max")
    return DigitData(digit, train, x, knn, graph, sigma, round(time.time() - t, 2))


def train_and_score(dd: DigitData, lam: float, sched: Schedule, args, device: torch.device,
                    test_x: torch.Tensor, labels: np.ndarray, form: str = "si") -> dict:
    """Train the AE (λ = 0: no regularizer) on neighbour-sampled batches, score the test split."""
    t0 = time.time()
    torch.manual_seed(args.seed + dd.digit)   # same initialization for every λ of this digit
    model = LaplacianAE(base_config(args.latent), lam=lam, graph=dd.graph,
                        scale_invariant=form == "si")
    # same seed -> the same batches in the same order for every λ
    sampler = model.sampler(sched.batch_size, neighbors=sched.neighbors, seed=args.seed + dd.digit)
    res = fit(model, pdata.WithIndex(dd.train), epochs=sched.epochs, lr=sched.lr, batch_sampler=sampler,
              device=device, seed=args.seed + dd.digit, progress=args.progress)
    t_train = time.time() - t0
    model.eval()
    with torch.no_grad():
        z = torch.cat([model.encode(b.to(device)).float().cpu() for b in dd.x.split(1000)])      # (N, d)
    common = dict(device=device, batch_size=1000, amp=False, progress=False)
    s_knn = scoring.score(model, test_x, score="latent_knn", knn_reference=dd.x, k=K_SCORE, **common)
    s_mse = scoring.score(model, test_x, score="mse", **common)
    m_knn = scoring.metrics(s_knn, labels, pos_label=1)
    m_mse = scoring.metrics(s_mse, labels, pos_label=1)
    hist = [h["train"] for h in res.history]
    return {"digit": dd.digit, "lam": lam, "epochs": sched.epochs, "form": form if lam > 0 else "none", "preservation": preservation(dd.knn.indices, z),
            "participation_ratio": participation_ratio(z), "auroc_knn": m_knn["auroc"], "ap_knn": m_knn["ap"],
            "auroc_mse": m_mse["auroc"], "ap_mse": m_mse["ap"], "recon": hist[-1]["recon"],
            "laplacian": hist[-1]["laplacian"], "edges_per_batch": hist[-1]["edges"],
            "time_train_s": round(t_train, 1), "time_s": round(time.time() - t0, 1),
            "scores_knn": s_knn, "scores_mse": s_mse, "model": model, "z_train": z}


def pca_preservation(dd: DigitData, dim: int) -> float:
    flat = dd.x.flatten(1)
    return preservation(dd.knn.indices, pgraph.features.PCA(dim).fit(flat).transform(flat))


def pixel_preservation(dd: DigitData) -> float:
    """Yardstick: Euclidean neighbours of the raw 784 pixels."""
    return preservation(dd.knn.indices, dd.x.flatten(1))


# ---- figures -------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _name(tag: str, lams: dict) -> str:
    return "plain AE" if tag == "plain" else f"Laplacian AE, {FORMS[tag]} λ={lams[tag]:g}"


def _bars(rows: list[dict], tags: list[str], lams: dict, path: pathlib.Path) -> None:
    plt = _plt()
    digits = [r["digit"] for r in rows]
    x = np.arange(len(digits))
    fig, axes = plt.subplots(1, 3, figsize=(max(12.0, 1.6 * len(digits) + 5), 3.8))
    panels = (("auroc_knn", "latent 5-NN AUROC (%)", 100.0, []), ("auroc_mse", "reconstruction MSE AUROC (%)", 100.0, []),
              ("preservation", f"HOG/Hellinger {K_GRAPH}-NN kept in latent {K_GRAPH}-NN", 1.0, ["pca"]))
    for ax, (key, title, scale, extra) in zip(axes, panels):
        series = [(f"{t}_{key}", _name(t, lams)) for t in tags] + [(f"{e}_{key}", "PCA of pixels") for e in extra]
        w = 0.8 / len(series)
        for j, (k, name) in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * w, [scale * r[k] for r in rows], w, label=name)
        if scale == 100.0:
            lo = min(scale * r[k] for r in rows for k, _ in series)
            ax.set_ylim(max(0.0, lo - 5), 100.5)
        ax.set_xticks(x, [str(d) for d in digits])
        ax.set_xlabel("normal digit")
        ax.set_title(title, fontsize=9)
    axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _projection(runs: dict, tags: list[str], lams: dict, test_x: torch.Tensor, labels: np.ndarray,
                path: pathlib.Path, n: int = 2000, seed: int = 0) -> None:
    """Test latents of each AE projected on the first two principal axes of its training latents."""
    plt = _plt()
    pick = np.random.default_rng(seed).permutation(len(labels))[:n]
    fig, axes = plt.subplots(1, len(tags), figsize=(4.3 * len(tags), 4.2), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        r = runs[tag]
        model = r["model"]
        dev = next(model.parameters()).device
        with torch.no_grad():
            z = model.encode(test_x[pick].to(dev)).float().cpu()
        p = pgraph.features.PCA(2).fit(r["z_train"]).transform(z).numpy()
        y = labels[pick]
        ax.scatter(p[y == 1, 0], p[y == 1, 1], s=3, alpha=0.35, c="tab:red", label="anomaly (other digits)")
        ax.scatter(p[y == 0, 0], p[y == 0, 1], s=3, alpha=0.6, c="tab:blue", label=f"normal (digit {r['digit']})")
        ax.set_title(f"{_name(tag, lams)}\nlatent 5-NN AUROC {100 * r['auroc_knn']:.1f} %", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, markerscale=3, loc="best")
    fig.suptitle("test latents on the first two principal axes of the training latents", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---- driver ----------------------------------------------------------------------------------
def _schedule(args, device: torch.device) -> Schedule:
    name = "quick" if args.quick else args.schedule
    if name == "auto":
        name = "full" if device.type == "cuda" else "cpu"
    s = SCHEDULES[name]._replace(**{f: getattr(args, f) for f in ("epochs", "train_limit", "batch_size", "neighbors",
                                                                   "lr") if getattr(args, f) is not None})
    for field, lo in (("epochs", 1), ("batch_size", 2), ("neighbors", 1)):
        if getattr(s, field) < lo:
            raise ValueError(f"--{field.replace('_', '-')} must be >= {lo}, got {getattr(s, field)}")
    if s.train_limit is not None and s.train_limit <= K_GRAPH + 1:
        raise ValueError(f"--train-limit must be > {K_GRAPH + 1}, got {s.train_limit}")
    if s.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {s.lr}")
    return s


def _digits(text: str) -> list[int]:
    try:
        ds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--digits must be a comma-separated list of digits 0-9, got {text!r}") from None
    if not ds or any(d < 0 or d > 9 for d in ds) or len(set(ds)) != len(ds):
        raise ValueError(f"--digits must list distinct digits 0-9, got {text!r}")
    return ds


def _strip(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("scores_knn", "scores_mse", "model", "z_train")}


def main(argv=None) -> dict:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--digits", default=None, help="comma-separated normal digits (default: all; quick: 0)")
    p.add_argument("--schedule", default="auto", choices=("auto", "full", "cpu"),
                   help="auto: full on CUDA, cpu otherwise (--quick overrides)")
    p.add_argument("--penalty", default="both", choices=("both", *FORMS.values()),
                   help="which form(s) of the Laplacian penalty to train besides the plain AE")
    p.add_argument("--lam", type=float, default=None,
                   help="fixed λ for every form (skips the sweep; default: the sweep's choice, "
                        f"{LAM_DEFAULT} without a sweep)")
    p.add_argument("--latent", type=int, default=32, help="latent width d")
    p.add_argument("--check-epochs", type=int, default=None,
                   help="after the run, train the first digit's models again for this many epochs, to show "
                        f"what the shortened schedule costs (default: {CHECK_EPOCHS} on the 'cpu' schedule, "
                        "0 = skip)")
    for f, t in (("epochs", int), ("train-limit", int), ("batch-size", int), ("neighbors", int), ("lr", float)):
        p.add_argument(f"--{f}", type=t, default=None, help="override the schedule's value")
    args = p.parse_args(argv)
    t0 = time.time()
    device = _common.setup(args)
    sched = _schedule(args, device)
    digits = _digits(args.digits if args.digits is not None else ("0" if args.quick else "0,1,2,3,4,5,6,7,8,9"))
    if args.lam is not None and not (args.lam > 0 and np.isfinite(args.lam)):
        raise ValueError(f"--lam must be > 0, got {args.lam}")
    if args.latent < 1:
        raise ValueError(f"--latent must be >= 1, got {args.latent}")
    if args.check_epochs is not None and args.check_epochs < 0:
        raise ValueError(f"--check-epochs must be >= 0, got {args.check_epochs}")
    forms = [t for t, f in FORMS.items() if args.penalty in ("both", f)]
    tags = ["plain", *forms]
    out = _common.out_dir(args)
    stem = f"{NAME}-quick" if args.quick else NAME

    test = pdata.mnist(args.data, "test")
    test_x, test_y = test.tensors()                                              # (10000, 1, 28, 28)

    lams = {t: (args.lam if args.lam is not None else LAM_DEFAULT[t]) for t in forms}
    lam_source = "--lam" if args.lam is not None else "default (no sweep)"
    rows, sweep, first = [], [], None
    for i, d in enumerate(digits):
        dd = digit_data(d, sched, args)
        labels = (test_y != d).numpy().astype(np.int64)                          # 1 = anomaly
        runs = {"plain": train_and_score(dd, 0.0, sched, args, device, test_x, labels)}
        if i == 0 and sched.sweep and args.lam is None:
            sweep = [runs["plain"]]
            for t in forms:
                cand = [train_and_score(dd, v, sched, args, device, test_x, labels, form=t) for v in SWEEP[t]]
                sweep += cand
                # choose by training-set preservation: the regularizer's own goal, no anomaly labels used
                runs[t] = max(cand, key=lambda r: r["preservation"])
                lams[t] = runs[t]["lam"]
            lam_source = f"chosen per form by the sweep on digit {d} (highest training-set preservation)"
        else:
            for t in forms:
                runs[t] = train_and_score(dd, lams[t], sched, args, device, test_x, labels, form=t)
        row = {"digit": d, "n_train": len(dd.train), "sigma": dd.sigma, "graph_nnz": dd.graph.nnz,
               "time_graph_s": dd.time_graph_s, "pca_preservation": pca_preservation(dd, args.latent),
               "pixel_preservation": pixel_preservation(dd)}
        for t, r in runs.items():
            row.update({f"{t}_{k}": v for k, v in _strip(r).items() if k != "digit"})
        rows.append(row)
        if first is None:
            first = (runs, labels)
        if args.progress:
            print(f"digit {d}: latent 5-NN AUROC " + " / ".join(f"{t} {runs[t]['auroc_knn']:.4f}" for t in tags)
                  + "; preservation " + " / ".join(f"{t} {runs[t]['preservation']:.3f}" for t in tags)
                  + f" (PCA {row['pca_preservation']:.3f}) [{time.time() - t0:.0f} s]", flush=True)

    # ---- results ----
    def agg(key):
        vals = [r[key] for r in rows]
        return _common.mean_std(vals) if len(vals) > 1 else float(vals[0])

    results = {}
    for metric in ("auroc_knn", "auroc_mse", "preservation", "participation_ratio"):
        for t in tags:
            results[f"{metric}_{t}"] = agg(f"{t}_{metric}")
    results["preservation_pca"] = agg("pca_preservation")
    results["preservation_pixels"] = agg("pixel_preservation")
    for t in forms:
        results[f"lam_{t}"] = lams[t]
    published = {k: "—" for k in results}

    cols = [("auroc_knn", "kNN AUROC", 100.0, ".2f"), ("auroc_mse", "MSE AUROC", 100.0, ".2f"),
            ("preservation", "preservation", 1.0, ".3f"), ("participation_ratio", "PR", 1.0, ".2f")]
    head = ["digit", "n train"] + [f"{c[1]} {t}" for c in cols for t in tags] + ["PCA", "pixels", "time (s)"]
    table = ["**Per digit** (plain = λ 0; " + ", ".join(f"{t} = {FORMS[t]} λ {lams[t]:g}" for t in forms)
             + "; AUROC in %, latent 5-NN distance / reconstruction MSE; preservation = share of the "
             f"{K_GRAPH} HOG/Hellinger neighbours among the {K_GRAPH} latent neighbours, training set; PR = "
             "participation ratio of the latent covariance, ~1 when the latents vary along one direction)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(label, n, get):
        cells = [label, n] + [format(scale * get(f"{t}_{key}"), fmt) for key, _, scale, fmt in cols for t in tags]
        cells += [format(get("pca_preservation"), ".3f"), format(get("pixel_preservation"), ".3f")]
        return cells

    for r in rows:
        cells = line(str(r["digit"]), str(r["n_train"]), r.__getitem__)
        table.append("| " + " | ".join(cells + [f"{sum(r[f'{t}_time_s'] for t in tags):.0f}"]) + " |")
    table.append("| " + " | ".join(line("mean", "", lambda k: float(np.mean([r[k] for r in rows]))) + [""]) + " |")
    tables = ["\n".join(table)]
    if sweep:
        st = [f"**λ sweep on digit {digits[0]}** (chosen per form by training-set preservation: "
              + ", ".join(f"{FORMS[t]} λ = {lams[t]:g}" for t in forms) + ")", "",
              "| penalty | λ | preservation | PR | kNN AUROC (%) | MSE AUROC (%) | final recon MSE | final λ·Laplacian |",
              "|---|---|---|---|---|---|---|---|"]
        for r in sweep:
            st.append(f"| {FORMS.get(r['form'], 'none')} | {r['lam']:g} | {r['preservation']:.3f} | "
                      f"{r['participation_ratio']:.2f} | {100 * r['auroc_knn']:.2f} | {100 * r['auroc_mse']:.2f} | "
                      f"{r['recon']:.4f} | {r['laplacian']:.4f} |")
        tables.append("\n".join(st))

    check_epochs = args.check_epochs if args.check_epochs is not None else (CHECK_EPOCHS if sched.name == "cpu" else 0)
    check = []
    if check_epochs > 0:
        # the first digit once more, same λs, only the epoch count changed: does the short schedule
        # understate preservation or AUROC?
        long_sched = sched._replace(epochs=check_epochs)
        dd = digit_data(digits[0], long_sched, args)
        labels = (test_y != digits[0]).numpy().astype(np.int64)
        check = [_strip(train_and_score(dd, 0.0 if t == "plain" else lams[t], long_sched, args, device, test_x,
                                        labels, form="si" if t == "plain" else t)) for t in tags]
        short = {t: rows[0] for t in tags}
        ct = [f"**Longer-schedule check, digit {digits[0]}**: the same models trained {check_epochs} instead of "
              f"{sched.epochs} epochs", "",
              "| model | epochs | kNN AUROC (%) | MSE AUROC (%) | preservation | PR |", "|---|---|---|---|---|---|"]
        for t, r in zip(tags, check):
            for ep, src in ((sched.epochs, {k[len(t) + 1:]: v for k, v in short[t].items() if k.startswith(t + "_")}),
                            (check_epochs, r)):
                ct.append(f"| {_name(t, lams)} | {ep} | {100 * src['auroc_knn']:.2f} | {100 * src['auroc_mse']:.2f} | "
                          f"{src['preservation']:.3f} | {src['participation_ratio']:.2f} |")
        ct.append(f"| PCA of pixels | — | | | {rows[0]['pca_preservation']:.3f} | |")
        tables.append("\n".join(ct))

    figures = []
    _bars(rows, tags, lams, out / f"{stem}-bars.png")
    figures.append(f"{stem}-bars.png")
    runs, labels = first
    d0 = runs["plain"]["digit"]
    _projection(runs, tags, lams, test_x, labels, out / f"{stem}-digit{d0}-latents.png", seed=args.seed)
    figures.append(f"{stem}-digit{d0}-latents.png")
    viz.roc_pr_curves([runs[t]["scores_knn"] for t in tags] + [runs["plain"]["scores_mse"]], labels,
                      out / f"{stem}-digit{d0}-roc.png",
                      names=[f"{_name(t, lams)}, latent 5-NN" for t in tags] + ["plain AE, MSE"])
    figures.append(f"{stem}-digit{d0}-roc.png")

    protocol = (f"Normal digits {','.join(map(str, digits))}, seed {args.seed}, device {device}. {sched.describe()}. "
                f"Graph per digit: HOG of the training images (pyaeplus.graph.features.hog, {HOG['orientations']} "
                f"orientations, 7x7-pixel cells, 2x2-cell blocks, L1 block norm: 324-d), exact {K_GRAPH}-NN under the "
                "Hellinger distance (pyaeplus.graph.knn_graph metric='hellinger'), heat-kernel weights exp(-d²/σ²) with "
                f"σ = median {K_GRAPH}th-neighbour distance, symmetrized by max. Model: dense AE 784-256-64-{args.latent}"
                "-64-256-784 (ReLU, sigmoid output, MSE) inside pyaeplus LaplacianAE, reduction 'mean' "
                "(λ · Σ_edges W_ij‖z_i − z_j‖² / edges of the batch's subgraph); forms: "
                + ", ".join(f"{FORMS[t]} λ = {lams[t]:g}" for t in forms)
                + f" ({lam_source}; scale-invariant = LaplacianAE(scale_invariant=True), the penalty divided by the "
                "batch's mean squared latent pair distance). The plain AE is the same model with λ = 0; all are "
                "trained from the same initialization on the same batches. Scores on the whole MNIST test split "
                f"(10000 images, the nine other digits anomalous): mean distance to the {K_SCORE} nearest training "
                "latents (pyaeplus.scoring.score 'latent_knn') and reconstruction MSE; AUROC by "
                "pyaeplus.scoring.metrics. Preservation: mean over training images of |HOG/Hellinger "
                f"{K_GRAPH}-NN ∩ latent L2 {K_GRAPH}-NN| / {K_GRAPH}; yardsticks: PCA of the pixels to "
                f"{args.latent} dimensions, and the raw pixels (L2).")
    differences = _differences(sched, rows, forms, check, tags)
    doc = _common.save(NAME, args, device, t0, results=results, published=published, protocol=protocol,
                       differences=differences, tables=tables, figures=figures)
    doc["rows"] = rows
    doc["sweep"] = [_strip(r) for r in sweep]
    doc["check"] = check
    return doc


def _differences(sched: Schedule, rows: list[dict], forms: list[str], check: list[dict], tags: list[str]) -> str:
    parts = ["There is no published number: the protocol is the project's seed design, so the comparison is "
             "the Laplacian AE against the same AE without the regularizer (and PCA)."]
    if sched.name != "full":
        parts.append(f"Shortened '{sched.name}' schedule (the 'full' one: {SCHEDULES['full'].describe()}).")
    parts.append("One seed per digit.")
    n = len(rows)
    for t in forms:
        d = {k: [r[f"{t}_{k}"] - r[f"plain_{k}"] for r in rows] for k in ("auroc_knn", "auroc_mse", "preservation")}
        parts.append(f"Measured effect of the {FORMS[t]} regularizer (Laplacian − plain, mean over digits): latent "
                     f"5-NN AUROC {100 * np.mean(d['auroc_knn']):+.2f} points (better on "
                     f"{sum(v > 0 for v in d['auroc_knn'])} of {n} digits), reconstruction AUROC "
                     f"{100 * np.mean(d['auroc_mse']):+.2f} points (better on {sum(v > 0 for v in d['auroc_mse'])}), "
                     f"preservation {np.mean(d['preservation']):+.3f} (higher on "
                     f"{sum(v > 0 for v in d['preservation'])}).")
    m = {k: float(np.mean([r[k] for r in rows])) for k in ("plain_preservation", "pca_preservation",
                                                            "pixel_preservation")}
    parts.append("Neither autoencoder keeps the HOG/Hellinger neighbourhoods as well as PCA of the pixels to the same "
                 f"dimension (mean preservation {m['plain_preservation']:.3f} plain, "
                 + ", ".join(f"{np.mean([r[f'{t}_preservation'] for r in rows]):.3f} {FORMS[t]}" for t in forms)
                 + f", {m['pca_preservation']:.3f} PCA, {m['pixel_preservation']:.3f} raw pixels).")
    if check:
        r0 = rows[0]
        parts.append(f"Schedule length matters: digit {r0['digit']} trained {check[0]['epochs']} epochs reaches "
                     "preservation "
                     + ", ".join(f"{c['preservation']:.3f} ({r0[f'{t}_preservation']:.3f} at {sched.epochs})"
                                 f" {'plain' if t == 'plain' else FORMS[t]}" for t, c in zip(tags, check))
                     + f" against PCA's {r0['pca_preservation']:.3f}; see the longer-schedule table.")
    return " ".join(parts)


if __name__ == "__main__":
    main()
