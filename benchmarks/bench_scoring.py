"""Benchmark: the batch-scoring pipeline against the model's bare forward loop.

Target (issue 6): scoring N=200k 28x28 images with ``ConvAE`` (channels 32, 64, latent 64, MSE
score) through ``pyaeplus.scoring.score`` reaches >= 0.9x the throughput of the bare loop
``model.score(x[i:i+B])`` over a float tensor already in memory (anchor), i.e. reading, converting,
batching and writing are never the bottleneck. Rows (mode "forward", one row = the whole pass):

* ``bare loop`` (anchor): float32 tensor in memory, ``torch.inference_mode``;
* ``score(tensor)``: the same float tensor through ``score``;
* ``score(uint8 dataset, workers=W)``: uint8 images (1 byte per pixel, as stored) converted per
  batch by an ``ArrayDataset`` in W DataLoader workers;
* ``score(uint8 dataset) -> .npy``: the same, with chunked resumable output to disk.

On a GPU the providers run with AMP (bfloat16 autocast; the anchor too), pinned memory and
non-blocking copies. The ratio column is throughput relative to the anchor (higher is better,
>= 0.9 is the target).

Options (besides the harness's): ``--n N`` images (default 200000; ``--quick``: 4096),
``--all`` adds the intermediate rows (tensor input, uint8 with workers=0, uint8 without output
file); by default the anchor, ``score(tensor)`` and the full pipeline (uint8 dataset in workers,
chunked .npy output) run. One measurement is a whole pass over N images, so at N >= 50000 the
default is one timed pass per row after a short warm-up (a 200k pass takes minutes on 2 CPU
cores). Peak memory is not measured (a profiled pass per row would double the run; the engine
holds one chunk of ``64 * batch`` rows at a time by construction).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch

import harness

from pyaeplus import models, scoring
from pyaeplus.data.base import ArrayDataset


def main() -> None:
    r = harness.Runner("scoring", description=__doc__)
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--all", action="store_true")
    own, rest = ap.parse_known_args(r.extra)
    if rest:
        raise SystemExit(f"bench_scoring.py: unknown arguments {rest}")
    n = own.n or (4096 if r.quick else 200_000)
    if n < 1:
        raise SystemExit(f"--n must be positive, got {n}")
    big = n >= 50_000
    if r.args.repeats is None:
        r.repeats = 1 if big else (2 if r.quick else 3)  # one measurement is a full pass over N images
    if r.args.warmup is None:
        r.warmup = 0 if big else 1
    r.args.no_memory = True
    dev = torch.device(r.device)
    bs = 512 if dev.type == "cpu" else 4096
    workers = min(4, max(1, (os.cpu_count() or 2) - 1))
    torch.manual_seed(0)
    model = models.build("conv", in_channels=1, channels=[32, 64], latent=64, input_shape=[28, 28]).to(dev).eval()
    u8 = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    xf = (u8.float() / 255).to(dev)
    amp = dev.type == "cuda"
    cfg = {"N": n, "image": "1x28x28", "model": "ConvAE(32,64; latent 64)", "batch": bs, "amp": amp}

    def bare():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = [model.score(xf[i:i + bs]) for i in range(0, n, bs)]
        return torch.cat(out)

    with torch.inference_mode():  # warm-up (allocator, kernels, threads) for the single-pass rows
        for _ in range(3):
            model.score(xf[:bs])
    r.add("bare loop (tensor in memory)", cfg, "forward", bare, anchor=True)
    r.add("score(tensor)", cfg, "forward",
          lambda: scoring.score(model, xf.cpu() if dev.type == "cuda" else xf, batch_size=bs, device=dev,
                                amp=amp, progress=False))
    ds = ArrayDataset(u8, scale=1 / 255)
    for w in sorted({0, workers}) if own.all else []:
        r.add(f"score(uint8 dataset, workers={w})", cfg, "forward",
              lambda w=w: scoring.score(model, ds, batch_size=bs, device=dev, amp=amp, num_workers=w, progress=False))
    tmp = tempfile.mkdtemp(prefix="bench_scoring_")
    try:
        def to_file():
            p = os.path.join(tmp, "s.npy")
            if os.path.exists(p):
                os.remove(p)
            return scoring.score(model, ds, batch_size=bs, device=dev, amp=amp, num_workers=workers,
                                 out=p, resume=False, progress=False)
        r.add(f"score(uint8 dataset, workers={workers}) -> .npy", cfg, "forward", to_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    r.finish()


if __name__ == "__main__":
    main()
