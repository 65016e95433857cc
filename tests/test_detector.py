"""AnomalyDetector as a scikit-learn / PyOD estimator: parameters only in the constructor, a fresh
network every fit, input rules (dtypes, shapes, n_features_in_, named errors), PyOD's threshold and
labels, contamination="auto" rules, standardization, images and datasets, clone and pickle."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import pyaeplus
from pyaeplus import models, scoring
from pyaeplus.data.arrays import MemmapDataset
from pyaeplus.scoring import AnomalyDetector


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, anomalous=False, seed=0, dtype=np.float32):
    """8 features on a 2-d plane (normal) or off it (anomalous)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 2))
    x = np.concatenate([base, base @ np.array([[1.0, 0.5, -1, 0.3, 2, 0.1], [0.2, -1, 0.5, 1, 0, 0.7]])], 1)
    if anomalous:
        x = x + rng.normal(0, 3, x.shape)
    return x.astype(dtype)


def _det(**kw):
    return AnomalyDetector(**{"model_options": {"hidden": [16], "latent": 2}, "epochs": 8, "lr": 1e-2,
                              "random_state": 0, **kw})


def test_top_level_names():
    assert pyaeplus.AnomalyDetector is scoring.AnomalyDetector
    assert pyaeplus.AutoEncoderDetector is scoring.AutoEncoderDetector
    assert issubclass(pyaeplus.DeepSVDDDetector, AnomalyDetector)


def test_constructor_only_stores_parameters():
    weird = AnomalyDetector(model="nope", contamination=7, batch_size=-1, anomaly_score="bogus")
    assert weird.get_params()["contamination"] == 7 and weird.model == "nope"
    with pytest.raises(ValueError, match="anomaly_score"):
        weird.fit(_data(20))
    with pytest.raises(ValueError, match="contamination"):
        AnomalyDetector(contamination=0.7).fit(_data(20))
    with pytest.raises(ValueError, match="model must be one of"):
        AnomalyDetector(model="nope").fit(_data(20))
    with pytest.raises(NotFittedError):
        AnomalyDetector().predict(_data(4))


def test_fit_sets_pyod_attributes():
    x = _data(600)
    det = _det(contamination=0.05).fit(x)
    s = det.decision_scores_
    assert s.dtype == np.float64 and s.shape == (600,)
    assert det.n_features_in_ == 8 and det.sample_shape_ == (8,)
    assert det.threshold_ == np.percentile(s, 95)  # PyOD: percentile(scores, 100 * (1 - contamination))
    np.testing.assert_array_equal(det.labels_, (s > det.threshold_).astype(int))
    assert det.labels_.sum() == 30 and det.labels_.dtype.kind == "i"
    np.testing.assert_array_equal(det.predict(x), det.labels_)
    np.testing.assert_array_equal(det.decision_function(x), s)
    np.testing.assert_array_equal(det.score_samples(x), -s)
    assert det.offset_ == -det.threshold_
    normal, anom = _data(200, seed=1), _data(200, anomalous=True, seed=2)
    assert scoring.metrics(det.decision_function(np.concatenate([normal, anom])),
                           np.r_[np.zeros(200), np.ones(200)])["auroc"] > 0.9
    assert len(det.history_) == 8 and det.history_[-1]["train"]["loss"] < det.history_[0]["train"]["loss"]


def test_inputs_are_cast_and_validated(tmp_path):
    x = _data(100)
    det = _det(epochs=2).fit(x)
    s = det.decision_function(x)
    same = [x.astype(np.float64), x.tolist(), torch.from_numpy(x), torch.from_numpy(x).double(),
            np.asfortranarray(x)]
    for xi in same:
        np.testing.assert_allclose(det.decision_function(xi), s, rtol=1e-6)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_allclose(det.decision_function(MemmapDataset(tmp_path / "x.npy")), s, rtol=1e-5)
    xi = np.rint(x * 10).astype(np.int64)  # integers are cast, as scikit-learn estimators do
    assert _det(epochs=1).fit(xi).decision_scores_.dtype == np.float64
    with pytest.raises(ValueError, match="X has 7 features, but AnomalyDetector is expecting 8"):
        det.predict(x[:, :7])
    with pytest.raises(ValueError, match="2D"):
        det.predict(x[0])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.decision_function(bad)
    with pytest.raises(ValueError, match="NaN"):
        _det().fit(bad)
    with pytest.raises(ValueError, match="0 sample"):
        det.predict(np.zeros((0, 8), np.float32))
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="[Ss]parse"):
        _det().fit(sparse.csr_matrix(x))


