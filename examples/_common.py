"""Shared plumbing for the reproduction scripts in ``examples/``.

Every example is a script with a ``main(argv=None) -> dict`` function: it parses the common
arguments below, runs the experiment, writes its figures and ``<out>/<name>.json`` + ``.md``
(metrics, the published numbers it is compared with, the protocol actually run, device,
versions, wall time) and returns the same dict, so a test can call ``main(["--quick", ...])``
in-process and assert on the metric.

    python examples/ecg5000_dense_ae.py --data ../shared/data            # full run, CPU or GPU
    python examples/ecg5000_dense_ae.py --data ../shared/data --quick    # the reduced CI version
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import platform
import time
from typing import Any

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA = os.environ.get("PYAEPLUS_DATA", str(HERE.parent.parent / "shared" / "data"))
DEFAULT_OUT = HERE / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments every example takes; add experiment-specific ones to the returned parser."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="data root holding mnist/, fashion-mnist/, ecg5000/ (or set PYAEPLUS_DATA)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON/Markdown result and figures")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="reduced schedule (the CI test runs this); the result is tagged quick")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads/--seed and resolve --device ("auto": CUDA when present)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device!r}: no CUDA device is available")
    return dev


def out_dir(args: argparse.Namespace) -> pathlib.Path:
    p = pathlib.Path(args.out)
    p.mkdir(parents=True, exist_ok=True)
    return p


def environment(device: torch.device) -> dict[str, Any]:
    env = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["cores"] = os.cpu_count()
    try:
        import pyaeplus
        env["pyaeplus"] = pyaeplus.__version__
    except Exception:  # pragma: no cover - examples run from a checkout
        pass
    return env


def mean_std(values) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "values": [float(v) for v in a]}


def _md_value(v: Any) -> str:
    if isinstance(v, dict) and "mean" in v and "std" in v:
        return f"{v['mean']:.4f} ± {v['std']:.4f}"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def save(name: str, args: argparse.Namespace, device: torch.device, t0: float, *,
         results: dict[str, Any], published: dict[str, Any] | None = None, protocol: str = "",
         differences: str = "", tables: list[str] | None = None, figures: list[str] | None = None) -> dict:
    """Write ``<out>/<name>[-quick].json`` and ``.md``; return the dict written.

    Args:
        results: metric name -> number or ``mean_std`` dict (what we measured).
        published: metric name -> the published number it is compared with (same keys).
        protocol: what was run (schedule, split, model), in one paragraph.
        differences: how this differs from the published protocol, and why.
        tables: extra Markdown tables (already formatted) appended to the .md.
        figures: file names (relative to --out) of the figures written.
    """
    stem = f"{name}-quick" if args.quick else name
    doc = {"name": name, "quick": bool(args.quick), "results": results, "published": published or {},
           "protocol": protocol, "differences": differences, "figures": figures or [],
           "wall_s": round(time.time() - t0, 1), "env": environment(device),
           "args": {k: v for k, v in vars(args).items() if k not in ("progress",)}}
    out = out_dir(args)
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, out / f"{stem}.json")
    lines = [f"# {name}{' (quick)' if args.quick else ''}", "",
             f"{doc['env']['date']} · device {doc['env']['device']} · torch {doc['env']['torch']} · "
             f"wall {doc['wall_s']} s", "", "| metric | ours | published |", "|---|---|---|"]
    for k, v in results.items():
        pub = (published or {}).get(k, "")
        lines.append(f"| {k} | {_md_value(v)} | {_md_value(pub) if pub != '' else ''} |")
    lines += ["", f"**Protocol.** {protocol}", ""]
    if differences:
        lines += [f"**Differences from the published protocol.** {differences}", ""]
    for t in tables or []:
        lines += [t, ""]
    for f in figures or []:
        lines += [f"![{f}]({f})", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    return doc
