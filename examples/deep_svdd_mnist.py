"""Deep SVDD one-class MNIST (Ruff et al., "Deep One-Class Classification", ICML 2018, Table 1).

For each digit d: the training images of d are the normal class; every test image is scored by
its squared distance to the hypersphere centre, and the nine other digits are the anomalies.
Preprocessing as Ruff et al.: global contrast normalization (l1) per image, then min-max scaling
with the min/max of the normal digit's normalized training images. The network is the bias-free
LeNet-style net (conv 1→8 → BN → leaky ReLU → pool, conv 8→4 → ..., linear 196 → 32), first
trained as the encoder of an autoencoder, then on the Deep SVDD objective.

    python examples/deep_svdd_mnist.py --data ../shared/data                  # all digits
    python examples/deep_svdd_mnist.py --digits 0,1 --objective soft-boundary
    python examples/deep_svdd_mnist.py --quick                                # CI version

On CUDA the full schedule runs (that of Ruff's PyTorch reference implementation); on a CPU a
shortened one (``--schedule`` picks either explicitly, ``--ae-epochs`` etc. override one value).
"""

import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

from pyaeplus import data as pdata  # noqa: E402
from pyaeplus import scoring, viz  # noqa: E402
from pyaeplus.models import build  # noqa: E402
from pyaeplus.train import fit  # noqa: E402

NAME = "deep_svdd_mnist"
# Ruff et al. 2018, Table 1, MNIST, AUROC in % (mean over 10 seeds).
PUBLISHED = {
    "one-class": [98.0, 99.7, 91.7, 91.9, 94.9, 88.5, 98.3, 94.6, 93.9, 96.5],
    "soft-boundary": [97.8, 99.6, 89.5, 90.3, 93.8, 85.8, 98.0, 92.7, 92.9, 94.9],
}
PIXELS = 28 * 28


@dataclasses.dataclass
class Schedule:
    name: str
    ae_epochs: int
    ae_milestone: int   # lr x 0.1 after this many epochs (>= ae_epochs: never)
    epochs: int
    milestone: int
    lr: float           # Deep SVDD learning rate
    ae_lr: float
    batch_size: int = 200
    weight_decay: float = 0.5e-6
    ae_weight_decay: float = 0.5e-3
    train_limit: int | None = None  # normal training images used (None: all ~6000)
    test_limit: int | None = None   # test images scored (None: all 10000)

    def describe(self) -> str:
        def phase(n, m, lr):
            return f"{n} epochs at lr {lr:g}" if m >= n else f"{m} epochs at lr {lr:g} + {n - m} at {lr * 0.1:g}"
        return (f"'{self.name}' schedule: Adam, batch {self.batch_size}; autoencoder pre-training "
                f"{phase(self.ae_epochs, self.ae_milestone, self.ae_lr)} (weight decay {self.ae_weight_decay:g} "
                f"on the per-image summed squared error); Deep SVDD "
                f"{phase(self.epochs, self.milestone, self.lr)} (weight decay {self.weight_decay:g}); "
                f"training images: {'all of the digit' if self.train_limit is None else self.train_limit}; "
                f"test images: {'all 10000' if self.test_limit is None else f'{self.test_limit} (stratified)'}")


SCHEDULES = {
    # Ruff's PyTorch reference (github.com/lukasruff/Deep-SVDD-PyTorch, README's MNIST command).
    "full": Schedule("full", ae_epochs=150, ae_milestone=50, epochs=150, milestone=50, lr=1e-4, ae_lr=1e-4),
    # 2-core CPU: one digit takes ~48 s of CPU time with --threads 1, so all ten fit in 12 minutes.
    # 10x the learning rate for ~1/20 of the steps (measured, Deep SVDD phase: lr 1e-4 for 10 epochs
    # gave 82.7 / 87.4 AUROC on digits 5 / 2, lr 1e-3 for 8 + 4 epochs 85.2 / 87.9).
    "cpu": Schedule("cpu", ae_epochs=8, ae_milestone=6, epochs=12, milestone=8, lr=1e-3, ae_lr=1e-3),
    # CI: one digit, 2000 training and 2000 test images; batches of 64 so that the BatchNorm
    # running statistics (used when scoring) settle within the few epochs.
    "quick": Schedule("quick", ae_epochs=6, ae_milestone=6, epochs=6, milestone=6, lr=1e-3, ae_lr=1e-3,
                      batch_size=64, train_limit=2000, test_limit=2000),
}


class Preprocess:
    """GCN (l1) per image, then min-max with the statistics of the normal training images."""

    def __init__(self, train_images: torch.Tensor):
        self.gcn = pdata.GlobalContrast("l1")
        self.scaler = pdata.MinMaxScaler().fit(self.gcn(train_images))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaler(self.gcn(x))


