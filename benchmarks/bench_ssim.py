"""Benchmark: SSIM as a training loss, pyaeplus against the libraries people use.

Every provider computes a scalar mean SSIM of images in [0, 1] (data_range=1, 11x11 Gaussian,
sigma 1.5) and, for "backward"/"full", its gradient w.r.t. the reconstruction X (the target Y
does not require grad, the autoencoder setting).

* ``pytorch_msssim`` (anchor): ``pytorch_msssim.ssim`` (valid padding);
* ``piq``: ``piq.ssim`` (valid) when importable (it needs torchvision);
* ``kornia``: ``kornia.metrics.ssim(...).mean()`` (reflect padding);
* ``torchmetrics``: ``structural_similarity_index_measure`` (reflect);
* ``fused_ssim``: ``fused_ssim.fused_ssim`` (zero "same" padding; CUDA only) when importable;
* ``pyaeplus[<backend>]``: each backend that can run here, valid padding (the anchor's
  numbers), with ``config.check_finite`` off (throughput setting), plus ``checks on``, and the
  same op with ``padding="reflect"`` (kornia/torchmetrics' numbers) and ``"same"`` on a GPU
  (fused-ssim's numbers): the padding mode hardly changes the cost.

Shapes: 8x3x256x256, 32x1x28x28 (MNIST-like batches) and, on a GPU (or on the CPU with
``--big``), 5x3x1080x1920 (the size fused-ssim publishes). Peak memory from the harness's
separate memory run. ``--quick``: small shapes, a smoke run. ``--volumes``: only 3-D SSIM of
2x1x64x128x128 and 4x1x32x64x64 volumes against pytorch_msssim (``results/ssim_3d-*``);
``--finite-check``: only the cost of ``pyaeplus.config.check_finite`` (``results/ssim_finite_check-*``).

Targets (issue 3): CPU, 2 cores, fp32, 8x3x256x256, forward+backward ("full") >= 5x
pytorch_msssim; forward+backward allocates at most 1.2x the bytes of inputs and gradients
beyond what autograd keeps.
"""

from __future__ import annotations

import importlib

import torch

import harness

import pyaeplus
from pyaeplus import backends, config


def _try(mod: str):
    try:
        return importlib.import_module(mod), ""
    except Exception as e:  # noqa: BLE001 - any import failure means "not available here"
        return None, f"{type(e).__name__}: {e}"


def _pyaeplus_backends(device: str) -> list[str]:
    avail = backends.available()
    if device == "cpu":
        return ["cpu"] if avail["cpu"] else ["torch"]
    return [b for b in ("triton", "cuda") if avail[b]]


def run_shape(r: harness.Runner, N: int, C: int, H: int, W: int, dtype: torch.dtype, libs: dict) -> None:
    dev = r.device
    cfg = {"N": N, "C": C, "H": H, "W": W, "dtype": str(dtype).replace("torch.", "")}
    torch.manual_seed(0)
    y = torch.rand(N, C, H, W, device=dev, dtype=dtype)
    x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)

    def add3(provider: str, loss_fn, *, backend: str | None = None, checks: bool = False, anchor: bool = False):
        def ctx_call(fn):
            def run():
                with config.checks(checks):
                    if backend is None:
                        return fn()
                    with backends.use(backend):
                        return fn()
            return run

        def fwd():
            with torch.no_grad():
                return loss_fn(x, y)

        def full():
            x.grad = None
            loss_fn(x, y).backward()

        r.add(provider, cfg, "forward", ctx_call(fwd), anchor=anchor)
        r.add(provider, cfg, "backward", harness.backward_only(ctx_call(lambda: loss_fn(x, y))), anchor=anchor)
        r.add(provider, cfg, "full", ctx_call(full), anchor=anchor)

    pm = libs["pytorch_msssim"]
    if pm is not None:
        add3("pytorch_msssim", lambda a, b: pm.ssim(a, b, data_range=1.0), anchor=True)
    if libs["piq"] is not None:
        add3("piq", lambda a, b: libs["piq"].ssim(a, b, data_range=1.0))
    if libs["kornia"] is not None:
        add3("kornia (reflect)", lambda a, b: libs["kornia"].metrics.ssim(a, b, 11).mean())
    if libs["torchmetrics"] is not None:
        tm = libs["torchmetrics"]
        add3("torchmetrics (reflect)", lambda a, b: tm(a, b, data_range=1.0))
    if libs["fused_ssim"] is not None and dev == "cuda":
        fs = libs["fused_ssim"].fused_ssim
        add3("fused_ssim (same)", lambda a, b: fs(a, b))
    for b in _pyaeplus_backends(dev):
        add3(f"pyaeplus[{b}]", lambda a, t: pyaeplus.ssim(a, t, data_range=1.0), backend=b)
        add3(f"pyaeplus[{b}] checks on", lambda a, t: pyaeplus.ssim(a, t, data_range=1.0), backend=b, checks=True)
        add3(f"pyaeplus[{b}] (reflect)", lambda a, t: pyaeplus.ssim(a, t, data_range=1.0, padding="reflect"),
             backend=b)
        if dev == "cuda":
            add3(f"pyaeplus[{b}] (same)", lambda a, t: pyaeplus.ssim(a, t, data_range=1.0, padding="same"), backend=b)
        add3(f"pyaeplus[{b}] L1+SSIM", lambda a, t: pyaeplus.l1_ssim_loss(a, t), backend=b)


