"""Shared test configuration.

Triton kernels are tested on CPU under the interpreter: without a GPU, TRITON_INTERPRET=1 is
set here, before anything imports triton (pyaeplus imports it only when a Triton kernel runs).
On a GPU machine Triton compiles for real; run the interpreter tests there in a separate
process with TRITON_INTERPRET=1 (benchmarks/gpu_check.sh does).
"""

from __future__ import annotations

import atexit
import glob
import os
import pathlib
import shutil
import sys
import tempfile

if "TRITON_INTERPRET" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["TRITON_INTERPRET"] = "1"
# tools/run_tests.sh tests the installed package (python -P: the checkout is not on sys.path). A test that
# starts ``python -c ...`` in the checkout uses PYTHON, so that the child imports the same package and not
# the source tree (which has no compiled modules in a fresh clone). Scripts run by path (benchmarks/*.py)
# need their own folder on sys.path, so -P is not exported to every child.
PYTHON = (sys.executable, "-P") if sys.flags.safe_path else (sys.executable,)
# A private Inductor cache: torch keys a compiled autograd graph by its forward, so a cache left by an
# older pyaeplus (other backward op names) would replay stale backward graphs into torch.compile tests.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="pyaeplus-tests-inductor-")
    atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get("PYAEPLUS_DATA", REPO.parent / "shared" / "data"))

HAS_CUDA = torch.cuda.is_available()
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Per-dtype tolerances (atol, rtol) for fast path vs reference computed in the same dtype
# by the reference in float32 (tests cast the reference to the input dtype).
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


# GPU tests: every op's live in tests/test_<op>_gpu.py (module-level ``pytestmark = pytest.mark.gpu``),
# parametrized over GPU_BACKENDS, each taking its backend through use_backend().
GPU_BACKENDS = ("triton", "cuda")


def use_backend(backend: str, device: str = "cuda"):
    """``backends.use(backend)`` for a test on ``device``: skips when ``backend`` cannot run here, and fails
    instead under ``PYAEPLUS_GPU_CHECK=1`` (set by benchmarks/gpu_check.sh, where the build must have made it)."""
    from pyaeplus import backends

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend != "auto" and not backends.available()[backend]:
        msg = f"backend {backend!r} not available here: {backends.available()}"
        if os.environ.get("PYAEPLUS_GPU_CHECK") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return backends.use(backend)


def devices() -> list[str]:
    return ["cpu", "cuda"] if HAS_CUDA else ["cpu"]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="Triton interpreter tests need TRITON_INTERPRET=1 (set when no GPU)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "interpret" in item.keywords and not TRITON_INTERPRET:
            item.add_marker(skip_interp)


@pytest.fixture
def data_root() -> pathlib.Path:
    if not DATA_ROOT.exists():
        pytest.skip(f"real data not found at {DATA_ROOT} (set PYAEPLUS_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: faster than two, and far faster when the
    machine is shared (OpenMP threads spin-waiting on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# --- examples: run examples/<script>.py main(argv) in-process (the reproduction tests) ---
def _load_example(script: str):
    import importlib.util
    import sys

    path = REPO / "examples" / script
    sys.path.insert(0, str(path.parent))  # examples import their shared _common module
    try:
        spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


@pytest.fixture
def run_example(data_root, tmp_path):
    """``run_example("ecg5000_dense_ae.py", "--quick", ...)`` -> the dict the example saved
    (figures and results go to a temporary folder, the data comes from the shared root)."""
    def run(script: str, *argv: str) -> dict:
        mod = _load_example(script)
        return mod.main(["--data", str(data_root), "--out", str(tmp_path), "--no-progress", *argv])
    return run


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models and ops run faster than with two, and far faster when
    the machine is shared (OpenMP threads spin-waiting on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
