"""The resumable output of :func:`pyaeplus.scoring.score` (``out=...``).

Layout next to ``out`` (``scores.npy`` here):

- ``scores.npy.lock``: the writer lock (:class:`pyaeplus.runtime.WriterLock`); one writer per ``out``
  (rank r > 0 of a distributed job locks ``scores.npy.lock-<r>``);
- ``scores.npy.parts/``: ``ledger-<rank>.json`` (the job's fingerprint and the chunks done), one
  ``part-<start>-<end>.npy`` per finished chunk (``maps-<start>-<end>.npy`` with maps) and, once the
  final files are written, ``COMPLETE`` (the fingerprint of the job they belong to);
- ``scores.npy`` (and ``scores.maps.npy``): written atomically at the end.

Every file is written atomically (:func:`pyaeplus.runtime.atomic_write`), so a kill at any moment
leaves either a chunk or nothing. The ledger is updated only after its chunk is on disk, the final
files are complete before ``COMPLETE`` is written, and the parts are removed only after it: a job
killed during the cleanup is finished by the next call, which just returns the final file.

The fingerprint has named components (``model``, ``score``, ``data``, ``rows``, ``settings``) so that
a resume with other data or code is refused with an error saying which one differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import torch

from ..runtime import WriterLock, atomic_write, callable_fingerprint, clean_stale_temps, data_fingerprint, fsync_dir
from ..runtime import dist as rdist
from ..runtime.files import write_npy, write_rows

__all__ = ["ScoreLedger", "write_final", "read_scores", "fingerprint", "job_fingerprint", "model_digest"]

VERSION = 2

_WHAT = {
    "model": "the model (class, config or weights)",
    "score": "the score (its name, or the callable's code)",
    "data": "the data (content of sampled rows, sample shape or dtype, or data_id)",
    "rows": "the number of rows",
    "settings": "the settings (chunk_size, maps, world size, k, knn_metric or the knn_reference latents)",
}


# ---- fingerprint ---------------------------------------------------------------------------

def model_digest(model: torch.nn.Module) -> str:
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
    h = hashlib.sha256(model_digest(model).encode())
    h.update(json.dumps({"score": score_name, "n": n, **(extra or {})}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def job_fingerprint(model, ds, n: int, score, data_id: str | None, settings: dict) -> dict[str, str]:
    """The named components a resumed job must match (see ``scoring/ledger.py``): the model, the
    score (a callable by its code), the data (sampled rows' content, shape and dtype, or
    ``data_id``), the row count and the settings."""
    data = ("id:" + hashlib.sha256(data_id.encode()).hexdigest()) if data_id is not None else data_fingerprint(ds, n)
    return {"model": model_digest(model),
            "score": score if isinstance(score, str) else "callable:" + callable_fingerprint(score),
            "data": data, "rows": str(n), "settings": json.dumps(settings, sort_keys=True, default=str)}



# ---- files ---------------------------------------------------------------------------------

def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as belonging to another run


def _save_json(path: pathlib.Path, obj) -> None:
    atomic_write(path, lambda f: json.dump(obj, f), text=True)


def _save_npy(path: pathlib.Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: write_npy(f, arr))


def write_final(p: pathlib.Path, fmt: str, scores: np.ndarray) -> None:
    """``scores`` (N,) float32 as ``p`` in ``fmt`` (``npy``/``csv``/``parquet``), atomically."""
    def write(f):
        if fmt == "npy":
            write_npy(f, scores)
        elif fmt == "csv":
            f.write(b"index,score\n")
            for i, s in enumerate(scores.tolist()):
                f.write(f"{i},{s!r}\n".encode())
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"index": np.arange(len(scores), dtype=np.int64), "score": scores}), f)

    atomic_write(p, write)


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


def _write_maps(path: pathlib.Path, n: int, chunk_files: list[pathlib.Path]) -> None:
    """Concatenate the maps chunks into one (n, H, W) float32 ``.npy`` by ordinary writes (a full
    disk is an ``OSError`` here; a memmap would take SIGBUS), atomically."""
    first = np.load(chunk_files[0], mmap_mode="r")
    shape = (n, *first.shape[1:])
    del first

    def write(f):
        write_npy(f, np.zeros(0, np.float32), shape=shape)
        for c in chunk_files:
            write_rows(f, np.load(c).astype(np.float32, copy=False))

    atomic_write(path, write)


class ScoreLedger:
    """The ledger of one rank of one scoring job writing ``out``.

    Args:
        out: the final scores path; fmt: ``"npy"``, ``"csv"`` or ``"parquet"``.
        fingerprint: ``{"model", "score", "data", "rows", "settings"}`` digests of this job.
        rank, world, lo, hi: this rank and its rows ``[lo, hi)``.
        resume: reuse the chunks of an interrupted run with the same fingerprint; False discards
            whatever an earlier run left (its parts, its final files are overwritten at the end).
        maps: the job also writes per-pixel maps.
    """

    def __init__(self, out: pathlib.Path, fmt: str, *, fingerprint: dict[str, str], rank: int, world: int,
                 lo: int, hi: int, resume: bool, maps: bool):
        self.out, self.fmt, self.fp = out, fmt, dict(fingerprint)
        self.rank, self.world, self.lo, self.hi = rank, world, lo, hi
        self.resume, self.maps = bool(resume), bool(maps)
        self.parts = out.with_name(out.name + ".parts")
        self.maps_path = out.with_name(out.stem + ".maps.npy")
        self.path = self.parts / f"ledger-{rank}.json"
        self.lock = WriterLock(out.with_name(out.name + (".lock" if rank == 0 else f".lock-{rank}")), out)
        self.done: set[tuple[int, int]] = set()
        self.finished = False  # an earlier run completed this very job: nothing to score
        self._created = False

    # ---- file names ---------------------------------------------------------------------------
    def part(self, cs: int, ce: int, kind: str = "part") -> pathlib.Path:
        return self.parts / f"{kind}-{cs:012d}-{ce:012d}.npy"

    # ---- open ---------------------------------------------------------------------------------
    def open(self) -> "ScoreLedger":
        """Take the writer lock (:class:`pyaeplus.runtime.LockedError` if another process holds
        it), then find what an earlier run left: a finished job (``finished``), the chunks of an
        interrupted one (``done``), or another job's ledger (``ValueError`` naming what differs;
        ``resume=False`` discards it)."""
        self.lock.acquire()
        try:
            self._open()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _open(self) -> None:
        for name in (self.out.name, self.maps_path.name):
            clean_stale_temps(self.out.parent, name)
        if self.parts.is_dir():
            clean_stale_temps(self.parts)
        if not self.resume:
            self._discard()
        complete = _read_json(self.parts / "COMPLETE")
        if complete is not None:
            # A finished job killed during its cleanup: this very job gets its final file back; the
            # leftovers of another finished job are just removed (nothing in them can be reused).
            if complete.get("fingerprint") == self.fp and self.out.exists() and (
                    not self.maps or self.maps_path.exists()):
                self.finished = True
                return
            self._discard()
        old = _read_json(self.path)
        if old is not None:
            if old.get("version") != VERSION or old.get("fingerprint") != self.fp:
                raise self._mismatch(old.get("fingerprint") if old.get("version") == VERSION else None)
            self.done = {c for c in map(tuple, old.get("done", [])) if self._chunk_ok(*c)}
        self._created = not self.parts.exists()
        self.parts.mkdir(exist_ok=True)
        self._save()

    def _chunk_ok(self, cs: int, ce: int) -> bool:
        """A chunk listed as done is kept only if its files are there with the right length."""
        try:
            if np.load(self.part(cs, ce), mmap_mode="r").shape != (ce - cs,):
                return False
            return not self.maps or np.load(self.part(cs, ce, "maps"), mmap_mode="r").shape[0] == ce - cs
        except (OSError, ValueError):
            return False

    def _mismatch(self, old) -> ValueError:
        if not isinstance(old, dict):
            what = "it was written by another pyaeplus version, so its settings cannot be compared"
        else:
            what = "; ".join(_WHAT.get(k, k) for k in self.fp if old.get(k) != self.fp[k]) + " differ(s)"
        return ValueError(f"out: {self.parts} holds a run with other settings ({what}); pass resume=False "
                          "(pyaeplus score --no-resume) to discard it and start over, or choose another out path")

    def _discard(self) -> None:
        """Remove what earlier runs of this rank left (rank 0 also the completion marker)."""
        if not self.parts.is_dir():
            return
        if self.world == 1:
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        if self.rank == 0:
            (self.parts / "COMPLETE").unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        for f in self.parts.glob("*-*-*.npy"):
            cs = int(f.stem.split("-")[1])
            if self.lo <= cs < self.hi:
                f.unlink(missing_ok=True)

    def _save(self) -> None:
        _save_json(self.path, {"version": VERSION, "fingerprint": self.fp, "rank": self.rank, "world": self.world,
                               "lo": self.lo, "hi": self.hi, "done": sorted(self.done)})

    # ---- while scoring ------------------------------------------------------------------------
    def record(self, cs: int, ce: int, scores: np.ndarray, maps: np.ndarray | None) -> None:
        """Chunk ``[cs, ce)`` is scored: its files first, then the ledger entry."""
        _save_npy(self.part(cs, ce), scores)
        if self.maps:
            _save_npy(self.part(cs, ce, "maps"), maps)
        self.done.add((cs, ce))
        self._save()

    def abort(self) -> None:
        """The job failed: a parts folder this call created that holds no chunk is removed (no trace
        left); otherwise the chunks stay for a resume. Releases the lock."""
        try:
            if self._created and not self.done and self.world == 1:
                shutil.rmtree(self.parts, ignore_errors=True)
        finally:
            self.lock.release()

    # ---- the end ------------------------------------------------------------------------------
    def finish(self, n: int, all_chunks: list[tuple[int, int]]) -> None:
        """Rank 0 writes the final files from every rank's chunks (unless an earlier run did), marks
        the job complete, then removes the parts; the other ranks wait (barriers). Releases the lock."""
        try:
            rdist.barrier()
            if self.rank == 0:
                if not self.finished:
                    self._assemble(n, all_chunks)
                self._cleanup()
            rdist.barrier()
        finally:
            self.lock.release()

    def result(self, n: int, all_chunks: list[tuple[int, int]]):
        """:meth:`finish`, then the final scores (N,) float32 (and the maps, memory-mapped)."""
        self.finish(n, all_chunks)
        full = read_scores(self.out).astype(np.float32)
        return (full, np.load(self.maps_path, mmap_mode="r")) if self.maps else full

    def _assemble(self, n: int, all_chunks: list[tuple[int, int]]) -> None:
        full = np.concatenate([np.load(self.part(cs, ce)) for cs, ce in all_chunks])
        if full.shape[0] != n:
            raise RuntimeError(f"assembled {full.shape[0]} rows, expected {n}")
        if self.maps:
            _write_maps(self.maps_path, n, [self.part(cs, ce, "maps") for cs, ce in all_chunks])
        write_final(self.out, self.fmt, full)
        _save_json(self.parts / "COMPLETE", {"version": VERSION, "fingerprint": self.fp,
                                             "out": self.out.name, "maps": self.maps_path.name if self.maps else None})

    def _cleanup(self) -> None:
        """Parts and ledgers first, the completion marker last, then the folder."""
        for f in list(self.parts.iterdir()) if self.parts.is_dir() else []:
            if f.name == "COMPLETE":
                continue
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
        (self.parts / "COMPLETE").unlink(missing_ok=True)
        try:
            os.rmdir(self.parts)
        except OSError:
            pass
        fsync_dir(self.out.parent)
