"""benchmarks/run_all.py's report builder on synthetic results: combined device JSON, plots and
the Markdown summary with the right speed-ups (no benchmark is run)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
run_all = pytest.importorskip("run_all")


def _row(provider, cfg, ms, anchor=False, mode="full", anchor_ms=None):
    # "speedup" as the harness stores it at finish(): anchor median / this median, per anchor
    return {"speedup": {"anchor lib": (anchor_ms or ms) / ms},"provider": provider, "config": cfg, "mode": mode, "anchor": anchor, "median_ms": ms,
            "p20_ms": ms * 0.95, "p80_ms": ms * 1.05, "n": 5, "peak_mem_bytes": 1 << 20, "bytes_moved": None,
            "note": ""}


def _doc(name, rows):
    return {"name": name, "description": "synthetic", "rows": rows, "skipped": {},
            "env": {"device": {"name": "Test CPU", "tag": "cpu-test", "type": "cpu"}, "versions": {},
                    "date": "2026-11-23T00:00:00+00:00", "quick": False, "argv": []}}


def test_report_from_synthetic_results(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    rows = [_row("anchor lib", {"N": 64, "dtype": "float32"}, 40.0, anchor=True),
            _row("pyaeplus[cpu]", {"N": 64, "dtype": "float32"}, 10.0, anchor_ms=40.0)]
    for n, a, p in ((16, 4.0, 2.0), (32, 12.0, 4.0)):
        rows += [_row("anchor lib", {"N": n, "dtype": "float32", "sweep": "N"}, a, anchor=True),
                 _row("pyaeplus[cpu]", {"N": n, "dtype": "float32", "sweep": "N"}, p, anchor_ms=a)]
    (res / "fakeop-cpu-test.json").write_text(json.dumps(_doc("fakeop", rows)))
    (res / "fakeop-cpu-test.md").write_text("# fakeop\n\n| provider | median ms |\n|---|---|\n")
    (res / "other-cpu-test.json").write_text(json.dumps(_doc("other", rows[:2])))
    report = tmp_path / "REPORT.md"
    out = run_all.build_report(res, report)
    assert out == report
    text = report.read_text()
    combined = json.loads((res / "cpu-test.json").read_text())
    assert set(combined["ops"]) == {"fakeop", "other"}
    png = res / "plots" / "fakeop-cpu-test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (res / "plots" / "other-cpu-test.png").exists()  # no sweep rows: no plot, and the report says so
    assert "No size-sweep rows" in text
    # the summary names the main config's pyaeplus row and its 4x speed-up over the anchor
    summary = [line for line in text.splitlines() if line.startswith("| fakeop")]
    assert summary and "pyaeplus[cpu]" in summary[0] and "4.00x" in summary[0]
    assert "plots/fakeop-cpu-test.png" in text
