"""Run every kernel benchmark and fold the results into one report per device.

    python benchmarks/run_all.py [--quick] [--only ssim,topk] [--no-sweep] [--out DIR] [harness args...]
    python benchmarks/run_all.py --report-only [--results DIR] [--report PATH]

Each ``bench_<op>.py`` runs in its own process (all of its providers side by side in that one
process) and writes ``<results>/<op>-<device>.json`` + ``.md``. Then, from every per-op result in
the results folder (quick runs and real runs never mixed):

* ``<results>/<device>.json``: the per-op documents of one device folded together,
  ``{"device": ..., "generated": ..., "ops": {op: <per-op doc>}}``;
* ``<results>/plots/<op>-<device>.png``: per size sweep (rows whose config has ``"sweep"``), median
  time against size (log-log, p20-p80 band), one line per provider, and the speed-up over the anchor;
* ``REPORT.md`` (``REPORT-quick.md`` for ``--quick``): a summary table (per op and device: the main
  config, the main pyaeplus provider's median time, speed-up over each anchor, fraction of the
  measured copy bandwidth, peak memory), then per op the plot and the full per-provider tables.

A sweep row's ``config["sweep"]`` names the keys that vary along the sweep, comma-separated; the
first is the x axis. The main-size point of a sweep is the main config's row (measured once), joined
to the sweep when its other keys match.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402


def run_benchmarks(names: list[str], passthrough: list[str]) -> list[tuple[str, int, float]]:
    out = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        t0 = time.time()
        print(f"=== {script.name} {' '.join(passthrough)}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *passthrough], cwd=str(HERE))
        out.append((name, rc, time.time() - t0))
    return out


# -- reading ---------------------------------------------------------------------------------
def load_results(results: pathlib.Path, quick: bool) -> dict[str, dict[str, dict]]:
    """{device tag: {op: per-op doc}} from ``<op>-<tag>.json`` files (combined files skipped)."""
    out: dict[str, dict[str, dict]] = {}
    for p in sorted(results.glob("*.json")):
        if p.stem.endswith("-quick") != quick:
            continue
        try:
            doc = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(doc, dict) or "rows" not in doc or "name" not in doc:
            continue  # a combined <tag>.json or something else
        prefix = doc["name"] + "-"
        if not p.stem.startswith(prefix):
            continue
        out.setdefault(p.stem[len(prefix):], {})[doc["name"]] = doc
    return out


def _dims(row: dict) -> list[str]:
    s = row["config"].get("sweep")
    return [d for d in str(s).split(",") if d] if s else []


def _fixed(config: dict, dims: list[str]) -> tuple:
    return tuple((k, v) for k, v in config.items() if k not in dims and k != "sweep")


def sweep_groups(doc: dict) -> list[dict]:
    """Each sweep: {"dims", "mode", "fixed", "anchors", "lines": {provider: [(x, row), ...] sorted}}."""
    groups: dict[tuple, dict] = {}
    for r in doc["rows"]:
        dims = _dims(r)
        if not dims:
            continue
        key = (",".join(dims), r["mode"], _fixed(r["config"], dims))
        g = groups.setdefault(key, {"dims": dims, "mode": r["mode"], "fixed": dict(key[2]), "anchors": [],
                                    "lines": {}})
        g["lines"].setdefault(r["provider"], []).append((r["config"][dims[0]], r))
        if r["anchor"] and r["provider"] not in g["anchors"]:
            g["anchors"].append(r["provider"])
    # the main-size points: non-sweep rows of the same providers and mode whose other keys match
    for (_, mode, fixed), g in groups.items():
        for r in doc["rows"]:
            if _dims(r) or r["mode"] != mode or r["provider"] not in g["lines"]:
                continue
            if _fixed(r["config"], g["dims"]) == fixed and g["dims"][0] in r["config"]:
                xs = [x for x, _ in g["lines"][r["provider"]]]
                if r["config"][g["dims"][0]] not in xs:
                    g["lines"][r["provider"]].append((r["config"][g["dims"][0]], r))
    for g in groups.values():
        for pts in g["lines"].values():
            pts.sort(key=lambda t: t[0])
    return list(groups.values())


def sweep_speedups(g: dict) -> dict[str, dict[str, list[tuple]]]:
    """{anchor: {provider: [(x, anchor median / provider median), ...]}} at the sizes both have."""
    out: dict[str, dict[str, list[tuple]]] = {}
    for a in g["anchors"]:
        base = {x: r["median_ms"] for x, r in g["lines"][a]}
        for prov, pts in g["lines"].items():
            if prov == a:
                continue
            out.setdefault(a, {})[prov] = [(x, base[x] / r["median_ms"]) for x, r in pts
                                           if x in base and r["median_ms"] > 0]
    return out


# -- plots -----------------------------------------------------------------------------------
def plot_op(doc: dict, path: pathlib.Path) -> bool:
    """One figure per op: per sweep, time against size (left) and speed-up over the anchor (right)."""
    groups = sweep_groups(doc)
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for (ax_t, ax_s), g in zip(axes, groups):
        fixed = ", ".join(f"{k}={v}" for k, v in g["fixed"].items())
        for prov, pts in g["lines"].items():
            xs = [x for x, _ in pts]
            med = [r["median_ms"] for _, r in pts]
            lo = [r.get("p20_ms", r["median_ms"]) for _, r in pts]
            hi = [r.get("p80_ms", r["median_ms"]) for _, r in pts]
            style = "--" if prov in g["anchors"] else "-"
            (line,) = ax_t.plot(xs, med, style, marker="o", label=prov + (" (anchor)" if prov in g["anchors"] else ""))
            ax_t.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax_t.set_xscale("log", base=2)
        ax_t.set_yscale("log")
        ax_t.set_xlabel(g["dims"][0])
        ax_t.set_ylabel(f"{g['mode']} median ms (p20-p80 band)")
        ax_t.set_title(f"{doc['name']} {g['mode']}: {fixed}", fontsize=9)
        ax_t.grid(True, which="both", alpha=0.3)
        ax_t.legend(fontsize=8)
        sp = sweep_speedups(g)
        for a, provs in sp.items():
            for prov, pts in provs.items():
                if pts:
                    ax_s.plot([x for x, _ in pts], [s for _, s in pts], marker="o", label=f"{prov} vs {a}")
        ax_s.axhline(1.0, color="gray", linewidth=0.8)
        ax_s.set_xscale("log", base=2)
        ax_s.set_xlabel(g["dims"][0])
        ax_s.set_ylabel("speed-up over anchor (x)")
        ax_s.grid(True, which="both", alpha=0.3)
        if sp:
            ax_s.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- summary ---------------------------------------------------------------------------------
def main_row(doc: dict) -> dict | None:
    """The headline row of an op: the first plain ``pyaeplus[...]`` provider's first config (not a
    sweep), in mode "full" when it was measured, else the first mode measured."""
    rows = [r for r in doc["rows"] if not _dims(r)]
    cands = [r for r in rows if r["provider"].startswith("pyaeplus[") and r["provider"].endswith("]")]
    if not cands:
        return None
    first = cands[0]
    same = [r for r in cands if r["provider"] == first["provider"] and r["config"] == first["config"]]
    return next((r for r in same if r["mode"] == "full"), first)


def _cfg(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def summary_lines(ops: dict[str, dict]) -> list[str]:
    lines = ["| op | main config | mode | provider | median ms | speed-up over anchors | of copy BW | peak MiB |",
             "|---|---|---|---|---:|---|---:|---:|"]
    for op in sorted(ops):
        r = main_row(ops[op])
        if r is None:
            lines.append(f"| {op} | - | - | (no pyaeplus row) | - | - | - | - |")
            continue
        sp = "; ".join(f"{s:.2f}x vs {a}" for a, s in sorted(r.get("speedup", {}).items())
                       if a != r["provider"] and s is not None and math.isfinite(s)) or "-"
        bw = f"{100 * r['bw_fraction']:.0f} %" if r.get("bw_fraction") else "-"
        lines.append(f"| {op} | {_cfg(r['config'])} | {r['mode']} | {r['provider']} | {r['median_ms']:.3f} | {sp} | "
                     f"{bw} | {_mib(r.get('peak_mem_bytes'))} |")
    return lines


def build_report(results: pathlib.Path | str = RESULTS, report: pathlib.Path | str | None = None,
                 quick: bool = False, plots: bool = True) -> pathlib.Path:
    """Write ``<results>/<tag>.json`` per device tag, ``<results>/plots/<op>-<tag>.png`` per op with
    sweeps, and the Markdown report (default ``benchmarks/REPORT.md`` or ``REPORT-quick.md``)."""
    results = pathlib.Path(results)
    report = pathlib.Path(report) if report else HERE / ("REPORT-quick.md" if quick else "REPORT.md")
    by_tag = load_results(results, quick)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat()
    lines = ["# pyaeplus benchmark report" + (" (quick smoke run: not a measurement)" if quick else ""), "",
             f"Generated by `benchmarks/run_all.py` at {now[:19]}Z from `{_rel(results, report.parent)}/*.json`. "
             "Every table compares providers measured in one process on one device; speed-ups are the anchor's "
             "median time over the provider's, for the same config and mode. Bandwidth fractions are against the "
             "copy bandwidth measured in the same process. Plots: median time against size (p20-p80 band) for the "
             "anchor(s) and the main pyaeplus provider, and the speed-up at each size.", ""]
    if not by_tag:
        lines += [f"No {'quick ' if quick else ''}results found in `{results}`.", ""]
    for tag in sorted(by_tag):
        ops = by_tag[tag]
        first = next(iter(ops.values()))
        combined = {"device": tag, "device_info": first["env"].get("device"), "generated": now, "ops": ops}
        jpath = results / f"{tag}.json"
        tmp = jpath.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(combined, indent=1, default=str))
        os.replace(tmp, jpath)
        d = first["env"].get("device", {})
        lines += [f"## Summary: {tag} ({d.get('name', d.get('device', '?'))})", ""]
        lines += summary_lines(ops)
        lines.append("")
    for tag in sorted(by_tag):
        lines += [f"## {tag}", ""]
        for op in sorted(by_tag[tag]):
            doc = by_tag[tag][op]
            lines += [f"### {op} ({tag})", ""]
            png = results / "plots" / f"{op}-{tag}.png"
            if plots and plot_op(doc, png):
                lines += [f"![{op} time against size]({_rel(png, report.parent)})", ""]
            elif plots:
                lines += ["No size-sweep rows in these results: no plot.", ""]
            body = harness.render_markdown(doc).split("\n", 1)[1]  # its "# <op>" title is the heading above
            # demote the per-op headings two levels under the op heading
            lines += [("##" + ln) if ln.startswith("#") else ln for ln in body.splitlines()]
            lines.append("")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    return report


def _rel(path: pathlib.Path, start: pathlib.Path) -> str:
    try:
        return os.path.relpath(path, start).replace(os.sep, "/")
    except ValueError:
        return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma-separated op names (bench_<op>.py)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the JSON/plots/report from results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", "--results", dest="results", default=str(RESULTS),
                    help="results folder: the scripts write there and the report reads from it")
    ap.add_argument("--report", default=None, help="Markdown report path (default benchmarks/REPORT[-quick].md)")
    args, rest = ap.parse_known_args()
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            ap.error(f"--only: no bench_<op>.py for {unknown}; ops: {names}")
        names = [n for n in names if n in wanted]
    rc = 0
    if not args.report_only:
        passthrough = (["--quick"] if args.quick else []) + ["--out", str(pathlib.Path(args.results).resolve())] + rest
        t0 = time.time()
        for name, code, secs in run_benchmarks(names, passthrough):
            print(f"=== bench_{name}.py: exit {code} in {secs:.0f} s", flush=True)
            rc = rc or code
        print(f"=== all benchmarks: {time.time() - t0:.0f} s", flush=True)
    path = build_report(args.results, args.report, quick=args.quick)
    print(f"wrote {path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
