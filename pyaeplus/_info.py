"""``pyaeplus.build_config()``: what was compiled, what can run here, and the versions involved.

Above ``_ext`` (what was built) and ``backends`` (what can run), so that ``_ext`` stays a leaf.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys

import torch

from . import _ext, backends
from ._version import __version__


def _version(mod: str) -> str | None:
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return None


def build_config() -> dict:
    """What was compiled, what can run here, and the versions involved.

    Returns:
        dict: versions (``pyaeplus``, ``python``, ``torch``, ``triton``, ``numpy``, ``faiss``), the
        compiled modules' own ``build_config()`` (``cpu_extension``, ``cuda_extension``; ``{"error": ...}``
        when one is not built), ``gpu_present``/``gpus``, ``backends_available`` and ``backend`` in force.
    """
    c, cu = _ext.cpu_ext(), _ext.cuda_ext()
    cfg: dict = {
        "pyaeplus": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton") if _ext.triton_available() else None,
        "numpy": _version("numpy"),
        "faiss": _version("faiss") if importlib.util.find_spec("faiss") else None,
        "cpu_extension": c.build_config() if c is not None else {"error": _ext.import_error("_C")},
        "cuda_extension": cu.build_config() if cu is not None else {"error": _ext.import_error("_cuda")},
    }
    if cu is not None:
        n, err = cu.device_count()
        cfg["cuda_extension"]["devices_seen"] = n
        if err:
            cfg["cuda_extension"]["device_error"] = err
    gpu = torch.cuda.is_available()
    cfg["gpu_present"] = gpu
    cfg["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if gpu else []
    cfg["backends_available"] = backends.available()
    cfg["backend"] = backends.get()
    cfg["python_executable"] = sys.executable
    return cfg


def describe(cfg: dict) -> list[str]:
    """``build_config()`` as the lines ``pyaeplus info`` prints."""
    c, cu = cfg["cpu_extension"], cfg["cuda_extension"]
    lines = [f"pyaeplus {cfg['pyaeplus']}  (python {cfg['python']}, torch {cfg['torch']}, "
             f"triton {cfg['triton'] or '-'}, numpy {cfg['numpy']}, faiss {cfg['faiss'] or '-'})"]
    if "error" in c:
        lines.append(f"  CPU extension : NOT BUILT ({c['error']})")
    else:
        omp = f"on, {c['omp_max_threads']} threads" if c["openmp"] else "off"
        lines.append(f"  CPU extension : built ({c['compiler']}, OpenMP {omp}); ops: {', '.join(c['ops']) or '-'}")
    if "error" in cu:
        lines.append(f"  CUDA extension: not built ({cu['error']})")
    else:
        dev = f"{cu.get('devices_seen', 0)} device(s) seen"
        if cu.get("device_error"):
            dev += f": {cu['device_error']}"
        lines.append(f"  CUDA extension: built (CUDA {cu['cuda_version']}, sm {cu['architectures']}, {dev}); "
                     f"ops: {', '.join(cu['ops']) or '-'}")
    gpus = ", ".join(cfg["gpus"]) or "none"
    lines.append(f"  GPU present   : {cfg['gpu_present']} ({gpus}; torch CUDA {cfg['torch_cuda'] or '-'})")
    avail = ", ".join(k for k, v in cfg["backends_available"].items() if v)
    lines.append(f"  backends      : in force '{cfg['backend']}', can run here: {avail}")
    return lines
