"""Bad inputs over the public API and ``torch.ops.pyaeplus.*`` (issue 18): each case runs in a
subprocess, so that a crash (SIGSEGV, SIGBUS, a FAISS abort) is counted as that case's failure
instead of ending the test run. Cases are batched: one interpreter runs them in order and reports
each on its own line; when it dies, the case it was running is recorded as crashed and a new
interpreter continues with the next one.

A case is ``(name, code, expect)``: ``code`` runs with the prelude below in scope; ``expect`` is
``"ok"`` (it must not raise; its own asserts check the result, e.g. against the reference) or
``"Err1|Err2: regex"`` (it must raise one of those exception classes, or a subclass, with a message
matching the regex). Cases only use public names, so the table also runs against older trees (the
``PYAEPLUS_BAD_INPUT_TREE`` environment variable puts one first on the path): that is how each
defect of the issue was shown to fail before its fix. The exhaustive variant (``-m slow``) perturbs
every tensor argument of every op in every way and only asks for "no crash, an error or a finite
result".
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import PYTHON

PRELUDE = textwrap.dedent('''
    import contextlib, io, json, math, os, pathlib, signal, subprocess, sys, tempfile, time
    import numpy as np
    import torch
    import pyaeplus
    from pyaeplus import models, scoring, train, checkpoint
    from pyaeplus import nn as pnn
    from pyaeplus.graph import Graph, knn_graph, KnnIndex
    ops = torch.ops.pyaeplus
    torch.set_num_threads(1)

    class Skip(Exception):
        pass

    def tmpdir():
        return pathlib.Path(tempfile.mkdtemp(prefix="pyaeplus-bad-"))

    def conv(seed=0):
        torch.manual_seed(seed)
        return models.build("conv", in_channels=1, channels=[4, 8], latent=6, input_shape=[16, 16]).eval()

    def dense(seed=0):
        torch.manual_seed(seed)
        return models.build("dense", in_features=12, hidden=[8], latent=3)

    def imgs(n, seed):
        return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))

    def cli(argv):
        """(exit status, stderr) of `pyaeplus argv` run in this process."""
        from pyaeplus.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
        return rc, err.getvalue().strip()

    def one_line_exit_2(argv, *words):
        rc, err = cli(argv)
        assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (rc, err)
        for w in words:
            assert w in err, (w, err)

    def csr3():
        """A valid 3-node CSR (z, indptr, indices, weights) for direct op calls."""
        return (torch.randn(3, 4), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 0]), torch.ones(3))

    def sd_args(B=4, K=3, D=8, N=5, dtype=torch.float32):
        return (torch.randn(B, K, dtype=dtype), torch.randint(0, D, (B, K)), torch.randn(D, N, dtype=dtype))

    def ssim_args():
        x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
        return x, y, torch.ones(7) / 7

    def no_cuda():
        if torch.cuda.is_available():
            raise Skip("CUDA is available here")

    def interrupted_scoring(out, data, chunks=2):
        """A scoring run on data that stops after `chunks` chunks, its parts kept for a resume."""
        global STOP_AFTER, CALLS
        STOP_AFTER, CALLS = chunks, 0
        try:
            scoring.score(conv(), data, score=stopping_mse, batch_size=8, chunk_size=8, out=out, progress=False)
        except RuntimeError:
            pass
        STOP_AFTER = None

    STOP_AFTER, CALLS = None, 0

    def stopping_mse(model, x):
        global CALLS
        CALLS += 1
        if STOP_AFTER is not None and CALLS > STOP_AFTER:
            raise RuntimeError("stop")
        return ((model(x) - x) ** 2).flatten(1).mean(1)
''')

RUNNER = textwrap.dedent('''
    import json, re, sys, traceback
    tree = __import__("os").environ.get("PYAEPLUS_BAD_INPUT_TREE")
    if tree:
        sys.path.insert(0, tree)
    cases = json.load(sys.stdin)
    prelude = cases.pop(0)["prelude"]
    exec(compile(prelude, "<prelude>", "exec"), base := {"__name__": "bad_inputs"})
    for case in cases:
        ns = dict(base)
        status, detail = "pass", ""
        try:
            exec(compile(case["code"], case["name"], "exec"), ns)
            if case["expect"] != "ok":
                status, detail = "fail", "no error was raised (silent accept)"
        except BaseException as e:  # noqa: BLE001
            names = {c.__name__ for c in type(e).__mro__}
            if type(e).__name__ == "Skip":
                status, detail = "skip", str(e)
            elif case["expect"] == "ok":
                status, detail = "fail", f"raised {type(e).__name__}: {e}"[:600]
            else:
                kinds, _, rx = case["expect"].partition(": ")
                if not names & set(kinds.split("|")):
                    status, detail = "fail", f"raised {type(e).__name__} (expected {kinds}): {e}"[:600]
                elif not re.search(rx, str(e), re.S):
                    status, detail = "fail", f"message {str(e)[:400]!r} does not match {rx!r}"
        print(json.dumps({"name": case["name"], "status": status, "detail": detail}), flush=True)
''')


def run_cases(cases, timeout: float = 600.0) -> dict[str, tuple[str, str]]:
    """name -> (status, detail) for every case; a case during which the interpreter died is
    ``("crash", signal or exit status)``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="0")
    if "TRITON_INTERPRET" not in env and not glob.glob("/dev/nvidia[0-9]*"):
        env["TRITON_INTERPRET"] = "1"
    results: dict[str, tuple[str, str]] = {}
    todo = list(cases)
    while todo:
        payload = json.dumps([{"prelude": PRELUDE}] + [{"name": n, "code": textwrap.dedent(c), "expect": e}
                                                       for n, c, e in todo])
        p = subprocess.run([*PYTHON, "-c", RUNNER], input=payload, capture_output=True, text=True,
                           timeout=timeout, env=env)
        for line in p.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                results[r["name"]] = (r["status"], r["detail"])
        done = {n for n, _, _ in todo if n in results}
        rest = [c for c in todo if c[0] not in done]
        if not rest:
            break
        if p.returncode == 0:
            raise AssertionError(f"the runner skipped cases: {[c[0] for c in rest]}\n{p.stderr[-2000:]}")
        how = f"signal {-p.returncode}" if p.returncode < 0 else f"exit status {p.returncode}: {p.stderr[-300:]}"
        results[rest[0][0]] = ("crash", how)
        todo = rest[1:]
    return results


