"""The batch loop of :func:`pyaeplus.scoring.score`: the rows of the chunks still to do, read in
batches (DataLoader workers, pinned memory on CUDA), scored by one score function under
``inference_mode`` and autocast, and handed out chunk by chunk to an output (the resumable
ledger of ``scoring/ledger.py``, or :class:`InMemory`). Nothing is read back from the device
between chunk ends."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from .. import _sync
from ..runtime import dist as rdist
from ..runtime.batches import loader

__all__ = ["Scorer", "InMemory"]


class InMemory:
    """The output of a job without ``out``: chunks kept in memory, every rank's merged in order."""

    finished = False
    done: frozenset = frozenset()

    def __init__(self, maps: bool, world: int):
        self.maps, self.world = maps, world
        self.results: dict[tuple[int, int], tuple[np.ndarray, np.ndarray | None]] = {}

    def record(self, cs: int, ce: int, scores: np.ndarray, maps: np.ndarray | None) -> None:
        self.results[(cs, ce)] = (scores, maps)

    def abort(self) -> None:
        pass

    def result(self, mine: list[tuple[int, int]]):
        """This rank's chunks ``mine`` in order, then every rank's (all-gathered)."""
        parts = [self.results[c] for c in mine]
        sc = np.concatenate([a for a, _ in parts]) if parts else np.zeros(0, np.float32)
        mp = np.concatenate([m for _, m in parts]) if (self.maps and parts) else None
        if self.world > 1:
            gathered = rdist.all_gather_object((sc, mp), self.world)
            sc = np.concatenate([g[0] for g in gathered])
            mp = np.concatenate([g[1] for g in gathered if g[1] is not None]) if self.maps else None
        return (sc, mp) if self.maps else sc


@dataclasses.dataclass
class Scorer:
    """Scores chunks of rows of a dataset with ``fn(x) -> (scores (B,), maps (B, H, W) or None)``."""

    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    device: torch.device
    batch_size: int
    amp: bool = False
    maps: bool = False
    dtype: torch.dtype | None = None  # inputs are cast to the model's parameter dtype
    num_workers: int = 0
    sync_debug: str | None = None

    def run(self, ds, todo: list[tuple[int, int]], sink, progress: bool = False) -> int:
        """Score the chunks ``todo`` of ``ds`` into ``sink.record(cs, ce, scores, maps)``, in order; on
        any error ``sink.abort()`` is called before it propagates. Returns the rows scored."""
        starts = [(s, min(ce, s + self.batch_size)) for cs, ce in todo for s in range(cs, ce, self.batch_size)]
        batches = [torch.arange(s, e) for s, e in starts]  # host ints: nothing is read back from a tensor
        cuda = self.device.type == "cuda"
        batch_loader = loader(ds, batches, num_workers=self.num_workers, pin=cuda, inputs_only=True,
                              prefetch_factor=4)
        t0, rows = time.perf_counter(), 0
        try:
            for (cs, ce), arr, marr in _score_batches(self, batch_loader, [s for s, _ in starts], todo):
                rows += ce - cs
                sink.record(cs, ce, arr, marr)
        except BaseException:
            sink.abort()  # a ledger keeps the chunks done for a resume
            raise
        dt = time.perf_counter() - t0
        if progress and rows:
            print(f"pyaeplus.scoring: {rows} rows in {dt:.2f} s ({rows / max(dt, 1e-9):,.0f} rows/s) on {self.device}")
        return rows


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


def _score_batches(sc: Scorer, batches, starts: list[int], todo: list[tuple[int, int]]):
    """Score the batches (inputs (B, ...), first rows ``starts``; the rows of the chunks ``todo`` in
    order); yields ``((cs, ce), scores (ce-cs,) float32, maps or None)`` per completed chunk. Nothing
    is read from the device between chunk ends (``sync_debug`` checks it)."""
    dev = sc.device
    guard = _sync.Guard(sc.sync_debug, dev)
    host = _HostChunk(dev)
    ci = 0
    batches = iter(batches)  # before the check: a DataLoader draws its base seed with .item()
    with torch.inference_mode(), guard:
        for s, x in zip(starts, batches):
            cs, ce = todo[ci]
            if s == cs:
                host.begin(ce - cs)
            x = x.to(dev, non_blocking=True)
            if sc.dtype is not None and x.is_floating_point() and x.dtype != sc.dtype:
                x = x.to(sc.dtype)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=sc.amp):
                scores, mp = sc.fn(x)
            host.put("scores", s - cs, scores)
            if sc.maps:
                host.put("maps", s - cs, mp)
            if s + x.shape[0] >= ce:
                with guard.paused():
                    arr, marr = host.finish()
                    yield (cs, ce), arr, marr
                ci += 1
