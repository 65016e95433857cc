"""Benchmark: pyaeplus's detectors side by side with PyOD's (``pip install ".[bench]"``) on the same data, with the
same networks, epochs, batch size, learning rate, weight decay and standardization: fit time and test AUROC.

Data (``../shared/data`` or ``$PYAEPLUS_DATA``; ``generate_data`` needs nothing):

* ``generate_data``: PyOD's generator, 3000 training and 1000 test rows, 300 features, contamination 0.1
  (``random_state=42``); fitted on the contaminated training rows (PyOD's protocol).
* ``ecg5000``: the 500 UCR TRAIN beats (140 features); per seed a stratified 80/20 split, fitted on the normal
  training beats, scored on the test beats (anomaly = abnormal beat).
* ``mnist``: one-class MNIST: fitted on the training images of digit 0 (5923, 784 features, pixels / 255), scored
  on the 10000 test images (anomaly = any other digit).

Models (PyOD's defaults; ours the preset with the same layer sizes):

* AutoEncoder: PyOD ``AutoEncoder`` (F-64-32-64-F, BatchNorm, dropout 0.2, weight decay 1e-5) vs ``AutoEncoderDetector``;
* VAE: PyOD ``VAE`` (F-128-64-32-(2)-32-64-128-F, dropout 0.2, weight decay 1e-5) vs ``VAEDetector``;
* DeepSVDD: PyOD ``DeepSVDD`` (bias-free F-64-32, lr 1e-4, weight decay 5e-7) vs ``DeepSVDDDetector``.

All at batch 32, ``--epochs`` epochs (default 10), lr 1e-3 (DeepSVDD 1e-4), contamination 0.1, standardization on,
``--threads`` intra-op threads (default: torch's). A row's time is the wall time of ``fit`` (network built, trained,
training set scored); the two libraries are fitted in alternation, one round per seed (``--repeats`` seeds, 3 by
default; ECG5000: ``--seeds`` splits, 5), the seed being both libraries' ``random_state`` (and the ECG5000 split);
the median fit time is reported, and the AUROC's mean and standard deviation over the seeds. Rows are harness rows
(``median_ms`` = fit time, anchor = PyOD) with ``auroc`` added.

    python benchmarks/bench_pyod.py [--epochs 10] [--repeats 3] [--seeds 5] [--datasets generate_data,ecg5000,mnist]
        [--models AutoEncoder,VAE,DeepSVDD] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score

import harness

import pyaeplus
from pyaeplus.scoring import AutoEncoderDetector, DeepSVDDDetector, VAEDetector

DATA = pathlib.Path(os.environ.get("PYAEPLUS_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


# ---- data ------------------------------------------------------------------------------------
def generate_data(seed: int):
    from pyod.utils.data import generate_data as gd

    xtr, xte, ytr, yte = gd(n_train=3000, n_test=1000, n_features=300, contamination=0.1, random_state=42)
    return xtr, xte, yte


def ecg5000(seed: int):
    from sklearn.model_selection import train_test_split

    raw = np.loadtxt(DATA / "ecg5000" / "ECG5000_TRAIN.txt")
    x, normal = raw[:, 1:], raw[:, 0] == 1
    tr, te = train_test_split(np.arange(len(x)), test_size=0.2, random_state=seed, stratify=normal)
    return x[tr][normal[tr]], x[te], (~normal[te]).astype(int)


def mnist(seed: int):
    root = DATA / "mnist"
    xtr, ytr = pyaeplus.data.mnist(root, split="train").tensors()
    xte, yte = pyaeplus.data.mnist(root, split="test").tensors()
    flat = lambda t: t.reshape(t.shape[0], -1).numpy().astype(np.float64)  # noqa: E731
    return flat(xtr[ytr == 0]), flat(xte), (yte != 0).numpy().astype(int)


DATASETS = {"generate_data": generate_data, "ecg5000": ecg5000, "mnist": mnist}


# ---- models ----------------------------------------------------------------------------------
def pyod_model(name: str, n_features: int, epochs: int, seed: int):
    if name == "AutoEncoder":
        from pyod.models.auto_encoder import AutoEncoder

        return AutoEncoder(epoch_num=epochs, batch_size=32, lr=1e-3, random_state=seed, verbose=0, device="cpu")
    if name == "VAE":
        from pyod.models.vae import VAE

        return VAE(epoch_num=epochs, batch_size=32, lr=1e-3, random_state=seed, verbose=0, device="cpu")
    from pyod.models.deep_svdd import DeepSVDD

    return DeepSVDD(n_features, epochs=epochs, batch_size=32, learning_rate=1e-4, random_state=seed, verbose=0)


def ours(name: str, epochs: int, device: str, seed: int):
    kw = dict(epochs=epochs, batch_size=32, random_state=seed, device=device)
    if name == "AutoEncoder":
        return AutoEncoderDetector(lr=1e-3, weight_decay=1e-5, **kw)
    if name == "VAE":
        return VAEDetector(lr=1e-3, weight_decay=1e-5, **kw)
    return DeepSVDDDetector(lr=1e-4, weight_decay=0.5e-6, **kw)


OURS_NAME = {"AutoEncoder": "AutoEncoderDetector", "VAE": "VAEDetector", "DeepSVDD": "DeepSVDDDetector"}


def _fit(det, xtr, xte, yte) -> tuple[float, float]:
    t0 = time.perf_counter()
    det.fit(xtr)
    dt = time.perf_counter() - t0
    return dt, float(roc_auc_score(yte, det.decision_function(xte)))


def compare(r: harness.Runner, data: str, model: str, rounds: list[int], epochs: int) -> None:
    runs: dict[str, list[tuple[float, float]]] = {"pyod": [], "pyaeplus": []}
    for seed in rounds:
        xtr, xte, yte = DATASETS[data](seed)
        runs["pyod"].append(_fit(pyod_model(model, xtr.shape[1], epochs, seed), xtr, xte, yte))
        runs["pyaeplus"].append(_fit(ours(model, epochs, r.device, seed), xtr, xte, yte))
    cfg = {"data": data, "model": model, "n_train": int(xtr.shape[0]), "features": int(xtr.shape[1]),
           "epochs": epochs, "batch": 32}
    for lib, res in runs.items():
        times = [t * 1e3 for t, _ in res]
        aucs = [a for _, a in res]
        row = {"provider": f"{lib} {model if lib == 'pyod' else OURS_NAME[model]}", "config": cfg, "mode": "full",
               "anchor": lib == "pyod", **harness._stats(times), "peak_mem_bytes": None, "bytes_moved": None,
               "note": None, "auroc": statistics.fmean(aucs), "auroc_std": statistics.pstdev(aucs),
               "auroc_runs": aucs, "fit_s_runs": [t / 1e3 for t in times]}
        r.rows.append(row)
        print(f"[pyod] {data:14s} {row['provider']:34s} fit {row['median_ms'] / 1e3:8.2f} s  "
              f"AUROC {row['auroc']:.4f} ± {row['auroc_std']:.4f}", flush=True)


def auroc_table(rows: list[dict]) -> str:
    lines = ["## Fit time and AUROC", "",
             "| data | model | PyOD fit s | pyaeplus fit s | fit speed-up | PyOD AUROC | pyaeplus AUROC |",
             "|---|---|---:|---:|---:|---:|---:|"]
    by = {}
    for row in rows:
        by.setdefault((row["config"]["data"], row["config"]["model"]), {})[row["anchor"]] = row
    for (data, model), pair in by.items():
        p, o = pair.get(True), pair.get(False)
        if p is None or o is None:
            continue
        lines.append(f"| {data} | {model} | {p['median_ms'] / 1e3:.2f} | {o['median_ms'] / 1e3:.2f} | "
                     f"{p['median_ms'] / o['median_ms']:.2f}x | {p['auroc']:.4f} ± {p['auroc_std']:.4f} | "
                     f"{o['auroc']:.4f} ± {o['auroc_std']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    r = harness.Runner("pyod", description=__doc__.split("\n\n")[0])
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None, help="ECG5000 splits (default 5)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--models", default="AutoEncoder,VAE,DeepSVDD")
    own = r.own_args(ap)
    try:
        import pyod  # noqa: F401
    except ImportError:
        raise SystemExit('bench_pyod.py needs PyOD: pip install ".[bench]"') from None
    epochs = own.epochs or (2 if r.quick else 10)
    repeats = r.args.repeats or (1 if r.quick else 3)
    for data in own.datasets.split(","):
        if data != "generate_data" and not (DATA / ("mnist" if data == "mnist" else "ecg5000")).exists():
            r.skip(data, f"no data in {DATA}")
            continue
        rounds = list(range(own.seeds or (1 if r.quick else 5))) if data == "ecg5000" else list(range(repeats))
        for model in own.models.split(","):
            compare(r, data, model, rounds, epochs)
    path = r.finish()
    md = path.with_suffix(".md")
    md.write_text(md.read_text() + "\n" + auroc_table(r.rows))


if __name__ == "__main__":
    main()