# ---- the table -----------------------------------------------------------------------------------
E = "ValueError|TypeError"

OPS = [
    # laplacian_loss (defect 3: SIGSEGV before)
    ("lap_op_int32_csr", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip.int(), ix.int(), w, None, 1, 1.0, False)",
     f"{E}: indptr must be"),
    ("lap_op_index_out_of_range", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip, torch.tensor([10**9, 0, 1]), w, "
     "None, 1, 1.0, False)", f"{E}: outside \\[0, N\\)"),
    ("lap_op_index_negative", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip, torch.tensor([-1, 0, 1]), w, None, "
     "1, 1.0, True)", f"{E}: outside"),
    ("lap_op_short_indptr", "ops.laplacian_loss(torch.randn(300, 4), torch.tensor([0, 1]), torch.tensor([0]), "
     "torch.ones(1), None, 1, 1.0, False)", f"{E}: indptr must be \\(301,\\)"),
    ("lap_op_indptr_decreasing", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, torch.tensor([0, 2, 1, 3]), ix, w, "
     "None, 1, 1.0, False)", f"{E}: non-decreasing"),
    ("lap_op_indptr_end", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, torch.tensor([0, 1, 2, 9]), ix, w, None, 1, "
     "1.0, False)", f"{E}: end at nnz"),
    ("lap_op_indptr_huge", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, torch.tensor([0, 10**12, 2, 3]), ix, w, "
     "None, 0, 1.0, False)", f"{E}: non-decreasing"),
    ("lap_op_short_weights", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip, ix, torch.ones(1), None, 1, 1.0, "
     "False)", f"{E}: weights must be \\(3,\\)"),
    ("lap_op_float64_weights", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip, ix, w.double(), None, 1, 1.0, "
     "False)", f"{E}: float32"),
    ("lap_op_short_scale", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip, ix, w, torch.ones(1), 1, 1.0, False)",
     f"{E}: scale must be"),
    ("lap_op_reduction_code", "z, ip, ix, w = csr3(); ops.laplacian_loss(z, ip, ix, w, None, 7, 1.0, False)",
     f"{E}: reduction code"),
    ("lap_op_backward_short_grad", "z, ip, ix, w = csr3(); ops._laplacian_loss_backward(torch.ones(2), z, ip, ix, w, "
     "None, torch.empty(0, 4), 0, 1.0)", f"{E}: grad_out"),
    ("lap_op_strided_csr_ok", """
        z, ip, ix, w = csr3()
        ix2 = torch.stack([ix, torch.zeros_like(ix)], 1)[:, 0]   # a strided view
        a = ops.laplacian_loss(z, ip, ix2, w, None, 1, 1.0, False)[0]
        b = ops.laplacian_loss(z, ip, ix, w, None, 1, 1.0, False)[0]
        assert torch.equal(a, b)
     """, "ok"),
    ("lap_graph_int32_validate_false", """
        ip, ix = torch.tensor([0, 2, 3, 4], dtype=torch.int32), torch.tensor([1, 2, 0, 0], dtype=torch.int32)
        z = torch.randn(3, 4)
        a = pyaeplus.laplacian_loss(z, Graph(ip, ix, torch.ones(4), validate=False))
        b = pyaeplus.laplacian_loss(z, Graph(ip.long(), ix.long(), torch.ones(4)))
        assert torch.allclose(a, b)
     """, "ok"),
    ("lap_graph_validate_false_float_indices", "Graph(torch.tensor([0., 1.]), torch.tensor([0.]), validate=False)",
     f"{E}: int64"),
    ("graph_from_edges_weights_length", "Graph.from_edges(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), "
     "torch.ones(2))", f"{E}: one value per edge"),
    # sparse_decode (defect 4: garbage before)
    ("sd_fp16_weight_fp32_values", "v, i, w = sd_args(); ops.sparse_decode(v, i, w.half(), None)", f"{E}: dtype"),
    ("sd_short_bias", "v, i, w = sd_args(N=5000); ops.sparse_decode(v, i, w, torch.randn(2))",
     f"{E}: bias must be \\(5000,\\)"),
    ("sd_bias_dtype", "v, i, w = sd_args(); ops.sparse_decode(v, i, w, torch.randn(5).double())", f"{E}: bias"),
    ("sd_indices_shape", "v, i, w = sd_args(); ops.sparse_decode(v, i[:, :2], w, None)", f"{E}: indices must be"),
    ("sd_float_indices", "v, i, w = sd_args(); ops.sparse_decode(v, i.float(), w, None)", f"{E}: int64"),
    ("sd_weight_without_rows", "v, i, w = sd_args(); ops.sparse_decode(v, i * 0, torch.randn(0, 5), None)",
     f"{E}: at least one row|invalid sizes"),
    ("sd_index_out_of_range_cpu", "v, i, w = sd_args(); i[1, 1] = 8; ops.sparse_decode(v, i, w, None)",
     f"{E}: out of range"),
    ("sd_noncontiguous_ok", """
        v, i, w = sd_args()
        vt = v.t().contiguous().t()
        assert torch.allclose(ops.sparse_decode(vt, i, w, None), pyaeplus.reference.sparse_decode.sparse_decode(v, i, w, None),
                              atol=1e-5)
     """, "ok"),
    ("sd_grad_values_rows", "v, i, w = sd_args(); ops._sparse_decode_grad_values(torch.randn(2, 5), i, w)",
     f"{E}: indices must be \\(B=2"),
    ("sd_grad_values_cols", "v, i, w = sd_args(); ops._sparse_decode_grad_values(torch.randn(4, 6), i, w)",
     f"{E}: grad_out must be \\(B, 5\\)"),
    ("sd_grad_values_dtype", "v, i, w = sd_args(); ops._sparse_decode_grad_values(torch.randn(4, 5).double(), i, w)",
     f"{E}: grad_out must be"),
    ("sd_grad_weight_values_dtype", "v, i, w = sd_args(); ops._sparse_decode_grad_weight(torch.randn(4, 5), "
     "v.double(), i, w)", f"{E}: values must have weight's dtype"),
    ("sd_grad_weight_values_shape", "v, i, w = sd_args(); ops._sparse_decode_grad_weight(torch.randn(4, 5), "
     "v[:, :2], i, w)", f"{E}: the shape of values"),
    ("sd_backward_short_grad", "v, i, w = sd_args(); ops._sparse_decode_backward(torch.randn(1, 5), v, i, w)",
     f"{E}: indices must be \\(B=1"),
    # ssim_stats(_backward)
    ("ssim_bwd_grad_numel_1", """
        x, y, win = ssim_args(); g = torch.ones(1)
        ops._ssim_stats_backward(g, g, g, None, x, y, win, 1e-4, 9e-4, 1)
     """, f"{E}: grad_ssim must be a floating \\(2, 1\\)"),
    ("ssim_bwd_grad_map_shape", """
        x, y, win = ssim_args(); g = torch.ones(2, 1)
        ops._ssim_stats_backward(g, g, g, torch.ones(2, 1, 3, 3), x, y, win, 1e-4, 9e-4, 1)
     """, f"{E}: grad_map must be"),
    ("ssim_bwd_grad_int", """
        x, y, win = ssim_args(); g = torch.ones(2, 1)
        ops._ssim_stats_backward(g.long(), g, g, None, x, y, win, 1e-4, 9e-4, 0)
     """, f"{E}: grad_ssim must be a floating"),
    ("ssim_fwd_int_images", "x, y, win = ssim_args(); ops.ssim_stats(x.long(), y.long(), win, 1e-4, 9e-4, 1, False)",
     f"{E}: floating|dtype"),
    ("ssim_fwd_int_window", "x, y, win = ssim_args(); ops.ssim_stats(x, y, torch.arange(7), 1e-4, 9e-4, 1, False)",
     f"{E}: floating"),
    ("ssim_fwd_even_window", "x, y, win = ssim_args(); ops.ssim_stats(x, y, torch.ones(4), 1e-4, 9e-4, 1, False)",
     f"{E}: odd"),
    # topk backward (defect 4)
    ("topk_sparse_bwd_short_grad", "ops._topk_sparse_backward(torch.randn(4, 1), torch.randint(0, 8, (4, 3)), None, 8)",
     f"{E}: grad must be a floating \\(B, 3\\)"),
    ("topk_sparse_bwd_mask_dtype", "ops._topk_sparse_backward(torch.randn(4, 3), torch.randint(0, 8, (4, 3)), "
     "torch.rand(4, 3).double(), 8)", f"{E}: mask"),
    ("topk_sparse_bwd_mask_shape", "ops._topk_sparse_backward(torch.randn(4, 3), torch.randint(0, 8, (4, 3)), "
     "torch.rand(4, 2), 8)", f"{E}: mask"),
    ("topk_sparse_bwd_index_out_of_range_cpu", "i = torch.randint(0, 8, (4, 3)); i[2, 0] = 9; "
     "ops._topk_sparse_backward(torch.randn(4, 3), i, None, 8)", f"{E}: outside"),
    ("topk_sparse_bwd_int32_indices", "ops._topk_sparse_backward(torch.randn(4, 3), torch.randint(0, 8, (4, 3)).int(), "
     "None, 8)", f"{E}: int64"),
    ("topk_sparse_bwd_D_0", "ops._topk_sparse_backward(torch.randn(4, 0), torch.zeros(4, 0, dtype=torch.long), None, 0)",
     f"{E}: D must be|D >= 1"),
    ("topk_dense_bwd_mask_shape", "ops._topk_dense_backward(torch.randn(4, 8), torch.randint(0, 8, (4, 3)), "
     "torch.rand(4, 7))", f"{E}: mask"),
    ("topk_sparse_int_x", "ops.topk_sparse(torch.randint(0, 9, (4, 8)), 2, False)", f"{E}: floating|dtype"),
    ("topk_sparse_k_too_large", "ops.topk_sparse(torch.randn(4, 8), 9, False)", f"{E}: k must be"),
]

