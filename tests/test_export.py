"""pyaeplus.export / `pyaeplus export`: the model with its score as a .pt2 (torch.export) and an .onnx
(onnxruntime) give the scores and maps of pyaeplus.scoring.score within 1e-5, on a batch size other than
the example's; the files hold no pyaeplus custom op (the SSIM and top-k references serve inside the graph);
metadata; bad input."""

import json
import zipfile

import numpy as np
import pytest
import torch

from pyaeplus import models, scoring
from pyaeplus.checkpoint import save_checkpoint
from pyaeplus.cli import main
from pyaeplus.export import export_scorer, load_scorer


pytestmark = pytest.mark.usefixtures("one_thread")


def _conv():
    torch.manual_seed(0)
    m = models.build("conv", in_channels=1, channels=[4, 8], latent=6, input_shape=[1, 16, 16], loss="ssim",
                     batch_norm=True)
    # non-trivial BatchNorm statistics, so that eval mode matters
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _x(n=7, seed=1):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _custom_ops_in_pt2(path) -> list[str]:
    gm = torch.export.load(str(path)).module()
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "pyaeplus" in str(n.target)]


def test_pt2_scores_and_maps_equal_scoring(tmp_path):
    m, x = _conv(), _x()
    want_s, want_m = scoring.score(m, x, score="ssim", maps=True, progress=False)
    m.train()
    p = export_scorer(m, tmp_path / "s.pt2", score="ssim", maps=True)
    assert m.training   # the caller's model is not modified (the export works on a copy in eval mode)
    s, mp = load_scorer(p)(x)
    np.testing.assert_allclose(s, want_s, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mp, want_m, atol=1e-5, rtol=0)
    assert _custom_ops_in_pt2(p) == []   # the reference SSIM is in the graph, not the fused kernel
    with zipfile.ZipFile(p) as z:
        meta = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("pyaeplus.json")))
    assert meta["pyaeplus.score"] == "ssim" and meta["pyaeplus.outputs"] == "scores,maps"
    # keep_custom_ops: the fused kernels stay (the loader imports pyaeplus, as this process has)
    k = export_scorer(m, tmp_path / "k.pt2", score="ms_ssim", portable=False)
    assert any("ssim_stats" in t for t in _custom_ops_in_pt2(k))
    np.testing.assert_allclose(load_scorer(k)(x), scoring.score(m, x, score="ms_ssim", progress=False), atol=1e-5)


def test_onnx_through_the_cli_equals_scoring(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    m, x = _conv(), _x(5)
    save_checkpoint(tmp_path / "ck", m)
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(out), "--score", "ssim", "--maps"]) == 0
    assert "scores (B,), maps (B, H, W)" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert {op.domain for op in proto.opset_import} <= {"", "ai.onnx"}        # standard operators only
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["pyaeplus.score"] == "ssim" and json.loads(props["pyaeplus.sample_shape"]) == [1, 16, 16]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"] and [o.name for o in sess.get_outputs()] == ["scores", "maps"]
    want_s, want_m = scoring.score(m, x, score="ssim", maps=True, progress=False)
    s, mp = load_scorer(out)(x)
    np.testing.assert_allclose(s, want_s, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mp, want_m, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("score", ["ms_ssim", "mse", "model"])
def test_onnx_other_scores(tmp_path, score):
    pytest.importorskip("onnxruntime")
    m, x = _conv(), _x(3)
    p = export_scorer(m, tmp_path / "s.onnx", score=score)
    np.testing.assert_allclose(load_scorer(p)(x), scoring.score(m, x, score=score, progress=False), atol=1e-5)


def test_topk_sparse_model_exports_to_both(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = models.build("sparse", in_features=64, latent=40, k=5, input_shape=[1, 8, 8]).eval()
    x = torch.rand(9, 1, 8, 8)
    want = scoring.score(m, x, score="mse", progress=False)
    for ext in ("pt2", "onnx"):
        p = export_scorer(m, tmp_path / f"s.{ext}", score="mse")
        np.testing.assert_allclose(load_scorer(p)(x), want, atol=1e-5, rtol=0)


def test_bad_input(tmp_path, capsys):
    m = _conv()
    with pytest.raises(ValueError, match=r"\.pt2 or \.onnx"):
        export_scorer(m, tmp_path / "s.pth")
    with pytest.raises(ValueError, match="latent_knn"):
        export_scorer(m, tmp_path / "s.pt2", score="latent_knn")
    with pytest.raises(ValueError, match="ONNX cannot express"):
        export_scorer(m, tmp_path / "s.onnx", portable=False)
    with pytest.raises(ValueError, match="does not exist"):
        export_scorer(m, tmp_path / "nope" / "s.pt2")
    with pytest.raises(TypeError, match="example"):
        export_scorer(m, tmp_path / "s.pt2", example=np.zeros((2, 1, 16, 16)))
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "s.pt2")]) == 2
    assert "pyaeplus export:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []   # nothing half-written
