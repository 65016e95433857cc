"""Batch scoring: streams a dataset through a model and writes per-sample scores in resumable chunks."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import time
from typing import Any, Callable

import numpy as np
import torch

from .. import _sync
from .._validate import integer
from ..runtime.devices import resolve_device
from .ledger import ScoreLedger

SCORES = ("model", "mse", "mae", "bce", "ssim", "ms_ssim", "latent_knn", "svdd", "elbo")


# ---- data --------------------------------------------------------------------------------------
class _Batches(torch.utils.data.Dataset):
    """Item i = the rows [lo + i*bs, min(hi, lo + (i+1)*bs)) of ``data`` as one float tensor, so that
    DataLoader workers read whole batches (``get_batch`` when the dataset has it: one read per batch)."""

    def __init__(self, data, starts: list[int], bs: int, hi: int):
        self.data, self.starts, self.bs, self.hi = data, starts, bs, hi

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        s = self.starts[i]
        e = min(self.hi, s + self.bs)
        if hasattr(self.data, "get_batch"):
            b = self.data.get_batch(torch.arange(s, e))
            x = b[0] if isinstance(b, (tuple, list)) else b
        else:
            items = [self.data[j] for j in range(s, e)]
            x = torch.stack([torch.as_tensor(it[0] if isinstance(it, (tuple, list)) else it) for it in items])
        return s, x


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


# ---- fingerprint / ledger ----------------------------------------------------------------------
def _model_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's class, config and weights."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    cfg = getattr(model, "config", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode() if cfg is not None else b"-")
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def fingerprint(model: torch.nn.Module, score_name: str, n: int, extra: dict | None = None) -> str:
    """sha256 over the model's class, config and weights, the score name, the row count and ``extra``:
    a resumed job with other settings is refused."""
    h = hashlib.sha256(_model_digest(model).encode())
    h.update(json.dumps({"score": score_name, "n": n, **(extra or {})}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _job_fingerprint(model, ds, n: int, score, data_id: str | None, settings: dict) -> dict[str, str]:
    """The named components a resumed job must match (see ``scoring/ledger.py``): the model, the
    score (a callable by its code), the data (sampled rows' content, shape and dtype, or
    ``data_id``), the row count and the settings."""
    from ..runtime import callable_fingerprint, data_fingerprint

    data = ("id:" + hashlib.sha256(data_id.encode()).hexdigest()) if data_id is not None else data_fingerprint(ds, n)
    return {"model": _model_digest(model),
            "score": score if isinstance(score, str) else "callable:" + callable_fingerprint(score),
            "data": data, "rows": str(n), "settings": json.dumps(settings, sort_keys=True, default=str)}


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


def read_scores(path) -> np.ndarray:
    """Scores written by :func:`score` (``.npy``, ``.csv`` or ``.parquet``) as a float32 array (N,)."""
    p = pathlib.Path(path)
    fmt = p.suffix.lower()
    if fmt == ".npy":
        return np.load(p)
    if fmt == ".csv":
        return np.loadtxt(p, delimiter=",", skiprows=1, usecols=1, dtype=np.float64, ndmin=1).astype(np.float32)
    import pyarrow.parquet as pq

    return pq.read_table(p).column("score").to_numpy().astype(np.float32)


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

    rank, world, per, lo, hi = _shard(n)
    led = None
    if p is not None:
        settings = {"chunk": chunk, "maps": bool(maps), "world": world, "k": k,
                    "knn_metric": knn_metric if score == "latent_knn" else None,
                    "knn_exclude_self": bool(knn_exclude_self), "knn_reference": ref_digest}
        led = ScoreLedger(p, fmt, fingerprint=_job_fingerprint(model, ds, n, score, data_id, settings), rank=rank,
                          world=world, lo=lo, hi=hi, resume=resume, maps=maps).open()

    fn = _score_fn(score, model, knn_ref, k, maps, bool(knn_exclude_self))
    chunks = [(s, min(hi, s + chunk)) for s in range(lo, hi, chunk)]
    todo = [c for c in chunks if led is None or not (led.finished or c in led.done)]
    starts = [s for (cs, ce) in todo for s in range(cs, ce, batch_size)]
    results: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}

    cuda = dev.type == "cuda"
    loader = torch.utils.data.DataLoader(_Batches(ds, starts, batch_size, hi), batch_size=None, shuffle=False,
                                         num_workers=num_workers, pin_memory=cuda,
                                         persistent_workers=False, prefetch_factor=4 if num_workers else None,
                                         generator=torch.Generator())  # never draws from the global RNG
    use_amp = _use_amp(amp, cuda)
    t0, rows = time.perf_counter(), 0
    p0 = next(iter(model.parameters()), None)
    try:
        for (cs, ce), arr, marr in _score_batches(fn, loader, todo, dev, amp=use_amp, maps=maps,
                                                  dtype=None if p0 is None else p0.dtype, sync_debug=sync_debug):
            rows += ce - cs
            if led is not None:
                led.record(cs, ce, arr, marr)
            else:
                results[(cs, ce)] = (arr, marr)
    except BaseException:
        if led is not None:  # the chunks done stay for a resume; a parts folder with none is removed
            led.abort()
        raise
    dt = time.perf_counter() - t0
    if progress and rows:
        print(f"pyaeplus.scoring: {rows} rows in {dt:.2f} s ({rows / max(dt, 1e-9):,.0f} rows/s) on {dev}")

    if led is not None:
        led.finish(n, [(s, min(n, (r + 1) * per, s + chunk)) for r in range(world)
                       for s in range(min(n, r * per), min(n, (r + 1) * per), chunk)])
        full = read_scores(p).astype(np.float32)
        return (full, np.load(led.maps_path, mmap_mode="r")) if maps else full
    return _gather(results, chunks, maps, world)


def _shard(n: int) -> tuple[int, int, int, int, int]:
    """(rank, world, rows per rank, this rank's rows [lo, hi)) under torch.distributed, else one rank."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    per = -(-n // world)
    return rank, world, per, min(n, rank * per), min(n, (rank + 1) * per)


def _gather(results: dict, chunks: list[tuple[int, int]], maps: bool, world: int):
    """The in-memory result: this rank's chunks in order, then every rank's (all_gather)."""
    mine = [results[c] for c in chunks]
    sc = np.concatenate([a for a, _ in mine]) if mine else np.zeros(0, np.float32)
    mp = np.concatenate([m for _, m in mine]) if (maps and mine) else None
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, (sc, mp))
        sc = np.concatenate([g[0] for g in gathered])
        mp = np.concatenate([g[1] for g in gathered if g[1] is not None]) if maps else None
    return (sc, mp) if maps else sc