TRITON = [
    # the launchers themselves mask out-of-range indices (no sync to raise on a GPU)
    ("triton_topk_backward_masks_indices", """
        from pyaeplus.kernels import topk as K
        g = torch.randn(3, 4)
        idx = torch.tensor([[0, 5, -1, 7], [99, 1, 2, 3], [4, -7, 6, 2**40]])
        for gather, grad in ((False, g), (True, torch.randn(3, 8))):
            out = K.topk_backward(grad, gather, None, idx, 8)
            want = torch.zeros(3, 8)
            for r in range(3):
                for j in range(4):
                    c = int(idx[r, j])
                    if 0 <= c < 8:
                        want[r, c] = grad[r, c] if gather else grad[r, j]
            assert torch.equal(out, want), (out, want)
     """, "ok"),
    ("triton_laplacian_masks_indices_and_indptr", """
        from pyaeplus.kernels import laplacian as K
        from pyaeplus.reference import laplacian as R
        z = torch.randn(4, 3)
        ip = torch.tensor([0, 2, 3, 3, 5])
        ix = torch.tensor([1, 77, -2, 0, 3])          # 77 and -2 are out of range
        w = torch.tensor([1.0, 5.0, 5.0, 2.0, 1.0])
        rows, grad = K.laplacian_rows_grad(z, ip, ix, w, None, None, 1.0, True, True)
        keep = (ix >= 0) & (ix < 4)
        ip2 = torch.tensor([0, 1, 1, 1, 3])
        r2, g2 = R.laplacian_rows_grad(z, ip2, ix[keep], w[keep], None, None, 1.0, True, True)
        assert torch.allclose(rows, r2, atol=1e-5) and torch.allclose(grad, g2, atol=1e-5), (rows, r2)
        bad_ip = torch.tensor([-5, 2, 3, 99, 5])      # clamped to [0, nnz]: no read outside indices
        rows, grad = K.laplacian_rows_grad(z, bad_ip, ix.clamp(0, 3), w, None, None, 1.0, True, True)
        assert torch.isfinite(rows).all() and torch.isfinite(grad).all()
     """, "ok"),
]

