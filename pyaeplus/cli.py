"""The ``pyaeplus`` command: info, bench, train, demo, knn-graph, score, export.

A shell over library calls (parsing and printing only): ``pyaeplus.build_config``, ``pyaeplus.train.run``,
``pyaeplus.demo.run_demo``, ``pyaeplus.graph.knn_graph``, ``pyaeplus.scoring.report.score_report``,
``pyaeplus.export.export_scorer``; data named ``KIND:PATH`` are opened by ``pyaeplus.data.spec``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from ._cli_args import (NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, Parser, classes_arg, device_arg, resume_arg,
                        threshold_arg)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_config
    from ._info import describe

    cfg = build_config()
    print(json.dumps(cfg, indent=2, default=str) if args.json else "\n".join(describe(cfg)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
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


# ---- train / demo (pyaeplus/train.py, pyaeplus/demo.py) ----------------------------------

def _cmd_train(args: argparse.Namespace) -> int:
    from ._settings_file import run_settings
    from .train import run

    try:
        cfg = run_settings(args.config, vars(args), args.data_option)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"pyaeplus train: {e}") from None
    result = run(cfg)  # a bad setting: ValueError/TypeError, one line and exit status 2 (main)
    last = result.history[-1] if result.history else None
    if last is not None:
        summary = " ".join(f"{k}={v:.5g}" for k, v in last["train"].items())
        if last["val"]:
            summary += " | val " + " ".join(f"{k}={v:.5g}" for k, v in last["val"].items())
        print(f"trained {len(result.history)} epoch(s): {summary}")
    if result.best_epoch is not None:
        early = " (stopped early)" if result.stopped_early else ""
        print(f"best validation loss {result.best_val_loss:.5g} at epoch {result.best_epoch + 1}{early}")
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
    s.add_argument("--classes", type=classes_arg,
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
    s.add_argument("--device", type=device_arg, help="auto, cpu, cuda, cuda:1 ...")
    s.add_argument("--seed", type=NONNEG_INT)
    s.add_argument("--out", help="checkpoint folder (default runs/<model>)")
    s.add_argument("--resume", nargs="?", const=True, type=resume_arg, metavar="fallback",
                   help="continue from the LATEST checkpoint in --out (an unusable one is an error); "
                        "'--resume fallback' takes the newest intact checkpoint instead")
    s.add_argument("--log-dir", help="TensorBoard folder (needs tensorboard)")
    s.add_argument("--patience", type=POSITIVE_INT, help="early stopping patience in epochs (needs validation data)")
    s.add_argument("--num-workers", type=NONNEG_INT)
    s.add_argument("--grad-clip", type=POSITIVE)
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_train)


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import run_demo

    if args.threads:
        # 28x28 batches through 8-16 channel convs: each op is too small to amortize waking a
        # thread team, and on a 2-core machine extra threads measured 3-4x slower per step.
        torch.set_num_threads(args.threads)
    run_demo(data=args.data, normal_class=args.normal_class, quick=args.quick, epochs=args.epochs,
             batch_size=args.batch_size, lr=args.lr, lam=args.lam, loss=args.loss, device=args.device, amp=args.amp,
             seed=args.seed, out=args.out, progress=not args.no_progress)
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
    s.add_argument("--device", type=device_arg, default="auto")
    s.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision for training and scoring (auto: bf16 on CUDA, off on CPU)")
    s.add_argument("--threads", type=NONNEG_INT, default=1, help="CPU intra-op threads (default 1: the demo's ops "
                                                                  "are too small to gain from more; 0: torch's)")
    s.add_argument("--seed", type=NONNEG_INT, default=0)
    s.add_argument("--out", default="pyaeplus-demo", help="output folder for plots, results and the checkpoint")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_demo)


# ---- knn-graph / score / export (pyaeplus/graph, pyaeplus/scoring, pyaeplus/export.py) ----------

def _data_args(s, split: str) -> None:
    s.add_argument("--data", required=True, help="'<kind>:<path>' (mnist:ROOT, npy:FILE, images:DIR, ...) or a .npy")
    s.add_argument("--split", default=split, help=f"split of --data (default {split})")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="loader option (JSON value), repeatable")


def _cmd_knn_graph(args: argparse.Namespace) -> int:
    from .data.spec import parse_options, samples_of
    from .graph import features, knn_graph

    x = samples_of(args.data, args.split, parse_options(args.data_option))
    feats = features.hog(x, progress=not args.no_progress) if args.features == "hog" else \
        features.raw_pixels(x, pca=args.pca)
    g = knn_graph(feats, args.k, metric=args.metric, backend=args.backend, index=args.index,
                  progress=not args.no_progress)
    g.save(args.out)
    print(f"k-NN graph of {g.num_nodes} rows ({args.features} features, dim {feats.shape[1]}), k={g.k}, "
          f"metric {g.metric} -> {args.out}  (Graph.from_knn(KnnGraph.load({str(args.out)!r})) for LaplacianAE)")
    return 0


def _add_knn_graph_parser(sub) -> None:
    s = sub.add_parser("knn-graph", help="build the k-NN graph of a dataset's samples and write it (.npz)",
                       description="Features of every sample (raw pixels, PCA, HOG) -> pyaeplus.graph.knn_graph -> "
                                   "a KnnGraph file; Graph.from_knn(KnnGraph.load(FILE)) for LaplacianAE.set_graph.")
    _data_args(s, "train")
    s.add_argument("--features", default="raw", choices=["raw", "hog"], help="raw pixels (default) or HOG")
    s.add_argument("--pca", type=POSITIVE_INT, help="with --features raw: project on this many principal components")
    s.add_argument("--k", type=POSITIVE_INT, default=10, help="neighbours per sample (default 10)")
    s.add_argument("--metric", default="l2", choices=["l2", "cosine", "ip", "hellinger", "chi2", "w1"])
    s.add_argument("--backend", default="auto", choices=["auto", "faiss-gpu", "faiss", "triton", "torch"])
    s.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"], help="FAISS index (default exact)")
    s.add_argument("--out", required=True, help="graph file (.npz)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_knn_graph)


def _cmd_score(args: argparse.Namespace) -> int:
    from .data.spec import parse_options
    from .scoring.report import score_inputs, score_report

    opts = parse_options(args.data_option)
    model, data, labels, ref, thr_data = score_inputs(args.checkpoint, args.data, args.split, opts, score=args.score,
                                                      model=args.model, labels=args.labels,
                                                      knn_reference=args.knn_reference,
                                                      threshold_data=args.threshold_data)
    report = score_report(model, data, out=args.out, score=args.score, labels=labels, threshold=args.threshold,
                          threshold_data=thr_data, knn_reference=ref, k=args.k, knn_metric=args.knn_metric,
                          pos_label=args.pos_label, plots=args.plots, maps_dir=args.maps, masks=args.masks,
                          map_sigma=args.map_sigma, fpr_limit=args.fpr_limit, batch_size=args.batch_size,
                          num_workers=args.num_workers, device=args.device, resume=not args.no_resume)
    print("\n".join(report.lines))
    return 0


def _add_score_parser(sub) -> None:
    s = sub.add_parser("score", help="score a dataset with a checkpoint (resumable), threshold, metrics, plots")
    s.add_argument("--checkpoint", required=True, help="checkpoint folder or a run's checkpoint_dir")
    _data_args(s, "test")
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
    s.add_argument("--threshold", type=threshold_arg, help="a number, or METHOD[:K=V,...] (mean_std, percentile, "
                                                            "fpr, contamination, pot); checked before scoring")
    s.add_argument("--threshold-data", help="normal data to fit the threshold on (default: the scored data)")
    s.add_argument("--labels", help="'data' (the dataset's labels) or a .npy of labels")
    s.add_argument("--pos-label", type=int, default=1, help="label value of anomalies (default 1)")
    s.add_argument("--plots", help="folder for the PNG plots (default: next to --out)")
    s.add_argument("--batch-size", type=POSITIVE_INT, default=512)
    s.add_argument("--num-workers", type=NONNEG_INT, default=0)
    s.add_argument("--device", type=device_arg, default="auto")
    s.add_argument("--no-resume", action="store_true", help="discard what an interrupted run on --out left (without "
                                                             "it, one with other data, model or settings is refused)")
    s.set_defaults(func=_cmd_score)


def _cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .export import export_scorer

    model = load_model(args.checkpoint, device="cpu")
    path = export_scorer(model, args.out, score=args.score, maps=args.maps, portable=not args.keep_custom_ops)
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
    p = Parser(prog="pyaeplus", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="what was compiled, what can run here, versions")
    s.add_argument("--json", action="store_true", help="print the full build_config() as JSON")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("bench", help="run the benchmark suite (source checkout); extra args go to run_all.py")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_bench)

    _add_train_parser(sub)
    _add_demo_parser(sub)
    _add_knn_graph_parser(sub)
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
