"""Classifier metrics against scikit-learn's own, number for number and the report character for character."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from aigc_cli.data.labelled import class_weights
from aigc_cli.evaluation.classification import multi_label_metrics, regression_metrics, roc_auc, single_label_metrics


def _random_labels(n_labels: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_labels, n)
    # mostly right, some wrong, and one class never predicted (zero_division paths)
    predicted = np.where(rng.random(n) < 0.6, truth, rng.integers(0, max(1, n_labels - 1), n))
    probabilities = rng.dirichlet(np.ones(n_labels), n)
    return truth.tolist(), predicted.tolist(), probabilities.tolist()


@pytest.mark.parametrize("n_labels", [2, 3, 5])
def test_single_label_metrics_and_report_match_sklearn(n_labels):
    truth, predicted, probabilities = _random_labels(n_labels, 200, n_labels)
    names = [f"class_{i}" for i in range(n_labels)]
    metrics, details = single_label_metrics(truth, predicted, probabilities, names)
    assert metrics["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = sk.precision_recall_fscore_support(truth, predicted, average=average, labels=list(range(n_labels)), zero_division=0)
        assert (metrics[f"{average}_precision"], metrics[f"{average}_recall"], metrics[f"{average}_f1"]) == pytest.approx((p, r, f))
    expected = sk.classification_report(truth, predicted, labels=list(range(n_labels)), target_names=names, zero_division=0)
    assert details["classification_report"] == expected
    assert details["confusion_matrix"] == sk.confusion_matrix(truth, predicted, labels=list(range(n_labels))).tolist()
    if n_labels == 2:
        assert metrics["roc_auc"] == pytest.approx(sk.roc_auc_score(truth, [row[1] for row in probabilities]))
    else:
        assert "roc_auc" not in metrics


def test_roc_auc_with_ties_matches_sklearn():
    truth = [0, 1, 1, 0, 1, 0, 0, 1]
    scores = [0.1, 0.5, 0.5, 0.5, 0.9, 0.2, 0.9, 0.3]
    assert roc_auc(truth, scores) == pytest.approx(sk.roc_auc_score(truth, scores))


def test_multi_label_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    truth = (rng.random((100, 4)) < 0.4).astype(int)
    predicted = np.where(rng.random((100, 4)) < 0.7, truth, 1 - truth)
    names = ["a", "b", "c", "d"]
    metrics, details = multi_label_metrics(truth, predicted, names)
    assert metrics["subset_accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    for average in ("macro", "micro", "weighted", "samples"):
        p, r, f, _ = sk.precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)
        assert (metrics[f"{average}_precision"], metrics[f"{average}_recall"], metrics[f"{average}_f1"]) == pytest.approx((p, r, f))
    assert details["classification_report"] == sk.classification_report(truth, predicted, target_names=names, zero_division=0)


def test_regression_metrics_match_sklearn():
    truth, predicted = [1.0, 2.0, 3.5, 4.0], [1.5, 1.8, 3.0, 4.4]
    metrics, _ = regression_metrics(truth, predicted)
    assert metrics == pytest.approx({"mse": sk.mean_squared_error(truth, predicted), "mae": sk.mean_absolute_error(truth, predicted),
                                     "r2": sk.r2_score(truth, predicted)})


def test_balanced_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    ids = [0, 0, 0, 1, 2, 2]
    assert class_weights(ids, 3, "single_label") == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=np.array(ids)))