FAISS = [
    ("hnsw_M_0", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='hnsw', index_params={'M': 0}, "
     "progress=False)", f"{E}: index_params\\['M'\\] must be >= 2"),
    ("hnsw_M_minus_5", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='hnsw', index_params={'M': -5}, "
     "progress=False)", f"{E}: index_params\\['M'\\]"),
    ("hnsw_M_1_index", "KnnIndex(torch.randn(100, 8), backend='faiss', index='hnsw', index_params={'M': 1})",
     f"{E}: index_params\\['M'\\]"),
    ("hnsw_ef_search_0", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='hnsw', "
     "index_params={'ef_search': 0}, progress=False)", f"{E}: ef_search"),
    ("ivf_nprobe_minus_1", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='ivf', "
     "index_params={'nprobe': -1}, progress=False)", f"{E}: nprobe"),
    ("ivf_nlist_0", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='ivf', index_params={'nlist': 0}, "
     "progress=False)", f"{E}: nlist"),
    ("ivf_nlist_above_rows", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='ivf', "
     "index_params={'nlist': 300}, progress=False)", f"{E}: nlist.*<= 100"),
    ("ivf_unknown_parameter", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index='ivf', "
     "index_params={'nprobes': 4}, progress=False)", f"{E}: not parameters of index='ivf'"),
    ("flat_with_parameters", "knn_graph(torch.randn(100, 8), 5, backend='faiss', index_params={'M': 8}, "
     "progress=False)", f"{E}: not parameters of index='flat'"),
]