def test_every_fit_starts_afresh_and_leaves_the_template_alone():
    x = _data(300)
    torch.manual_seed(0)
    template = models.DenseAE(8, hidden=[16], latent=2)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    det = AnomalyDetector(template, epochs=4, random_state=3).fit(x)
    first = det.decision_scores_.copy()
    det.fit(x)  # a second fit trains a new network, it does not continue the first
    np.testing.assert_array_equal(det.decision_scores_, first)
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())
    # the template's weights do not matter: a fresh build of the same config under the seed is identical
    by_name = AnomalyDetector("dense", model_options={"hidden": [16], "latent": 2}, epochs=4, random_state=3).fit(x)
    np.testing.assert_array_equal(by_name.decision_scores_, first)
    other = AnomalyDetector(template, epochs=4, random_state=4).fit(x)
    assert not np.array_equal(other.decision_scores_, first)
    # random_state=None draws the seed from numpy's global RNG, and leaves the other global RNGs alone
    np.random.seed(5)
    a = AnomalyDetector(template, epochs=1).fit(x).decision_scores_
    torch_state = torch.get_rng_state()
    np.random.seed(5)
    b = AnomalyDetector(template, epochs=1).fit(x).decision_scores_
    np.testing.assert_array_equal(a, b)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_pretrained_template_is_calibrated_not_retrained():
    x = _data(300)
    torch.manual_seed(0)
    m = models.DenseAE(8, hidden=[16], latent=2)
    pyaeplus.train.fit(m, torch.from_numpy(x), epochs=3, batch_size=32, progress=False)
    det = AnomalyDetector(m, pretrained=True, epochs=0, preprocessing=False, anomaly_score="mse").fit(x)
    np.testing.assert_allclose(det.decision_scores_, scoring.score(m, x, score="mse", progress=False), rtol=1e-6)
    with pytest.raises(ValueError, match="pretrained"):
        AnomalyDetector("dense", pretrained=True).fit(x)
    with pytest.raises(ValueError, match="model_options"):
        AnomalyDetector(m, model_options={"latent": 3}).fit(x)
    with pytest.raises(ValueError, match="X has 7 features per sample"):
        AnomalyDetector(m).fit(x[:, :7])


def test_clone_and_pickle_round_trip():
    x = _data(200)
    det = _det(epochs=3, contamination=0.1).fit(x)
    c = clone(det)
    assert c.get_params() == {**det.get_params(), "model_options": c.model_options}
    assert not hasattr(c, "model_")
    np.testing.assert_array_equal(c.fit(x).decision_scores_, det.decision_scores_)
    back = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(back.predict(x), det.predict(x))
    np.testing.assert_array_equal(back.predict_proba(x, method="unify"), det.predict_proba(x, method="unify"))
    np.testing.assert_array_equal(back.predict_confidence(x), det.predict_confidence(x))


def test_contamination_auto_uses_the_normal_only_rules():
    x = _data(300)
    base = _det(contamination="auto", epochs=2).fit(x)
    s = base.decision_scores_
    assert base.threshold_ == pytest.approx(s.mean() + s.std())  # default rule: mean + 1 std
    d = _det(contamination="auto", threshold={"method": "percentile", "q": 90}, epochs=2).fit(x)
    assert d.threshold_ == pytest.approx(np.percentile(d.decision_scores_, 90))
    f = _det(contamination="auto", threshold=0.5, epochs=2).fit(x)
    assert f.threshold_ == 0.5
    np.testing.assert_array_equal(f.labels_, (f.decision_scores_ > 0.5).astype(int))
    # predict_confidence takes the training fraction above the threshold as the contamination
    conf = d.predict_confidence(x)
    assert conf.shape == (300,) and 0 <= conf.min() and conf.max() <= 1
    with pytest.raises(ValueError, match="threshold"):
        _det(threshold="pot").fit(x)  # a normal-only rule needs contamination="auto"
    with pytest.raises(ValueError, match="threshold"):
        _det(contamination="auto", threshold="median").fit(x)