def sweep_rows(r: harness.Runner, main_s: int, sizes: list[int], N: int, C: int, libs: dict) -> None:
    """Time against the image side S (N x C x S x S, fp32): the pytorch_msssim anchor and the main
    pyaeplus backend, mode "full"; the main-size point comes from the main rows."""
    pm = libs["pytorch_msssim"]
    b = _pyaeplus_backends(r.device)[0]
    for S in harness.sweep_points(main_s, sizes):
        cfg = {"N": N, "C": C, "H": S, "W": S, "dtype": "float32", "sweep": "H,W"}
        torch.manual_seed(0)
        y = torch.rand(N, C, S, S, device=r.device)
        x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)
        reps = 5 if S >= 512 else None

        def full_pm():
            x.grad = None
            pm.ssim(x, y, data_range=1.0).backward()

        def full_ours():
            x.grad = None
            with config.checks(False), backends.use(b):
                pyaeplus.ssim(x, y, data_range=1.0).backward()

        if pm is not None:
            r.add("pytorch_msssim", cfg, "full", full_pm, anchor=True, repeats=reps)
        r.add(f"pyaeplus[{b}]", cfg, "full", full_ours, repeats=reps)


def finite_check_rows(r: harness.Runner) -> None:
    """``--finite-check``: SSIM forward + backward with pyaeplus.config.check_finite off / "auto" / True."""
    shapes = [(2, 3, 64, 64)] if r.quick else [(8, 3, 256, 256), (32, 1, 28, 28)]
    for N, C, H, W in shapes:
        torch.manual_seed(0)
        y = torch.rand(N, C, H, W, device=r.device)
        x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)

        def step():
            x.grad = None
            pyaeplus.ssim(x, y, data_range=1.0).backward()
        r.add_finite_check({"N": N, "C": C, "H": H, "W": W, "dtype": "float32"}, step)


def volume_rows(r: harness.Runner, libs: dict) -> None:
    """``--volumes``: 3-D SSIM of (N, 1, D, H, W) volumes (the pure-PyTorch general path: one
    grouped conv3d per axis for the five statistics) against pytorch_msssim's 5-D SSIM, timed in
    interleaved rounds."""
    pm = libs["pytorch_msssim"]
    shapes = [(1, 1, 16, 32, 32)] if r.quick else [(2, 1, 64, 128, 128), (4, 1, 32, 64, 64)]
    for N, C, D, H, W in shapes:
        cfg = {"N": N, "C": C, "D": D, "H": H, "W": W, "dtype": "float32"}
        torch.manual_seed(0)
        y = torch.rand(N, C, D, H, W, device=r.device)
        x = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)
        providers = {"pytorch_msssim": lambda a, b: pm.ssim(a, b, data_range=1.0)} if pm else {}
        providers.update({"pyaeplus[general]": lambda a, b: pyaeplus.ssim(a, b, data_range=1.0),
                          "pyaeplus[general] (reflect)": lambda a, b: pyaeplus.ssim(a, b, data_range=1.0,
                                                                                    padding="reflect")})

        def fwd(fn):
            def run():
                with torch.no_grad():
                    return fn(x, y)
            return run

        def full(fn):
            def run():
                x.grad = None
                fn(x, y).backward()
            return run
        # interleaved rounds: the providers share whatever load the machine has
        r.add_interleaved(cfg, "forward", {k: fwd(f) for k, f in providers.items()}, memory=True)
        r.add_interleaved(cfg, "full", {k: full(f) for k, f in providers.items()}, memory=True)


def _libs(r: harness.Runner) -> dict:
    libs = {}
    for name, mod in [("pytorch_msssim", "pytorch_msssim"), ("piq", "piq"), ("kornia", "kornia"),
                      ("fused_ssim", "fused_ssim")]:
        libs[name], why = _try(mod)
        if libs[name] is None:
            r.skip(name, f"not importable ({why})")
    tmf, why = _try("torchmetrics.functional.image")
    libs["torchmetrics"] = getattr(tmf, "structural_similarity_index_measure", None) if tmf else None
    if libs["torchmetrics"] is None:
        r.skip("torchmetrics", f"not importable ({why})")
    return libs


def main() -> None:
    r = harness.Runner("ssim", description=__doc__.split("\n\n")[0])
    if r.finite_check:
        finite_check_rows(r)
        r.finish()
        return
    if "--volumes" in r.extra:
        r.name = "ssim_3d"
        volume_rows(r, _libs(r))
        r.finish()
        return
    big = "--big" in r.extra
    libs = _libs(r)
    if r.quick:
        shapes = [(2, 3, 64, 64), (8, 1, 28, 28)]
    else:
        shapes = [(8, 3, 256, 256), (32, 1, 28, 28)]
        if r.device == "cuda" or big:
            shapes.append((5, 3, 1080, 1920))
        else:
            r.skip("5x3x1080x1920", "CPU run without --big (minutes per provider)")
    dtypes = [torch.float32] + ([torch.float16, torch.bfloat16] if r.device == "cuda" and not r.quick else [])
    for dtype in dtypes:
        for N, C, H, W in shapes:
            run_shape(r, N, C, H, W, dtype, libs)
    if r.sweep:
        N, C, S, _ = shapes[0]
        sizes = [32, 64, 128] if r.quick else ([32, 64, 128, 256, 512] if r.device == "cpu"
                                               else [32, 64, 128, 256, 512, 1024])
        sweep_rows(r, S, sizes, N, C, libs)
    r.finish()


if __name__ == "__main__":
    main()