SILENT = [
    ("latent_knn_k_above_reference", "x = imgs(16, 1); scoring.score(conv(), x, score='latent_knn', "
     "knn_reference=x[:3], k=5, progress=False)", f"{E}: k=5 .*3"),
    ("fit_batch_sampler_negative_id", "train.fit(dense(), torch.rand(8, 12), epochs=1, batch_sampler=[[0, 1], [-1, 2]], "
     "progress=False)", f"{E}: row id -1"),
    ("fit_batch_sampler_fractional_id", "train.fit(dense(), torch.rand(8, 12), epochs=1, batch_sampler=[[0.5, 1]], "
     "progress=False)", f"{E}: integer row ids"),
    ("fit_batch_sampler_id_too_large", "train.fit(dense(), torch.rand(8, 12), epochs=1, batch_sampler=[[0, 8]], "
     "progress=False)", f"{E}: outside \\[0, 8\\)"),
    ("sparse_decoder_2_7", "pnn.SparseDecoder(2.7, 4)", f"{E}: num_latents must be an int"),
    ("score_chunk_size_2_5", "scoring.score(conv(), imgs(8, 1), chunk_size=2.5, progress=False)",
     f"{E}: chunk_size must be an int"),
    ("metrics_nan_labels", "scoring.metrics(np.arange(4.0), np.array([0, 1, np.nan, 0]))", f"{E}: NaN"),
    ("threshold_percentile_200", "scoring.threshold(np.arange(10.0), 'percentile', q=200)", f"{E}: percentile"),
    ("image_folder_mixed_sizes", """
        from PIL import Image
        from pyaeplus.data import ImageFolder
        d = tmpdir()
        Image.new("L", (28, 28)).save(d / "a.png")
        Image.new("L", (32, 30)).save(d / "b.png")
        ImageFolder(d)
     """, f"{E}: differ in size.*size=\\(H, W\\)"),
    ("meta_topk_activation", "pyaeplus.topk_activation(torch.randn(4, 8, device='meta'), 2)", f"{E}: meta"),
    ("meta_laplacian_loss", "pyaeplus.laplacian_loss(torch.randn(3, 4, device='meta'), Graph.from_edges("
     "torch.tensor([0, 1]), torch.tensor([1, 2]), num_nodes=3).to('meta'))", f"{E}: meta"),
    ("meta_model_loss", "dense().loss(torch.randn(4, 12, device='meta'))", f"{E}: meta tensor"),
    ("meta_model_score", "dense().score(torch.randn(4, 12, device='meta'))", f"{E}: meta tensor"),
    ("meta_fit_model", """
        with torch.device("meta"):
            m = models.build("dense", in_features=12, hidden=[8], latent=3)
        train.fit(m, torch.rand(8, 12), epochs=1, progress=False)
     """, f"{E}: meta tensor"),
    ("meta_fit_data", "train.fit(dense(), torch.rand(8, 12, device='meta'), epochs=1, progress=False)",
     f"{E}: train_data is a meta tensor"),
    ("score_device_cuda_without_cuda", "no_cuda(); scoring.score(conv(), imgs(8, 1), device='cuda', progress=False)",
     f"{E}: CUDA is not available"),
    ("fit_device_cuda_without_cuda", "no_cuda(); train.fit(dense(), torch.rand(8, 12), epochs=1, device='cuda', "
     "progress=False)", f"{E}: CUDA is not available"),
    ("fit_resume_bad_value", "train.fit(dense(), torch.rand(8, 12), epochs=1, resume='yes', checkpoint_dir=tmpdir(), "
     "progress=False)", f"{E}: resume must be"),
]

CLI = [
    ("cli_demo_epochs_0", "one_line_exit_2(['demo', '--epochs', '0'], '--epochs')", "ok"),
    ("cli_demo_epochs_minus_1", "one_line_exit_2(['demo', '--epochs', '-1'], '--epochs')", "ok"),
    ("cli_demo_batch_size_0", "one_line_exit_2(['demo', '--batch-size', '0'], '--batch-size')", "ok"),
    ("cli_demo_lr_minus_1", "one_line_exit_2(['demo', '--lr', '-1'], '--lr')", "ok"),
    ("cli_demo_device_cuda", "no_cuda(); one_line_exit_2(['demo', '--device', 'cuda'], 'CUDA')", "ok"),
    ("cli_train_classes_letters", "one_line_exit_2(['train', '--model', 'dense', '--data', 'npy:x.npy', "
     "'--classes', 'a,b'], '--classes')", "ok"),
    ("cli_score_device_cuda", "no_cuda(); one_line_exit_2(['score', '--checkpoint', 'c', '--data', 'x.npy', "
     "'--out', 's.npy', '--device', 'cuda'], 'CUDA')", "ok"),
    ("cli_score_threshold_nan_inf_q200_before_scoring", """
        d = tmpdir()
        checkpoint.save_checkpoint(d / "c", conv())
        np.save(d / "x.npy", imgs(8, 1).numpy())
        for thr in ("nan", "inf", "-inf", "percentile:q=200", "nope:q=1"):
            one_line_exit_2(["score", "--checkpoint", str(d / "c"), "--data", str(d / "x.npy"), "--out",
                             str(d / "s.npy"), "--threshold", thr], "--threshold")
            assert not (d / "s.npy").exists() and not (d / "s.npy.parts").exists(), thr
     """, "ok"),
]