def _fit_phases(model, train, *, epochs, milestone, lr, weight_decay, sched, device, seed, progress):
    """Adam with the learning rate dropped x0.1 after ``milestone`` epochs, as two ``fit`` runs
    (``fit`` has no scheduler; Adam's moment estimates restart at the drop). Returns per-epoch
    train terms."""
    history = []
    warm = getattr(model, "warm_up_epochs", None)
    for i, (n, plr) in enumerate(((min(milestone, epochs), lr), (epochs - milestone, lr * 0.1))):
        if n <= 0:
            continue
        if warm is not None and i == 1:  # soft-boundary: R's warm-up counts the epochs of phase 1 too
            model.warm_up_epochs = max(0, warm - milestone)
        r = fit(model, train, epochs=n, batch_size=sched.batch_size, lr=plr, optimizer="adam",
                weight_decay=weight_decay, amp=False, device=device, seed=seed + i, progress=progress)
        history += [h["train"] for h in r.history]
    if warm is not None:
        model.warm_up_epochs = warm
    return history


def run_digit(digit: int, objective: str, sched: Schedule, args, device: torch.device,
              mnist_train: pdata.IDXDataset, mnist_test: pdata.IDXDataset) -> dict:
    t0 = time.time()
    train = mnist_train.subset(mnist_train.targets == digit)
    g = torch.Generator().manual_seed(args.seed + digit)
    if sched.train_limit is not None and sched.train_limit < len(train):
        train = train.subset(torch.randperm(len(train), generator=g)[:sched.train_limit])
    pre = Preprocess(train.tensors()[0])
    train.transform = pre
    keep = torch.arange(len(mnist_test))
    if sched.test_limit is not None and sched.test_limit < len(mnist_test):
        # stratified: the same share of every digit as in the full test split
        keep = torch.cat([idx[torch.randperm(idx.numel(), generator=g)[:round(idx.numel() * sched.test_limit
                                                                               / len(mnist_test))]]
                          for idx in (torch.nonzero(mnist_test.targets == c).flatten() for c in range(10))])
        keep = keep.sort().values
    test = mnist_test.subset(keep)  # a copy that takes this digit's preprocessing
    test.transform = pre

    torch.manual_seed(args.seed + digit)
    model = build("deep_svdd", input_shape=[1, 28, 28], objective=objective, nu=args.nu)
    ae = model.pretrain_autoencoder(output_activation="sigmoid", loss="mse")
    # Ruff's AE loss sums the squared error over the 784 pixels; ours averages it. Adam is
    # invariant to the loss scale, so dividing the L2 weight decay by 784 gives the same updates.
    ae_hist = _fit_phases(ae, train, epochs=sched.ae_epochs, milestone=sched.ae_milestone, lr=sched.ae_lr,
                          weight_decay=sched.ae_weight_decay / PIXELS, sched=sched, device=device,
                          seed=args.seed, progress=args.progress)
    model.load_pretrained(ae)  # the net is shared: marks the centre for recomputation from φ
    t_ae = time.time()
    svdd_hist = _fit_phases(model, train, epochs=sched.epochs, milestone=sched.milestone, lr=sched.lr,
                            weight_decay=sched.weight_decay, sched=sched, device=device, seed=args.seed,
                            progress=args.progress)
    t_train = time.time()
    # amp=False: bf16 distances would tie many test scores and blur the ranking
    s = scoring.score(model, test, score="svdd", batch_size=1000, device=device, amp=False, progress=False)
    labels = (test.targets != digit).numpy().astype(np.int64)  # 1 = anomaly (any other digit)
    m = scoring.metrics(s, labels, pos_label=1)
    return {"digit": digit, "objective": objective, "auroc": 100.0 * m["auroc"], "ap": 100.0 * m["ap"],
            "n_train": len(train), "n_test": len(test), "scores": s, "labels": labels, "test": test,
            "ae_loss": [h["loss"] for h in ae_hist], "svdd_loss": [h["loss"] for h in svdd_hist],
            "centre_norm": float(model.c.norm()), "radius": float(model.R),
            "time_ae_s": round(t_ae - t0, 1), "time_svdd_s": round(t_train - t_ae, 1),
            "time_s": round(time.time() - t0, 1)}


