"""Shared benchmark harness: one process measures every provider of an op side by side.

Each measurement: warm-up, then the median (and 20th/80th percentiles) of repeated timings;
CUDA timings with events after a synchronize, CPU timings with perf_counter. Peak memory is
measured in a separate run (CUDA: the caching allocator's peak; CPU: the torch profiler's
allocation events replayed in order), so it does not perturb the timings. Results are written
as JSON (rows with the device, versions and date) and rendered as Markdown, with the speed-up
of each provider over the anchor of the same config and mode, and achieved bandwidth when the
script states the minimum bytes an op must move.

    import harness
    r = harness.Runner("topk", description="...")
    r.add(provider="pyaeplus[cpu]", config={...}, mode="full", fn=step, anchor=False, bytes_moved=None)
    r.finish()
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODES = ("forward", "backward", "full")


class BackwardOnly:
    """Time only the backward: ``make()`` (untimed) builds the outputs, then the timed part
    runs ``torch.autograd.backward(outputs, grads)``. ``make`` returns a tensor or a tuple of
    tensors; ``grad`` (optional) gives the gradient to feed (default: ones)."""

    def __init__(self, make: Callable[[], Any], grad: Callable[[Any], Any] | None = None):
        self.make = make
        self.grad = grad

    def prepare(self):
        out = self.make()
        outs = out if isinstance(out, (tuple, list)) else (out,)
        outs = tuple(o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)
        grads = self.grad(out) if self.grad is not None else tuple(torch.ones_like(o) for o in outs)
        if isinstance(grads, torch.Tensor):
            grads = (grads,)
        return lambda: torch.autograd.backward(outs, grads)


def backward_only(make: Callable[[], Any], grad: Callable[[Any], Any] | None = None) -> BackwardOnly:
    return BackwardOnly(make, grad)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> dict:
    info: dict[str, Any] = {"device": device}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gb=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}")
        try:
            import subprocess

            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:
            info["driver"] = None
    else:
        info.update(name=_cpu_name(), cores=os.cpu_count(), torch_threads=torch.get_num_threads())
    return info


def device_slug(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0).lower()
        return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")
    return f"cpu-{os.cpu_count()}c"


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("pyaeplus", "triton", "numpy", "faiss", "pytorch_msssim", "kornia", "torchmetrics", "piq",
                "fused_ssim", "sklearn", "pynndescent", "pyod"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    return v


def copy_bandwidth(device: str, nbytes: int | None = None, repeats: int = 20) -> float:
    """Measured device copy bandwidth in GB/s, counting bytes read + written (a device-to-device
    ``copy_`` of a large buffer): the ceiling that "fraction of bandwidth" figures refer to."""
    if nbytes is None:
        nbytes = (1 << 30) if device.startswith("cuda") else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), device, warmup=3, repeats=repeats)
    del src, dst
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9


def _stats(times: list[float]) -> dict:
    times = sorted(times)
    q = lambda p: times[min(len(times) - 1, max(0, int(round(p * (len(times) - 1)))))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p20_ms": q(0.2), "p80_ms": q(0.8), "n": len(times)}


def _time(fn: Callable[[], Any] | BackwardOnly, device: str, *, warmup: int, repeats: int,
          min_time_s: float = 0.0) -> dict:
    """Median of `repeats` timed calls after `warmup` calls (more repeats if they are very short)."""
    cuda = device.startswith("cuda")
    prep = isinstance(fn, BackwardOnly)
    for _ in range(warmup):
        (fn.prepare() if prep else fn)()
        if prep:
            pass
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all < min_time_s and len(times) < 10 * repeats):
        call = fn.prepare() if prep else fn
        if cuda:
            _sync(device)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            call()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    return _stats(times)


def interleaved(fns: dict[str, Callable[[], Any]], device: str, *, warmup: int, repeats: int,
                min_time_s: float = 0.0) -> dict[str, dict]:
    """Time several variants of one op in rounds, each round calling every variant once (order
    reversed every other round, so drift hits all alike). Returns per variant the timing stats
    plus ``paired`` = the median over rounds of (its time / the first variant's time in the same
    round): on a loaded machine the paired ratio is steadier than a ratio of medians."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    start_all, rounds = time.perf_counter(), 0
    while rounds < repeats or (time.perf_counter() - start_all < min_time_s and rounds < 10 * repeats):
        for n in (names if rounds % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    base = times[names[0]]
    return {n: {**_stats(t), "paired": statistics.median(a / b for a, b in zip(t, base))} for n, t in times.items()}


def peak_memory_bytes(fn: Callable[[], Any] | BackwardOnly, device: str) -> int | None:
    """Peak bytes allocated by one call above what was live before it."""
    gc.collect()
    prep = isinstance(fn, BackwardOnly)
    call = fn.prepare() if prep else fn
    if device.startswith("cuda"):
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        _sync(device)
        return torch.cuda.max_memory_allocated() - base
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    # Each event's self memory is what it allocated minus what it freed outside its children
    # ("[memory]" events are frees/allocations outside any op); replayed in start order they
    # give the live-bytes curve at op granularity.
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


class Runner:
    """Collects rows for one op (one benchmark script) and writes them at ``finish()``."""

    def __init__(self, name: str, description: str = "", argv: list[str] | None = None):
        ap = argparse.ArgumentParser(description=description or f"benchmark: {name}")
        ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (a smoke run)")
        ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
        ap.add_argument("--warmup", type=int, default=None)
        ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
        ap.add_argument("--out", default=str(RESULTS), help="results folder")
        ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
        ap.add_argument("--only", default=None, help="comma-separated provider substrings to run")
        ap.add_argument("--no-sweep", action="store_true", help="skip the time-against-size sweep rows")
        ap.add_argument("--finite-check", action="store_true",
                        help="only the cost of pyaeplus.config.check_finite (off / auto / True, interleaved in one "
                             "process); writes <name>_finite_check-<device>.json")
        self.args, self.extra = ap.parse_known_args(argv)
        self.finite_check = self.args.finite_check
        name = f"{name}_finite_check" if self.finite_check else name
        self.name = name
        self.description = description
        self.quick = self.args.quick
        dev = self.args.device
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        self.repeats = self.args.repeats or (3 if self.quick else 15)
        self.warmup = self.args.warmup if self.args.warmup is not None else (1 if self.quick else 3)
        self.rows: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self.env = {"device": device_info(self.device), "versions": versions(), "date": self.started.isoformat(),
                    "quick": self.quick, "argv": sys.argv[1:]}
        try:
            import pyaeplus

            self.env["pyaeplus_backends"] = pyaeplus.backends.available()
            self.env["check_finite"] = pyaeplus.config.check_finite
        except Exception:
            pass
        self._bw: float | None = None
        # Size sweeps (rows whose config carries "sweep": "<dim>") are on unless --no-sweep.
        self.sweep = not self.args.no_sweep
        # More top-level keys of the JSON document, and Markdown sections {title: lines} rendered
        # before the tables (e.g. a verdict computed from the rows).
        self.doc_extra: dict[str, Any] = {}
        self.sections: dict[str, list[str]] = {}

    def own_args(self, ap: argparse.ArgumentParser) -> argparse.Namespace:
        """A script's own options, parsed from what the harness left over, plus ``--threads N`` (torch
        intra-op threads, recorded in the results); unknown arguments end the script."""
        ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
        own, rest = ap.parse_known_args(self.extra)
        if rest:
            raise SystemExit(f"bench_{self.name}.py: unknown arguments {rest}")
        if own.threads:
            torch.set_num_threads(own.threads)
            self.env["device"]["torch_threads"] = torch.get_num_threads()
        return own

    # -- measurement -------------------------------------------------------------------------
    def wants(self, provider: str) -> bool:
        if not self.args.only:
            return True
        return any(s and s in provider for s in self.args.only.split(","))

    def skip(self, provider: str, reason: str) -> None:
        self.skipped[provider] = reason
        print(f"[{self.name}] skip {provider}: {reason}", flush=True)

    def copy_bandwidth_gbs(self, nbytes: int | None = None) -> float:
        """The device's copy bandwidth, measured once (``nbytes``: buffer size, default copy_bandwidth's)."""
        if self._bw is None:
            self._bw = copy_bandwidth(self.device, nbytes)
            self.env["copy_bandwidth_gbs"] = round(self._bw, 1)
        return self._bw

    def add(self, provider: str, config: dict, mode: str, fn: Callable[[], Any] | BackwardOnly, *,
            anchor: bool = False, bytes_moved: int | None = None, note: str | None = None,
            repeats: int | None = None) -> dict | None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not self.wants(provider):
            return None
        try:
            # `repeats` (sweep rows): fewer timed calls for big sizes, still at least 0.2 s of samples
            t = _time(fn, self.device, warmup=min(self.warmup, 1) if repeats else self.warmup,
                      repeats=repeats or self.repeats,
                      min_time_s=0.05 if self.quick else (0.2 if repeats else 0.5))
            mem = None if self.args.no_memory else peak_memory_bytes(fn, self.device)
        except Exception as e:  # a provider that fails on a shape is reported, not fatal
            self.skip(f"{provider} {config} {mode}", f"{type(e).__name__}: {e}")
            return None
        row = {"provider": provider, "config": config, "mode": mode, "anchor": anchor, **t,
               "peak_mem_bytes": mem, "bytes_moved": bytes_moved, "note": note}
        if bytes_moved:
            row["gbs"] = bytes_moved / (t["median_ms"] * 1e-3) / 1e9
            row["bw_fraction"] = row["gbs"] / self.copy_bandwidth_gbs()
        self.rows.append(row)
        mem_s = f"{mem / 2**20:8.1f} MiB" if mem is not None else "       - "
        print(f"[{self.name}] {mode:8s} {provider:34s} {_cfg(config):40s} {t['median_ms']:10.3f} ms {mem_s}",
              flush=True)
        gc.collect()
        return row

    def add_interleaved(self, config: dict, mode: str, fns: dict[str, Any], *, note: str | None = None,
                        memory: bool = False, repeats: int | None = None, warmup: int | None = None,
                        anchor: str | None = None) -> list[dict]:
        """Rows for the providers of one config timed by :func:`interleaved` (alternating rounds,
        so that the drift of a shared machine hits them alike). ``fns``: provider -> fn, the first
        one the anchor, or provider -> (fn, is_anchor); ``anchor`` names the anchor instead (it is
        timed first). Each row's ``paired`` is its per-round time ratio to the first provider
        (median over rounds). ``memory``: also each provider's peak memory, in a separate run
        (unless ``--no-memory``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if anchor is not None:
            if anchor not in fns:
                raise ValueError(f"anchor {anchor!r} is not one of the providers {list(fns)}")
            fns = {anchor: (fns[anchor], True), **{k: (f, False) for k, f in fns.items() if k != anchor}}
        fns = {k: f for k, f in fns.items() if self.wants(k)}
        calls = {k: (f[0] if isinstance(f, tuple) else f) for k, f in fns.items()}
        anchor = {k: (f[1] if isinstance(f, tuple) else i == 0) for i, (k, f) in enumerate(fns.items())}
        t = interleaved(calls, self.device, warmup=self.warmup if warmup is None else warmup,
                        repeats=repeats or self.repeats, min_time_s=0.05 if self.quick else 1.0)
        rows = []
        for provider, st in t.items():
            mem = peak_memory_bytes(calls[provider], self.device) if memory and not self.args.no_memory else None
            row = {"provider": provider, "config": config, "mode": mode, "anchor": anchor[provider], **st,
                   "peak_mem_bytes": mem, "bytes_moved": None,
                   "note": (note or "interleaved") + f"; paired ratio {st['paired']:.3f}"}
            self.rows.append(row)
            rows.append(row)
            print(f"[{self.name}] {mode:8s} {provider:34s} {_cfg(config):40s} {st['median_ms']:10.3f} ms "
                  f"paired x{st['paired']:.3f}", flush=True)
            gc.collect()
        return rows

    def add_finite_check(self, config: dict, step: Callable[[], Any]) -> list[dict]:
        """The cost of ``pyaeplus.config.check_finite``: ``step`` (one forward + backward) with the
        checks off (anchor), ``"auto"`` (the default) and ``True`` (the explicit check), interleaved.
        Issue 12's goal: the default within 1.05x of off."""
        import pyaeplus

        def under(mode):
            def run():
                with pyaeplus.config.checks(mode):
                    step()
            return run

        return self.add_interleaved(config, "full", {"check_finite=False": under(False),
                                                     "check_finite='auto' (default)": under("auto"),
                                                     "check_finite=True": under(True)})

    # -- output ------------------------------------------------------------------------------
    def _ratios(self) -> None:
        anchors: dict[tuple, list[dict]] = {}
        for r in self.rows:
            if r["anchor"]:
                anchors.setdefault((_cfg(r["config"]), r["mode"]), []).append(r)
        for r in self.rows:
            for a in anchors.get((_cfg(r["config"]), r["mode"]), []):
                r.setdefault("speedup", {})[a["provider"]] = a["median_ms"] / r["median_ms"]

    def finish(self) -> pathlib.Path:
        self._ratios()
        out = pathlib.Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        slug = device_slug(self.device) + ("-quick" if self.quick else "")
        doc = {"name": self.name, "description": self.description, "env": self.env, "rows": self.rows,
               "skipped": self.skipped, **self.doc_extra}
        if self.sections:
            doc["sections"] = self.sections
        jpath = out / f"{self.name}-{slug}.json"
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, jpath)
        mpath = out / f"{self.name}-{slug}.md"
        mpath.write_text(render_markdown(doc))
        print(f"[{self.name}] wrote {jpath} and {mpath}", flush=True)
        return jpath