SCENARIOS = [
    # defect 1: another dataset of the same length into an interrupted run's out
    ("resume_with_other_data_same_length", """
        d = tmpdir(); a, b = imgs(64, 1), imgs(64, 2)
        interrupted_scoring(d / "s.npy", a)
        scoring.score(conv(), b, score=stopping_mse, batch_size=8, chunk_size=8, out=d / "s.npy", progress=False)
     """, f"{E}: data"),
    ("resume_with_edited_score_callable", """
        d = tmpdir(); a = imgs(64, 1)
        interrupted_scoring(d / "s.npy", a)
        def stopping_mse(model, x):  # same name, other code
            return ((model(x) - x) ** 2).flatten(1).sum(1)
        scoring.score(conv(), a, score=stopping_mse, batch_size=8, chunk_size=8, out=d / "s.npy", progress=False)
     """, f"{E}: score"),
    # defect 2: a ledger that lists deleted chunks; two writers
    ("resume_after_parts_were_removed", """
        d = tmpdir(); a = imgs(64, 1)
        interrupted_scoring(d / "s.npy", a, chunks=3)
        sorted((d / "s.npy.parts").glob("part-*.npy"))[0].unlink()
        got = scoring.score(conv(), a, score=stopping_mse, batch_size=8, chunk_size=8, out=d / "s.npy", progress=False)
        want = scoring.score(conv(), a, score=stopping_mse, batch_size=8, progress=False)
        assert got.tobytes() == want.tobytes()
     """, "ok"),
    ("second_writer_on_one_out", """
        d = tmpdir()
        job = (f"import sys, time, torch; sys.path[:0] = {sys.path[:3]!r}\\n"
               "from pyaeplus import models, scoring\\n"
               "def sc(m, x):\\n    time.sleep(0.3)\\n    return ((m(x) - x) ** 2).flatten(1).mean(1)\\n"
               "torch.manual_seed(0)\\n"
               "m = models.build('conv', in_channels=1, channels=[4, 8], latent=6, input_shape=[16, 16]).eval()\\n"
               f"scoring.score(m, torch.rand(200, 1, 16, 16), score=sc, batch_size=8, chunk_size=8, out={str(d / 's.npy')!r}, progress=False)\\n")
        p = subprocess.Popen([sys.executable, "-c", job])
        try:
            t0 = time.time()
            while not list((d / "s.npy.parts").glob("part-*")) and time.time() - t0 < 60:
                time.sleep(0.1)
            scoring.score(conv(), torch.rand(200, 1, 16, 16), batch_size=8, chunk_size=8, out=d / "s.npy",
                          progress=False, resume=False)
        finally:
            p.kill(); p.wait()
     """, "RuntimeError: being written by process"),
    # defect 5: a full disk under maps=True (SIGBUS before); temporaries of a killed save
    ("maps_on_a_full_disk", """
        d = tmpdir(); mnt = d / "mnt"; mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True).returncode:
            raise Skip("cannot mount a tmpfs here")
        try:
            scoring.score(conv(), imgs(96, 1), score="mse", batch_size=8, chunk_size=16, out=mnt / "s.npy",
                          maps=True, progress=False)
        finally:
            leaked = [p.name for p in mnt.rglob("*") if "tmp" in p.name]
            subprocess.run(["umount", "-l", str(mnt)])
            assert not leaked, leaked
     """, "OSError: No space left|No space left on device"),
    ("killed_checkpoint_save_leaves_no_temporaries", """
        d = tmpdir()
        checkpoint.save_checkpoint(d / "c", dense())
        pid = os.fork()
        if pid == 0:
            os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
            checkpoint.save_checkpoint(d / "c", dense(1))
            os._exit(0)
        os.waitpid(pid, 0)
        checkpoint.save_checkpoint(d / "c2", dense())
        checkpoint.load_model(d / "c")
        left = sorted(p.name for p in d.iterdir())
        assert left == ["c", "c2"], left
     """, "ok"),
    # defect 6: checkpoints
    ("flipped_byte_in_tensor_data", """
        d = tmpdir(); checkpoint.save_checkpoint(d / "c", dense())
        f = d / "c" / "model.safetensors"; b = bytearray(f.read_bytes()); b[-1] ^= 0x40; f.write_bytes(bytes(b))
        checkpoint.load_checkpoint(d / "c", dense())
     """, f"{E}: model.safetensors"),
    ("resume_with_latest_missing_its_config", """
        d = tmpdir()
        train.fit(dense(), torch.rand(16, 12), epochs=1, checkpoint_dir=d, progress=False, device="cpu")
        (checkpoint.latest_checkpoint(d) / "config.json").unlink()
        train.fit(dense(), torch.rand(16, 12), epochs=2, checkpoint_dir=d, resume=True, progress=False, device="cpu")
     """, f"{E}: config.json"),
]

CASES = OPS + TRITON + FAISS + SILENT + CLI + SCENARIOS


def test_case_names_are_unique():
    names = [n for n, _, _ in CASES]
    assert len(names) == len(set(names))


def test_bad_input_table():
    results = run_cases(CASES)
    bad = {n: r for n, r in results.items() if r[0] in ("fail", "crash")}
    assert set(results) == {n for n, _, _ in CASES}
    assert not bad, "\n".join(f"{n}: {s}: {d}" for n, (s, d) in sorted(bad.items()))


# ---- the exhaustive variant ----------------------------------------------------------------------------

