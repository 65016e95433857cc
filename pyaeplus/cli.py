"""The ``pyaeplus`` command: info, bench, train, demo, knn-graph, score, export."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


# ---- argument checking: user errors are one line and exit status 2 ------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``pyaeplus demo: error: ...``, status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number_arg(cast, what: str, ok):
    """An argparse type: ``cast(text)`` that satisfies ``ok``, else an error saying ``what`` it must be."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    parse.__name__ = what
    return parse


def _device_arg(text: str) -> str:
    """'auto' or a device that exists here (checked at parse time: no AssertionError from torch later)."""
    if text == "auto":
        return text
    from .runtime.devices import resolve_device

    try:
        resolve_device(text, name="the device")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _classes_arg(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integer labels such as 0 or 1,7, got {text!r}") from None


def _resume_arg(text: str):
    if text != "fallback":
        raise argparse.ArgumentTypeError(f"takes no value or 'fallback', got {text!r}")
    return text


POSITIVE_INT = _number_arg(int, "an integer >= 1", lambda v: v >= 1)
NONNEG_INT = _number_arg(int, "an integer >= 0", lambda v: v >= 0)
POSITIVE = _number_arg(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
NONNEG = _number_arg(float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_config

    cfg = build_config()
    if args.json:
        print(json.dumps(cfg, indent=2, default=str))
        return 0
    c, cu = cfg["cpu_extension"], cfg["cuda_extension"]
    print(f"pyaeplus {cfg['pyaeplus']}  (python {cfg['python']}, torch {cfg['torch']}, "
          f"triton {cfg['triton'] or '-'}, numpy {cfg['numpy']}, faiss {cfg['faiss'] or '-'})")
    if "error" in c:
        print(f"  CPU extension : NOT BUILT ({c['error']})")
    else:
        print(f"  CPU extension : built ({c['compiler']}, OpenMP {'on, ' + str(c['omp_max_threads']) + ' threads' if c['openmp'] else 'off'}); "
              f"ops: {', '.join(c['ops']) or '-'}")
    if "error" in cu:
        print(f"  CUDA extension: not built ({cu['error']})")
    else:
        dev = f"{cu.get('devices_seen', 0)} device(s) seen"
        if cu.get("device_error"):
            dev += f": {cu['device_error']}"
        print(f"  CUDA extension: built (CUDA {cu['cuda_version']}, sm {cu['architectures']}, {dev}); "
              f"ops: {', '.join(cu['ops']) or '-'}")
    gpus = ", ".join(cfg["gpus"]) or "none"
    print(f"  GPU present   : {cfg['gpu_present']} ({gpus}; torch CUDA {cfg['torch_cuda'] or '-'})")
    avail = ", ".join(k for k, v in cfg["backends_available"].items() if v)
    print(f"  backends      : in force '{cfg['backend']}', can run here: {avail}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import pathlib
    import runpy

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    if not script.exists():
        print("pyaeplus bench needs a source checkout (benchmarks/ is not installed with the package)",
              file=sys.stderr)
        return 2
    sys.argv = [str(script)] + args.rest
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
    return 0


# ---- train / demo (pyaeplus/train.py, pyaeplus/data) -----------------------------------

def _read_config_file(path: str) -> dict:
    import pathlib

    p = pathlib.Path(path)
    if not p.exists():
        raise SystemExit(f"pyaeplus train: config file {p} not found")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SystemExit(f"pyaeplus train: {p} is YAML but PyYAML is not installed "
                             "(pip install pyyaml, or write the same keys as JSON)") from None
        cfg = yaml.safe_load(text)
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"pyaeplus train: {p} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise SystemExit(f"pyaeplus train: {p} must hold a mapping of settings, got {type(cfg).__name__}")
    return cfg


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run

    cfg = _read_config_file(args.config) if args.config else {}
    flags = {
        "model": args.model, "data": args.data, "split": args.split, "val_data": args.val_data,
        "val_split": args.val_split, "normalize": args.normalize, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
        "weight_decay": args.weight_decay, "device": args.device, "seed": args.seed,
        "checkpoint_dir": args.out, "log_dir": args.log_dir, "patience": args.patience,
        "num_workers": args.num_workers, "grad_clip": args.grad_clip,
    }
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if args.model_config is not None:
        mc = _json_value(args.model_config)
        if not isinstance(mc, dict):
            raise SystemExit(f"pyaeplus train: --model-config must be a JSON object, got {args.model_config!r}")
        cfg["model_config"] = {**cfg.get("model_config", {}), **mc}
    opts = dict(cfg.get("data_options") or {})
    for item in args.data_option or []:
        if "=" not in item:
            raise SystemExit(f"pyaeplus train: --data-option must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k] = _json_value(v)
    if args.classes is not None:
        opts["classes"] = args.classes
    if opts:
        cfg["data_options"] = opts
    if args.amp is not None:
        cfg["amp"] = {"auto": True, "off": False}.get(args.amp, args.amp)
    if args.resume:
        cfg["resume"] = args.resume
    if args.no_progress:
        cfg["progress"] = False
    cfg.setdefault("checkpoint_dir", "runs/" + str(cfg.get("model", "model")))
    try:
        result = run(cfg)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"pyaeplus train: {e}", file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else None
    if last is not None:
        summary = " ".join(f"{k}={v:.5g}" for k, v in last["train"].items())
        if last["val"]:
            summary += " | val " + " ".join(f"{k}={v:.5g}" for k, v in last["val"].items())
        print(f"trained {len(result.history)} epoch(s): {summary}")
    if result.best_epoch is not None:
        print(f"best validation loss {result.best_val_loss:.5g} at epoch {result.best_epoch + 1}"
              + (" (stopped early)" if result.stopped_early else ""))
    print(f"checkpoint: {result.checkpoint}  (pyaeplus.checkpoint.load_model({str(result.checkpoint)!r}))")
    return 0


def _add_train_parser(sub) -> None:
    s = sub.add_parser("train", help="train a model of the zoo on a dataset (--config run.json and/or flags)",
                       description="Train any model of pyaeplus.models on any loader of pyaeplus.data. Settings "
                                   "come from --config (JSON; YAML when PyYAML is installed) and flags, flags "
                                   "winning. Example: pyaeplus train --model dense --data ecg5000:../shared/data "
                                   "--normalize minmax --model-config '{\"hidden\": [32, 16], \"latent\": 8}'")
    s.add_argument("--config", help="run settings file (.json, or .yaml/.yml with PyYAML): keys as pyaeplus.train.run")
    s.add_argument("--model", help="model name (pyaeplus.models.MODELS), e.g. dense, conv, vae")
    s.add_argument("--model-config", help="JSON object of model arguments (input size filled from the data)")
    s.add_argument("--data", help="KIND:PATH, KIND in mnist, fashion-mnist, kmnist, ecg5000, ucr, csv, images, npy, "
                                  "mvtec (one MVTec-AD-layout category folder)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="loader option (JSON value), repeatable")
    s.add_argument("--classes", type=_classes_arg,
                   help="comma-separated labels to keep (e.g. 0 for one-class training on digit 0)")
    s.add_argument("--split", help="training split (default train)")
    s.add_argument("--val-data", help="validation KIND:PATH")
    s.add_argument("--val-split", help="validation split of --data (e.g. test)")
    s.add_argument("--normalize", choices=["minmax", "gcn", "gcn+minmax", "none"],
                   help="normalization fitted on the training data")
    s.add_argument("--epochs", type=POSITIVE_INT)
    s.add_argument("--batch-size", type=POSITIVE_INT)
    s.add_argument("--lr", type=POSITIVE)
    s.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "rmsprop"])
    s.add_argument("--weight-decay", type=NONNEG)
    s.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="mixed precision (auto: on CUDA only)")
    s.add_argument("--device", type=_device_arg, help="auto, cpu, cuda, cuda:1 ...")
    s.add_argument("--seed", type=NONNEG_INT)
    s.add_argument("--out", help="checkpoint folder (default runs/<model>)")
    s.add_argument("--resume", nargs="?", const=True, type=_resume_arg, metavar="fallback",
                   help="continue from the LATEST checkpoint in --out (an unusable one is an error); "
                        "'--resume fallback' takes the newest intact checkpoint instead")
    s.add_argument("--log-dir", help="TensorBoard folder (needs tensorboard)")
    s.add_argument("--patience", type=POSITIVE_INT, help="early stopping patience in epochs (needs validation data)")
    s.add_argument("--num-workers", type=NONNEG_INT)
    s.add_argument("--grad-clip", type=POSITIVE)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_train)


def _demo_data(args):
    """(train x (N,1,H,W) normal only, test x, test labels 1 = anomaly, description, test defect masks
    (N, H, W) or None)."""
    import torch

    from . import data as D

    n_train, n_test = (768, 400) if args.quick else (2000, 1000)
    if args.data is None:
        train = D.synthetic_anomalies(n_train, anomaly_fraction=0.0, seed=args.seed)
        test = D.synthetic_anomalies(n_test, anomaly_fraction=0.2, seed=args.seed + 1)
        xt, yt = test.tensors()
        return train.tensors()[0], xt, yt, (f"generated 28x28 images: {n_train} normal for training, {n_test} for "
                                            f"testing of which {int(yt.sum())} have a scratch/checker/ring defect"), \
            test.masks
    kind = args.data.split(":", 1)[0]
    if kind not in ("mnist", "fashion-mnist", "kmnist"):
        raise ValueError(f"--data must be mnist:ROOT, fashion-mnist:ROOT or kmnist:ROOT, got {args.data!r}")
    c = args.normal_class
    train = D.open_dataset(args.data, split="train", classes=[c])
    test = D.open_dataset(args.data, split="test")
    g = torch.Generator().manual_seed(args.seed)
    tr_idx = torch.randperm(len(train), generator=g)[:n_train]
    te_idx = torch.randperm(len(test), generator=g)[:n_test]
    xt, yt = test.get_batch(te_idx)
    labels = (yt != c).long()
    return (train.get_batch(tr_idx)[0], xt, labels,
            f"{kind}: {len(tr_idx)} training images of class {c}; {len(te_idx)} test images, the "
            f"{int(labels.sum())} of other classes are the anomalies", None)


def _demo_plots(out, x, recon, scores, labels, lat_scores, score_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import roc_curve

    s, y = scores.numpy(), labels.numpy().astype(bool)
    paths = {}
    # reconstructions: the 8 most normal-looking normals and the 8 highest-scored anomalies
    order = np.argsort(s)
    normals = [i for i in order if not y[i]][:8]
    anomalies = [i for i in order[::-1] if y[i]][:8]
    cols = normals + anomalies
    fig, ax = plt.subplots(3, len(cols), figsize=(len(cols) * 0.9, 3.2))
    for j, i in enumerate(cols):
        for r, (img, cmap) in enumerate(((x[i, 0], "gray"), (recon[i, 0], "gray"),
                                         ((x[i, 0] - recon[i, 0]).abs(), "magma"))):
            ax[r, j].imshow(img.numpy(), cmap=cmap, vmin=0, vmax=1)
            ax[r, j].set_xticks([])
            ax[r, j].set_yticks([])
        ax[0, j].set_title(f"{'anom' if y[i] else 'norm'}\n{s[i]:.3f}", fontsize=6)
    for r, name in enumerate(("input", "recon", "|diff|")):
        ax[r, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    paths["reconstructions"] = out / "reconstructions.png"
    fig.savefig(paths["reconstructions"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    bins = np.linspace(s.min(), s.max(), 40)
    ax.hist(s[~y], bins=bins, alpha=0.6, label=f"normal ({(~y).sum()})", density=True)
    ax.hist(s[y], bins=bins, alpha=0.6, label=f"anomalous ({y.sum()})", density=True)
    ax.set_xlabel(f"anomaly score ({score_name})")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    paths["histogram"] = out / "score_histogram.png"
    fig.savefig(paths["histogram"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    for name, sc in ((score_name, s), ("latent 5-NN distance", lat_scores.numpy())):
        fpr, tpr, _ = roc_curve(y, sc)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths["roc"] = out / "roc.png"
    fig.savefig(paths["roc"], dpi=110)
    plt.close(fig)
    return paths


def _cmd_demo(args: argparse.Namespace) -> int:
    import pathlib
    import time

    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score

    from .data import WithIndex
    from .models import LaplacianAE
    from .train import fit

    t0 = time.perf_counter()
    if args.threads:
        # 28x28 batches through 8-16 channel convs: each op is too small to amortize waking a
        # thread team, and on a 2-core machine extra threads measured 3-4x slower per step.
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        x_train, x_test, labels, what, masks = _demo_data(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"pyaeplus demo: {e}", file=sys.stderr)
        return 2
    print(f"data: {what}")

    # k-NN graph of the training images: the Laplacian term pulls neighbours' latents together.
    graph = LaplacianAE.knn_graph_of(x_train, k=10)
    torch.manual_seed(args.seed)
    # generated images need little capacity; real datasets get twice the channels
    channels = [8, 16] if args.quick or args.data is None else [16, 32]
    base = {"name": "conv", "config": {"in_channels": 1, "channels": channels, "latent": 32,
                                       "input_shape": list(x_train.shape[1:]), "loss": args.loss,
                                       "output_activation": "sigmoid", "batch_norm": True}}
    model = LaplacianAE(base, lam=args.lam, graph=graph)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 6 if args.data is None else 8)
    t1 = time.perf_counter()
    print(f"model: LaplacianAE(ConvAE {channels} + BatchNorm -> 32, loss={args.loss}, lam={args.lam}) on a {graph.num_nodes}-node "
          f"k=10 graph ({time.perf_counter() - t0:.1f} s so far); training {epochs} epochs")
    res = fit(model, WithIndex(x_train), epochs=epochs, lr=args.lr, seed=args.seed, device=args.device,
              batch_sampler=model.sampler(args.batch_size, neighbors=4, seed=args.seed),
              progress=not args.no_progress, checkpoint_dir=out / "checkpoint", keep_checkpoints=1,
              amp={"auto": True, "off": False}.get(args.amp, args.amp))
    t2 = time.perf_counter()

    dev = next(model.parameters()).device
    model.eval()
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    if args.amp == "auto" and dev.type == "cuda":
        amp_dtype = torch.bfloat16
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        scores, recon, z_test = [], [], []
        for xb in x_test.split(256):
            xb = xb.to(dev)
            scores.append(model.score(xb).float().cpu())
            z = model.encode(xb)
            z_test.append(z.flatten(1).float().cpu())
            recon.append(model.decode(z).float().cpu())
        scores, recon, z_test = torch.cat(scores), torch.cat(recon), torch.cat(z_test)
        z_train = torch.cat([model.encode(xb.to(dev)).flatten(1).float().cpu() for xb in x_train.split(256)])
        # latent score: mean distance to the 5 nearest training latents
        lat = torch.cat([torch.cdist(zb, z_train).topk(5, largest=False).values.mean(1) for zb in z_test.split(256)])
    y = labels.numpy()
    auroc, ap = roc_auc_score(y, scores.numpy()), average_precision_score(y, scores.numpy())
    auroc_lat, ap_lat = roc_auc_score(y, lat.numpy()), average_precision_score(y, lat.numpy())
    score_name = {"ssim": "1 - SSIM", "ms_ssim": "1 - MS-SSIM", "l1_ssim": "L1 + SSIM error", "mse": "MSE"}[args.loss]
    paths = _demo_plots(out, x_test, recon, scores, labels, lat, score_name)
    pixel = {}
    if masks is not None:  # the planted defects' masks: localization metrics of the maps
        from .scoring import localize
        pixel, _ = localize(model, x_test, masks, score="mse" if args.loss == "mse" else "ssim", device=dev)
    results = {"auroc": auroc, "ap": ap, "auroc_latent": auroc_lat, "ap_latent": ap_lat,
               "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0]), "n_anomalies": int(labels.sum()),
               "epochs": epochs, "amp": args.amp, "final_train_loss": res.history[-1]["train"]["loss"],
               "train_seconds": t2 - t1, "total_seconds": time.perf_counter() - t0, "data": what,
               "plots": {k: str(v) for k, v in paths.items()}, "checkpoint": str(res.checkpoint),
               **{k: pixel[k] for k in ("pixel_auroc", "aupro") if k in pixel}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'reconstruction ' + score_name:<30}: AUROC {auroc:.4f}  AP {ap:.4f}")
    print(f"{'latent 5-NN distance':<30}: AUROC {auroc_lat:.4f}  AP {ap_lat:.4f}")
    if pixel:
        from .scoring.localization import describe
        print(f"{'pixels (planted defects)':<30}: {describe(pixel)}")
    print(f"trained in {t2 - t1:.1f} s, total {results['total_seconds']:.1f} s")
    print(f"plots  : {', '.join(str(p) for p in paths.values())}")
    print(f"results: {out / 'results.json'}   checkpoint: {res.checkpoint}")
    return 0


def _add_demo_parser(sub) -> None:
    s = sub.add_parser("demo", help="train a conv Laplacian autoencoder with the SSIM loss and find anomalies",
                       description="With no arguments: generates 28x28 images (no download), builds a k-NN graph, "
                                   "trains a convolutional Laplacian autoencoder with the SSIM loss on "
                                   "neighbour-sampled batches, scores a test set with 1 - SSIM and latent k-NN "
                                   "distance, prints AUROC/AP and writes plots. --data mnist:ROOT (or "
                                   "fashion-mnist/kmnist) runs the one-class benchmark on real data instead.")
    s.add_argument("--data", help="mnist:ROOT, fashion-mnist:ROOT or kmnist:ROOT (default: generated images)")
    s.add_argument("--normal-class", type=NONNEG_INT, default=0, help="with --data: the class trained on (default 0)")
    s.add_argument("--quick", action="store_true", help="768 training images and 3 epochs (the CI smoke run)")
    s.add_argument("--epochs", type=POSITIVE_INT, help="default 6 on generated data, 8 with --data, 3 with --quick")
    s.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    s.add_argument("--lr", type=POSITIVE, default=3e-3)
    s.add_argument("--lam", type=NONNEG, default=0.1, help="Laplacian weight")
    s.add_argument("--loss", default="ssim", choices=["ssim", "l1_ssim", "ms_ssim", "mse"],
                   help="reconstruction loss (default ssim, the fused kernels)")
    s.add_argument("--device", type=_device_arg, default="auto")
    s.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision for training and scoring (auto: bf16 on CUDA, off on CPU)")
    s.add_argument("--threads", type=NONNEG_INT, default=1,
                   help="CPU intra-op threads (default 1: the demo's ops are too small to gain from more; 0 keeps "
                        "torch's default)")
    s.add_argument("--seed", type=NONNEG_INT, default=0)
    s.add_argument("--out", default="pyaeplus-demo", help="output folder for plots, results and the checkpoint")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_demo)


# ---- knn-graph / score (pyaeplus/scoring, pyaeplus/viz) ------------------------------------------

def _score_data(spec: str, split: str, options: dict):
    from .data.registry import open_dataset

    if ":" not in spec and spec.endswith(".npy"):
        spec = "npy:" + spec
    return open_dataset(spec, split=split, **options)


def _parse_threshold(text: str):
    """'0.3' -> fixed value; 'pot:q=1e-3,init_level=0.98' -> (method, kwargs)."""
    try:
        return None, {"value": float(text)}
    except ValueError:
        pass
    method, _, rest = text.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"options must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        kw[k] = _json_value(v)
    return method, kw


def _threshold_arg(text: str) -> str:
    """``--threshold`` checked at parse time, before any scoring: a NaN/Inf value, an unknown method
    or an out-of-range option such as ``percentile:q=200`` are refused here."""
    method, kw = _parse_threshold(text)
    if method is None:
        if not math.isfinite(kw["value"]):
            raise argparse.ArgumentTypeError(f"a fixed threshold must be finite, got {text!r}")
        return text
    from .scoring.thresholds import check_threshold

    try:
        check_threshold(method, **kw)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return text


def _dataset_labels(ds):
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    import numpy as np

    y = np.asarray(t.cpu() if hasattr(t, "cpu") else t).reshape(-1)
    return None if (y < 0).all() else y


def _score_labels(args, data):
    """--labels: 'data' (the dataset's) or a .npy, one per sample; None without --labels."""
    import numpy as np

    labels = None
    if args.labels is not None:
        labels = _dataset_labels(data) if args.labels == "data" else np.load(args.labels).reshape(-1)
        if labels is None:
            raise ValueError("--labels data: the dataset has no labels")
        if len(labels) != len(data):
            raise ValueError(f"--labels has {len(labels)} labels for {len(data)} samples")
    return labels


def _cmd_score(args: argparse.Namespace) -> int:
    import pathlib
    import time

    import numpy as np

    from . import scoring, viz
    from .checkpoint import load_model

    opts = {}
    for item in args.data_option or []:
        if "=" not in item:
            raise SystemExit(f"pyaeplus score: --data-option must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k] = _json_value(v)
    try:
        model = load_model(args.checkpoint, device="cpu")
        if args.model is not None and getattr(model, "model_name", None) != args.model:
            raise ValueError(f"--checkpoint holds a {getattr(model, 'model_name', type(model).__name__)!r} model, "
                             f"not the --model {args.model!r} asked for")
        data = _score_data(args.data, args.split, opts)
        labels = _score_labels(args, data)
        knn = {}
        if args.score == "latent_knn":
            if args.knn_reference is None:
                raise ValueError("--score latent_knn needs --knn-reference (the normal training data)")
            knn = {"knn_reference": _score_data(args.knn_reference, "train", opts), "k": args.k,
                   "knn_metric": args.knn_metric}
        elif args.knn_reference is not None:
            raise ValueError("--knn-reference is only used with --score latent_knn")
        out = pathlib.Path(args.out)
        t0 = time.perf_counter()
        res = scoring.score(model, data, score=args.score, batch_size=args.batch_size, device=args.device,
                            num_workers=args.num_workers, out=out, resume=not args.no_resume,
                            maps=args.maps is not None or args.masks is not None, progress=False, **knn)
        dt = time.perf_counter() - t0
        scores, maps = res if (args.maps is not None or args.masks is not None) else (res, None)
        pixel = _score_pixels(args, data, maps, out) if args.masks is not None else None
        thr = None
        if args.threshold is not None:
            method, kw = _parse_threshold(args.threshold)
            if method is None:
                thr = kw["value"]
            else:
                ref = scores
                if args.threshold_data is not None:
                    # latent k-NN scores of the reference set itself leave each row out
                    same = bool(knn) and args.threshold_data == args.knn_reference
                    ref = scoring.score(model, _score_data(args.threshold_data, "train", opts), score=args.score,
                                        batch_size=args.batch_size, device=args.device,
                                        num_workers=args.num_workers, progress=False, knn_exclude_self=same, **knn)
                thr = scoring.threshold(ref, method, **kw)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"pyaeplus score: {e}", file=sys.stderr)
        return 2
    print(f"scored {len(scores)} samples in {dt:.2f} s ({len(scores) / max(dt, 1e-9):,.0f} samples/s) -> {out}")
    summary = {"n": int(len(scores)), "seconds": dt, "score": args.score, "out": str(out)}
    if thr is not None:
        n_anom = int((scores > thr).sum())
        print(f"threshold {thr:.6g}: {n_anom} of {len(scores)} flagged as anomalies (score > threshold)")
        summary.update(threshold=thr, n_flagged=n_anom)
    plots = pathlib.Path(args.plots) if args.plots else out.parent
    plots.mkdir(parents=True, exist_ok=True)
    stem = out.stem
    paths = {"histogram": viz.score_histogram(scores, labels, plots / f"{stem}_histogram.png", threshold=thr)}
    if labels is not None:
        m = scoring.metrics(scores, labels, thr, pos_label=args.pos_label)
        summary["metrics"] = m
        print(f"metrics ({m['positive_class']}): AUROC {m['auroc']:.4f}  AP {m['ap']:.4f}"
              + ("" if thr is None else f"  accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  "
                 f"recall {m['recall']:.4f}  F1 {m['f1']:.4f}"))
        if 0 < m["n_anomalies"] < m["n"]:
            paths["roc_pr"] = viz.roc_pr_curves(scores, (np.asarray(labels) == args.pos_label).astype(int),
                                                plots / f"{stem}_roc_pr.png", names=[args.score])
    paths.update(_score_image_outputs(args, model, data, scores, maps, pixel, plots / stem, summary))
    for k, v in paths.items():
        print(f"{k}: {v}")
    summary["plots"] = {k: str(v) for k, v in paths.items()}
    (plots / f"{stem}_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return 0


def _score_pixels(args, data, maps, out):
    """--masks: (pixel metrics, maps at the masks' size, masks)."""
    from .scoring.localization import evaluate_maps, masks_for

    masks = masks_for(args.masks, data)
    pixel, pixel_maps = evaluate_maps(maps, masks, sigma=args.map_sigma, fpr_limit=args.fpr_limit, score=args.score,
                                      spill=out.with_name(out.stem + ".pixel_maps.npy"))
    return pixel, pixel_maps, masks


def _score_image_outputs(args, model, data, scores, maps, pixel, prefix, summary: dict) -> dict:
    """--masks: the pixel metrics (printed, into ``summary``); the top-8 reconstructions and maps (with the
    ground-truth contours under --masks); --maps DIR. Returns the plots' paths."""
    import pathlib
    import shutil

    import numpy as np
    import torch

    from . import viz
    from .scoring.localization import describe

    paths, out = {}, pathlib.Path(args.out)
    if pixel is not None:
        summary["pixel_metrics"] = pixel[0]
        print(f"pixel metrics: {describe(pixel[0])}")
    if getattr(model, "image_shape", None) is not None:
        top = np.argsort(-scores, kind="stable")[:8]
        b = data.get_batch(torch.as_tensor(top)) if hasattr(data, "get_batch") else torch.stack(
            [data[int(i)][0] for i in top])
        x = b[0] if isinstance(b, (tuple, list)) else b
        with torch.no_grad():
            rec = model(x.to(next(model.parameters()).device)).cpu()
        shape = (len(top), *model.image_shape)
        paths["reconstructions"] = viz.reconstruction_grid(x.reshape(shape), rec.reshape(shape),
                                                           f"{prefix}_top_reconstructions.png",
                                                           titles=[f"{scores[i]:.3g}" for i in top])
        if pixel is not None and tuple(pixel[1].shape[1:]) == tuple(shape[-2:]):  # maps at the images' size
            paths["overlay"] = viz.anomaly_overlay(x.reshape(shape), np.asarray(pixel[1][top]),
                                                   f"{prefix}_top_maps.png", masks=np.asarray(pixel[2][top]))
        elif maps is not None:
            paths["overlay"] = viz.anomaly_overlay(x.reshape(shape), np.asarray(maps)[top], f"{prefix}_top_maps.png")
    if args.maps is not None:
        mdir = pathlib.Path(args.maps)
        mdir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out.with_name(out.stem + ".maps.npy")), str(mdir / "maps.npy"))
        paths["maps"] = mdir / "maps.npy"
    elif maps is not None:  # computed for --masks only: not left behind
        out.with_name(out.stem + ".maps.npy").unlink(missing_ok=True)
    out.with_name(out.stem + ".pixel_maps.npy").unlink(missing_ok=True)
    return paths


def _add_score_parser(sub) -> None:
    s = sub.add_parser("score", help="score a dataset with a trained checkpoint (resumable, chunked output), "
                                     "threshold, metrics and plots")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder or a run's checkpoint_dir")
    s.add_argument("--data", required=True, help="'<kind>:<path>' (mnist:ROOT, npy:FILE, images:DIR, ...) or a .npy")
    s.add_argument("--split", default="test")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--out", required=True, help="scores file: .npy, .csv or .parquet (pyarrow)")
    s.add_argument("--score", default="model",
                   choices=("model", "mse", "mae", "bce", "ssim", "ms_ssim", "latent_knn", "svdd", "elbo"))
    s.add_argument("--knn-reference", help="with --score latent_knn: the normal training data ('<kind>:<path>', "
                                          "train split), whose latents the k nearest are searched among")
    s.add_argument("--k", type=POSITIVE_INT, default=5, help="neighbours for --score latent_knn")
    s.add_argument("--knn-metric", default="l2", help="latent distance for --score latent_knn (l2, cosine, ...)")
    s.add_argument("--model", help="expected model name; a checkpoint of another model is refused")
    s.add_argument("--maps", metavar="DIR", help="also write per-pixel anomaly maps (image models) to DIR/maps.npy")
    s.add_argument("--masks", help="ground-truth masks for pixel AUROC / AUPRO: 'data' (the dataset's, e.g. "
                                   "mvtec:ROOT) or a .npy (N, H, W) of 0/1; maps are resized to the masks' size")
    s.add_argument("--map-sigma", type=float, help="with --masks: Gaussian sigma smoothing the maps (4 is common)")
    s.add_argument("--fpr-limit", type=float, default=0.3, help="with --masks: AUPRO integration limit (default 0.3)")
    s.add_argument("--threshold", type=_threshold_arg,
                   help="a number, or METHOD[:K=V,...] (mean_std, percentile, fpr, contamination, pot); checked "
                        "before scoring starts")
    s.add_argument("--threshold-data", help="normal data to fit the threshold on (default: the scored data)")
    s.add_argument("--labels", help="'data' (the dataset's labels) or a .npy of labels")
    s.add_argument("--pos-label", type=int, default=1, help="label value of anomalies (default 1)")
    s.add_argument("--plots", help="folder for the PNG plots (default: next to --out)")
    s.add_argument("--batch-size", type=POSITIVE_INT, default=512)
    s.add_argument("--num-workers", type=NONNEG_INT, default=0)
    s.add_argument("--device", type=_device_arg, default="auto")
    s.add_argument("--no-resume", action="store_true",
                   help="discard what an interrupted run on --out left and start over (without it, a run with "
                        "other data, model or settings is refused)")
    s.set_defaults(func=_cmd_score)


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .export import export_scorer

    try:
        model = load_model(args.checkpoint, device="cpu")
        path = export_scorer(model, args.out, score=args.score, maps=args.maps, portable=not args.keep_custom_ops)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"pyaeplus export: {e}", file=sys.stderr)
        return 2
    outputs = "scores (B,), maps (B, H, W)" if args.maps else "scores (B,)"
    print(f"exported {getattr(model, 'model_name', type(model).__name__)} + score {args.score!r} -> {path} "
          f"(input x float32 (B, ...), outputs {outputs}; pyaeplus.export.load_scorer({str(path)!r}) runs it)")
    return 0


def _add_export_parser(sub) -> None:
    from .export import EXPORTABLE_SCORES

    s = sub.add_parser("export", help="write a checkpoint's model with its score as .pt2 (torch.export) or .onnx",
                       description="The model and its anomaly score (optionally per-pixel maps) as one graph, with "
                                   "pyaeplus's kernels replaced by their pure-PyTorch references, so the file runs "
                                   "with plain torch (.pt2) or onnxruntime (.onnx).")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder or a run's checkpoint_dir")
    s.add_argument("--out", required=True, help="model.pt2 or model.onnx")
    s.add_argument("--score", default="ssim", choices=EXPORTABLE_SCORES, help="anomaly score (default ssim)")
    s.add_argument("--maps", action="store_true", help="also output the per-pixel maps")
    s.add_argument("--keep-custom-ops", action="store_true",
                   help=".pt2 only: keep the fused pyaeplus kernels (the loader must import pyaeplus)")
    s.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyaeplus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="what was compiled, what can run here, versions")
    s.add_argument("--json", action="store_true", help="print the full build_config() as JSON")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("bench", help="run the benchmark suite (source checkout); extra args go to run_all.py")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_bench)

    # ---- train / demo (pyaeplus/train.py, pyaeplus/data) -----------------------------------
    _add_train_parser(sub)
    _add_demo_parser(sub)

    # ---- knn-graph / score --------------------------------------------------------------------
    _add_score_parser(sub)
    _add_export_parser(sub)

    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CorruptCheckpointError
    from .runtime import LockedError

    return (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            LockedError, CorruptCheckpointError)


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user error (bad value, missing file, a second writer, a damaged checkpoint)
    prints one line and returns 2, a failed write (e.g. a full disk) one line and 1;
    ``PYAEPLUS_TRACEBACK=1`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # noqa: BLE001 - classified below, everything else re-raised
        if os.environ.get("PYAEPLUS_TRACEBACK") or not isinstance(e, _user_errors() + (OSError,)):
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"pyaeplus {args.command}: error: {msg}", file=sys.stderr)
        return 2 if isinstance(e, _user_errors()) else 1


if __name__ == "__main__":
    sys.exit(main())
