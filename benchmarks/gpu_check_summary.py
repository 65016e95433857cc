"""The verdict of one ``gpu_check.sh quick`` run, read from its work folder: ``summary.json`` and a
short text (printed; gpu_check.sh appends it to ``summary.txt``, the first thing to read).

Reads ``steps.tsv`` (one line per step: name, exit status, seconds, time limit), ``machine.log``,
``info.json``, ``junit-gpu.xml``, ``zoo.json``, ``demo/results.json``, ``sanitize-*.log`` and
``results/headline-*.json``; every part is optional (a stage that did not run says so).

    python benchmarks/gpu_check_summary.py --work /tmp/gpu-check --out $OUT
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import xml.etree.ElementTree as ET


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(work: pathlib.Path) -> list[dict]:
    out = []
    p = work / "steps.tsv"
    for line in p.read_text().splitlines() if p.exists() else []:
        name, rc, secs, limit, *note = line.split("\t")
        out.append({"step": name, "rc": int(rc), "seconds": float(secs), "limit_s": int(limit),
                    "timed_out": int(rc) in (124, 137), "note": note[0] if note else ""})
    return out


def pytest_line(log: pathlib.Path) -> str | None:
    """pytest's last "N passed, M failed ..." line (what is left when no junit file was written)."""
    if not log.exists():
        return None
    found = [ln.strip("= \n") for ln in log.read_text(errors="replace").splitlines()
             if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)]
    return found[-1] if found else None


def junit(path: pathlib.Path) -> dict | None:
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable junit xml: {e}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    bad = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    skips = {}
    for c in root.iter("testcase"):
        s = c.find("skipped")
        if s is not None:
            reason = (s.get("message") or "")[:120]
            skips[reason] = skips.get(reason, 0) + 1
    return {**tot, "passed": tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"],
            "failed_tests": bad[:60], "skip_reasons": skips}


def sanitizer(work: pathlib.Path) -> dict:
    out = {}
    for p in sorted(work.glob("sanitize-*.log")):
        text = p.read_text(errors="replace")
        summ = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        # compute-sanitizer's own lines start with "=========": keep the ones saying it could not work
        refused = [ln.strip() for ln in text.splitlines() if ln.startswith("=========")
                   and re.search(r"not supported|error 999|unable|failed|cannot", ln, re.I)][:3]
        cases = [ln.strip() for ln in text.splitlines() if "[sanitize-cases]" in ln][-3:]
        out[p.stem[len("sanitize-"):]] = {"errors": int(summ[-1]) if summ else None, "refused": refused,
                                          "cases": cases}
    return out


def headline(work: pathlib.Path) -> dict | None:
    files = sorted((work / "results").glob("headline-*.json"))
    doc = _read_json(files[-1]) if files else None
    if doc is None:
        return None
    return {"file": files[-1].name, "copy_bandwidth_gbs": doc["env"].get("copy_bandwidth_gbs"),
            "device": doc["env"].get("device"), "versions": doc["env"].get("versions"),
            "rows": len(doc["rows"]), "skipped": doc.get("skipped", {}), "routing": doc.get("routing", {}),
            "goals": doc.get("goals", [])}


def summarize(work: pathlib.Path) -> dict:
    machine = work / "machine.log"
    gpu = re.findall(r"\|\s+\d+\s+(NVIDIA [^|]+?)\s{2,}", machine.read_text()) if machine.exists() else []
    zoo = _read_json(work / "zoo.json")
    demo = _read_json(work / "demo" / "results.json")
    return {"steps": steps(work), "gpu": gpu[0].strip() if gpu else None, "info": _read_json(work / "info.json"),
            "tests": junit(work / "junit-gpu.xml"), "pytest": pytest_line(work / "tests.log"), "zoo": zoo,
            "demo": demo and {
                k: demo.get(k) for k in ("auroc", "ap", "auroc_latent", "train_seconds", "total_seconds")},
            "sanitizer": sanitizer(work), "headline": headline(work)}


def _zoo_lines(zoo: dict) -> list[str]:
    lines = [f"zoo train.fit step (bf16 autocast): {zoo['passed_plain']}/{zoo['total']} ok, "
             f"sync-free {zoo['passed_sync_free']}/{zoo['total']} ({zoo['device']})"]
    for r in zoo["results"]:
        se = r.get("sync_error") or {}
        bad = None if r["plain"]["ok"] else r["plain"]["error"]
        sync = "" if se.get("ok") or "skipped" in se or not se else f"; sync at {se.get('where')}"
        n = (r.get("sync_warn") or {}).get("count")
        if bad or sync:
            lines.append(f"  {r['model']}: {bad or 'step ok'}{sync}{f' ({n} syncs)' if n else ''}")
    return lines


def text(s: dict) -> list[str]:
    lines = [f"GPU: {s['gpu'] or '-'}"]
    for st in s["steps"]:
        lines.append(f"step {st['step']:10s} rc={st['rc']:<3d} {st['seconds']:6.1f} s / {st['limit_s']} s"
                     + (" TIMED OUT" if st["timed_out"] else "") + (f"  {st['note']}" if st["note"] else ""))
    t = s["tests"]
    if s["pytest"]:
        lines.append(f"pytest: {s['pytest']}")
    if t and "error" not in t:
        lines.append(f"GPU tests: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped of {t['tests']}")
        lines += [f"  FAILED {n}" for n in t["failed_tests"][:25]]
    if s["zoo"]:
        lines += _zoo_lines(s["zoo"])
    if s["demo"]:
        lines.append("demo --quick: " + ", ".join(f"{k} {v:.4g}" for k, v in s["demo"].items() if v is not None))
    for tool, v in s["sanitizer"].items():
        errors = "-" if v["errors"] is None else v["errors"]  # None: no ERROR SUMMARY (not run under the tool)
        lines.append(f"sanitizer {tool}: errors {errors}" + (f"; {v['refused'][0]}" if v["refused"] else "")
                     + (f"; {v['cases'][-1]}" if v["cases"] else ""))
    h = s["headline"]
    if h:
        lines.append(f"copy bandwidth {h['copy_bandwidth_gbs']} GB/s; headline rows {h['rows']} ({h['file']})")
        for op, cfgs in h["routing"].items():
            lines.append(f"  route {op}: {cfgs.get('choice', '-')} (cuda/triton speed-up "
                         f"{cfgs.get('geomean_cuda_speedup', '-')})")
        for g in h["goals"]:
            m = "-" if g["measured"] is None else f"{g['measured']:.3g}"
            lines.append(f"  goal {g['goal']}: {m} -> "
                         f"{'not measured' if g['met'] is None else 'MET' if g['met'] else 'MISSED'}")
        lines += [f"  skipped {k}: {v}"[:200] for k, v in list(h["skipped"].items())[:10]]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    s = summarize(pathlib.Path(args.work))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
    print("\n".join(text(s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