def _perturbations(name: str) -> list[tuple[str, str]]:
    """Ways to spoil the tensor argument ``name`` (Python expressions over it)."""
    return [("float64", f"{name}.double()"), ("float16", f"{name}.half()"), ("int64", f"{name}.long()"),
            ("int32", f"{name}.int()"), ("empty", f"{name}.reshape(-1)[:0]"), ("short", f"{name}.reshape(-1)[:1]"),
            ("long", f"torch.cat([{name}.reshape(-1)] * 3)"), ("extra_dim", f"{name}.unsqueeze(0)"),
            ("strided", f"{name}.unsqueeze(-1).expand(*{name}.shape, 2)[..., 0]"),
            ("huge_values", f"({name} * 0 + 2**40).to({name}.dtype)"),
            ("negative_values", f"({name} * 0 - 3).to({name}.dtype)")]


OP_CALLS = {
    "laplacian_loss": ("z, indptr, indices, weights = csr3(); scale = torch.ones(3)",
                       "ops.laplacian_loss(z, indptr, indices, weights, scale, 1, 1.0, True)",
                       ("z", "indptr", "indices", "weights", "scale")),
    "_laplacian_loss_backward": ("z, indptr, indices, weights = csr3(); g = torch.ones(3); saved = torch.empty(0, 4)",
                                "ops._laplacian_loss_backward(g, z, indptr, indices, weights, None, saved, 0, 1.0)",
                                ("g", "z", "indptr", "indices", "weights", "saved")),
    "sparse_decode": ("values, indices, weight = sd_args(); bias = torch.randn(5)",
                      "ops.sparse_decode(values, indices, weight, bias)", ("values", "indices", "weight", "bias")),
    "_sparse_decode_grad_values": ("values, indices, weight = sd_args(); g = torch.randn(4, 5)",
                                   "ops._sparse_decode_grad_values(g, indices, weight)", ("g", "indices", "weight")),
    "_sparse_decode_grad_weight": ("values, indices, weight = sd_args(); g = torch.randn(4, 5)",
                                   "ops._sparse_decode_grad_weight(g, values, indices, weight)",
                                   ("g", "values", "indices", "weight")),
    "_sparse_decode_backward": ("values, indices, weight = sd_args(); g = torch.randn(4, 5)",
                                "ops._sparse_decode_backward(g, values, indices, weight)",
                                ("g", "values", "indices", "weight")),
    "ssim_stats": ("x, y, window = ssim_args()", "ops.ssim_stats(x, y, window, 1e-4, 9e-4, 1, True)",
                   ("x", "y", "window")),
    "_ssim_stats_backward": ("x, y, window = ssim_args(); gs = torch.ones(2, 1); gm = torch.ones(2, 1, 16, 16)",
                            "ops._ssim_stats_backward(gs, gs.clone(), gs.clone(), gm, x, y, window, 1e-4, 9e-4, 1)",
                            ("gs", "gm", "x", "y", "window")),
    "topk_sparse": ("x = torch.randn(4, 8)", "ops.topk_sparse(x, 3, True)", ("x",)),
    "_topk_sparse_backward": ("g = torch.randn(4, 3); indices = torch.randint(0, 8, (4, 3)); mask = torch.rand(4, 3)",
                             "ops._topk_sparse_backward(g, indices, mask, 8)", ("g", "indices", "mask")),
    "_topk_dense_backward": ("g = torch.randn(4, 8); indices = torch.randint(0, 8, (4, 3)); y = torch.rand(4, 8)",
                            "ops._topk_dense_backward(g, indices, y)", ("g", "indices", "y")),
}


_CHECK_AGAINST_REFERENCE = """
def _flat(o):
    return [t for t in (o if isinstance(o, (tuple, list)) else [o]) if isinstance(t, torch.Tensor)]

try:
    out = CALL
except (ValueError, TypeError, IndexError):
    out = None
if out is not None:  # accepted: the compiled kernel must agree with the reference on these very inputs
    try:
        with pyaeplus.backends.use("torch"):
            want = CALL
    except Exception:
        want = None
    if want is not None:
        for a, b in zip(_flat(out), _flat(want)):
            assert a.shape == b.shape, (a.shape, b.shape)
            if COMPARE_VALUES and a.is_floating_point() and a.numel():
                tol = 5e-2 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4
                scale = max(1.0, float(b.double().abs().nan_to_num(0, 0, 0).max()))  # huge inputs: cancellation
                assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * scale, equal_nan=True), "differs"
"""


def _exhaustive_cases():
    cases = []
    for op, (setup, call, args) in OP_CALLS.items():
        for arg in args:
            for how, expr in _perturbations(arg):
                # SSIM of images at 2^40 is rounding noise in float32 (the one-pass variance E[x^2] - mu^2
                # cancels 2^80 against 2^80) in the reference and the kernels alike, and the noise depends on
                # the summation order: only the shapes (and the absence of a crash) are compared there
                compare = not ("ssim_stats" in op and how == "huge_values")
                code = (f"{setup}\n{arg} = {expr}\nCOMPARE_VALUES = {compare}\n"
                        + _CHECK_AGAINST_REFERENCE.replace("CALL", call))
                cases.append((f"{op}:{arg}:{how}", code, "ok"))
    return cases


@pytest.mark.slow
def test_exhaustive_op_perturbations():
    """Every tensor argument of every op, spoiled in every way: an error before the kernel, or a
    result equal to the reference's on the same inputs; never a crash, never garbage."""
    results = run_cases(_exhaustive_cases(), timeout=1800)
    bad = {n: r for n, r in results.items() if r[0] in ("fail", "crash")}
    assert not bad, "\n".join(f"{n}: {s}: {d}" for n, (s, d) in sorted(bad.items()))


