"""benchmarks/gpu_check.sh stays runnable: shell syntax, its usage errors, the fast parts of its CPU
dry run end to end (machine, carried wheels, headline benchmark at tiny size, summary), the zoo step
and the sanitizer cases on the CPU backend, and the routing / goal verdicts on synthetic rows."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPT = BENCH / "gpu_check.sh"
sys.path.insert(0, str(BENCH))

import gpu_headline  # noqa: E402
import gpu_sanitize_cases  # noqa: E402
import gpu_zoo_step  # noqa: E402


@pytest.mark.parametrize("script", ["benchmarks/gpu_check.sh", "tools/prepare_gpu_carry.sh"])
def test_shell_syntax(script):
    r = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_usage_errors(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(SCRIPT), "quick", "--bogus"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "unknown option --bogus" in r.stdout
    r = subprocess.run(["bash", str(SCRIPT), "nonsense"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "usage:" in r.stdout


def test_dry_run_fast_parts(tmp_path):
    out, work = tmp_path / "out", tmp_path / "gpu-check-work"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_WORK": str(work), "GPU_CHECK_HEADLINE_OPS": "topk",
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", str(SCRIPT), "quick", "--dry-run", "--skip-build", "--only", "machine,carry,bench"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.txt", "summary.json", "logs.tgz"} <= set(files), files
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["machine", "carry", "bench"]
    assert all(s["rc"] == 0 for s in summary["steps"]), summary["steps"]
    head = summary["headline"]
    assert head["copy_bandwidth_gbs"] > 0 and head["rows"] >= 4
    assert {g["goal"].split(" ")[0] for g in head["goals"]} >= {"SSIM", "top-k", "Laplacian", "exact"}
    doc = json.loads(next(out.glob("headline-*.json")).read_text())
    assert doc["env"]["quick"] and {r["config"]["op"] for r in doc["rows"]} == {"topk"}
    assert "quick done" in (out / "summary.txt").read_text()


def test_zoo_step_and_sanitizer_cases_on_cpu(tmp_path):
    assert gpu_zoo_step.main(["--device", "cpu", "--only", "dense,sparse", "--out", str(tmp_path / "z.json"),
                              "--batch", "16"]) == 0
    doc = json.loads((tmp_path / "z.json").read_text())
    assert doc["passed_plain"] == 2 and doc["results"][0]["sync_error"] == {"skipped": "sync debug mode needs CUDA"}
    # every registered model has a factory (a new model must get one)
    import pyaeplus.models as M
    assert all(gpu_zoo_step.COVERS.get(n, n) in gpu_zoo_step.FACTORIES for n in M.MODELS)
    # every case runs, and together they reach every registered pyaeplus op (exit 3 names a new op without one)
    assert gpu_sanitize_cases.main(["--backend", "cpu"]) == 0


def _row(op, provider, ms, anchor=False, mode="full", **cfg):
    return {"provider": provider, "config": {"op": op, **cfg}, "mode": mode, "anchor": anchor, "median_ms": ms}


def test_routing_and_goals_verdicts():
    big = dict(N=5, C=3, H=1080, W=1920, dtype="float32")
    rows = [_row("ssim", "pytorch_msssim", 100.0, anchor=True, **big),
            _row("ssim", "pyaeplus[triton]", 12.0, **big), _row("ssim", "pyaeplus[cuda]", 8.0, **big),
            _row("ssim", "pyaeplus[triton]", 2.0, dtype="bfloat16"), _row("ssim", "pyaeplus[cuda]", 1.0,
                                                                          dtype="bfloat16"),
            _row("topk", "torch.topk+scatter", 9.0, anchor=True, dtype="float32", output="dense"),
            _row("topk", "pyaeplus[triton]", 2.0, dtype="float32", output="dense"),
            _row("topk", "pyaeplus[cuda]", 4.0, dtype="float32", output="dense"),
            _row("knn", "pyaeplus[triton]", 7000.0, mode="forward")]
    for r in rows:  # what harness.Runner._ratios adds
        a = next((x for x in rows if x["anchor"] and x["config"] == r["config"] and x["mode"] == r["mode"]), None)
        if a:
            r["speedup"] = {a["provider"]: a["median_ms"] / r["median_ms"]}
    rows[2]["bw_fraction"] = 0.61
    route = gpu_headline.routing(rows)
    assert route["ssim"]["choice"] == "cuda" and route["topk"]["choice"] == "triton"
    assert route["ssim"]["geomean_cuda_speedup"] == pytest.approx((1.5 * 2.0) ** 0.5, rel=1e-3)
    assert "AUTO_CUDA" in gpu_headline.routing_lines(route)[-1] and "'ssim': 'cuda'" in gpu_headline.routing_lines(
        route)[-1]
    goals = {g["goal"].split(" >=")[0].split(" <=")[0]: g for g in gpu_headline.goals(rows)}
    ssim = goals["SSIM fwd+bwd 5x3x1080x1920 fp32"]
    assert ssim["measured"] == pytest.approx(12.5) and ssim["met"] and ssim["provider"] == "pyaeplus[cuda]"
    assert goals["SSIM fwd+bwd"]["met"]  # 61 % of copy bandwidth
    assert goals["top-k 4096x16384 k=32 fwd+bwd"]["measured"] == pytest.approx(4.5)
    assert goals["SSIM fwd+bwd (same padding)"]["met"] is None  # no fused-ssim row
    assert goals["exact k-NN 1M x 128 k=10"]["measured"] == pytest.approx(7.0) and goals[
        "exact k-NN 1M x 128 k=10"]["met"]