def _bar_chart(rows: dict[str, list[dict]], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    objectives = list(rows)
    digits = [r["digit"] for r in rows[objectives[0]]]
    x = np.arange(len(digits))
    k = 2 * len(objectives)
    w = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(digits) + 2), 3.8))
    for j, obj in enumerate(objectives):
        ours = [r["auroc"] for r in rows[obj]]
        pub = [PUBLISHED[obj][d] for d in digits]
        ax.bar(x + (2 * j - k / 2 + 0.5) * w, ours, w, label=f"ours ({obj})")
        ax.bar(x + (2 * j + 1 - k / 2 + 0.5) * w, pub, w, label=f"published ({obj})", alpha=0.55)
    lo = min(min(r["auroc"] for r in rs) for rs in rows.values())
    ax.set_ylim(max(0.0, min(lo, 85.0) - 5.0), 100.5)
    ax.set_xticks(x, [str(d) for d in digits])
    ax.set_xlabel("normal digit")
    ax.set_ylabel("AUROC (%)")
    ax.set_title("Deep SVDD one-class MNIST: ours vs Ruff et al. 2018")
    ax.legend(fontsize=7, ncol=len(objectives), loc="lower right")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _extremes(r: dict, path: pathlib.Path, n: int = 10) -> None:
    """The n most normal and n most anomalous test images of one digit's model, with labels."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    order = np.argsort(r["scores"], kind="stable")
    picks = {"most normal": order[:n], "most anomalous": order[::-1][:n]}
    raw = r["test"].data  # (N, 28, 28) uint8: show the images before preprocessing
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.7), squeeze=False)
    for i, (title, idx) in enumerate(picks.items()):
        for j, t in enumerate(idx):
            ax = axes[i, j]
            ax.imshow(raw[int(t)].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{int(r['test'].targets[int(t)])}: {r['scores'][int(t)]:.3g}", fontsize=6)
        axes[i, 0].set_ylabel(title, fontsize=7)
    fig.suptitle(f"normal digit {r['digit']} ({r['objective']}): label: score", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _schedule(args, device: torch.device) -> Schedule:
    name = args.schedule
    if args.quick:
        name = "quick"
    elif name == "auto":
        name = "full" if device.type == "cuda" else "cpu"
    s = dataclasses.replace(SCHEDULES[name])
    for field in ("ae_epochs", "ae_milestone", "epochs", "milestone", "lr", "ae_lr", "batch_size", "train_limit",
                  "test_limit"):
        v = getattr(args, field)
        if v is not None:
            setattr(s, field, v)
    for field in ("ae_epochs", "epochs", "batch_size"):
        if getattr(s, field) < 1:
            raise ValueError(f"--{field.replace('_', '-')} must be >= 1, got {getattr(s, field)}")
    for field in ("ae_milestone", "milestone"):
        if getattr(s, field) < 1:
            raise ValueError(f"--{field.replace('_', '-')} must be >= 1, got {getattr(s, field)}")
    if s.lr <= 0 or s.ae_lr <= 0:
        raise ValueError(f"--lr and --ae-lr must be > 0, got {s.lr} and {s.ae_lr}")
    return s


def _digits(text: str) -> list[int]:
    try:
        ds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--digits must be a comma-separated list of digits 0-9, got {text!r}") from None
    if not ds or any(d < 0 or d > 9 for d in ds) or len(set(ds)) != len(ds):
        raise ValueError(f"--digits must list distinct digits 0-9, got {text!r}")
    return ds


def main(argv=None) -> dict:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--digits", default=None, help="comma-separated normal digits (default: all; quick: 1)")
    p.add_argument("--objective", default="one-class", choices=("one-class", "soft-boundary", "both"))
    p.add_argument("--nu", type=float, default=0.1, help="ν of the soft-boundary objective")
    p.add_argument("--schedule", default="auto", choices=("auto", "full", "cpu"),
                   help="auto: full on CUDA, cpu otherwise (--quick overrides)")
    for f, t in (("ae-epochs", int), ("ae-milestone", int), ("epochs", int), ("milestone", int), ("lr", float),
                 ("ae-lr", float), ("batch-size", int), ("train-limit", int), ("test-limit", int)):
        p.add_argument(f"--{f}", type=t, default=None, help="override the schedule's value")
    args = p.parse_args(argv)
    t0 = time.time()
    device = _common.setup(args)
    digits = _digits(args.digits if args.digits is not None else ("1" if args.quick else "0,1,2,3,4,5,6,7,8,9"))
    sched = _schedule(args, device)
    objectives = ["one-class", "soft-boundary"] if args.objective == "both" else [args.objective]
    out = _common.out_dir(args)
    stem = f"{NAME}-quick" if args.quick else NAME

    mnist_train, mnist_test = pdata.mnist(args.data, "train"), pdata.mnist(args.data, "test")
    rows: dict[str, list[dict]] = {}
    for obj in objectives:
        rows[obj] = []
        for d in digits:
            r = run_digit(d, obj, sched, args, device, mnist_train, mnist_test)
            rows[obj].append(r)
            if args.progress:
                print(f"[{obj}] digit {d}: AUROC {r['auroc']:.2f} % (published {PUBLISHED[obj][d]}) "
                      f"in {r['time_s']} s", flush=True)

    results, published = {}, {}
    lines = []
    for obj in objectives:
        tag = "" if obj == "one-class" else "sb_"
        for r in rows[obj]:
            results[f"{tag}auroc_{r['digit']}"] = round(r["auroc"], 2)
            published[f"{tag}auroc_{r['digit']}"] = PUBLISHED[obj][r["digit"]]
        ours = [r["auroc"] for r in rows[obj]]
        pubs = [PUBLISHED[obj][r["digit"]] for r in rows[obj]]
        results[f"{tag}auroc_mean"] = round(float(np.mean(ours)), 2)
        published[f"{tag}auroc_mean"] = round(float(np.mean(pubs)), 2)
        lines += [f"**{obj} Deep SVDD, AUROC (%)** (Δ = ours − published)", "",
                  "| digit | ours | published | Δ | AP (%) | final AE loss | final SVDD loss | time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows[obj]:
            pub = PUBLISHED[obj][r["digit"]]
            lines.append(f"| {r['digit']} | {r['auroc']:.2f} | {pub:.1f} | {r['auroc'] - pub:+.2f} | {r['ap']:.2f} | "
                         f"{r['ae_loss'][-1]:.4g} | {r['svdd_loss'][-1]:.4g} | {r['time_s']} |")
        lines += [f"| mean | {np.mean(ours):.2f} | {np.mean(pubs):.2f} | {np.mean(ours) - np.mean(pubs):+.2f} "
                  "| | | | |", ""]

    figures = []
    _bar_chart(rows, out / f"{stem}-auroc.png")
    figures.append(f"{stem}-auroc.png")
    first = rows[objectives[0]][0]
    _extremes(first, out / f"{stem}-digit{first['digit']}-extremes.png")
    figures.append(f"{stem}-digit{first['digit']}-extremes.png")
    viz.score_histogram(first["scores"], first["labels"], out / f"{stem}-digit{first['digit']}-scores.png",
                        xlabel=f"‖φ(x) − c‖² (normal digit {first['digit']}, {first['objective']})")
    figures.append(f"{stem}-digit{first['digit']}-scores.png")

    n_train = sorted({r["n_train"] for rs in rows.values() for r in rs})
    protocol = (f"Digits {','.join(map(str, digits))} each as the normal class, objective(s) {', '.join(objectives)}"
                f"{f' (ν = {args.nu})' if 'soft-boundary' in objectives else ''}, seed {args.seed}, device "
                f"{device}. {sched.describe()} (per digit {n_train[0]}–{n_train[-1]} training images). "
                "Preprocessing: per-image GCN (l1) then min-max with the min/max of the normal digit's "
                "GCN-normalized training images. Model: pyaeplus DeepSVDD arch='lenet' (channels 8,4, 5x5, "
                "BN without affine, leaky ReLU 0.01, rep_dim 32, no biases), pre-trained as "
                "DeepSVDDAutoEncoder (MSE, sigmoid output), centre c = mean φ of the training digit after "
                "pre-training (|c_i| < 0.1 pushed to ±0.1). Score ‖φ(x) − c‖² (pyaeplus.scoring.score "
                "'svdd'); AUROC by pyaeplus.scoring.metrics with all other digits as anomalies.")
    differences = _differences(sched, rows)
    doc = _common.save(NAME, args, device, t0, results=results, published=published, protocol=protocol,
                       differences=differences, tables=["\n".join(lines)], figures=figures)
    # per-digit details (AP, losses per epoch, times) next to what _common.save wrote
    doc["rows"] = {obj: [{k: v for k, v in r.items() if k not in ("scores", "labels", "test")} for r in rs]
                   for obj, rs in rows.items()}
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, out / f"{stem}.json")
    return doc


def _differences(sched: Schedule, rows: dict[str, list[dict]]) -> str:
    parts = []
    if sched.name != "full":
        parts.append(f"Shortened '{sched.name}' schedule instead of the full one ({SCHEDULES['full'].describe()}); "
                     "fewer epochs are the main reason for any shortfall.")
    else:
        parts.append("The full schedule is that of Ruff's PyTorch reference implementation; the paper's numbers "
                     "came from their earlier Theano code with its own epoch counts.")
    parts.append("One seed per digit (the paper reports the mean over 10 seeds).")
    parts.append("The decoder mirrors the encoder with linear 32→196, nearest upsampling and 5x5 convolutions "
                 "instead of Ruff's reshape to 2x4x4 and transposed convolutions.")
    parts.append("The learning-rate drop is a second fit() run, so Adam's moment estimates restart at the milestone.")
    if sched.train_limit is not None or sched.test_limit is not None:
        parts.append("Subsets of the training digit and of the test split (quick run).")
    gaps = [f"{obj} digit {r['digit']}: {r['auroc'] - PUBLISHED[obj][r['digit']]:+.2f}"
            for obj, rs in rows.items() for r in rs]
    parts.append("Gap to the published AUROC (points): " + ", ".join(gaps) + ".")
    return " ".join(parts)


if __name__ == "__main__":
    main()