class _HostChunk:
    """The scores (and maps) of one chunk, gathered in host memory batch by batch: on CUDA each batch is
    copied without waiting (non-blocking, into a pinned staging buffer reused from chunk to chunk) and
    the device is synchronised once, when the chunk is complete."""

    def __init__(self, dev: torch.device):
        self.dev, self.cuda = dev, dev.type == "cuda"
        self.staging: dict[str, torch.Tensor] = {}
        self.parts: dict[str, torch.Tensor] = {}
        self.rows = self.filled = 0

    def begin(self, rows: int) -> None:
        self.rows, self.filled, self.parts = rows, 0, {}

    def put(self, key: str, offset: int, t: torch.Tensor) -> None:
        dst = self.parts.get(key)
        if dst is None:
            dst = self.parts[key] = self._buffer(key, (self.rows, *t.shape[1:]))
        if offset + t.shape[0] > self.rows:
            raise RuntimeError(f"scored rows [{offset}, {offset + t.shape[0]}) of a chunk of {self.rows}")
        dst[offset:offset + t.shape[0]].copy_(t, non_blocking=self.cuda)
        if key == "scores":
            self.filled += t.shape[0]

    def _buffer(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not self.cuda:  # written in place, handed out as the chunk's array without a copy
            return torch.from_numpy(np.empty(shape, np.float32))
        buf = self.staging.get(key)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self.staging[key] = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        return buf[:shape[0]]

    def finish(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self.filled != self.rows:
            raise RuntimeError(f"scored {self.filled} rows for a chunk of {self.rows}")
        if self.cuda:
            torch.cuda.current_stream(self.dev).synchronize()  # the chunk's one synchronisation
            out = {k: v.numpy().copy() for k, v in self.parts.items()}  # the staging buffers are reused
        else:
            out = {k: v.numpy() for k, v in self.parts.items()}
        return out["scores"], out.get("maps")


def _score_batches(fn, loader, todo: list[tuple[int, int]], dev: torch.device, *, amp: bool, maps: bool,
                   dtype: torch.dtype | None, sync_debug: str | None):
    """Score the batches of ``loader`` (items ``(start row, x)``, the rows of the chunks ``todo`` in
    order) with ``fn``; yields ``((cs, ce), scores (ce-cs,) float32, maps or None)`` per completed
    chunk. Nothing is read from the device between chunk ends (``sync_debug`` checks it)."""
    guard = _sync.Guard(sync_debug, dev)
    host = _HostChunk(dev)
    ci = 0
    batches = iter(loader)  # before the check: a DataLoader draws its base seed with .item()
    with torch.inference_mode(), guard:
        for s, x in batches:
            cs, ce = todo[ci]
            if s == cs:
                host.begin(ce - cs)
            x = x.to(dev, non_blocking=True)
            if dtype is not None and x.is_floating_point() and x.dtype != dtype:
                x = x.to(dtype)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                sc, mp = fn(x)
            host.put("scores", s - cs, sc)
            if maps:
                host.put("maps", s - cs, mp)
            if s + x.shape[0] >= ce:
                with guard.paused():
                    arr, marr = host.finish()
                    yield (cs, ce), arr, marr
                ci += 1


def _latents(model, ref, batch_size: int, dev) -> torch.Tensor:
    """(M, d) float32 latents of the reference samples (encoded batch by batch); a 2-d float tensor
    whose width is not the model's input is taken as latents already."""
    from ..models.base import dense_latent

    ds = _dataset(ref)
    outs = []
    with torch.inference_mode():
        for s in range(0, len(ds), batch_size):
            b = _Batches(ds, [s], batch_size, len(ds))[0][1].to(dev)
            outs.append(dense_latent(model, model.encode(b)).float())
    return torch.cat(outs)


__all__ = ["score", "read_scores", "fingerprint", "SCORES"]
