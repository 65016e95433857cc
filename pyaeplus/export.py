"""A deployable scorer: a model and its anomaly score (and optionally its per-pixel maps) as one
graph, written with ``torch.export`` (``.pt2``) or ONNX (``.onnx``).

The graph is traced through the very function :func:`pyaeplus.scoring.score` runs per batch, so the
exported scores are the library's scores. pyaeplus's custom ops (the fused SSIM, top-k, sparse
decoder kernels) are then replaced by their pure-PyTorch references (``pyaeplus/reference/``)
with ``ExportedProgram.run_decompositions``: the file needs neither pyaeplus nor its compiled
extensions to run, and ONNX sees standard operators only (convolutions, pads, pooling).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib

import torch

from .reference import sparse_decode as _ref_sparse_decode
from .reference import ssim as _ref_ssim
from .reference import topk as _ref_topk
from .reference import topk_encode as _ref_topk_encode
from .runtime.files import atomic_path

__all__ = ["Scorer", "export_scorer", "load_scorer", "EXPORTABLE_SCORES"]

EXPORTABLE_SCORES = ("model", "mse", "mae", "bce", "ssim", "ms_ssim", "svdd", "elbo")

# custom op -> its reference (same schema): the exported graph calls the reference instead
_REFERENCES = (("ssim_stats", _ref_ssim.ssim_stats), ("topk_dense", _ref_topk.topk_dense),
               ("topk_sparse", _ref_topk.topk_sparse), ("sparse_decode", _ref_sparse_decode.sparse_decode),
               ("topk_encode", _ref_topk_encode.topk_encode), ("batch_topk_encode", _ref_topk_encode.batch_topk_encode))


class Scorer(torch.nn.Module):
    """``forward(x) -> scores (N,)`` or ``(scores (N,), maps (N, H, W))``: the model and its score as
    one module, computed exactly as :func:`pyaeplus.scoring.score` does per batch (float32).

    Args:
        model: a model of ``pyaeplus.models`` (or any module with what the score needs).
        score: one of ``EXPORTABLE_SCORES`` (see ``pyaeplus.scoring.score``).
        maps: also return the per-pixel maps (1 - SSIM map for the SSIM scores, squared error otherwise).
    """

    def __init__(self, model: torch.nn.Module, score: str = "ssim", maps: bool = False):
        from .scoring.engine import _score_fn

        super().__init__()
        if score not in EXPORTABLE_SCORES:
            raise ValueError(f"score must be one of {EXPORTABLE_SCORES} to export (latent_knn needs its "
                             f"reference index at run time), got {score!r}")
        self.model, self.score_name, self.maps = model.eval(), score, bool(maps)
        self._fn = _score_fn(score, model, None, 5, self.maps)

    def forward(self, x: torch.Tensor):
        s, m = self._fn(x)
        return (s, m) if self.maps else s


def _topk_sparse_onnx(x: torch.Tensor, k: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # ONNX has no stable sort, but its TopK breaks ties by the lower index: the reference's order
    vals, idx = torch.topk(x, k, dim=-1, largest=True, sorted=True)
    return (torch.relu(vals) if relu else vals), idx


def _topk_dense_onnx(x: torch.Tensor, k: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    vals, idx = _topk_sparse_onnx(x, k, relu)
    return torch.zeros_like(x).scatter(-1, idx, vals), idx


def _topk_encode_onnx(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int,
                      relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _topk_sparse_onnx(_ref_topk_encode.pre_activation(x, weight, bias), k, relu)


def _decompositions(onnx: bool = False) -> dict:
    table = {}
    override = ({"topk_sparse": _topk_sparse_onnx, "topk_dense": _topk_dense_onnx, "topk_encode": _topk_encode_onnx}
                if onnx else {})
    for name, fn in _REFERENCES:
        op = getattr(torch.ops.pyaeplus, name, None)
        if op is not None:
            table[op.default] = override.get(name, fn)
    return table


def _example(model: torch.nn.Module, example) -> torch.Tensor:
    if example is not None:
        if not isinstance(example, torch.Tensor) or not example.is_floating_point() or example.dim() < 2:
            raise TypeError("example must be a float tensor (B, ...) shaped like the model's input")
        return example.detach().to(torch.float32)
    shape = getattr(model, "image_shape", None) or getattr(model, "feature_shape", None)
    if shape is None:
        base = getattr(model, "base", None)  # wrappers (LaplacianAE) keep the shape on the wrapped model
        shape = getattr(base, "image_shape", None) or getattr(base, "feature_shape", None)
    if shape is None:
        raise ValueError("example: the model does not say its input shape; pass example= (B, ...)")
    return torch.rand(2, *shape)


def export_program(model: torch.nn.Module, *, score: str = "ssim", maps: bool = False, example=None,
                   portable: bool = True, onnx: bool = False) -> torch.export.ExportedProgram:
    """The scorer as a ``torch.export.ExportedProgram`` with a dynamic batch dimension (see
    :func:`export_scorer`; ``onnx``: top-k through ``torch.topk``, which ONNX's TopK expresses)."""
    x = _example(model, example)
    if x.shape[0] < 2:  # a batch of 1 would be specialized into the graph
        x = x.expand(2, *x.shape[1:]).contiguous()
    scorer = Scorer(copy.deepcopy(model).to("cpu").float(), score, maps)  # the caller's model stays as it is
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        ep = torch.export.export(scorer, (x,), dynamic_shapes={"x": {0: batch}})
    return ep.run_decompositions(_decompositions(onnx)) if portable else ep


def export_scorer(model: torch.nn.Module, path: str | os.PathLike, *, score: str = "ssim", maps: bool = False,
                  example: torch.Tensor | None = None, portable: bool = True, opset: int | None = None) -> pathlib.Path:
    """Write the model with its score to ``path`` (``.pt2``: ``torch.export``; ``.onnx``: ONNX).

    Args:
        model: a model of ``pyaeplus.models``, e.g. ``pyaeplus.checkpoint.load_model(run_dir)``.
        path: ``*.pt2`` or ``*.onnx``; written atomically.
        score: the anomaly score, one of ``EXPORTABLE_SCORES`` (as in ``pyaeplus.scoring.score``).
        maps: also output the per-pixel maps (N, H, W).
        example: an input batch (B, ...) fixing the per-sample shape (default: random data of the
            model's ``image_shape``/``feature_shape``); the batch size stays dynamic.
        portable: replace pyaeplus's custom ops by their pure-PyTorch references (default; required for
            ONNX). ``False`` keeps the fused kernels in a ``.pt2``, which then needs ``import pyaeplus``
            before ``torch.export.load``.
        opset: ONNX opset version (default: torch's).

    Returns:
        The path written. Inputs: ``x`` float32 (B, ...); outputs ``scores`` (B,) [and ``maps``].
        :func:`load_scorer` runs either file.
    """
    p = pathlib.Path(path)
    fmt = p.suffix.lower()
    if fmt not in (".pt2", ".onnx"):
        raise ValueError(f"path must end in .pt2 or .onnx, got {str(path)!r}")
    if fmt == ".onnx" and not portable:
        raise ValueError("portable=False keeps pyaeplus custom ops, which ONNX cannot express; use a .pt2")
    if not p.parent.is_dir():
        raise ValueError(f"path: the directory {str(p.parent)!r} does not exist")
    ep = export_program(model, score=score, maps=maps, example=example, portable=portable, onnx=fmt == ".onnx")
    meta = {"pyaeplus.score": score, "pyaeplus.maps": str(bool(maps)), "pyaeplus.outputs":
            "scores,maps" if maps else "scores", "pyaeplus.model": str(getattr(model, "model_name", type(model).__name__)),
            "pyaeplus.sample_shape": json.dumps(list(ep.example_inputs[0][0].shape[1:]))}
    with atomic_path(p) as tmp:
        if fmt == ".pt2":
            torch.export.save(ep, tmp, extra_files={"pyaeplus.json": json.dumps(meta)})
        else:
            _write_onnx(ep, tmp, maps, opset, meta)
    return p


def _write_onnx(ep, path: pathlib.Path, maps: bool, opset, meta: dict) -> None:
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export needs onnx and onnxscript (pip install \"pyaeplus[export]\")") from None
    outputs = ["scores", "maps"] if maps else ["scores"]
    prog = torch.onnx.export(ep, (ep.example_inputs[0][0],), dynamo=True, input_names=["x"], output_names=outputs,
                             opset_version=opset, verbose=False)
    prog.save(str(path))
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, meta)
    onnx.save(m, str(path))


def load_scorer(path: str | os.PathLike):
    """A callable ``f(x) -> scores`` or ``(scores, maps)`` (numpy float32) for a file written by
    :func:`export_scorer`: ``.pt2`` through ``torch.export.load``, ``.onnx`` through onnxruntime."""
    import numpy as np

    p = pathlib.Path(path)
    if p.suffix.lower() == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])

        def run_onnx(x):
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            out = sess.run(None, {"x": x.astype(np.float32, copy=False)})
            return out[0] if len(out) == 1 else tuple(out)
        return run_onnx
    module = torch.export.load(str(p)).module()

    def run_pt2(x):
        with torch.no_grad():
            out = module(torch.as_tensor(x, dtype=torch.float32))
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()
    return run_pt2
