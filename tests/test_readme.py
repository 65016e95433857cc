"""The README's Python examples run as written (the training one with fewer epochs, marked slow)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from conftest import DATA_ROOT, REPO


def _blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _block(marker: str) -> str:
    """The one Python block of the README that contains ``marker``."""
    found = [b for b in _blocks() if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return found[0]


def test_readme_has_examples():
    assert len(_blocks()) >= 2


def test_quick_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _blocks()[0]
    ns: dict = {}
    exec(compile(code, "README.md:tour", "exec"), ns)
    assert float(ns["s"].detach()) > 0.5 and ns["per_image"].shape == (8,)
    assert ns["amap"].shape == (8, 3, 256, 256)
    assert ns["out"].shape == (1024, 768) and ns["vals"].shape == ns["idx"].shape == (1024, 32)
    assert (ns["dense"] != 0).sum(-1).max() <= 32
    assert ns["sub"].num_nodes == len(next(iter(ns["sampler"])))


@pytest.mark.slow
def test_training_example_runs(tmp_path, monkeypatch):
    if not (DATA_ROOT / "fashion-mnist").exists():
        pytest.skip("needs ../shared/data")
    monkeypatch.chdir(tmp_path)
    code = _blocks()[1].replace('"../shared/data/fashion-mnist"', repr(os.fspath(DATA_ROOT / "fashion-mnist")))
    code = code.replace("epochs=10", "epochs=1")
    ns: dict = {}
    exec(compile(code, "README.md:models", "exec"), ns)
    assert ns["scores"].shape == (1000,)
    # the scoring block continues from the training block's names
    code = _blocks()[2].replace("epochs=5", "epochs=1")
    exec(compile(code, "README.md:scoring", "exec"), ns)
    assert ns["s"].shape == (10000,) and (tmp_path / "scores.npy").exists()
    assert 0.5 < ns["m"]["auroc"] <= 1.0 and ns["knn"].shape == (10000,)
    assert set(np.unique(ns["flags"]).tolist()) <= {0, 1} and ns["det"].threshold_ > 0


def test_detector_example_runs():
    code = _block("AutoEncoderDetector(")
    ns: dict = {}
    exec(compile(code, "README.md:detector", "exec"), ns)
    assert ns["scores"].shape == (100,) and ns["scores"].dtype == np.float64
    assert ns["labels"][-10:].sum() >= 9 and ns["labels"][:90].sum() <= 20  # the uniform rows are found
    assert ns["proba"].shape == (100, 2) and ns["conf"].shape == (100,)
    assert ns["svdd"].decision_scores_.shape == (1000,)
