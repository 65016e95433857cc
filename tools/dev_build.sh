#!/usr/bin/env bash
# Developer build: compiles the extensions with CMake into build/dev-*, then copies the
# modules next to the sources so that the source tree imports them (with the source tree on
# sys.path, e.g. through a .pth file). Serialized with flock: safe to call concurrently.
#   tools/dev_build.sh          CPU module only
#   tools/dev_build.sh --cuda   CPU + CUDA modules (CUDA arch 80 only, for compile checks)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=cpu; [ "${1:-}" = "--cuda" ] && mode=cuda
mkdir -p build
exec 9>build/.dev_build.lock
flock 9
py=$(command -v python)
bdir=build/dev-$mode
if [ ! -f "$bdir/build.ninja" ]; then
  extra=(-DPYAEPLUS_CUDA=OFF)
  [ $mode = cuda ] && extra=(-DPYAEPLUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80)
  cmake -S . -B "$bdir" -G Ninja -DPython_EXECUTABLE="$py" \
    -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" "${extra[@]}" >/dev/null
fi
cmake --build "$bdir" -j 2
# Copy under a temporary name, then rename: overwriting the module in place (cp) corrupts the
# mapping of every process that has it loaded (they segfault); a rename leaves them the old inode.
install_so() { for f in "$@"; do cp -f "$f" "pyaeplus/.$(basename "$f").tmp" && mv -f "pyaeplus/.$(basename "$f").tmp" "pyaeplus/$(basename "$f")"; done; }
install_so "$bdir"/_C*.so
if [ $mode = cuda ]; then install_so "$bdir"/_cuda*.so; fi
echo "built $mode -> pyaeplus/"
