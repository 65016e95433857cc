"""pyaeplus.data.mvtec_ad on a generated MVTec-AD-layout folder (several defect types, an image with two
defect regions, good images; VisA-style mask names), its errors, and the train/score command line with
--data mvtec:ROOT and --masks data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyaeplus import data as D
from pyaeplus import scoring
from pyaeplus.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


H, W = 40, 48


def _img(rng, mode="RGB", hw=(H, W)) -> Image.Image:
    a = rng.integers(0, 256, hw + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    return Image.fromarray(a, mode)


def _mask(boxes, value=255, hw=(H, W)) -> Image.Image:
    m = np.zeros(hw, np.uint8)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = value
    return Image.fromarray(m, "L")


# test/<defect>/<name>: boxes of its mask (crack/000 has two separate regions)
DEFECTS = {"crack": {"000": [(2, 8, 3, 9), (20, 30, 30, 40)], "001": [(10, 12, 5, 25)]},
           "scratch": {"000": [(0, 40, 22, 24)]}}


def make_layout(root, *, visa=False, mode="RGB", seed=0):
    """An MVTec-AD category folder: train/good (5), test/good (2), test/crack (2), test/scratch (1)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 5), ("test", 2)):
        (root / split / "good").mkdir(parents=True)
        for i in range(n):
            _img(rng, mode).save(root / split / "good" / f"{i:03d}.png")
    for defect, items in DEFECTS.items():
        (root / "test" / defect).mkdir(parents=True)
        (root / "ground_truth" / defect).mkdir(parents=True)
        for name, boxes in items.items():
            _img(rng, mode).save(root / "test" / defect / f"{name}.png")
            mask_name = f"{name}.png" if visa else f"{name}_mask.png"
            _mask(boxes, value=1 if visa else 255).save(root / "ground_truth" / defect / mask_name)
    return root


def _expected_mask(boxes, hw=(H, W)):
    return (np.asarray(_mask(boxes, hw=hw)) > 0).astype(np.uint8)


def test_train_and_test_splits(tmp_path):
    root = make_layout(tmp_path / "bottle")
    tr = D.mvtec_ad(root, "train")
    assert len(tr) == 5 and tr.sample_shape == (3, H, W) and (tr.targets == 0).all()
    assert tr.masks.shape == (5, H, W) and tr.masks.dtype == torch.uint8 and tr.masks.sum() == 0
    x, y = tr[1]
    want = np.asarray(Image.open(root / "train" / "good" / "001.png")).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(x.numpy(), want, atol=1e-6)
    assert x.dtype == torch.float32 and int(y) == 0
    te = D.mvtec_ad(root, "test")
    assert te.defect_types == ["crack", "crack", "good", "good", "scratch"]
    assert te.targets.tolist() == [1, 1, 0, 0, 1]
    assert set(np.unique(te.masks.numpy())) == {0, 1}
    np.testing.assert_array_equal(te.masks[0].numpy(), _expected_mask(DEFECTS["crack"]["000"]))
    np.testing.assert_array_equal(te.masks[4].numpy(), _expected_mask(DEFECTS["scratch"]["000"]))
    assert te.masks[2:4].sum() == 0
    from scipy import ndimage

    assert ndimage.label(te.masks[0].numpy(), structure=np.ones((3, 3)))[1] == 2  # two regions
    xb, yb = te.get_batch([4, 0])
    assert xb.shape == (2, 3, H, W) and yb.tolist() == [1, 1]
    sub = te.subset(te.targets == 1)
    assert len(sub) == 3 and sub.defect_types == ["crack", "crack", "scratch"]
    np.testing.assert_array_equal(sub.masks[2].numpy(), te.masks[4].numpy())
    assert "crack" in repr(te)


def test_resize_keeps_masks_binary_and_aligned(tmp_path):
    root = make_layout(tmp_path / "c")
    te = D.mvtec_ad(root, "test", size=(20, 26))
    assert te.sample_shape == (3, 20, 26) and te.masks.shape == (5, 20, 26)
    assert te.original_sizes[0] == (H, W)
    want = np.asarray(_mask(DEFECTS["crack"]["000"]).resize((26, 20), Image.NEAREST)) > 0
    np.testing.assert_array_equal(te.masks[0].numpy(), want)
    img = Image.open(root / "test" / "crack" / "000.png").resize((26, 20), Image.BILINEAR)
    np.testing.assert_allclose(te[0][0].numpy(), np.asarray(img).transpose(2, 0, 1) / 255.0, atol=1e-6)
    sq = D.mvtec_ad(root, "test", size=16, channels=1)
    assert sq.sample_shape == (1, 16, 16) and sq.masks.shape == (5, 16, 16)


def test_grayscale_and_visa_style_masks(tmp_path):
    root = make_layout(tmp_path / "grid", visa=True, mode="L")
    te = D.mvtec_ad(root, "test")
    assert te.sample_shape == (1, H, W)  # grayscale stays one channel
    np.testing.assert_array_equal(te.masks[1].numpy(), _expected_mask(DEFECTS["crack"]["001"]))
    assert D.mvtec_ad(root, "test", channels=3).sample_shape == (3, H, W)


