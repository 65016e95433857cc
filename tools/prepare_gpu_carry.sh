#!/usr/bin/env bash
# Prepare, on a CPU machine with internet, what the bare GPU machine (no internet; Python 3.12,
# torch 2.11, triton 3.6, nvcc 13, no faiss, no pytorch-msssim) needs for `benchmarks/gpu_check.sh
# quick`, in the ignored folder build/gpu-carry/ (the device tool's `carry` takes it; 64 MiB in all):
#
#   build/gpu-carry/wheels/      pure-Python wheels of what the GPU image lacks (pytorch-msssim: the
#                                SSIM anchor, also imported by tests/test_ssim.py); gpu_check.sh
#                                installs them with --no-index --no-deps into /tmp/gpu-site
#   build/gpu-carry/fused-ssim/  the fused-ssim source (the second SSIM anchor), exported from the
#                                mirror that the session's `fetch github:rahul-goel/fused-ssim` made;
#                                gpu_check.sh builds it there (pip --no-build-isolation, sm_90 only).
#                                Its code is never committed (build/ is ignored).
#
# faiss is not carried: no GPU test or headline benchmark needs it (the k-NN tests use the exact torch
# brute force as oracle; knn_graph(backend="auto") takes Triton for CUDA tensors and torch on the CPU).
#
#   tools/prepare_gpu_carry.sh [FUSED_SSIM_GIT_DIR]      (default /work/.mirror/rahul-goel+fused-ssim/repo)
#   EXTRA_WHEELS="pyod==2.0.5" tools/prepare_gpu_carry.sh  # more pure-Python wheels, pinned
#
# Then, from the checkout the device tool sends (the lead's), one call (see benchmarks/NOTES.md):
#   run(command="bash benchmarks/gpu_check.sh quick", carry=["build/gpu-carry"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=build/gpu-carry
FUSED_GIT=${1:-${FUSED_SSIM_GIT:-/work/.mirror/rahul-goel+fused-ssim/repo}}
PY=${PYTHON:-python3}
WHEELS="pytorch-msssim==1.0.0 ${EXTRA_WHEELS:-}"

git check-ignore -q "$CARRY" || { echo "error: $CARRY is not ignored by git; refusing to fill it" >&2; exit 1; }
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
# Python 3.12 x86-64 wheels (the GPU image's python3); pure-Python ones match any platform tag.
# shellcheck disable=SC2086
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$CARRY/wheels" $WHEELS
for w in "$CARRY"/wheels/*.whl; do
  case "$w" in *-none-any.whl|*cp312*) ;; *) echo "error: $w is neither pure Python nor cp312" >&2; exit 1 ;; esac
done

if [ -d "$FUSED_GIT" ]; then
  mkdir -p "$CARRY/fused-ssim"
  # the sources only (its README images are 6 MB); the commit is recorded next to them
  git --git-dir="$FUSED_GIT" archive HEAD -- . ':!images' | tar -x -C "$CARRY/fused-ssim"
  git --git-dir="$FUSED_GIT" log -1 --format='%H %cs %s' >"$CARRY/fused-ssim/COMMIT"
  echo "fused-ssim: $(cat "$CARRY/fused-ssim/COMMIT")"
else
  echo "warning: no fused-ssim git dir at $FUSED_GIT (run the fetch tool on github:rahul-goel/fused-ssim);" \
       "the benchmark will skip the fused-ssim anchor" >&2
fi
size=$(du -sm "$CARRY" | cut -f1)
echo "prepared $CARRY (${size} MiB):"; find "$CARRY" -maxdepth 2 | sort
[ "$size" -lt 48 ] || { echo "error: $CARRY is ${size} MiB; the whole carried tree must stay under 64 MiB" >&2; exit 1; }
