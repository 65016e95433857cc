"""Batch scoring: streams a dataset through a model and writes per-sample scores in resumable chunks."""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Callable

import numpy as np
import torch

from .. import _sync
from .._validate import integer
from ..runtime import dist as rdist
from ..runtime.batches import read_rows
from ..runtime.devices import resolve_device
from ._scorer import InMemory, Scorer
from .ledger import ScoreLedger, fingerprint, job_fingerprint, read_scores  # noqa: F401 (public here too)

SCORES = ("model", "mse", "mae", "bce", "ssim", "ms_ssim", "latent_knn", "svdd", "elbo")


# ---- data --------------------------------------------------------------------------------------
def _dataset(data):
    from ..data.base import as_dataset

    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim < 1 or data.shape[0] == 0:
            raise ValueError(f"data must hold at least one sample, got shape {tuple(data.shape)}")
        t = torch.as_tensor(data) if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))
        if not t.is_floating_point():
            raise TypeError(f"data given as a tensor/array must be floating point, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("data contains NaN or Inf")
    ds = as_dataset(data)
    if len(ds) == 0:
        raise ValueError("data is empty (0 samples)")
    return ds


# ---- score functions ---------------------------------------------------------------------------
def _image(model, t: torch.Tensor) -> torch.Tensor:
    shape = getattr(model, "image_shape", None)
    if shape is not None:
        return t.reshape(t.shape[0], *shape)
    if t.dim() != 4:
        raise ValueError(f"score 'ssim'/'ms_ssim' and maps need image data (N, C, H, W); got shape {tuple(t.shape)}")
    return t


def _per_sample(e: torch.Tensor) -> torch.Tensor:
    return e.reshape(e.shape[0], -1).float().mean(1)


def _error_map(model, x, out) -> torch.Tensor:
    """Per-pixel squared error (N, H, W), channels averaged."""
    return ((_image(model, out).float() - _image(model, x).float()) ** 2).mean(1)


_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ms_ssim_window(side: int) -> tuple[int, list[float]]:
    """The 5-level, 11-pixel MS-SSIM needs 176-pixel images; small images (28x28) get the most
    levels that fit (>= 2) with the largest window among 11, 7, 3, weights renormalized."""
    for win in (11, 7, 3):
        levels = min(5, int(math.floor(math.log2(side / win))) + 1) if side >= win else 0
        if levels >= 2:
            w = _MS_WEIGHTS[:levels]
            return win, [v / sum(w) for v in w]
    raise ValueError(f"score 'ms_ssim' needs images of at least 6 pixels per side, got {side}")


def _score_fn(name, model, knn_ref, k: int, maps: bool,
              skip_self: bool = False) -> Callable[[torch.Tensor], tuple[torch.Tensor, Any]]:
    """fn(x) -> (scores (B,) float32, maps (B, H, W) float32 or None)."""
    from .. import functional as F

    data_range = float(getattr(model, "data_range", 1.0))

    def recon(x):
        return model(x)

    def maps_of(x, out, ssim_map=False):
        if not maps:
            return None
        if ssim_map:
            xi, oi = _image(model, x).float(), _image(model, out).float()
            return (1.0 - F.ssim_map(oi, xi, data_range=data_range, padding="same")).mean(1)
        return _error_map(model, x, out)

    if callable(name):
        def fn(x):
            s = name(model, x)
            return torch.as_tensor(s).reshape(x.shape[0]).float(), (maps_of(x, recon(x)) if maps else None)
        return fn
    if name in ("model", "svdd", "elbo"):
        def fn(x):
            return model.score(x).float(), (maps_of(x, recon(x)) if maps else None)
        return fn
    if name in ("mse", "mae", "bce"):
        def fn(x):
            out = recon(x)
            xo = x.reshape(out.shape).float()
            of = out.float()
            if name == "mse":
                e = (of - xo) ** 2
            elif name == "mae":
                e = (of - xo).abs()
            else:
                e = torch.nn.functional.binary_cross_entropy(of.clamp(1e-7, 1 - 1e-7), xo.clamp(0, 1), reduction="none")
            return _per_sample(e), maps_of(x, out)
        return fn
    if name in ("ssim", "ms_ssim"):
        def fn(x):
            out = recon(x)
            xi, oi = _image(model, x).float(), _image(model, out).float()
            if name == "ssim":
                s = 1.0 - F.ssim(oi, xi, data_range=data_range, reduction="none", padding="same")
            else:
                win, w = _ms_ssim_window(min(xi.shape[-2:]))
                s = 1.0 - F.ms_ssim(oi, xi, data_range=data_range, reduction="none", padding="same",
                                    win_size=win, weights=w)
            return s.reshape(x.shape[0]).float(), maps_of(x, out, ssim_map=True)
        return fn
    if name == "latent_knn":
        from ..models.base import dense_latent

        def fn(x):
            z = dense_latent(model, model.encode(x)).float()
            # skip_self: data is the reference set itself, so each row's nearest neighbour is
            # the row (distance 0): search one more and drop it, as PyOD's KNN does.
            skip = int(skip_self)
            d, _ = knn_ref.search(z, min(k + skip, len(knn_ref)))
            return d[:, skip:].mean(1).to(z.device), (maps_of(x, recon(x)) if maps else None)
        return fn
    raise ValueError(f"score must be one of {SCORES} or a callable(model, x) -> (B,), got {name!r}")


def _check_out(out) -> tuple[pathlib.Path, str]:
    p = pathlib.Path(out).expanduser()
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("npy", "csv", "parquet"):
        raise ValueError(f"out must end in .npy, .csv or .parquet, got {str(out)!r}")
    if not p.parent.is_dir():
        raise ValueError(f"out: the directory {str(p.parent)!r} does not exist")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("out=*.parquet needs pyarrow (pip install pyarrow); use .npy or .csv") from None
    return p, fmt


# ---- engine ------------------------------------------------------------------------------------
def _device(device) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return resolve_device(device)


def _check_args(model, score, batch_size, num_workers, chunk_size, k, knn_reference, data_id, sync_debug) -> None:
    """Every argument of :func:`score` that can be checked before any data is read."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(score) and score not in SCORES:
        raise ValueError(f"score must be one of {SCORES} or a callable(model, x) -> (B,), got {score!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if chunk_size is not None:
        integer("chunk_size", chunk_size, lo=1)
    if sync_debug not in _sync.MODES:
        raise ValueError(f"sync_debug must be None, 'warn' or 'error', got {sync_debug!r}")
    if score == "svdd" and not hasattr(model, "c"):
        raise ValueError("score='svdd' needs a Deep SVDD model (pyaeplus.models 'svdd')")
    if score == "elbo" and not hasattr(model, "encode_dist"):
        raise ValueError("score='elbo' needs a VAE model (pyaeplus.models 'vae')")
    if score == "latent_knn":
        if knn_reference is None:
            raise ValueError("score='latent_knn' needs knn_reference (the normal training samples)")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
    if data_id is not None and not isinstance(data_id, str):
        raise TypeError(f"data_id must be a str or None, got {type(data_id).__name__}")


def _knn_reference(model, ref, n: int, batch_size: int, dev, k: int, metric: str, backend: str,
                   exclude_self: bool):
    """(KnnIndex over the reference latents, their digest for the ledger). The reference size is
    checked against ``k`` (and ``data`` for ``exclude_self``) before anything is encoded."""
    from ..graph.knn import KnnIndex
    from ..runtime import tensor_digest

    ref_ds = _dataset(ref)
    m = len(ref_ds)
    if exclude_self and m != n:
        raise ValueError(f"knn_exclude_self=True needs data to be knn_reference itself, but data has {n} rows "
                         f"and knn_reference {m}")
    if k + int(exclude_self) > m:
        extra = " with knn_exclude_self=True needs more than k" if exclude_self else " needs at least k"
        raise ValueError(f"k={k}{extra} knn_reference rows, got {m}")
    lat = _latents(model, ref_ds, batch_size, dev)
    return KnnIndex(lat, metric=metric, backend=backend), tensor_digest(lat)


def _use_amp(amp, cuda: bool) -> bool:
    """bfloat16 autocast for scoring: True on CUDA only (slower than float32 on most CPUs), "bf16"
    on any device, False never."""
    if amp not in (True, False, None, "bf16", "bfloat16"):
        raise ValueError(f"amp must be True, False or 'bf16', got {amp!r}")
    return amp in ("bf16", "bfloat16") or (bool(amp) and cuda)


def score(model: torch.nn.Module, data, *, score: str | Callable = "model", batch_size: int = 256,
          device: str | torch.device = "auto", amp: bool = True, num_workers: int = 0, out=None,
          resume: bool = True, maps: bool = False, progress: bool = True, chunk_size: int | None = None,
          knn_reference=None, k: int = 5, knn_metric: str = "l2", knn_backend: str = "auto",
          knn_exclude_self: bool = False, data_id: str | None = None,
          sync_debug: str | None = None) -> np.ndarray:
    """Score every sample of ``data`` with ``model``, in input order (higher = more anomalous).

    Args:
        model: a pyaeplus.models model (or any module with ``forward``, ``encode``, ``score`` as needed).
        data: (N, ...) float tensor/array, a Dataset (items ``x`` or ``(x, y)``; ``get_batch`` used when
            present) or a ``MemmapDataset``.
        score: ``"model"`` (the model's own ``score``), ``"mse"``, ``"mae"``, ``"bce"`` (per-sample mean),
            ``"ssim"``/``"ms_ssim"`` (1 − similarity per image), ``"latent_knn"`` (mean distance to the
            ``k`` nearest rows of ``knn_reference`` latents), ``"svdd"``/``"elbo"`` (the model's score of
            Deep SVDD / VAE models), or ``callable(model, x) -> (B,)``.
        batch_size: rows per forward pass.
        device: ``"auto"`` (CUDA when present) or a device.
        amp: True: bfloat16 autocast on CUDA (off on the CPU, where it is slower); ``"bf16"``: on any device;
            False: off. The scores are float32 either way.
        num_workers: DataLoader worker processes reading batches (pinned memory on CUDA).
        out: optional ``.npy``/``.csv``/``.parquet`` path. Chunks land in ``<out>.parts/`` with a JSON
            ledger; the final file is written atomically at the end and the parts removed. One writer
            per ``out`` (``<out>.lock``; a second one gets ``pyaeplus.runtime.LockedError``, a lock left
            by a killed process is taken over). A full disk raises ``OSError`` naming the file, with no
            partial file left; the run resumes once there is space (see ``scoring/ledger.py``).
        resume: with ``out``, continue a previous (killed) run: its finished chunks are kept, and a run
            that had finished returns its final file. The model, the score (a callable by its code),
            the data (see ``data_id``), the row count and the settings must match, else ``ValueError``
            names what differs. False discards what an earlier run left and starts over.
        maps: also return per-pixel maps (N, H, W): 1 − SSIM map for ssim scores, squared error
            otherwise; with ``out``, written to ``<out stem>.maps.npy``.
        progress: print throughput at the end.
        chunk_size: rows per written chunk (rounded up to a multiple of batch_size); default 64 batches.
        knn_reference: (M, ...) training samples (or (M, d) latents with ``k``-NN) for ``"latent_knn"``.
        k: neighbours for ``"latent_knn"``.
        knn_metric: latent distance for ``"latent_knn"`` (``"l2"``, ``"cosine"``, ... as in
            ``pyaeplus.graph.knn_graph``).
        knn_backend: k-NN backend for ``"latent_knn"``: ``"auto"`` (FAISS GPU, the Triton kernel for
            CUDA latents, faiss-cpu, else torch), ``"faiss-gpu"``, ``"faiss"``, ``"triton"``, ``"torch"``.
            The index over the reference latents is built once; every backend returns the same exact
            neighbours (``pyaeplus.graph.KnnIndex``).
        knn_exclude_self: ``data`` is ``knn_reference`` itself (scores of the training set, e.g. to fit
            a threshold): each row's own latent is not counted among its neighbours.
        data_id: with ``out``, a string naming the data for the resume check instead of the default
            fingerprint (a hash of 64 sampled rows plus the shape, dtype and length): pass one when
            reading rows is expensive, or to tell apart datasets that agree on those rows.
        sync_debug: ``None``, ``"warn"`` or ``"error"``: check that scoring a batch never synchronises
            with the device (see ``pyaeplus._sync``; the one synchronisation per completed chunk is
            outside the check). A CPU k-NN index (``latent_knn`` on faiss-cpu) reads every batch.

    Returns:
        float32 array (N,) of scores; with ``maps=True`` a tuple ``(scores, maps (N, H, W))``.
        Under ``torch.distributed`` every rank scores a contiguous shard and gets the full result.
    """
    _check_args(model, score, batch_size, num_workers, chunk_size, k, knn_reference, data_id, sync_debug)
    p, fmt = _check_out(out) if out is not None else (None, None)
    ds = _dataset(data)
    n = len(ds)
    dev = _device(device)
    model = model.to(dev).eval()
    knn_ref = ref_digest = None
    if score == "latent_knn":
        knn_ref, ref_digest = _knn_reference(model, knn_reference, n, batch_size, dev, k, knn_metric, knn_backend,
                                             bool(knn_exclude_self))
    chunk = batch_size * 64 if chunk_size is None else chunk_size
    chunk = -(-chunk // batch_size) * batch_size

    rank, world = rdist.rank_world()
    _, lo, hi = rdist.shard(n, rank, world)
    mine = _chunks(lo, hi, chunk)
    if p is None:
        sink = InMemory(maps, world)
    else:
        settings = {"chunk": chunk, "maps": bool(maps), "world": world, "k": k,
                    "knn_metric": knn_metric if score == "latent_knn" else None,
                    "knn_exclude_self": bool(knn_exclude_self), "knn_reference": ref_digest}
        sink = ScoreLedger(p, fmt, fingerprint=job_fingerprint(model, ds, n, score, data_id, settings), rank=rank,
                           world=world, lo=lo, hi=hi, resume=resume, maps=maps).open()
    p0 = next(iter(model.parameters()), None)
    scorer = Scorer(_score_fn(score, model, knn_ref, k, maps, bool(knn_exclude_self)), dev, batch_size,
                    amp=_use_amp(amp, dev.type == "cuda"), maps=maps, dtype=None if p0 is None else p0.dtype,
                    num_workers=num_workers, sync_debug=sync_debug)
    scorer.run(ds, [c for c in mine if not (sink.finished or c in sink.done)], sink, progress)
    if p is None:
        return sink.result(mine)
    every = [c for r in range(world) for c in _chunks(*rdist.shard(n, r, world)[1:], chunk)]
    return sink.result(n, every)


def _chunks(lo: int, hi: int, chunk: int) -> list[tuple[int, int]]:
    """The rows [lo, hi) in chunks of ``chunk`` (the last one shorter)."""
    return [(s, min(hi, s + chunk)) for s in range(lo, hi, chunk)]


def _latents(model, ref, batch_size: int, dev) -> torch.Tensor:
    """(M, d) float32 latents of the reference samples (encoded batch by batch); a 2-d float tensor
    whose width is not the model's input is taken as latents already."""
    from ..models.base import dense_latent

    ds = _dataset(ref)
    outs = []
    with torch.inference_mode():
        for s in range(0, len(ds), batch_size):
            b = read_rows(ds, torch.arange(s, min(len(ds), s + batch_size))).to(dev)
            outs.append(dense_latent(model, model.encode(b)).float())
    return torch.cat(outs)


__all__ = ["score", "read_scores", "fingerprint", "SCORES"]
