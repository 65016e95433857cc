"""ECG5000 dense autoencoder: the TensorFlow "Intro to Autoencoders" anomaly-detection tutorial.

140-32-16-8-16-32-140 ReLU network with a sigmoid output and MAE loss, trained with Adam on the
normal beats of the training split only; global min-max scaling fitted on the training split;
threshold = mean + 1 std of the normal training rows' reconstruction losses; a beat is predicted
"normal" when its loss is below the threshold, and accuracy / precision / recall are computed with
*normal* as the positive class, as the tutorial does.

Only the 500-row UCR TRAIN file of ECG5000 is available here (the tutorial uses the 4,998-row
concatenation of TRAIN and TEST), so every seed draws a stratified 80/20 split of those 500 rows
(100 test beats) and the result is reported as mean ± std over seeds.

    python examples/ecg5000_dense_ae.py --data ../shared/data            # 5 seeds, two schedules
    python examples/ecg5000_dense_ae.py --data ../shared/data --quick    # CI: 1 seed, longer schedule
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

import pyaeplus  # noqa: E402,F401
from pyaeplus import data as D  # noqa: E402
from pyaeplus import models, scoring, train, viz  # noqa: E402

NAME = "ecg5000_dense_ae"
# TF tutorial, evaluated on the 998-row test split of the full 4,998-row ECG5000 (normal = positive)
PUBLISHED = {"accuracy": 0.944, "precision": 0.992, "recall": 0.907}
METRICS = ("accuracy", "precision", "recall", "auroc", "train_recall")


def split(labels: np.ndarray, seed: int, test_size: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (normal vs abnormal) train/test row indices; the seed picks the split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(labels.shape[0])
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels == 1)
    return np.sort(tr), np.sort(te)


def run_once(ds, seed: int, epochs: int, batch_size: int, device: torch.device, progress: bool) -> dict:
    """One seed: split, scale, train on normal training beats, threshold, evaluate on the test beats."""
    x_all, y_all = ds.tensors()
    tr, te = split(y_all.numpy(), seed)
    # tutorial: min_val = tf.reduce_min(train_data), max_val = tf.reduce_max(train_data): two scalars
    # over all training rows (normal and abnormal), applied to both splits
    scaler = D.MinMaxScaler().fit(x_all[tr])
    x_tr, x_te = scaler(x_all[tr]), scaler(x_all[te])
    normal_tr = x_tr[y_all[tr] == 1]
    normal_te = (y_all[te] == 1).numpy()

    torch.manual_seed(seed)  # the seed also sets the initial weights
    model = models.build("dense", in_features=140, hidden=[32, 16], latent=8, activation="relu",
                         latent_activation="relu", output_activation="sigmoid", loss="mae")
    for m in model.modules():  # Keras' Dense defaults, as in the tutorial: Glorot uniform, zero bias
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            torch.nn.init.zeros_(m.bias)
    fit = train.fit(model, normal_tr, epochs=epochs, batch_size=batch_size, lr=1e-3, optimizer="adam",
                    device=device, seed=seed, progress=progress)
    model = fit.model.eval()

    kw = dict(score="mae", device=device, progress=False)
    train_loss = scoring.score(model, normal_tr, **kw)
    test_loss = scoring.score(model, x_te, **kw)
    thr = scoring.threshold(train_loss, method="mean_std", k=1.0)
    # "normal" is the positive class: the library's metrics predict positive when score > threshold,
    # so negate loss and threshold (loss < thr  <=>  -loss > -thr). The AUROC of -loss for "normal"
    # equals the AUROC of the loss (the anomaly score) for "abnormal".
    m = scoring.metrics(-test_loss, normal_te.astype(np.int64), -thr, pos_label=1)
    auroc_abnormal = scoring.metrics(test_loss, (~normal_te).astype(np.int64), pos_label=1)["auroc"]
    assert abs(auroc_abnormal - m["auroc"]) < 1e-12
    return {"seed": seed, "accuracy": m["accuracy"], "precision": m["precision"], "recall": m["recall"],
            "auroc": auroc_abnormal, "threshold": thr, "n_train_normal": int(normal_tr.shape[0]),
            "n_test": int(len(te)), "n_test_normal": int(normal_te.sum()),
            "final_train_mae": fit.history[-1]["train"]["loss"],
            # the share of normal *training* beats under the threshold: what mean + 1 std lets through
            # on the data it was fitted on, a ceiling the test recall cannot beat by much
            "train_recall": float((train_loss < thr).mean()),
            "_plot": (model, x_te, test_loss, normal_te, thr, fit.history)}


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5, 1 with --quick)")
    args = p.parse_args(argv)
    device = _common.setup(args)
    out = _common.out_dir(args)
    t0 = time.time()
    ds = D.ecg5000(args.data, "train")

    n_seeds = args.seeds or (1 if args.quick else 5)
    seeds = [args.seed + i for i in range(n_seeds)]
    # (label, epochs, batch): the tutorial's schedule is 20 epochs at batch 512, i.e. one full-batch
    # step per epoch on the 233 normal training beats; the longer one gives the optimizer enough steps.
    tutorial = ("tutorial: 20 epochs, batch 512 (20 Adam steps)", 20, 512)
    longer = ("longer: 200 epochs, batch 64 (800 Adam steps)", 200, 64)
    schedules = [longer] if args.quick else [tutorial, longer]

    rows: dict[str, list[dict]] = {}
    for label, epochs, bs in schedules:
        rows[label] = [run_once(ds, s, epochs, bs, device, args.progress) for s in seeds]

    results: dict = {}
    published: dict = {}
    for j, (label, _, _) in enumerate(schedules):
        prefix = "" if j == len(schedules) - 1 else "tutorial_schedule/"
        for k in METRICS:
            key = f"{prefix}{k}"
            results[key] = _common.mean_std([r[k] for r in rows[label]])
            if k in PUBLISHED:
                published[key] = PUBLISHED[k]

    tables = []
    for label, _, _ in schedules:
        lines = [f"**Per seed, schedule {label}** (normal = positive class for accuracy/precision/recall; "
                 "AUROC of the MAE score for 'abnormal', which equals the normal-positive AUROC of −MAE; train recall: "
                 "share of the normal training beats below the threshold)", "",
                 "| seed | accuracy | precision | recall | AUROC | threshold | final train MAE | train recall |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows[label]:
            lines.append(f"| {r['seed']} | {r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['auroc']:.4f} | {r['threshold']:.4f} | {r['final_train_mae']:.4f} | {r['train_recall']:.3f} |")
        tables.append("\n".join(lines))

    # figures from the first seed of the reported (last) schedule
    model, x_te, test_loss, normal_te, thr, history = rows[schedules[-1][0]][0]["_plot"]
    sfx = "-quick" if args.quick else ""
    figures = []
    f = viz.score_histogram(test_loss, (~normal_te).astype(np.int64), out / f"{NAME}-hist{sfx}.png",
                            threshold=thr, bins=30, xlabel="reconstruction MAE (test beats)")
    figures.append(f.name)
    f = viz.training_curves({"train MAE": [h["train"]["loss"] for h in history]}, out / f"{NAME}-train{sfx}.png")
    figures.append(f.name)
    figures.append(_beats_figure(model, x_te, normal_te, out / f"{NAME}-beats{sfx}.png").name)

    for label in rows:
        for r in rows[label]:
            r.pop("_plot")
    n_tr, n_te, n_te_norm = (rows[schedules[-1][0]][0][k] for k in ("n_train_normal", "n_test", "n_test_normal"))
    protocol = (f"ECG5000 UCR TRAIN file (500 beats, {int(ds.normal.sum())} normal = class 1). Per seed "
                f"({', '.join(map(str, seeds))}): stratified 80/20 split (normal vs abnormal; "
                f"{n_tr} normal training beats, {n_te} test beats of which {n_te_norm} normal), global "
                "min-max scaling fitted on all training beats, DenseAE 140-32-16-8-16-32-140 (ReLU, ReLU on "
                "the 8-d code, sigmoid output; Glorot-uniform weights and zero biases as Keras initialises Dense layers), MAE loss, Adam lr 1e-3, trained on the normal training beats "
                "only; threshold = mean + 1 std (population std) of the normal training beats' MAE; predicted "
                "normal when MAE < threshold. The seed sets the split, the initial weights and the batch order. "
                + ("Schedules: " + "; ".join(s[0] for s in schedules) + ". Unprefixed metrics are the "
                   "longer schedule; 'tutorial_schedule/' metrics are the tutorial's own schedule. "
                   if len(schedules) > 1 else f"Schedule: {schedules[0][0]} (quick run: one seed). ")
                + f"Device {device.type} (same protocol on CPU and GPU).")
    differences = ("Data: the tutorial uses all 4,998 ECG5000 beats (TRAIN+TEST, 2,919 normal) with an "
                   "unstratified 80/20 split (998 test beats); only the 500-row TRAIN file is available here, "
                   f"so each test split has {n_te} beats ({n_te_norm} normal): one misclassified beat moves "
                   "accuracy by 0.01, hence 5 seeds and mean ± std. The published numbers are one run of one "
                   "split. "
                   + (_schedule_note(rows, schedules) if len(schedules) > 1 else
                      "Quick run: only the longer schedule, one seed."))
    return _common.save(NAME, args, device, t0, results=results, published=published, protocol=protocol,
                        differences=differences, tables=tables, figures=figures)


def _schedule_note(rows: dict, schedules: list) -> str:
    """What the tutorial's 20-step schedule leaves on the table, in measured numbers."""
    (tut, *_), (lng, *_) = schedules[0], schedules[-1]

    def mean(label, k):
        return float(np.mean([r[k] for r in rows[label]]))

    return (f"The tutorial's schedule (20 epochs at batch 512 = 20 optimizer steps on these 233-234 beats) is "
            f"reported as is ('tutorial_schedule/'): it ends at a training MAE of {mean(tut, 'final_train_mae'):.4f} "
            f"against {mean(lng, 'final_train_mae'):.4f} after 800 steps, i.e. it underfits, which costs accuracy "
            f"({mean(tut, 'accuracy'):.3f} vs {mean(lng, 'accuracy'):.3f}) and AUROC ({mean(tut, 'auroc'):.3f} vs "
            f"{mean(lng, 'auroc'):.3f}); on the full data set the tutorial's 20 epochs are about 100 steps "
            "(some 2,300 normal training beats in 5 batches of 512), so the longer schedule on this small split is "
            "the closer analogue. Recall is bounded by the "
            "threshold rule itself: mean + 1 std of the training losses leaves "
            f"{1 - mean(lng, 'train_recall'):.1%} of the normal training beats above the threshold ('train_recall' "
            f"{mean(lng, 'train_recall'):.3f}), and the test recall ({mean(lng, 'recall'):.3f}) cannot be expected "
            "much above that; the published 0.907 is one split of a data set 10 times larger.")


def _beats_figure(model, x_te: torch.Tensor, normal_te: np.ndarray, path: pathlib.Path) -> pathlib.Path:
    """One normal and one abnormal test beat with their reconstructions, the error shaded (the
    tutorial's figure)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dev = next(model.parameters()).device
    with torch.no_grad():
        rec = model(x_te.to(dev)).cpu()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, want, title in ((axes[0], True, "normal beat"), (axes[1], False, "abnormal beat")):
        i = int(np.flatnonzero(normal_te == want)[0])
        t = np.arange(x_te.shape[1])
        ax.plot(t, x_te[i].numpy(), "b", label="input")
        ax.plot(t, rec[i].numpy(), "r", label="reconstruction")
        ax.fill_between(t, rec[i].numpy(), x_te[i].numpy(), color="lightcoral", label="error")
        ax.set_title(f"{title}: MAE {float((rec[i] - x_te[i]).abs().mean()):.4f}")
        ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
