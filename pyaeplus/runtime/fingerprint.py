"""Cheap fingerprints that tell a resumed job whether it still works on the same data with the same code.

* :func:`data_fingerprint`: the dataset's length, type and per-sample shape/dtype, plus a hash of the
  content of up to ``rows`` samples spread evenly over it (first and last included) and, for file
  datasets, of their file list. Reading a few dozen samples costs milliseconds; a different dataset
  of the same length differs in the sampled rows unless the two agree on every one of them (pass a
  ``data_id`` to the caller for full control).
* :func:`callable_fingerprint`: a hash of a Python callable's code (bytecode, constants, names, default
  values, closure values that are plain data), not only its name: editing the function body changes it.
* :func:`tensor_digest`: sha256 of a tensor's shape, dtype and bytes.

Fingerprints are stable across processes (no ``id()`` or addresses enter them), for one Python
version: a new interpreter may compile the same source to other bytecode.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types
from typing import Any

import numpy as np
import torch

from .batches import first

__all__ = ["data_fingerprint", "callable_fingerprint", "tensor_digest"]

_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _tensor_bytes(h, t) -> None:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    t = t.detach()
    h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(t: torch.Tensor | np.ndarray) -> str:
    """Hex sha256 of ``t``'s shape, dtype and content."""
    h = hashlib.sha256()
    _tensor_bytes(h, t)
    return h.hexdigest()


def sample_rows(n: int, rows: int) -> list[int]:
    """Up to ``rows`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= rows:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (rows - 1))) for i in range(rows)})


def data_fingerprint(ds, n: int, *, rows: int = 64) -> str:
    """Fingerprint of a dataset of ``n`` samples (items ``x`` or ``(x, ...)``; ``get_batch`` used
    when present) from ``rows`` sampled samples, their shape and dtype, and the file list of
    datasets that have one (``files``)."""
    h = hashlib.sha256(f"{type(ds).__module__}.{type(ds).__qualname__}|{n}|".encode())
    idx = sample_rows(n, rows)
    if hasattr(ds, "get_batch"):
        batch = first(ds.get_batch(torch.as_tensor(idx, dtype=torch.int64)))
        _tensor_bytes(h, torch.as_tensor(batch))
    else:
        for i in idx:
            _tensor_bytes(h, torch.as_tensor(first(ds[i])))
    files = getattr(ds, "files", None)
    if isinstance(files, (list, tuple)):
        for f in files:
            h.update(str(f).encode() + b"\0")
    return h.hexdigest()


def _value(h, v, depth: int) -> None:
    """Content of a plain value (numbers, strings, containers, arrays); other objects by type only."""
    if isinstance(v, _PLAIN):
        h.update(f"{type(v).__name__}:{v!r};".encode())
    elif isinstance(v, (torch.Tensor, np.ndarray)):
        _tensor_bytes(h, v)
    elif isinstance(v, (tuple, list, frozenset, set)) and depth < 4:
        items = sorted(map(repr, v)) if isinstance(v, (set, frozenset)) else v
        h.update(f"{type(v).__name__}[{len(v)}](".encode())
        for e in items:
            _value(h, e, depth + 1)
        h.update(b")")
    elif isinstance(v, dict) and depth < 4:
        h.update(f"dict[{len(v)}](".encode())
        for k in sorted(v, key=repr):
            _value(h, k, depth + 1)
            _value(h, v[k], depth + 1)
        h.update(b")")
    elif callable(v) and depth < 4:
        _callable(h, v, depth + 1)
    else:
        h.update(f"<{type(v).__module__}.{type(v).__qualname__}>;".encode())


def _code(h, co: types.CodeType, depth: int) -> None:
    h.update(co.co_code)
    h.update(repr((co.co_names, co.co_varnames, co.co_argcount, co.co_kwonlyargcount)).encode())
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            _code(h, c, depth)
        else:
            _value(h, c, depth + 1)


def _callable(h, fn, depth: int) -> None:
    if isinstance(fn, functools.partial):
        h.update(b"partial:")
        _callable(h, fn.func, depth + 1)
        _value(h, list(fn.args), depth + 1)
        _value(h, dict(fn.keywords), depth + 1)
        return
    if inspect.ismethod(fn):
        h.update(f"method:{type(fn.__self__).__qualname__}:".encode())
        fn = fn.__func__
    code = getattr(fn, "__code__", None)
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    h.update(name.encode() + b"|")
    if isinstance(code, types.CodeType):
        _code(h, code, depth)
        _value(h, getattr(fn, "__defaults__", None), depth + 1)
        _value(h, getattr(fn, "__kwdefaults__", None), depth + 1)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                _value(h, cell.cell_contents, depth + 1)
            except ValueError:  # empty cell
                h.update(b"<empty>")
    elif not isinstance(fn, (types.BuiltinFunctionType, type)) and callable(fn):
        # a callable object: its class's __call__ and its plain attributes
        call = getattr(type(fn), "__call__", None)
        if call is not None and hasattr(call, "__code__"):
            _code(h, call.__code__, depth)
        _value(h, {k: v for k, v in sorted(vars(fn).items()) if not k.startswith("_")}
               if hasattr(fn, "__dict__") else None, depth + 1)


def callable_fingerprint(fn: Any) -> str:
    """Hex sha256 of a callable's code and plain-data state (see the module docstring)."""
    h = hashlib.sha256()
    _callable(h, fn, 0)
    return h.hexdigest()