def test_standardization_is_fitted_on_the_training_data():
    rng = np.random.default_rng(0)
    x = _data(400) * np.array([1, 1000, 1, 1, 0.001, 1, 1, 1], np.float32) + 50
    det = _det(epochs=2).fit(x)
    np.testing.assert_allclose(det.scaler_.mean_, x.astype(np.float64).mean(0), rtol=1e-5)
    np.testing.assert_allclose(det.scaler_.scale_, x.astype(np.float64).std(0), rtol=1e-4)
    raw = _det(epochs=2, preprocessing=False).fit(x)
    assert raw.scaler_ is None
    # the same network sees standardized features: scores on test data use the training statistics
    y = x[rng.permutation(400)[:50]]
    sc = det.scaler_
    model_in = torch.from_numpy(((y - sc.mean_) / sc.scale_).astype(np.float32))
    np.testing.assert_allclose(det.decision_function(y), det.model_.eval().score(model_in).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="preprocessing=False"):
        AnomalyDetector("conv", model_options={"channels": [4], "latent": 4, "loss": "ssim",
                                               "loss_options": {"win_size": 3}}).fit(np.random.rand(8, 1, 8, 8))


def test_images_and_datasets(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(64, 1, 8, 8, generator=g)
    det = AnomalyDetector("conv", model_options={"channels": [4], "latent": 4, "loss": "ssim",
                                                 "loss_options": {"win_size": 3}},
                          preprocessing=False, epochs=2, random_state=0).fit(imgs.numpy())
    assert det.n_features_in_ == 64 and det.sample_shape_ == (1, 8, 8)
    s = det.decision_function(imgs)
    np.testing.assert_allclose(det.decision_function(imgs.reshape(64, 64)), s, rtol=1e-6)  # flattened is fine
    with pytest.raises(ValueError, match="X has 72 features"):
        det.decision_function(torch.rand(4, 1, 8, 9))
    # a dataset is streamed (standardization fitted in chunks); same result as the array
    x = _data(150)
    np.save(tmp_path / "x.npy", x)
    a = _det(epochs=2).fit(x)
    b = _det(epochs=2).fit(MemmapDataset(tmp_path / "x.npy"))
    np.testing.assert_allclose(b.scaler_.mean_, a.scaler_.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.decision_scores_, a.decision_scores_, rtol=1e-3, atol=1e-5)


def test_batch_size_honoured_everywhere(monkeypatch):
    seen = []
    orig = models.DenseAE.forward

    def spy(self, x):
        seen.append(x.shape[0])
        return orig(self, x)

    monkeypatch.setattr(models.DenseAE, "forward", spy)
    det = _det(anomaly_score="mse", batch_size=48, epochs=1, fit_options={"shuffle": False, "drop_last": False})
    det.fit(_data(200))
    det.decision_function(_data(130))
    det.predict(_data(100))
    assert seen and max(seen) <= 48 and 48 in seen


def test_latent_knn_training_scores_leave_each_row_out():
    x = _data(300)
    k = _det(anomaly_score="latent_knn", k=3, epochs=1).fit(x)
    assert k.decision_scores_.shape == (300,) and k.decision_scores_.min() > 0
    assert (k.decision_scores_ > k.decision_function(x)).all()


def test_fit_options_are_checked():
    x = _data(50)
    with pytest.raises(ValueError, match="fit_options must not set"):
        _det(fit_options={"epochs": 3}).fit(x)
    with pytest.raises(ValueError, match="not arguments of pyaeplus.train.fit"):
        _det(fit_options={"epoch": 3}).fit(x)
    with pytest.raises(ValueError, match="epochs"):
        _det(epochs=-1).fit(x)
    with pytest.raises(ValueError, match="n_samples=1"):
        pyaeplus.AutoEncoderDetector(epochs=1).fit(x[:1])  # BatchNorm needs two samples
