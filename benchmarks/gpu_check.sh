#!/usr/bin/env bash
# The GPU pass over everything (issue: validate and tune every kernel on an H100/H200).
#
# On a bare GPU machine with torch, triton, nvcc, cmake and ninja but no internet, from the
# repository root:
#
#   benchmarks/gpu_check.sh build      # build + install (--no-build-isolation), `pyaeplus info`     (~3 min)
#   benchmarks/gpu_check.sh test       # whole suite incl. GPU tests; interpreter tests in a 2nd process (~8 min)
#   benchmarks/gpu_check.sh sanitize   # compute-sanitizer memcheck + racecheck over the CUDA backend tests (~8 min)
#   benchmarks/gpu_check.sh bench      # copy bandwidth + every benchmark -> results/ and REPORT.md      (~8 min)
#   benchmarks/gpu_check.sh all        # all of the above, in order (longer than one 10-minute call)
#
# Each stage fits in one 10-minute command. Logs and JSON go to $OUT (default out/gpu-check);
# results are also packed into $OUT/results.tgz (the device tool returns at most 8 files).
# Anchors missing on the machine (pytorch-msssim, kornia, piq, fused-ssim, faiss) are skipped by
# the benchmarks with a note; install them beforehand (e.g. from carried wheels) to include them.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
OUT=${OUT:-$PWD/out/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

do_build() {
  log "build: nvidia-smi, nvcc, torch"
  { nvidia-smi; nvcc --version; $PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"; } \
    >"$OUT/machine.txt" 2>&1
  log "build: pip install --no-build-isolation --no-deps . (PYAEPLUS_CUDA=ON, sm_90 native)"
  # The image has no faiss and no internet: --no-deps keeps pip from trying to fetch faiss-cpu.
  PYAEPLUS_CUDA=ON CUDAARCHS=${CUDAARCHS:-90} $PY -m pip install --no-build-isolation --no-deps -v . \
    >"$OUT/build.log" 2>&1
  local rc=$?
  log "build: exit $rc"
  $PY -m pyaeplus.cli info | tee -a "$OUT/summary.txt"
  $PY -m pyaeplus.cli info --json >"$OUT/info.json" 2>&1
  return $rc
}

do_test() {
  log "test: full suite with the GPU (Triton compiled for real, CUDA backends)"
  # -P: do not put the repository root on sys.path, so the installed package is the one imported.
  TRITON_INTERPRET=0 timeout 420 $PY -P -m pytest -q -m "not slow" -p no:cacheprovider --durations=25 \
    --junitxml="$OUT/junit-gpu.xml" tests >"$OUT/test-gpu.log" 2>&1
  local rc=$?
  log "test: GPU suite exit $rc: $(tail -n 1 "$OUT/test-gpu.log")"
  log "test: Triton interpreter tests (TRITON_INTERPRET=1, CPU tensors)"
  TRITON_INTERPRET=1 timeout 150 $PY -P -m pytest -q -m interpret -p no:cacheprovider tests >"$OUT/test-interpret.log" 2>&1
  local rc2=$?
  log "test: interpreter suite exit $rc2: $(tail -n 1 "$OUT/test-interpret.log")"
  return $(( rc || rc2 ))
}

do_sanitize() {
  if ! command -v compute-sanitizer >/dev/null; then log "sanitize: compute-sanitizer not found"; return 1; fi
  local rc=0
  for tool in memcheck racecheck; do
    log "sanitize: $tool over the CUDA backend GPU tests"
    PYAEPLUS_BACKEND=cuda TRITON_INTERPRET=0 timeout 240 compute-sanitizer --tool $tool --error-exitcode 86 \
      --target-processes all --print-limit 50 \
      $PY -P -m pytest -q -x -m "gpu and not slow" -k "cuda" -p no:cacheprovider tests >"$OUT/sanitize-$tool.log" 2>&1
    local r=$?
    log "sanitize: $tool exit $r: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitize-$tool.log" | tail -n 2 | tr '\n' ' ')"
    rc=$(( rc || r ))
  done
  return $rc
}

do_bench() {
  log "bench: copy bandwidth and every benchmark (one process per op)"
  $PY - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import sys; sys.path.insert(0, "benchmarks")
import harness
print(f"copy bandwidth: {harness.copy_bandwidth('cuda'):.0f} GB/s (read + write)")
EOF
  timeout 540 $PY benchmarks/run_all.py >"$OUT/bench.log" 2>&1
  local rc=$?
  log "bench: exit $rc"
  tar czf "$OUT/results.tgz" benchmarks/results benchmarks/REPORT.md 2>/dev/null
  return $rc
}

rc=0
case "$stage" in
  build) do_build || rc=$? ;;
  test) do_test || rc=$? ;;
  sanitize) do_sanitize || rc=$? ;;
  bench) do_bench || rc=$? ;;
  all) do_build && { do_test; do_sanitize; do_bench; } || rc=$? ;;
  *) echo "usage: $0 build|test|sanitize|bench|all"; exit 2 ;;
esac
log "stage $stage done: exit $rc"
exit $rc
