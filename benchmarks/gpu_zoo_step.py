"""One ``train.fit`` step of every model of the zoo under bf16 autocast, and the host syncs it makes.

For each model (one factory per name in ``pyaeplus.models.MODELS``, plus variants that exercise the
fused kernels: SSIM and L1+SSIM losses, top-k, the Laplacian term), on CUDA:

1. ``plain``: one optimizer step (``fit(..., epochs=1)`` over one batch, ``amp="bf16"``) with the model
   and the data already on the device; the loss must be finite. This also warms up every kernel.
2. ``sync_error``: the same step inside ``torch.cuda.set_sync_debug_mode("error")``: passes only when
   the step makes no host synchronization; else the error text and the innermost pyaeplus frame.
3. ``sync_warn``: the same step in ``"warn"`` mode, counting the synchronizing calls and where they
   come from (file:line of the Python caller, most frequent first).

A failing model is reported and the next one runs. Exit status: 1 when a ``plain`` step failed (a
real bug), else 0 (syncs are reported, not fatal: issue 14 removes them from ``train.fit``).
On the CPU (``--device cpu``, the rehearsal of ``gpu_check.sh --dry-run``) steps 2-3 are skipped:
sync debug mode needs CUDA.

    python benchmarks/gpu_zoo_step.py [--device cuda] [--out zoo.json] [--only conv_ssim,vae]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
import warnings

import torch

from pyaeplus import models as M
from pyaeplus.data import WithIndex
from pyaeplus.train import fit

SHAPE = (1, 28, 28)
F = 28 * 28


def _laplacian(x):
    model = M.LaplacianAE({"name": "conv", "config": {"in_channels": 1, "channels": [8, 16], "latent": 16,
                                                      "input_shape": [28, 28], "loss": "ssim"}}, lam=0.1)
    model.set_graph(M.LaplacianAE.knn_graph_of(x.cpu(), k=5))
    return model, WithIndex(x), {"batch_sampler": model.sampler(len(x), neighbors=4, seed=0)}


# name -> builder(x) -> model, or (model, dataset, extra fit kwargs)
FACTORIES = {
    "dense": lambda x: M.DenseAE(F, [128], 16, input_shape=SHAPE),
    "conv": lambda x: M.ConvAE(1, [8, 16], 16, input_shape=(28, 28), batch_norm=True),
    "conv_ssim": lambda x: M.ConvAE(1, [8, 16], 16, input_shape=(28, 28), loss="ssim", output_activation="sigmoid"),
    "conv_l1_ssim": lambda x: M.ConvAE(1, [8, 16], 16, input_shape=(28, 28), loss="l1_ssim",
                                       output_activation="sigmoid"),
    "denoising": lambda x: M.DenoisingAE(M.DenseAE(F, [64], 16, input_shape=SHAPE), std=0.1),
    "contractive": lambda x: M.ContractiveAE(F, [64], 16, lam=1e-2),
    "vae": lambda x: M.VAE("conv", 8, in_channels=1, channels=[8, 16], input_shape=(28, 28)),
    "deep_svdd": lambda x: M.DeepSVDD(SHAPE, channels=[8, 4], rep_dim=16),
    "deep_svdd_ae": lambda x: M.DeepSVDD(SHAPE, channels=[8, 4], rep_dim=16).pretrain_autoencoder(),
    "deep_ocsvm": lambda x: M.DeepOCSVM(M.DenseAE(F, [64], 16), nu=0.1, n_features=64),
    "sparse": lambda x: M.SparseAE(F, 512, k=16, input_shape=SHAPE),
    "sparse_l1": lambda x: M.SparseAE(F, 128, sparsity="l1"),
    "sparse_batch_auxk": lambda x: M.SparseAE(F, 512, k=16, batch_topk=True, aux_k=32, dead_steps=1,
                                              input_shape=SHAPE),
    "laplacian": _laplacian,
}
# registry name -> the factory that covers it (the rest of the registry must have a factory of its name)
COVERS = {"deep_svdd_ae": "deep_svdd_ae", "laplacian": "laplacian"}


def _build(name: str, x: torch.Tensor, device: str):
    made = FACTORIES[name](x)
    model, data, extra = made if isinstance(made, tuple) else (made, x, {})
    return model.to(device), data, extra


def _one_step(model, data, extra, device: str) -> float:
    res = fit(model, data, epochs=1, batch_size=len(data), lr=1e-3, amp="bf16", device=device, seed=0,
              progress=False, shuffle=False, **extra)
    loss = res.history[-1]["train"]["loss"]
    if not torch.isfinite(torch.tensor(loss)):
        raise FloatingPointError(f"loss is {loss}")
    return loss


def _where(tb) -> str:
    """The innermost pyaeplus frame of a traceback (where the sync was asked for)."""
    frames = [f for f in traceback.extract_tb(tb) if "pyaeplus" in f.filename and "gpu_zoo_step" not in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(tb)[-1]
    return f"{f.filename.split('pyaeplus/')[-1]}:{f.lineno} ({f.name}: {f.line})"


def _with_mode(mode: str, fn):
    torch.cuda.set_sync_debug_mode(mode)
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_model(name: str, x: torch.Tensor, device: str) -> dict:
    out: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        model, data, extra = _build(name, x, device)
        out["plain"] = {"ok": True, "loss": _one_step(model, data, extra, device)}
    except Exception as e:  # noqa: BLE001 - reported per model
        out["plain"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:600], "where": _where(e.__traceback__)}
        out["seconds"] = time.perf_counter() - t0
        return out
    if device != "cuda":
        out["sync_error"] = out["sync_warn"] = {"skipped": "sync debug mode needs CUDA"}
        out["seconds"] = time.perf_counter() - t0
        return out
    try:
        _with_mode("error", lambda: _one_step(*_build(name, x, device), device))
        out["sync_error"] = {"ok": True}
    except Exception as e:  # noqa: BLE001
        out["sync_error"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "where": _where(e.__traceback__)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _with_mode("warn", lambda: _one_step(*_build(name, x, device), device))
        except Exception as e:  # noqa: BLE001
            out["sync_warn_error"] = f"{type(e).__name__}: {e}"[:300]
    syncs = collections.Counter(f"{w.filename.split('site-packages/')[-1]}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message))
    out["sync_warn"] = {"count": sum(syncs.values()), "top": syncs.most_common(8)}
    out["seconds"] = time.perf_counter() - t0
    return out


def _names(only: str | None) -> list[str]:
    missing = sorted(n for n in M.MODELS if COVERS.get(n, n) not in FACTORIES)
    names = sorted(FACTORIES) + [n for n in missing]  # a new model without a factory is reported as failed
    if only:
        names = [n for n in names if n in only.split(",")]
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x = torch.rand(args.batch, *SHAPE).to(args.device)
    results = []
    for name in _names(args.only):
        if name not in FACTORIES:
            r = {"model": name, "plain": {"ok": False, "error": f"no factory for model {name!r} in gpu_zoo_step.py"}}
        else:
            r = check_model(name, x, args.device)
        results.append(r)
        se = r.get("sync_error")
        sync = ("not run" if se is None else "skipped" if "skipped" in se else "no sync" if se["ok"]
                else f"SYNC at {se['where']}")
        nw = r.get("sync_warn", {}).get("count", "-")
        plain = "ok" if r["plain"]["ok"] else f"FAIL {r['plain']['error']}"
        print(f"[zoo] {name:14s} step {plain:10s} | sync-debug error mode: {sync} | syncs counted: {nw}", flush=True)
    doc = {"device": args.device, "torch": torch.__version__, "results": results,
           "passed_plain": sum(r["plain"]["ok"] for r in results),
           "passed_sync_free": sum(bool(r.get("sync_error", {}).get("ok")) for r in results), "total": len(results)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    print(f"[zoo] plain steps ok {doc['passed_plain']}/{doc['total']}; sync-free {doc['passed_sync_free']}/"
          f"{doc['total']} ({args.device})", flush=True)
    return 0 if doc["passed_plain"] == doc["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
