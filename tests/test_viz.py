"""pyaeplus.viz: every plot writes a valid PNG atomically and rejects bad input."""

import numpy as np
import pytest
import torch

from pyaeplus import viz

PNG = b"\x89PNG\r\n\x1a\n"


def _ok(p):
    assert p.exists() and p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    assert [q.name for q in p.parent.iterdir() if q.name.startswith(".")] == []


def test_plots(tmp_path):
    rng = np.random.default_rng(0)
    x = torch.rand(10, 1, 12, 12)
    _ok(viz.reconstruction_grid(x, x * 0.9, tmp_path / "grid.png", n=6, titles=[f"{i}" for i in range(6)]))
    _ok(viz.reconstruction_grid(x.reshape(10, -1).numpy(), x.reshape(10, -1).numpy(), tmp_path / "flat.png"))
    _ok(viz.reconstruction_grid(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8), tmp_path / "rgb.png"))
    y = np.r_[np.zeros(80), np.ones(20)]
    s = rng.standard_normal(100) + 2 * y
    _ok(viz.score_histogram(s, y, tmp_path / "hist.png", threshold=1.0))
    _ok(viz.score_histogram(s, None, tmp_path / "hist1.png"))
    _ok(viz.roc_pr_curves([s, -s], y, tmp_path / "roc.png", names=["a", "b"]))
    _ok(viz.roc_pr_curves(s, y, tmp_path / "roc1.png"))
    _ok(viz.anomaly_overlay(x, torch.rand(10, 12, 12), tmp_path / "ov.png", n=4))
    _ok(viz.training_curves({"train": [1.0, 0.5, 0.3], "val": [1.1, 0.6, 0.4]}, tmp_path / "tc.png"))
    _ok(viz.training_curves([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.4}], tmp_path / "tc2.png"))


def _lime_pixels(p) -> int:
    from PIL import Image

    a = np.asarray(Image.open(p).convert("RGB")).astype(int)
    return int(((a[..., 0] < 40) & (a[..., 1] > 200) & (a[..., 2] < 40)).sum())


def test_overlay_draws_the_ground_truth_contour(tmp_path):
    x = torch.rand(3, 1, 32, 32)
    maps = torch.rand(3, 32, 32)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[1, 8:20, 10:24] = 1
    with_gt = viz.anomaly_overlay(x, maps, tmp_path / "gt.png", masks=masks, vmin=0, vmax=1)
    plain = viz.anomaly_overlay(x, maps, tmp_path / "plain.png", vmin=0, vmax=1)
    _ok(with_gt)
    assert _lime_pixels(with_gt) > 50 and _lime_pixels(plain) == 0
    with pytest.raises(ValueError, match="masks must have the shape"):
        viz.anomaly_overlay(x, maps, tmp_path / "bad.png", masks=masks[:, :16])


def test_bad_input(tmp_path):
    x = np.random.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="reconstructions"):
        viz.reconstruction_grid(x, x[:3], tmp_path / "a.png")
    with pytest.raises(ValueError, match="directory"):
        viz.reconstruction_grid(x, x, tmp_path / "missing" / "a.png")
    with pytest.raises(ValueError, match="labels"):
        viz.score_histogram(np.ones(4), np.ones(3), tmp_path / "h.png")
    with pytest.raises(ValueError, match="both"):
        viz.roc_pr_curves(np.arange(4.0), np.ones(4), tmp_path / "r.png")
    with pytest.raises(ValueError, match="maps"):
        viz.anomaly_overlay(x, np.random.rand(4, 7, 8), tmp_path / "o.png")
    with pytest.raises(ValueError, match="history"):
        viz.training_curves({}, tmp_path / "t.png")
    with pytest.raises(ValueError, match="scores"):
        viz.score_histogram(np.array([]), None, tmp_path / "h.png")
    assert list(tmp_path.iterdir()) == []
