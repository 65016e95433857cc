"""``auto`` on CUDA tensors is routed per op by ``pyaeplus.backends.AUTO_CUDA`` (a table that the H200
measurements can change in one line): longest-prefix lookup, fallback to the other compiled backend,
and the op name reaching the lookup from every custom op. Runs without a GPU (availability and the
device context are faked)."""

from __future__ import annotations

import ast
import contextlib
import pathlib

import pytest
import torch

from pyaeplus import _ext, backends
from pyaeplus.ops import _dispatch

OPS_DIR = pathlib.Path(backends.__file__).parent / "ops"


def _dispatched_op_names() -> set[str]:
    """Every op name that pyaeplus/ops/*.py passes to ``run(...)`` (its first argument: a string, or
    an expression choosing among strings such as ``"topk_dense" if dense else "topk_sparse"``)."""
    names = set()
    for path in OPS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run" and node.args:
                names |= {c.value for c in ast.walk(node.args[0])
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


@pytest.fixture
def machine(monkeypatch):
    """Fake which compiled backends exist: ``machine(triton=..., cuda=...)``."""
    def set_(triton: bool, cuda: bool):
        monkeypatch.setattr(_ext, "triton_available", lambda: triton)
        monkeypatch.setattr(_ext, "cuda_ext", lambda: object() if cuda else None)
    return set_


def test_table_names_real_ops_and_valid_backends():
    ops = _dispatched_op_names()
    assert {"ssim_stats", "ssim_stats_backward", "topk_dense", "sparse_decode", "laplacian_loss"} <= ops
    for key, value in backends.AUTO_CUDA.items():
        assert value in ("triton", "cuda"), (key, value)
        assert any(op.startswith(key) for op in ops), f"AUTO_CUDA key {key!r} matches no op: {sorted(ops)}"
    assert backends.AUTO_CUDA_DEFAULT in ("triton", "cuda")
    for op in ops:
        assert backends.auto_cuda_choice(op) in ("triton", "cuda")


def test_longest_prefix_wins(monkeypatch):
    monkeypatch.setattr(backends, "AUTO_CUDA", {"ssim": "cuda", "ssim_stats_backward": "triton", "topk": "cuda"})
    assert backends.auto_cuda_choice("ssim_stats") == "cuda"
    assert backends.auto_cuda_choice("ssim_stats_backward") == "triton"
    assert backends.auto_cuda_choice("topk_sparse_backward") == "cuda"
    assert backends.auto_cuda_choice("laplacian_loss") == backends.AUTO_CUDA_DEFAULT
    assert backends.auto_cuda_choice(None) == backends.AUTO_CUDA_DEFAULT


def test_bad_table_entry_is_named(monkeypatch):
    monkeypatch.setattr(backends, "AUTO_CUDA", {"ssim": "cpu"})
    with pytest.raises(ValueError, match="AUTO_CUDA.*'ssim_stats'.*'cpu'"):
        backends.auto_cuda_choice("ssim_stats")


def test_auto_follows_the_table_then_falls_back(monkeypatch, machine):
    monkeypatch.setattr(backends, "AUTO_CUDA", {"ssim": "cuda", "topk": "triton"})
    machine(triton=True, cuda=True)
    assert backends.resolve("cuda", "ssim_stats") == "cuda"
    assert backends.resolve("cuda", "topk_dense") == "triton"
    assert backends.resolve("cuda") == backends.AUTO_CUDA_DEFAULT
    machine(triton=True, cuda=False)  # preferred one missing: the other compiled backend
    assert backends.resolve("cuda", "ssim_stats") == "triton"
    machine(triton=False, cuda=True)
    assert backends.resolve("cuda", "topk_dense") == "cuda"
    machine(triton=False, cuda=False)
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match="neither triton nor the CUDA extension"):
        assert backends.resolve("cuda", "ssim_stats") == "torch"
    # an explicit backend ignores the table; CPU tensors never consult it
    machine(triton=True, cuda=True)
    with backends.use("triton"):
        assert backends.resolve("cuda", "ssim_stats") == "triton"
    assert backends.resolve("cpu", "ssim_stats") in ("cpu", "torch")


def test_default_table_keeps_todays_choice(machine):
    # Triton for every op until a GPU measurement changes an entry (issue 13).
    machine(triton=True, cuda=True)
    for op in _dispatched_op_names():
        assert backends.resolve("cuda", op) == "triton", op


def test_dispatch_passes_the_op_name(monkeypatch, machine):
    monkeypatch.setattr(backends, "AUTO_CUDA", {"laplacian": "cuda"})
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    machine(triton=True, cuda=True)
    impls = dict(triton=lambda: "triton ran", cuda=lambda: "cuda ran", torch_=lambda: "torch ran")
    assert _dispatch.run("laplacian_loss", torch.device("cuda"), **impls) == "cuda ran"
    assert _dispatch.run("sparse_decode", torch.device("cuda"), **impls) == "triton ran"