def sweep_points(main: int, sizes: list[int]) -> list[int]:
    """The sweep sizes other than the main config's (that point is already measured by the main rows,
    which the report joins to the sweep: one measurement per config)."""
    return [s for s in sizes if s != main]


def _cfg(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def render_markdown(doc: dict) -> str:
    env = doc["env"]
    d = env["device"]
    v = env["versions"]
    lines = [f"# {doc['name']}", ""]
    if doc.get("description"):
        lines += [doc["description"], ""]
    dev = d.get("name", d.get("device"))
    extra = f", driver {d['driver']}" if d.get("driver") else (f", {d.get('cores')} cores" if d.get("cores") else "")
    if d.get("torch_threads") and not d.get("driver"):
        extra += f", {d['torch_threads']} torch thread{'s' if d['torch_threads'] > 1 else ''}"
    lines.append(f"Device: **{dev}**{extra}. Date: {env['date'][:19]}Z. "
                 + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    if env.get("copy_bandwidth_gbs"):
        lines.append(f"Measured copy bandwidth: {env['copy_bandwidth_gbs']} GB/s (read + write).")
    if "check_finite" in env:
        mode = env["check_finite"]
        lines.append(f"pyaeplus.config.check_finite: {mode!r}." if isinstance(mode, str)
                     else f"pyaeplus input finite-checks: {'on' if mode else 'off'}.")
    if env.get("quick"):
        lines.append("**Quick smoke run: small shapes, few repeats; not a measurement.**")
    lines.append("")
    for title, body in doc.get("sections", {}).items():
        lines += [f"## {title}", "", *body, ""]
    groups: dict[tuple, list[dict]] = {}
    for r in doc["rows"]:
        groups.setdefault((_cfg(r["config"]), r["mode"]), []).append(r)
    for (cfg, mode), rows in groups.items():
        anchors = [r["provider"] for r in rows if r["anchor"]]
        lines.append(f"## {mode}: {cfg}")
        lines.append("")
        head = "| provider | median ms | p20–p80 ms | peak MiB |"
        sep = "|---|---:|---:|---:|"
        paired = any("paired" in r for r in rows)
        if paired:
            head += " paired time ratio |"
            sep += "---:|"
        for a in anchors:
            head += f" speed-up vs {a} |"
            sep += "---:|"
        if any(r.get("gbs") for r in rows):
            head += " GB/s | of copy BW |"
            sep += "---:|---:|"
        lines += [head, sep]
        for r in sorted(rows, key=lambda r: r["median_ms"]):
            mem = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
            line = (f"| {r['provider']}{' (anchor)' if r['anchor'] else ''} | {r['median_ms']:.3f} | "
                    f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f} | {mem} |")
            if paired:
                line += f" {r['paired']:.3f}x |" if "paired" in r else " - |"
            for a in anchors:
                s = r.get("speedup", {}).get(a)
                line += f" {s:.2f}x |" if s is not None and math.isfinite(s) else " - |"
            if any(x.get("gbs") for x in rows):
                line += (f" {r['gbs']:.1f} | {100 * r['bw_fraction']:.0f} % |" if r.get("gbs") else " - | - |")
            lines.append(line)
        lines.append("")
    if doc.get("skipped"):
        lines.append("Skipped:")
        lines += [f"- {k}: {val}" for k, val in doc["skipped"].items()]
        lines.append("")
    return "\n".join(lines)