def test_errors(tmp_path):
    root = make_layout(tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="MVTec AD layout"):
        D.mvtec_ad(root, "validation")
    with pytest.raises(ValueError, match="channels"):
        D.mvtec_ad(root, "train", channels=2)
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(ValueError, match=r"have no mask: .*001\.png"):
        D.mvtec_ad(root, "test")
    _mask([(0, 2, 0, 2)]).save(root / "ground_truth" / "crack" / "001_mask.png")
    _mask([(0, 2, 0, 2)]).save(root / "ground_truth" / "crack" / "007_mask.png")
    with pytest.raises(ValueError, match="match no image"):
        D.mvtec_ad(root, "test")
    (root / "ground_truth" / "crack" / "007_mask.png").unlink()
    _mask([(0, 2, 0, 2)], hw=(H, W + 1)).save(root / "ground_truth" / "crack" / "001_mask.png")
    with pytest.raises(ValueError, match="a mask must match its image"):
        D.mvtec_ad(root, "test")
    _mask([(0, 2, 0, 2)]).save(root / "ground_truth" / "crack" / "001_mask.png")
    _img(np.random.default_rng(1), hw=(H + 2, W)).save(root / "test" / "good" / "009.png")
    with pytest.raises(ValueError, match="differ in size"):
        D.mvtec_ad(root, "test")
    assert len(D.mvtec_ad(root, "test", size=32)) == 6   # resizing makes them one size
    import shutil

    shutil.rmtree(root / "ground_truth" / "scratch")
    with pytest.raises(ValueError, match="ground_truth/scratch"):
        D.mvtec_ad(root, "test", size=32)


def test_open_dataset_and_normalize(tmp_path):
    root = make_layout(tmp_path / "o")
    te = D.open_dataset(f"mvtec:{root}", split="test", size=16)
    assert isinstance(te, D.MVTecAD) and te.masks.shape == (5, 16, 16)
    tr = D.open_dataset(f"mvtec:{root}", split="train", size=16)
    D.normalize("minmax", tr, te)
    assert float(tr.get_batch(range(5))[0].min()) == pytest.approx(0.0)


def test_cli_train_and_score_with_masks(tmp_path, capsys):
    root = make_layout(tmp_path / "cat")
    run = tmp_path / "run"
    common = ["--data", f"mvtec:{root}", "--data-option", "size=16"]
    assert main(["train", "--model", "conv", *common, "--model-config", '{"channels": [4], "latent": 4}',
                 "--epochs", "1", "--batch-size", "4", "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "res" / "s.npy"
    out.parent.mkdir()
    rc = main(["score", "--checkpoint", str(run), *common, "--split", "test", "--out", str(out), "--score", "ssim",
               "--labels", "data", "--masks", "data", "--map-sigma", "1.5", "--batch-size", "4"])
    text = capsys.readouterr().out
    assert rc == 0 and "pixel AUROC" in text and "AUPRO" in text
    summary = json.loads((out.parent / "s_summary.json").read_text())
    pm = summary["pixel_metrics"]
    from pyaeplus.checkpoint import load_model

    te = D.mvtec_ad(root, "test", size=16)
    want, _ = scoring.localize(load_model(run), te, score="ssim", sigma=1.5)
    assert pm["pixel_auroc"] == pytest.approx(want["pixel_auroc"]) and pm["aupro"] == pytest.approx(want["aupro"])
    assert pm["n_regions"] == 4 and pm["sigma"] == 1.5
    assert (out.parent / "s_top_maps.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out.parent / "s.maps.npy").exists()  # maps computed for --masks only are not left behind
    # masks from a file, at twice the resolution: maps are upsampled to it
    np.save(tmp_path / "m.npy", D.mvtec_ad(root, "test", size=32).masks.numpy())
    assert main(["score", "--checkpoint", str(run), *common, "--split", "test", "--out", str(out), "--score", "ssim",
                 "--masks", str(tmp_path / "m.npy"), "--no-resume"]) == 0
    assert json.loads((out.parent / "s_summary.json").read_text())["pixel_metrics"]["n_pixels"] == 5 * 32 * 32
    # a dataset without masks: exit 2 naming --masks
    np.save(tmp_path / "x.npy", te.get_batch(range(5))[0].numpy())
    assert main(["score", "--checkpoint", str(run), "--data", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "o.npy"), "--masks", "data"]) == 2
    assert "--masks data" in capsys.readouterr().err


def test_readme_localization_workflow_runs(tmp_path, monkeypatch):
    """The README's MVTec block as written, on a generated folder (smaller images, one epoch, .pt2)."""
    import re

    from conftest import REPO

    block = next(b for b in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
                 if "mvtec_ad(" in b)
    root = make_layout(tmp_path / "bottle")
    code = (block.replace('"mvtec_anomaly_detection/bottle"', repr(str(root))).replace("128", "32")
            .replace("epochs=50", "epochs=1").replace('"bottle.onnx"', repr(str(tmp_path / "bottle.pt2"))))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md:localization", "exec"), ns)
    assert 0.0 <= ns["m"]["pixel_auroc"] <= 1.0 and ns["m"]["n_regions"] == 4
    assert ns["maps"].shape == (5, 32, 32) and (tmp_path / "bottle.pt2").exists()
