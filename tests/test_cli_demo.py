"""The `pyaeplus train` and `pyaeplus demo` commands, end to end (in-process through cli.main)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from pyaeplus import checkpoint as ckpt
from pyaeplus.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_with_flags_on_ecg5000(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "dense", "--data", f"ecg5000:{data_root}", "--normalize", "minmax",
               "--model-config", '{"hidden": [32, 16], "latent": 8}', "--epochs", "3", "--batch-size", "50",
               "--lr", "3e-3", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "trained 3 epoch(s)" in text and "checkpoint:" in text
    cfg = json.loads((out / "epoch-0003" / "config.json").read_text())
    assert cfg["model"]["name"] == "dense" and cfg["model"]["config"]["in_features"] == 140
    norm = cfg["metadata"]["normalization"]
    assert norm["type"] == "MinMaxScaler" and norm["min"] < norm["max"]
    hist = cfg["training"]["history"]
    assert hist[-1]["train"]["loss"] < hist[0]["train"]["loss"]
    model = ckpt.load_model(out)
    assert model(torch.rand(2, 140)).shape == (2, 140)


def test_train_from_json_config_with_validation_and_flag_override(data_root, tmp_path, capsys):
    conf = {"model": "conv", "data": f"mnist:{data_root}", "data_options": {"classes": [1]}, "val_split": "test",
            "model_config": {"channels": [4], "latent": 8}, "epochs": 5, "batch_size": 256, "lr": 1e-2,
            "checkpoint_dir": str(tmp_path / "ignored"), "progress": False, "patience": 3}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(conf))
    # one epoch over digit 1 only (6742 images) keeps this short; --epochs overrides the file
    rc = main(["train", "--config", str(path), "--epochs", "1", "--out", str(tmp_path / "r")])
    assert rc == 0
    assert "best validation loss" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "r" / "epoch-0001" / "config.json").read_text())
    assert cfg["model"]["config"]["in_channels"] == 1 and cfg["model"]["config"]["input_shape"] == [1, 28, 28]
    assert cfg["training"]["history"][0]["val"]["loss"] > 0
    assert not (tmp_path / "ignored").exists()


def test_train_laplacian_builds_graph_and_sampler(data_root, tmp_path):
    rc = main(["train", "--model", "laplacian", "--data", f"ecg5000:{data_root}", "--normalize", "minmax",
               "--model-config", '{"base": {"name": "dense", "config": {"hidden": [16], "latent": 4}}, "lam": 0.5}',
               "--epochs", "1", "--batch-size", "60", "--out", str(tmp_path / "lap"), "--no-progress"])
    assert rc == 0
    cfg = json.loads((tmp_path / "lap" / "epoch-0001" / "config.json").read_text())
    terms = cfg["training"]["history"][0]["train"]
    assert terms["edges"] > 0 and terms["laplacian"] > 0  # batches carry graph edges


def test_train_errors(data_root, tmp_path, capsys, monkeypatch):
    assert main(["train", "--model", "nope", "--data", f"ecg5000:{data_root}", "--out", str(tmp_path)]) == 2
    assert "model must be one of" in capsys.readouterr().err
    assert main(["train", "--model", "dense", "--data", "ecg5000", "--out", str(tmp_path)]) == 2
    assert "<kind>:<path>" in capsys.readouterr().err
    assert main(["train", "--model", "dense", "--out", str(tmp_path)]) == 2
    assert "config needs 'data'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "dense", "data": f"ecg5000:{data_root}", "epoch": 3}))
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown config key" in capsys.readouterr().err
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        main(["train", "--config", str(bad)])
    y = tmp_path / "run.yaml"
    y.write_text("model: dense\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(SystemExit, match="PyYAML is not installed"):
        main(["train", "--config", str(y)])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["train", "--model", "dense", "--data", f"ecg5000:{data_root}", "--data-option", "oops"])


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and str(out) in text
    res = json.loads((out / "results.json").read_text())
    assert res["auroc"] > 0.8, res
    assert res["n_anomalies"] > 0 and 0 < res["ap"] <= 1
    for name in ("reconstructions", "histogram", "roc"):
        p = out / pathlib_name(res["plots"][name])
        assert p.exists() and p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
    assert ckpt.latest_checkpoint(out / "checkpoint") is not None
    # localization of the planted defects (their masks are known) beats the same network untrained
    assert "pixel AUROC" in text and "AUPRO" in text
    untrained = _untrained_pixel_metrics(out / "checkpoint")
    assert res["pixel_auroc"] > untrained["pixel_auroc"] + 0.05, (res, untrained)
    assert res["aupro"] > untrained["aupro"] + 0.05, (res, untrained)


def _untrained_pixel_metrics(run_dir):
    """The demo's architecture with fresh weights, scored on the demo's test set (seed 0 + 1)."""
    from pyaeplus import data, models, scoring

    cfg = json.loads((ckpt.latest_checkpoint(run_dir) / "config.json").read_text())["model"]
    torch.manual_seed(0)
    model = models.build(cfg["name"], **cfg["config"])
    test = data.synthetic_anomalies(400, anomaly_fraction=0.2, seed=1)
    return scoring.localize(model, test.tensors()[0], test.masks, score="ssim")[0]


def pathlib_name(p: str) -> str:
    import pathlib

    return pathlib.Path(p).name


def test_demo_bad_data(tmp_path, capsys):
    assert main(["demo", "--data", "ecg5000:/nowhere", "--out", str(tmp_path)]) == 2
    assert "--data must be" in capsys.readouterr().err


def test_demo_on_real_mnist(data_root, tmp_path, capsys):
    out = tmp_path / "mnist"
    rc = main(["demo", "--data", f"mnist:{data_root}", "--normal-class", "1", "--quick", "--epochs", "1",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "class 1" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    # digit 1 against all other digits: even one short epoch separates them well
    assert res["n_train"] == 768 and res["n_test"] == 400 and 300 < res["n_anomalies"] < 400
    assert res["auroc"] > 0.8, res
