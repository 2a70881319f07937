"""Plain numpy metrics: ROC-AUC and recall@k. Higher ``anomaly`` means "more likely a
mismatch" everywhere in this module."""
from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def roc_auc(labels: np.ndarray, anomaly: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half). labels: 1 = mismatch."""
    labels = np.asarray(labels).astype(bool)
    anomaly = np.asarray(anomaly, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(anomaly)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def recall_at_k(scores: np.ndarray, positive: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """scores (Q, C): each query's similarity to C candidates; positive (Q,) the index of
    the right candidate. R@k = share of queries whose positive ranks in the top k
    (ties against the positive count as ranked above it)."""
    scores = np.asarray(scores, np.float64)
    pos_score = scores[np.arange(len(scores)), positive]
    rank = (scores >= pos_score[:, None]).sum(1) - 1  # 0 = best
    return {k: float((rank < k).mean()) for k in ks}
