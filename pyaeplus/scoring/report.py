"""A scored dataset made into a report: threshold, metrics, plots and a JSON summary.

What ``pyaeplus score`` does after parsing its flags, as a library call: :func:`score_report` scores
``data`` with :func:`pyaeplus.scoring.score` (resumable chunks into ``out``), fits or takes a threshold
(:func:`parse_threshold` reads ``"0.3"`` or ``"pot:q=1e-3"``), computes the detection metrics when
labels are given and the pixel metrics when masks are, draws the plots of :mod:`pyaeplus.viz` and
writes ``<plots>/<out stem>_summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time

import numpy as np
import torch

from .engine import score as _score
from .thresholds import check_threshold, metrics, threshold as _threshold


def parse_threshold(text: str) -> tuple[str | None, dict]:
    """``"0.3"`` -> ``(None, {"value": 0.3})``; ``"pot:q=1e-3,init_level=0.98"`` -> ``("pot", {...})``
    (option values read as JSON when they parse)."""
    from ..data.spec import json_value

    try:
        return None, {"value": float(text)}
    except ValueError:
        pass
    method, _, rest = text.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ValueError(f"options must be KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        kw[k] = json_value(v)
    return method, kw


def check_threshold_text(text: str) -> None:
    """Refuse a threshold that :func:`score_report` would refuse after scoring (a NaN/Inf value, an
    unknown method, an option out of range such as ``percentile:q=200``): ``ValueError``/``TypeError``."""
    method, kw = parse_threshold(text)
    if method is None:
        if not math.isfinite(kw["value"]):
            raise ValueError(f"a fixed threshold must be finite, got {text!r}")
        return
    try:
        check_threshold(method, **kw)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{text!r}: {e}") from None


def score_inputs(checkpoint, data: str, split: str = "test", options: dict | None = None, *, score: str = "model",
                 model: str | None = None, labels: str | None = None, knn_reference: str | None = None,
                 threshold_data: str | None = None):
    """What :func:`score_report` takes, from the names ``pyaeplus score`` is given (checked before anything
    is scored).

    Args:
        checkpoint: checkpoint folder or a run's ``checkpoint_dir`` (loaded on the CPU).
        data: ``"<kind>:<path>"`` or a ``.npy`` (:func:`pyaeplus.data.spec.open_spec`), its ``split``,
            loader ``options`` (also used for the other data named here).
        score: the score name; ``knn_reference`` (train split) is needed by and only by ``"latent_knn"``.
        model: the model name the checkpoint must hold, or None.
        labels: ``"data"`` or a ``.npy`` (:func:`pyaeplus.data.spec.labels_of`), or None.
        threshold_data: normal data to fit the threshold on (train split), or None; naming
            ``knn_reference`` gives that very dataset (each row's own latent is then left out).

    Returns:
        ``(model, data, labels, knn_reference, threshold_data)``, the data opened.
    """
    from ..checkpoint import load_model
    from ..data.spec import labels_of, open_spec

    if score == "latent_knn" and knn_reference is None:
        raise ValueError("--score latent_knn needs --knn-reference (the normal training data)")
    if score != "latent_knn" and knn_reference is not None:
        raise ValueError("--knn-reference is only used with --score latent_knn")
    net = load_model(checkpoint, device="cpu")
    if model is not None and getattr(net, "model_name", None) != model:
        raise ValueError(f"--checkpoint holds a {getattr(net, 'model_name', type(net).__name__)!r} model, "
                         f"not the --model {model!r} asked for")
    ds = open_spec(data, split, options)
    ref = open_spec(knn_reference, "train", options) if knn_reference else None
    thr = None if threshold_data is None else (
        ref if threshold_data == knn_reference else open_spec(threshold_data, "train", options))
    return net, ds, labels_of(labels, ds), ref, thr


@dataclasses.dataclass
class ScoreReport:
    """What :func:`score_report` made.

    Attributes:
        scores: (N,) float32 scores in input order (also in ``out``).
        seconds: time spent scoring.
        summary: the content of ``summary_path`` (n, seconds, score, out, threshold, n_flagged,
            metrics, pixel_metrics, plots).
        plots: name -> path of every file written besides the scores (PNGs, ``maps.npy``).
        lines: what ``pyaeplus score`` prints, in order.
        summary_path: ``<plots>/<out stem>_summary.json``.
    """

    scores: np.ndarray
    seconds: float
    summary: dict
    plots: dict
    lines: list
    summary_path: pathlib.Path


def score_report(model, data, *, out, score: str = "model", labels=None, threshold: str | None = None,
                 threshold_data=None, knn_reference=None, k: int = 5, knn_metric: str = "l2", pos_label: int = 1,
                 plots=None, maps_dir=None, masks=None, map_sigma: float | None = None, fpr_limit: float = 0.3,
                 batch_size: int = 512, num_workers: int = 0, device="auto", resume: bool = True) -> ScoreReport:
    """Score ``data``, threshold, evaluate, plot and summarize.

    Args:
        model: a model of :mod:`pyaeplus.models` (e.g. from ``pyaeplus.checkpoint.load_model``).
        data: the dataset to score (see :func:`pyaeplus.scoring.score`).
        out: scores file (``.npy``, ``.csv``, ``.parquet``), written in resumable chunks.
        score: the score name (:data:`pyaeplus.scoring.SCORES`).
        labels: (N,) labels or None; ``pos_label`` marks anomalies.
        threshold: a number or ``METHOD[:K=V,...]`` (:func:`parse_threshold`), or None.
        threshold_data: normal data the threshold method is fitted on (default: the scored scores);
            when it is ``knn_reference`` itself (the same object) each row's own latent is left out.
        knn_reference, k, knn_metric: the ``latent_knn`` score's reference data and settings.
        plots: folder of the PNGs and the summary (default: ``out``'s folder).
        maps_dir: also keep per-pixel maps as ``maps_dir/maps.npy``.
        masks: ``"data"`` or a ``.npy`` of ground-truth masks: pixel AUROC / AUPRO of the maps
            (smoothed by ``map_sigma``, AUPRO up to ``fpr_limit``).
        batch_size, num_workers, device, resume: as :func:`pyaeplus.scoring.score`.

    Returns:
        :class:`ScoreReport`.
    """
    out = pathlib.Path(out)
    knn = {} if knn_reference is None else {"knn_reference": knn_reference, "k": k, "knn_metric": knn_metric}
    want_maps = maps_dir is not None or masks is not None
    run = dict(score=score, batch_size=batch_size, device=device, num_workers=num_workers, progress=False)
    t0 = time.perf_counter()
    res = _score(model, data, out=out, resume=resume, maps=want_maps, **run, **knn)
    dt = time.perf_counter() - t0
    scores, maps = res if want_maps else (res, None)
    pixel = _pixels(masks, data, maps, out, map_sigma, fpr_limit, score) if masks is not None else None
    thr = None
    if threshold is not None:
        method, kw = parse_threshold(threshold)
        if method is None:
            thr = kw["value"]
        else:
            ref = scores
            if threshold_data is not None:
                same = knn_reference is not None and threshold_data is knn_reference
                ref = _score(model, threshold_data, knn_exclude_self=same, **run, **knn)
            thr = _threshold(ref, method, **kw)
    lines = [f"scored {len(scores)} samples in {dt:.2f} s ({len(scores) / max(dt, 1e-9):,.0f} samples/s) -> {out}"]
    summary = {"n": int(len(scores)), "seconds": dt, "score": score, "out": str(out)}
    if thr is not None:
        n_anom = int((scores > thr).sum())
        lines.append(f"threshold {thr:.6g}: {n_anom} of {len(scores)} flagged as anomalies (score > threshold)")
        summary.update(threshold=thr, n_flagged=n_anom)
    folder = pathlib.Path(plots) if plots else out.parent
    folder.mkdir(parents=True, exist_ok=True)
    paths = _score_plots(scores, labels, thr, pos_label, score, folder / out.stem, summary, lines)
    paths.update(_image_outputs(model, data, scores, maps, pixel, folder / out.stem, summary, lines))
    paths.update(_keep_maps(out, maps, maps_dir))
    lines += [f"{k}: {v}" for k, v in paths.items()]
    summary["plots"] = {k: str(v) for k, v in paths.items()}
    summary_path = folder / f"{out.stem}_summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=float))
    return ScoreReport(scores, dt, summary, paths, lines, summary_path)


def _pixels(masks, data, maps, out: pathlib.Path, sigma, fpr_limit, score):
    """(pixel metrics, maps at the masks' size, masks)."""
    from .localization import evaluate_maps, masks_for

    m = masks_for(masks, data)
    pixel, pixel_maps = evaluate_maps(maps, m, sigma=sigma, fpr_limit=fpr_limit, score=score,
                                      spill=out.with_name(out.stem + ".pixel_maps.npy"))
    return pixel, pixel_maps, m


def _score_plots(scores, labels, thr, pos_label: int, score: str, prefix: pathlib.Path, summary: dict,
                 lines: list) -> dict:
    """The score histogram; with labels the metrics (into ``summary`` and ``lines``) and ROC/PR curves."""
    from .. import viz

    paths = {"histogram": viz.score_histogram(scores, labels, f"{prefix}_histogram.png", threshold=thr)}
    if labels is not None:
        m = metrics(scores, labels, thr, pos_label=pos_label)
        summary["metrics"] = m
        lines.append(f"metrics ({m['positive_class']}): AUROC {m['auroc']:.4f}  AP {m['ap']:.4f}"
                     + ("" if thr is None else f"  accuracy {m['accuracy']:.4f}  precision {m['precision']:.4f}  "
                        f"recall {m['recall']:.4f}  F1 {m['f1']:.4f}"))
        if 0 < m["n_anomalies"] < m["n"]:
            paths["roc_pr"] = viz.roc_pr_curves(scores, (np.asarray(labels) == pos_label).astype(int),
                                                f"{prefix}_roc_pr.png", names=[score])
    return paths


def _image_outputs(model, data, scores, maps, pixel, prefix: pathlib.Path, summary: dict, lines: list) -> dict:
    """The pixel metrics (into ``summary`` and ``lines``); for image models the 8 top-scored inputs with
    their reconstructions and maps (with the ground-truth contours when masks were given)."""
    from .. import viz
    from .localization import describe

    paths = {}
    if pixel is not None:
        summary["pixel_metrics"] = pixel[0]
        lines.append(f"pixel metrics: {describe(pixel[0])}")
    if getattr(model, "image_shape", None) is None:
        return paths
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
    return paths


def _keep_maps(out: pathlib.Path, maps, maps_dir) -> dict:
    """Move the maps ``score`` wrote next to ``out`` into ``maps_dir``, or remove them when they were
    computed for the pixel metrics only; the spilled resized maps go too."""
    paths = {}
    if maps_dir is not None:
        mdir = pathlib.Path(maps_dir)
        mdir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out.with_name(out.stem + ".maps.npy")), str(mdir / "maps.npy"))
        paths["maps"] = mdir / "maps.npy"
    elif maps is not None:
        out.with_name(out.stem + ".maps.npy").unlink(missing_ok=True)
    out.with_name(out.stem + ".pixel_maps.npy").unlink(missing_ok=True)
    return paths
