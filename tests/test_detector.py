"""AnomalyDetector: fit/decision_function/predict on arrays, tensors, datasets and memmaps; the batch
size reaches every path; thresholds; errors."""

import numpy as np
import pytest
import torch

import pyaeplus
from pyaeplus import models, scoring
from pyaeplus.data.arrays import MemmapDataset


def _data(n, anomalous=False, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 2)).astype(np.float32)
    x = np.concatenate([base, base @ np.array([[1.0, 0.5, -1, 0.3, 2, 0.1], [0.2, -1, 0.5, 1, 0, 0.7]], np.float32)], 1)
    if anomalous:
        x = x + rng.normal(0, 3, x.shape).astype(np.float32)
    return x


def _model():
    torch.manual_seed(0)
    return models.build("dense", in_features=8, hidden=[16], latent=2)


def test_top_level_lazy_name():
    assert pyaeplus.AnomalyDetector is scoring.AnomalyDetector


def test_fit_predict_arrays_tensors_memmaps(tmp_path):
    xtr = _data(600)
    det = pyaeplus.AnomalyDetector(_model(), threshold=("contamination", {"c": 0.05}), batch_size=64, epochs=15,
                                   lr=1e-2, seed=0)
    det.fit(xtr)
    assert det.decision_scores_.shape == (600,)
    assert det.labels_.sum() == 30  # the contamination fraction of the training data
    assert det.threshold_ == pytest.approx(np.sort(det.decision_scores_)[-31])
    normal, anom = _data(200, seed=1), _data(200, anomalous=True, seed=2)
    x = np.concatenate([normal, anom])
    y = np.r_[np.zeros(200), np.ones(200)]
    s = det.decision_function(x)
    assert scoring.metrics(s, y)["auroc"] > 0.9
    pred = det.predict(x)
    assert pred.dtype == np.int64 and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (s > det.threshold_).astype(np.int64))
    # same scores from a tensor and from a memmap
    np.testing.assert_allclose(det.decision_function(torch.from_numpy(x)), s, rtol=1e-6)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_allclose(det.decision_function(MemmapDataset(tmp_path / "x.npy")), s, rtol=1e-6)


def test_batch_size_honoured_everywhere(monkeypatch):
    seen = []
    m = _model()
    orig = m.forward

    def spy(x):
        seen.append(x.shape[0])
        return orig(x)

    monkeypatch.setattr(m, "forward", spy)
    det = pyaeplus.AnomalyDetector(m, score="mse", batch_size=48, epochs=1, shuffle=False, seed=0)
    det.fit(_data(200))
    det.decision_function(_data(130))
    det.predict(_data(100))
    assert seen and max(seen) <= 48
    assert 48 in seen


def test_thresholds_forms():
    x = _data(300)
    base = pyaeplus.AnomalyDetector(_model(), threshold="mean_std", epochs=0).fit(x)
    s = base.decision_scores_
    assert base.threshold_ == pytest.approx(s.mean() + s.std(), rel=1e-5)
    d = pyaeplus.AnomalyDetector(_model(), threshold={"method": "percentile", "q": 90}, epochs=0).fit(x)
    assert d.threshold_ == pytest.approx(np.percentile(d.decision_scores_, 90), rel=1e-6)
    f = pyaeplus.AnomalyDetector(_model(), threshold=0.5, epochs=0).fit(x)
    assert f.threshold_ == 0.5
    k = pyaeplus.AnomalyDetector(_model(), score="latent_knn", k=3, epochs=0).fit(x)
    assert k.decision_scores_.shape == (300,)
    # training scores leave each row's own latent out (else the nearest distance is always 0)
    assert k.decision_scores_.min() > 0
    assert (k.decision_scores_ > k.decision_function(x)).all()


def test_errors():
    with pytest.raises(RuntimeError, match="fit"):
        pyaeplus.AnomalyDetector(_model()).predict(_data(4))
    with pytest.raises(ValueError, match="threshold"):
        pyaeplus.AnomalyDetector(_model(), threshold="median")
    with pytest.raises(TypeError, match="threshold"):
        pyaeplus.AnomalyDetector(_model(), threshold=[1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        pyaeplus.AnomalyDetector(_model(), batch_size=0)
    with pytest.raises(ValueError, match="score"):
        pyaeplus.AnomalyDetector(_model(), score="nope")
    with pytest.raises(TypeError, match="model"):
        pyaeplus.AnomalyDetector("dense")
    det = pyaeplus.AnomalyDetector(_model(), epochs=0).fit(_data(50))
    with pytest.raises(ValueError):
        det.predict(np.zeros((0, 8), np.float32))
