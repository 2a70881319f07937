import numpy as np
import pytest

from ecomatch_model.metrics import recall_at_k, roc_auc


def test_roc_auc_known_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # One of four positive/negative pairs misordered -> 0.75; ties count half.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == 0.75
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_recall_at_k_hand_made():
    scores = np.array([[0.9, 0.1, 0.2],    # positive ranks 1st
                       [0.5, 0.7, 0.1],    # 2nd
                       [0.1, 0.2, 0.3]])   # 3rd
    r = recall_at_k(scores, np.zeros(3, int), ks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