# ---- on a GPU: the kernels mask what they cannot check without a sync ---------------------------

@pytest.mark.gpu
def test_cuda_and_triton_kernels_mask_bad_indices():
    import torch

    import pyaeplus
    from pyaeplus.reference import laplacian as R

    dev = "cuda"
    z = torch.randn(4, 3, device=dev)
    ip = torch.tensor([0, 2, 3, 3, 5], device=dev)
    ix = torch.tensor([1, 77, -2, 0, 3], device=dev)      # 77 and -2 out of range
    w = torch.tensor([1.0, 5.0, 5.0, 2.0, 1.0], device=dev)
    keep = (ix >= 0) & (ix < 4)
    rows_ref, grad_ref = R.laplacian_rows_grad(z, torch.tensor([0, 1, 1, 1, 3], device=dev), ix[keep], w[keep],
                                               None, None, 1.0, True, True)
    idx = torch.tensor([[0, 5, -1], [99, 1, 2]], device=dev)
    g = torch.randn(2, 3, device=dev)
    want = torch.zeros(2, 8, device=dev)
    want[0, 0], want[0, 5], want[1, 1], want[1, 2] = g[0, 0], g[0, 1], g[1, 1], g[1, 2]
    for backend in [b for b in ("cuda", "triton") if pyaeplus.backends.available().get(b)]:
        with pyaeplus.backends.use(backend):
            rows, _ = torch.ops.pyaeplus.laplacian_loss(z, ip, ix, w, None, 0, 1.0, False)
            loss, grad = torch.ops.pyaeplus.laplacian_loss(z, ip, ix, w, None, 1, 1.0, True)
            out = torch.ops.pyaeplus._topk_sparse_backward(g, idx, None, 8)
        torch.cuda.synchronize()
        assert torch.allclose(rows, rows_ref, atol=1e-5), backend
        assert torch.allclose(loss, rows_ref.sum(), atol=1e-4) and torch.allclose(grad, grad_ref, atol=1e-5), backend
        assert torch.equal(out, want), backend
    v, i, wt = torch.randn(4, 3), torch.randint(0, 8, (4, 3)), torch.randn(8, 5)
    with pytest.raises(ValueError, match="is on"):
        torch.ops.pyaeplus.sparse_decode(v.to(dev), i, wt.to(dev), None)
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="is on"):
        torch.ops.pyaeplus.ssim_stats(x.to(dev), x.to(dev), torch.ones(7) / 7, 1e-4, 9e-4, 1, False)


# ---- the hot-path checks are one boolean expression: it must be at least as strict as the rules ----

def _spoil(t):
    """Spoiled variants of a tensor argument (None stays None)."""
    import torch

    if t is None:
        return [None]
    out = [t, t.double(), t.half(), t.long(), t.int(), t.reshape(-1)[:1], torch.cat([t.reshape(-1)] * 2),
           t.unsqueeze(0), t.to("meta")]
    return out + ([t.reshape(-1)[:0]] if t.numel() else [])


def _guard_cases():
    import torch

    from pyaeplus.ops import _guard, topk

    z, ip, ix, w = torch.randn(3, 4), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 0]), torch.ones(3)
    v, i, wt, b = torch.randn(4, 3), torch.randint(0, 8, (4, 3)), torch.randn(8, 5), torch.randn(5)
    go, gv, m = torch.randn(4, 5), torch.randn(4, 3), torch.rand(4, 3)
    return [
        (_guard.laplacian, _guard._explain_laplacian, ("op",), (z, ip, ix, w, torch.ones(3)), (1,)),
        (_guard.laplacian, _guard._explain_laplacian, ("op",), (z, ip, ix, w, None), (1,)),
        (_guard.sparse_decode, _guard._explain_sparse_decode, ("op",), (v, i, wt, b), ()),
        (_guard.sparse_decode_grad, _guard._explain_sparse_decode_grad, ("op",), (go, i, wt, v), ()),
        (_guard.sparse_decode_grad, _guard._explain_sparse_decode_grad, ("op",), (go, i, wt, None), ()),
        (topk._check_bwd, topk._explain_bwd, (), (gv, i, 8, m), (False,)),
        (topk._check_bwd, topk._explain_bwd, (), (torch.randn(4, 8), i, 8, None), (True,)),
    ]


def test_fast_checks_are_as_strict_as_the_explained_rules():
    n_bad = 0
    for fast, explain, pre, tensors, post in _guard_cases():
        for pos, t in enumerate(tensors):
            variants = _spoil(t) if t is None or hasattr(t, "shape") else [t, 0, t + 1, t - 1]
            for bad in variants:
                args = (*pre, *tensors[:pos], bad, *tensors[pos + 1:], *post)
                try:
                    explain(*args)
                except (ValueError, TypeError):
                    n_bad += 1
                    with pytest.raises((ValueError, TypeError)):
                        fast(*args)
                else:
                    fast(*args)  # accepted by the rules: the fast path must not raise either
    assert n_bad > 100
