"""A linear SVM between two sets of codes, as InterFaceGAN's train_boundary fits it (the seed's coarse and fine
boundaries are both made this way): scikit-learn's SVC with a linear kernel, a unit normal, and a validation
accuracy on held-out samples.

The intercept is scaled with the normal, so `d(x) = x . normal + intercept` is the signed distance to the
hyperplane in code units, positive on the label-1 side: the convention of the published fine intercepts
(`worker.pipeline.edit.double_chin_score`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearBoundary:
    normal: np.ndarray
    """w_dim float32, unit length, pointing to the label-1 (double chin) side."""
    intercept: float
    validation_accuracy: float | None
    """Fraction of held-out codes on their own side; None when nothing was held out."""
    train_samples: int


def split_indices(count: int, split_ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, validation) partition of range(count): int(count * split_ratio) for training."""
    order = rng.permutation(count)
    train_count = int(count * split_ratio)
    return order[:train_count], order[train_count:]


def fit_linear_boundary(
    train_positive: np.ndarray, train_negative: np.ndarray, val_positive: np.ndarray, val_negative: np.ndarray
) -> LinearBoundary:
    """Each argument M x D; positives are label 1."""
    from sklearn import svm

    if len(train_positive) == 0 or len(train_negative) == 0:
        raise ValueError("a boundary needs at least one training code on each side")
    data = np.concatenate([train_positive, train_negative]).astype(np.float64)
    labels = np.concatenate([np.ones(len(train_positive), int), np.zeros(len(train_negative), int)])
    classifier = svm.SVC(kernel="linear").fit(data, labels)
    coefficients = classifier.coef_.reshape(-1)
    length = float(np.linalg.norm(coefficients))
    accuracy = None
    if len(val_positive) + len(val_negative):
        held_out = np.concatenate([val_positive, val_negative]).astype(np.float64)
        truth = np.concatenate([np.ones(len(val_positive), int), np.zeros(len(val_negative), int)])
        accuracy = float((classifier.predict(held_out) == truth).mean())
    return LinearBoundary(
        normal=(coefficients / length).astype(np.float32),
        intercept=float(classifier.intercept_[0]) / length,
        validation_accuracy=accuracy,
        train_samples=len(data),
    )


def project_out(normal: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """InterFaceGAN's conditional boundary: `normal` without its component along the unit `condition`, renormalised.
    Both w_dim; returns w_dim float32."""
    normal = normal.astype(np.float64).reshape(-1)
    condition = condition.astype(np.float64).reshape(-1)
    condition = condition / np.linalg.norm(condition)
    projected = normal - normal.dot(condition) * condition
    return (projected / np.linalg.norm(projected)).astype(np.float32)
