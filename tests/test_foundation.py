"""The foundation: compiled modules, build configuration, backend selection, validation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pyaeplus
from pyaeplus import _ext, _validate, backends


def test_cpu_extension_is_built_and_loaded():
    # CI installs the wheel: the compiled CPU module must be importable, not silently missing.
    assert _ext.cpu_ext() is not None, _ext._import("_C")[1]
    cfg = pyaeplus.build_config()
    assert cfg["cpu_extension"]["openmp"] in (True, False)
    assert isinstance(cfg["cpu_extension"]["ops"], list)


@pytest.mark.skipif(os.environ.get("PYAEPLUS_CUDA", "").upper() != "ON",
                    reason="only when the build was asked for CUDA (PYAEPLUS_CUDA=ON, the CI case)")
def test_cuda_module_compiled_when_required():
    cu = _ext.cuda_ext()
    assert cu is not None, _ext._import("_cuda")[1]
    cfg = cu.build_config()
    assert cfg["cudart"] == "static"
    assert cfg["architectures"]
    # Importing and probing works without a driver: no exception, an error string instead.
    n, err = cu.device_count()
    assert n >= 0 and isinstance(err, str)
    # Every op with a CPU kernel has a CUDA kernel too.
    assert set(_ext.cpu_ext().build_config()["ops"]) <= set(cfg["ops"])


def test_build_config_reports_versions_and_backends():
    cfg = pyaeplus.build_config()
    for key in ("pyaeplus", "python", "torch", "numpy", "gpu_present", "backends_available", "backend"):
        assert key in cfg
    assert cfg["gpu_present"] == torch.cuda.is_available()
    assert cfg["backends_available"]["torch"] is True
    assert cfg["backends_available"]["cpu"] == (_ext.cpu_ext() is not None)


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "pyaeplus.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CPU extension" in out.stdout and "GPU present" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pyaeplus.cli", "info", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and '"backends_available"' in out.stdout


def test_backend_context_setter_and_env(monkeypatch):
    assert backends.get() == "auto"
    with backends.use("torch"):
        assert backends.get() == "torch"
        assert backends.resolve("cpu") == "torch"
        with backends.use("cpu"):
            assert backends.resolve("cpu") == "cpu"
        assert backends.get() == "torch"
    assert backends.get() == "auto"
    monkeypatch.setenv("PYAEPLUS_BACKEND", "torch")
    assert backends.get() == "torch"
    monkeypatch.setenv("PYAEPLUS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="PYAEPLUS_BACKEND"):
        backends.get()
    monkeypatch.delenv("PYAEPLUS_BACKEND")
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.set("gpu")


def test_backend_set_is_scoped_to_context():
    import contextvars

    def inner():
        backends.set("torch")
        return backends.get()

    assert contextvars.copy_context().run(inner) == "torch"
    assert backends.get() == "auto"


def test_backend_resolution_errors_are_clear():
    with backends.use("cuda"):
        with pytest.raises(RuntimeError, match="CUDA tensors only"):
            backends.resolve("cpu")
    with backends.use("triton"):
        with pytest.raises(RuntimeError, match="CUDA tensors only"):
            backends.resolve("cpu")
    with backends.use("cpu"):
        with pytest.raises(RuntimeError, match="CPU tensors only"):
            backends.resolve("cuda")
    assert backends.resolve("cpu") == ("cpu" if _ext.cpu_ext() is not None else "torch")


def test_available_matches_machine():
    a = backends.available()
    assert a["triton"] == (torch.cuda.is_available() and _ext.triton_available())
    assert a["cuda"] == (torch.cuda.is_available() and _ext.cuda_ext() is not None)


def test_validation_messages_name_the_argument():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        _validate.tensor("x", [1, 2])
    with pytest.raises(TypeError, match="x must have dtype"):
        _validate.tensor("x", torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must be 2-d"):
        _validate.tensor("x", torch.zeros(3), ndim=2)
    with pytest.raises(ValueError, match="x must not be empty"):
        _validate.tensor("x", torch.zeros(0, 3))
    with pytest.raises(ValueError, match="y contains 1 NaN and 1 Inf"):
        _validate.finite("y", torch.tensor([0.0, float("nan"), float("inf")]), check_finite=True)
    with pyaeplus.config.checks(True), pytest.raises(ValueError, match="y contains 1 NaN"):
        _validate.finite("y", torch.tensor([float("nan")]))
    _validate.finite("y", torch.tensor([float("nan")]))  # default "auto": reads no data
    with pyaeplus.config.checks(False):
        _validate.finite("y", torch.tensor([float("nan")]), check_finite=None)  # off: no error
    with pytest.raises(TypeError, match="k must be an int"):
        _validate.integer("k", 2.0)
    with pytest.raises(TypeError, match="k must be an int"):
        _validate.integer("k", True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        _validate.integer("k", 0, lo=1)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        _validate.number("sigma", 0.0, positive=True)
    with pytest.raises(ValueError, match="w is on"):
        _validate.same_device(x=torch.zeros(1), w=torch.zeros(1, device="meta"))


def test_dtype_codes_match_common_h():
    # dtype codes agree with csrc/common.h
    assert _ext.DTYPE_CODES[torch.float32] == 0 and _ext.DTYPE_CODES[torch.bfloat16] == 2
    with pytest.raises(TypeError, match="cannot cross"):
        _ext.dtype_code(torch.zeros(1, dtype=torch.complex64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_finite_check_catches_every_nonfinite(dtype, bad):
    t = torch.ones(1001, dtype=dtype)
    t[537] = bad
    with pytest.raises(ValueError, match="x contains"):
        _validate.finite("x", t, check_finite=True)


def test_finite_check_passes_finite_values_whose_sum_overflows():
    # the fast path's sum overflows to inf; the exact check must still accept the tensor
    _validate.finite_now("x", torch.full((16,), 3e38))
    _validate.finite_now("x", torch.full((4096,), 60000.0, dtype=torch.float16))
    with pytest.raises(ValueError, match="1 NaN and 1 Inf"):
        _validate.finite_now("x", torch.tensor([3e38, 3e38, float("inf"), float("nan")]))
