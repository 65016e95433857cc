"""The assertions PyOD's own detector tests make (fitted attributes, training scores, test scores with
a ROC floor, labels, predict_proba in both methods, confidence, fit_predict, prediction consistency,
clone), written from PyOD's documented behaviour for our detectors, on data made the way PyOD's
``generate_data`` makes it (Gaussian inliers, uniform outliers over a wider box, 10 % contamination).
Where PyOD is installed, its own ``BaseDetector`` methods run on our fitted detector and must give
exactly our numbers: same definitions, not just the same shapes."""

import numpy as np
import pytest
import torch
from scipy.special import erf
from scipy.stats import binom
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from pyaeplus.scoring import AnomalyDetector, AutoEncoderDetector, DeepSVDDDetector, VAEDetector

N_TRAIN, N_TEST, N_FEATURES, CONTAMINATION, ROC_FLOOR = 1000, 500, 50, 0.1, 0.8


def generate_data(n_train, n_test, n_features, contamination, seed):
    """PyOD-style synthetic data: inliers ~ N(offset, (0.3 c)^2) per feature, outliers ~ U(-10, 10)."""
    rng = np.random.default_rng(seed)
    offset, c = rng.integers(1, 10), rng.random() + 0.001

    def part(n):
        n_out = int(n * contamination)
        x = np.concatenate([0.3 * c * rng.standard_normal((n - n_out, n_features)) + offset,
                            rng.uniform(-10, 10, (n_out, n_features))])
        return x, np.r_[np.zeros(n - n_out), np.ones(n_out)]

    (xtr, ytr), (xte, yte) = part(n_train), part(n_test)
    return xtr, xte, ytr, yte


DETECTORS = {
    "AnomalyDetector": lambda: AnomalyDetector(model_options={"hidden": [32], "latent": 8}, epochs=3, random_state=0),
    "AutoEncoderDetector": lambda: AutoEncoderDetector(epochs=3, random_state=0),
    "VAEDetector": lambda: VAEDetector(epochs=3, random_state=0),
    "DeepSVDDDetector": lambda: DeepSVDDDetector(epochs=3, random_state=0),
}


@pytest.fixture(scope="module")
def data():
    return generate_data(N_TRAIN, N_TEST, N_FEATURES, CONTAMINATION, seed=42)


@pytest.fixture(scope="module", params=list(DETECTORS))
def fitted(request, data):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield DETECTORS[request.param]().fit(data[0])
    finally:
        torch.set_num_threads(n)


def test_parameters(fitted):
    for name in ("decision_scores_", "labels_", "threshold_", "_mu", "_sigma", "model_"):
        assert getattr(fitted, name, None) is not None, name


def test_train_scores(fitted, data):
    s = fitted.decision_scores_
    assert len(s) == data[0].shape[0]
    assert fitted.threshold_ == np.percentile(s, 100 * (1 - CONTAMINATION))
    assert fitted.labels_.sum() == int(CONTAMINATION * N_TRAIN)  # distinct scores: exactly the top 10 %


def test_prediction_scores(fitted, data):
    s = fitted.decision_function(data[1])
    assert s.shape == (data[1].shape[0],)
    assert roc_auc_score(data[3], s) >= ROC_FLOOR


def test_prediction_labels(fitted, data):
    pred = fitted.predict(data[1])
    assert pred.shape == data[3].shape and set(np.unique(pred)) <= {0, 1}


def test_prediction_proba(fitted, data):
    s = fitted.decision_function(data[1])
    for method in (None, "linear", "unify"):
        p = fitted.predict_proba(data[1]) if method is None else fitted.predict_proba(data[1], method=method)
        assert p.shape == (N_TEST, 2) and p.min() >= 0 and p.max() <= 1
        np.testing.assert_allclose(p.sum(1), 1.0)
    train = fitted.decision_scores_
    lin = np.clip((s - train.min()) / (train.max() - train.min()), 0, 1)
    np.testing.assert_allclose(fitted.predict_proba(data[1], method="linear")[:, 1], lin, rtol=1e-12, atol=1e-12)
    uni = np.clip(erf((s - train.mean()) / (train.std() * np.sqrt(2))), 0, 1)
    np.testing.assert_allclose(fitted.predict_proba(data[1], method="unify")[:, 1], uni, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        fitted.predict_proba(data[1], method="something")


def test_prediction_labels_confidence(fitted, data):
    pred, conf = fitted.predict(data[1], return_confidence=True)
    assert pred.shape == conf.shape == data[3].shape
    assert conf.min() >= 0 and conf.max() <= 1
    # Perini et al.: P(the sample's rank stays above the threshold) for anomalies, the complement for normals
    s, train = fitted.decision_function(data[1]), fitted.decision_scores_
    n = len(train)
    post = (1 + np.array([(train <= v).sum() for v in s])) / (2 + n)
    expected = 1 - binom.cdf(n - int(n * CONTAMINATION), n, post)
    expected = np.where(pred == 1, expected, 1 - expected)
    np.testing.assert_allclose(conf, expected, rtol=1e-12, atol=1e-12)
    p, conf2 = fitted.predict_proba(data[1], method="linear", return_confidence=True)
    assert p.shape == (N_TEST, 2)
    np.testing.assert_array_equal(conf2, conf)


def test_fit_predict_and_consistency(fitted, data):
    # training labels, predictions on the training set and fit_predict agree
    np.testing.assert_array_equal(fitted.predict(data[0]), fitted.labels_)
    np.testing.assert_array_equal(fitted.decision_function(data[0]), fitted.decision_scores_)
    again = clone(fitted)
    np.testing.assert_array_equal(again.fit_predict(data[0]), fitted.labels_)
    np.testing.assert_array_equal(again.decision_scores_, fitted.decision_scores_)


def test_pyod_base_methods_give_our_numbers(fitted, data):
    base = pytest.importorskip("pyod.models.base")
    fitted._classes = 2  # the one attribute PyOD's methods read that PyOD's fit sets
    try:
        for method in ("linear", "unify"):
            np.testing.assert_array_equal(base.BaseDetector.predict_proba(fitted, data[1], method=method),
                                          fitted.predict_proba(data[1], method=method))
        np.testing.assert_array_equal(base.BaseDetector.predict_confidence(fitted, data[1]),
                                      fitted.predict_confidence(data[1]))
        np.testing.assert_array_equal(base.BaseDetector.predict(fitted, data[1]), fitted.predict(data[1]))
    finally:
        del fitted._classes
