#!/usr/bin/env bash
# The GPU pass over everything (issue 13: validate and tune every kernel on an H100/H200).
#
# On a bare GPU machine with torch, triton, nvcc, cmake, ninja, scikit-build-core and pybind11 but no
# internet, from the repository root:
#
#   benchmarks/gpu_check.sh quick      # everything below in one command, <= 6 min wall (GPU_CHECK_BUDGET_S=345)
#   benchmarks/gpu_check.sh quick --dry-run   # the same steps on the CPU (rehearsal: no GPU, small sizes)
#   benchmarks/gpu_check.sh build      # build + install (--no-build-isolation), `pyaeplus info`     (~3 min)
#   benchmarks/gpu_check.sh test       # whole suite incl. GPU tests; interpreter tests in a 2nd process (~8 min)
#   benchmarks/gpu_check.sh sanitize   # compute-sanitizer memcheck + racecheck over the CUDA backend tests (~8 min)
#   benchmarks/gpu_check.sh bench      # copy bandwidth + every benchmark -> results/ and REPORT.md      (~8 min)
#   benchmarks/gpu_check.sh all        # build, test, sanitize, bench (longer than one 10-minute call)
#
# `quick` steps (each under `timeout`, the limits cut to what the overall budget has left, so the
# whole fits even when a step hangs):
#   machine   nvidia-smi (+ clocks/power), nvcc, versions                                   (-> machine.log)
#   carry     pure-Python wheels from build/gpu-carry/wheels into /tmp/gpu-site (PYTHONPATH); fused-ssim
#             built from FUSED_SSIM_SRC (default build/gpu-carry/fused-ssim) in the background, sm_90 only
#   build     PYAEPLUS_CUDA=ON CUDAARCHS=90 CMAKE_BUILD_PARALLEL_LEVEL=16 pip install --no-build-isolation
#             --no-deps . ; `pyaeplus info`; if the CUDA module does not import, the source tree is used
#             (Triton only) and the summary says so
#   bench     benchmarks/gpu_headline.py alone on the GPU: copy bandwidth, SSIM / top-k / sparse decode /
#             Laplacian / k-NN on triton and cuda against the anchors, routing and goals
#   checks    in parallel: GPU tests (`pytest -m "gpu and not slow"`, by marker: new GPU tests are picked
#             up), one train.fit step of every model under bf16 autocast and sync-debug mode
#             (gpu_zoo_step.py), `pyaeplus demo --quick` on CUDA, compute-sanitizer memcheck (CUDA, then
#             Triton) and racecheck (CUDA) over gpu_sanitize_cases.py
#   summary   summary.txt + summary.json (read first), logs.tgz (every log, junit, zoo.json, ...),
#             headline-<device>.json/.md: at most 8 files in $OUT
#
# --dry-run runs the same steps on the CPU: the build into a temporary --target (CUDA compiled for sm_90,
# nothing installed), the CPU half of tests/test_gpu_matrix.py plus a collection of every GPU test, the
# zoo step and the sanitizer cases on the CPU backend (no sync-debug mode, no compute-sanitizer: they need
# a GPU), the demo on the CPU with 1 epoch, the headline benchmark at tiny sizes. Options:
#   --only machine,carry,build,bench,checks,summary   run these quick steps only (summary always runs)
#   --skip-build                                      use the source tree (PYTHONPATH=repo) instead
# and, to re-run parts (call 2), environment variables:
#   GPU_CHECK_HEADLINE_OPS=ssim,topk   only these ops in the headline benchmark (default all)
#   GPU_CHECK_PYTEST_K="ssim and cuda"  a pytest -k expression for the GPU tests (e.g. the failures)
#   GPU_CHECK_TESTS="tests/test_x.py::test_y[...] ..."  test files or node ids (default: tests)
#   GPU_CHECK_ZOO_ONLY=conv_ssim,vae   only these models in the zoo step
#   GPU_CHECK_BUDGET_S=345             the overall time budget (seconds)
#
# Output: $OUT (default out/gpu-check or out/gpu-check-dry); logs in $GPU_CHECK_WORK (default
# /tmp/gpu-check[-dry]). The older stages write their logs and JSON to $OUT directly and pack results
# into $OUT/results.tgz. Anchors missing on the machine are skipped by the benchmarks with a note.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
stage=${1:-all}
[ $# -gt 0 ] && shift
DRY=0
ONLY=""
SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --only) ONLY=${2:-}; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    *) echo "unknown option $1 (see the header of $0)"; exit 2 ;;
  esac
  shift
done
sfx=$([ $DRY = 1 ] && echo -dry || true)
OUT=${OUT:-$REPO/out/gpu-check$sfx}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# ---- the original stages (one 10-minute command each) -------------------------------------

do_build() {
  log "build: nvidia-smi, nvcc, torch"
  { nvidia-smi; nvcc --version; $PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"; } \
    >"$OUT/machine.txt" 2>&1
  log "build: pip install --no-build-isolation --no-deps . (PYAEPLUS_CUDA=ON, sm_90 native)"
  # The image has no faiss and no internet: --no-deps keeps pip from trying to fetch faiss-cpu.
  PYAEPLUS_CUDA=ON CUDAARCHS=${CUDAARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16} \
    $PY -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1
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
    --continue-on-collection-errors --junitxml="$OUT/junit-gpu.xml" tests >"$OUT/test-gpu.log" 2>&1
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

# ---- quick: everything in one command under one time budget ---------------------------------

W=${GPU_CHECK_WORK:-/tmp/gpu-check$sfx}
BUDGET=${GPU_CHECK_BUDGET_S:-$([ $DRY = 1 ] && echo 3600 || echo 345)}
T0=$(date +%s)
DEV=$([ $DRY = 1 ] && echo cpu || echo cuda)

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# cap WANT RESERVE: WANT seconds, or what the budget has left after RESERVE (at least 5)
cap() { local l=$(( $(left) - $2 )); if [ "$l" -lt "$1" ]; then echo $(( l > 5 ? l : 5 )); else echo "$1"; fi; }
wants() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
pack() {  # every log, not the installed packages or checkpoints
  tar czf "$OUT/logs.tgz" -C "$W" --exclude=./dry-site --exclude=./buildtools --exclude=./site --exclude=./site-fused \
    --exclude='*.safetensors' . 2>/dev/null
}
# step NAME LIMIT CMD...: CMD under `timeout` (signal $SIG, default TERM), output in $W/NAME.log, one
# line in steps.tsv
step() {
  local name=$1 limit=$2; shift 2
  local t
  t=$(date +%s)
  timeout -s "${SIG:-TERM}" -k 10 "$limit" "$@" >"$W/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" "$limit" "${NOTE:-}" >>"$W/steps.tsv"
  log "$name: exit $rc in $(( $(date +%s) - t )) s (limit $limit s)${NOTE:+; $NOTE}"
  return $rc
}

q_machine() {
  if [ $DRY = 1 ]; then
    NOTE="dry run: nvidia-smi skipped (no GPU)" step machine "$(cap 30 0)" bash -c \
      "uname -a; nproc; free -g; command -v nvcc && nvcc --version; $PY -c 'import torch, triton, sys; print(sys.version); print(torch.__version__, torch.version.cuda, triton.__version__)'"
  else
    step machine "$(cap 30 0)" bash -c "nvidia-smi; nvidia-smi -q -d CLOCK,PERFORMANCE,POWER; nvcc --version; \
      command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer; nproc; free -g; \
      $PY -c 'import torch, triton, sys; print(sys.version); print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name(0))'"
  fi
}

q_carry() {
  local wheels=(build/gpu-carry/wheels/*.whl)
  if [ -e "${wheels[0]}" ]; then
    step carry "$(cap 60 250)" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$W/site" "${wheels[@]}" && export PYTHONPATH="$W/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    NOTE="no build/gpu-carry/wheels (tools/prepare_gpu_carry.sh): pytorch-msssim rows skipped" step carry 5 true
  fi
  local src=${FUSED_SSIM_SRC:-build/gpu-carry/fused-ssim}
  if [ ! -f "$src/setup.py" ]; then
    log "fused-ssim: no source at $src: the fused-ssim anchor is skipped"
  elif [ $DRY = 1 ]; then
    log "fused-ssim: source found at $src; not built in the dry run (its setup.py needs a CUDA torch)"
  else
    # In the background while pyaeplus builds (16 cores); q_bench waits for it.
    ( CUDA_ARCHITECTURES=90 MAX_JOBS=6 TORCH_CUDA_ARCH_LIST=9.0 step fused_ssim "$(cap 140 150)" \
        $PY -m pip install -v --no-build-isolation --no-deps --target "$W/site-fused" "$src" ) &
    FUSED_PID=$!
  fi
}

q_build() {
  if [ $SKIP_BUILD = 1 ]; then
    NOTE="--skip-build: the source tree is imported" step build 5 true
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    log "build: pyaeplus imported from $($PY -P -c 'import pyaeplus; print(pyaeplus.__file__)' 2>&1 | tail -n 1)"
    return 0
  fi
  local target=()
  if [ $DRY = 1 ]; then
    # Nothing is installed in the dry run: the wheel goes to a temporary --target, imported from there.
    target=(--target "$W/dry-site")
    if ! $PY -c "import scikit_build_core" 2>/dev/null; then  # the dev venv lacks it; the GPU image has it
      $PY -m pip install -q --target "$W/buildtools" "scikit-build-core>=0.10" >"$W/buildtools.log" 2>&1
    fi
  fi
  PYTHONPATH="$W/buildtools${PYTHONPATH:+:$PYTHONPATH}" PYAEPLUS_CUDA=ON CUDAARCHS=90 \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$([ $DRY = 1 ] && nproc || echo 16)} \
    step build "$([ $DRY = 1 ] && echo 1200 || cap 170 160)" $PY -m pip install -v --no-build-isolation --no-deps \
      "${target[@]}" .
  local rc=$?
  [ $DRY = 1 ] && [ -d "$W/dry-site/pyaeplus" ] && export PYTHONPATH="$W/dry-site${PYTHONPATH:+:$PYTHONPATH}"
  if [ $rc != 0 ] || ! $PY -P -c "import pyaeplus._cuda" 2>>"$W/info.err"; then
    # never whatever else `import pyaeplus` would find (a dev checkout's .pth): this tree's sources
    log "build: exit $rc / pyaeplus._cuda does not import: falling back to the source tree (Triton only on a GPU)"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  fi
  $PY -P -m pyaeplus.cli info --json >"$W/info.json" 2>>"$W/info.err"
  $PY -P -m pyaeplus.cli info 2>&1 | tee -a "$OUT/summary.txt"
  log "build: pyaeplus imported from $($PY -P -c 'import pyaeplus; print(pyaeplus.__file__)' 2>&1 | tail -n 1)"
  return $rc
}

q_bench() {
  if [ -n "${FUSED_PID:-}" ]; then
    wait "$FUSED_PID"
    [ -d "$W/site-fused/fused_ssim" ] && export PYTHONPATH="$PYTHONPATH:$W/site-fused"
  fi
  local t
  t=$(cap 130 95)
  local extra=()
  [ $DRY = 1 ] && extra=(--dry-run --device cpu --no-memory)
  [ -n "${GPU_CHECK_HEADLINE_OPS:-}" ] && extra+=(--ops "$GPU_CHECK_HEADLINE_OPS")
  step bench "$t" $PY benchmarks/gpu_headline.py --out "$W/results" --budget-s $(( t - 10 )) --repeats 10 --warmup 2 \
    "${extra[@]}"
  cp "$W"/results/headline-*.json "$W"/results/headline-*.md "$OUT/" 2>/dev/null
}

q_tests() {
  local t=$1 par=()
  if [ $DRY = 1 ]; then
    # every GPU test must at least collect; the CPU half of the matrix runs
    $PY -P -m pytest -q --collect-only -m "gpu and not slow" -p no:cacheprovider tests >"$W/tests-collect.log" 2>&1
    NOTE="dry run: $(tail -n 1 "$W/tests-collect.log"); CPU half of test_gpu_matrix + routing" step tests "$t" \
      $PY -P -m pytest -q -m "not gpu" -p no:cacheprovider -rfEs --junitxml="$W/junit-gpu.xml" \
        tests/test_gpu_matrix.py tests/test_backend_routing.py
    return
  fi
  $PY -c "import xdist" 2>/dev/null && par=(-n 8)
  $PY -c "import pytest_timeout" 2>/dev/null && par+=(--timeout "$(( t / 2 ))")
  [ -n "${GPU_CHECK_PYTEST_K:-}" ] && par+=(-k "$GPU_CHECK_PYTEST_K")
  # SIGINT at the limit: pytest stops as on Ctrl-C and still writes its summary and the junit file
  # shellcheck disable=SC2086  # GPU_CHECK_TESTS: paths / node ids without spaces
  SIG=INT PYAEPLUS_GPU_CHECK=1 TRITON_INTERPRET=0 step tests "$t" $PY -P -m pytest -q -m "gpu and not slow" \
    -p no:cacheprovider --continue-on-collection-errors -rfEs --durations=15 --junitxml="$W/junit-gpu.xml" \
    "${par[@]}" ${GPU_CHECK_TESTS:-tests}
}

q_sanitize() {
  local t=$1 start
  start=$(date +%s)
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
  if [ $DRY = 1 ] || [ -z "$cs" ]; then
    NOTE=$([ $DRY = 1 ] && echo "dry run: the cases on the CPU backend, no compute-sanitizer (needs a GPU)" \
      || echo "compute-sanitizer not found: the cases without it") \
      step sanitize-cases "$t" $PY benchmarks/gpu_sanitize_cases.py --backend "$([ $DRY = 1 ] && echo cpu || echo cuda)"
    return
  fi
  # no caching allocator: each tensor its own allocation, so an access past its end is seen
  local tool backend rest
  for run in memcheck:cuda racecheck:cuda memcheck:triton; do
    tool=${run%%:*}; backend=${run##*:}
    rest=$(( t - ($(date +%s) - start) ))
    [ "$rest" -lt 15 ] && { log "sanitize $tool/$backend: no time left"; continue; }
    [ "$run" = memcheck:triton ] || rest=$(( rest < t / 2 ? rest : t / 2 ))  # a hang leaves time for the next
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "sanitize-$tool-$backend" "$rest" "$cs" --tool "$tool" \
      --error-exitcode 86 --target-processes all --print-limit 30 \
      $PY benchmarks/gpu_sanitize_cases.py --backend "$backend"
  done
}

q_checks() {
  local t z
  t=$(cap 150 15)
  z=$([ $DRY = 1 ] && echo "$t" || echo $(( t < 90 ? t : 90 )))  # the zoo step and the demo: ~20 s each on a GPU
  local pids=()
  q_tests "$t" & pids+=($!)
  step zoo "$z" $PY benchmarks/gpu_zoo_step.py --device $DEV --out "$W/zoo.json" \
    ${GPU_CHECK_ZOO_ONLY:+--only "$GPU_CHECK_ZOO_ONLY"} & pids+=($!)
  step demo "$z" $PY -m pyaeplus.cli demo --quick --device $DEV --no-progress --out "$W/demo" \
    $([ $DRY = 1 ] && echo --epochs 1) & pids+=($!)
  q_sanitize "$t" & pids+=($!)
  wait "${pids[@]}"
}

do_quick() {
  case "$W" in */gpu-check*) rm -rf "$W" ;; *) [ -z "$(ls -A "$W" 2>/dev/null)" ] || { echo "GPU_CHECK_WORK=$W is not empty"; exit 2; } ;; esac
  mkdir -p "$W" && : >"$OUT/summary.txt"
  rm -f "$OUT"/headline-*.json "$OUT"/headline-*.md "$OUT/summary.json" "$OUT/logs.tgz"
  [ $DRY = 1 ] && export OMP_NUM_THREADS=1  # small CPU steps on a shared machine: thread teams only spin
  log "quick$([ $DRY = 1 ] && echo ' --dry-run (CPU rehearsal)'): budget $BUDGET s, work $W, out $OUT"
  local s
  for s in machine carry build bench checks; do
    if wants "$s"; then "q_$s"; pack; fi
  done
  local t
  t=$(cap 20 0)
  timeout "$t" $PY benchmarks/gpu_check_summary.py --work "$W" --out "$OUT" >>"$OUT/summary.txt" 2>&1 \
    || log "summary: gpu_check_summary.py failed (see logs.tgz)"
  pack
  log "quick done in $(( $(date +%s) - T0 )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
  echo "================ summary.txt ================"
  cat "$OUT/summary.txt"
}

rc=0
case "$stage" in
  quick) do_quick || rc=$? ;;
  build) do_build || rc=$? ;;
  test) do_test || rc=$? ;;
  sanitize) do_sanitize || rc=$? ;;
  bench) do_bench || rc=$? ;;
  all) do_build && { do_test; do_sanitize; do_bench; } || rc=$? ;;
  *) echo "usage: $0 quick [--dry-run] [--only STEPS] [--skip-build] | build | test | sanitize | bench | all"; exit 2 ;;
esac
[ "$stage" = quick ] || log "stage $stage done: exit $rc"
exit $rc
