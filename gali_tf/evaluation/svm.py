"""The linear-SVM protocol on encoder features (ALI section 4.3, GALI Table 2).

Features are `Encoder.features(x)`: the concatenation of E's last three hidden layers
and its output (ALI 4.3). For each of `draws` random draws:

1. `per_class` labelled examples of every class are drawn from the train split
   (100 per class = the papers' 1000 labels for 10 classes);
2. a validation set of up to `validation_size` other train examples is drawn
   (disjoint from the labelled ones; DCGAN's protocol, which ALI follows, used 10,000);
3. an L2-SVM (`LinearSVC`, squared hinge) is fitted on the standardised labelled
   features for every C of `c_grid`; the C with the lowest validation error is kept;
4. its misclassification rate on the whole test split is recorded.

The result is the mean ± std of the test error over the draws. Standardisation (fitted
on the labelled examples only) puts the hidden layers and the output, whose scales
differ by orders of magnitude, on one footing; it does not look at validation or test.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

# LinearSVC's C on standardised features; the grid spans the under- to over-fitted range
# for 1000 examples of a few thousand dimensions.
DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass(frozen=True)
class SVMConfig:
    per_class: int = 100
    draws: int = 100
    validation_size: int = 10_000
    c_grid: Tuple[float, ...] = DEFAULT_C_GRID
    seed: int = 0
    max_iter: int = 1000


@dataclasses.dataclass(frozen=True)
class SVMResult:
    mean_error: float            # test misclassification rate, mean over draws
    std_error: float             # its std over draws (the papers' "±")
    draws: int
    per_class: int
    num_validation: int
    num_test: int
    feature_dim: int
    chosen_c: Tuple[float, ...]  # the validation-selected C of every draw

    def __str__(self) -> str:
        return (f"{100 * self.mean_error:.2f} ± {100 * self.std_error:.2f} % "
                f"({self.draws} draws of {self.per_class}/class, {self.feature_dim}-d features, "
                f"{self.num_test} test examples)")


def encoder_features(encoder, dataset: tf.data.Dataset) -> Tuple[np.ndarray, np.ndarray]:
    """(features [N, F], labels [N]) of a dataset of (images, labels) batches."""
    features_fn = tf.function(lambda images: encoder.features(images, training=False))
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(features_fn(images), np.float32))
        labels.append(np.asarray(batch_labels))
    if not features:
        raise ValueError("encoder_features: the dataset is empty")
    return np.concatenate(features), np.concatenate(labels)


def draw_labelled_split(labels: np.ndarray, per_class: int, validation_size: int,
                        rng: np.random.RandomState) -> Tuple[np.ndarray, np.ndarray]:
    """(labelled indices: `per_class` of every class, validation indices: the rest, capped).

    Raises ValueError when a class has fewer than `per_class` examples or nothing is
    left for validation.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < per_class:
        short = classes[np.argmin(counts)]
        raise ValueError(f"--svm_per_class={per_class}: class {short} has only "
                         f"{counts.min()} training examples")
    labelled = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                               for c in classes])
    rest = np.setdiff1d(np.arange(len(labels)), labelled)
    if not len(rest):
        raise ValueError(f"--svm_per_class={per_class}: no training examples are left for "
                         "the validation set that chooses C")
    validation = rng.choice(rest, min(validation_size, len(rest)), replace=False)
    return labelled, validation


def _fit_and_select(x_lab, y_lab, x_val, y_val, c_grid: Sequence[float], max_iter: int):
    """The LinearSVC (and its C) with the lowest validation error; ties go to smaller C."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    scaler = StandardScaler().fit(x_lab)
    x_lab, x_val = scaler.transform(x_lab), scaler.transform(x_val)
    best = None
    for c in c_grid:
        # The dual solver: ~1000 examples against thousands of features, where it is
        # several times faster than the primal one at the larger Cs (measured on digits).
        svm = LinearSVC(C=c, loss="squared_hinge", dual=True, max_iter=max_iter,
                        random_state=0).fit(x_lab, y_lab)
        error = float(np.mean(svm.predict(x_val) != y_val))
        if best is None or error < best[0]:
            best = (error, c, svm)
    return scaler, best[2], best[1]


def svm_protocol(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray,
                 config: SVMConfig = SVMConfig()) -> SVMResult:
    """Mean ± std test misclassification of validation-tuned linear SVMs over draws."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning

    if config.draws < 1 or config.per_class < 1:
        raise ValueError(f"--svm_draws={config.draws}, --svm_per_class={config.per_class}: "
                         "expected at least 1")
    rng = np.random.RandomState(config.seed)
    errors, chosen, num_validation = [], [], 0
    for _ in range(config.draws):
        labelled, validation = draw_labelled_split(train_labels, config.per_class,
                                                   config.validation_size, rng)
        num_validation = len(validation)
        with warnings.catch_warnings():
            # A large C may stop at max_iter; it is then judged on validation like the rest.
            warnings.simplefilter("ignore", ConvergenceWarning)
            scaler, svm, c = _fit_and_select(
                train_features[labelled], train_labels[labelled],
                train_features[validation], train_labels[validation],
                config.c_grid, config.max_iter)
        predictions = svm.predict(scaler.transform(test_features))
        errors.append(float(np.mean(predictions != test_labels)))
        chosen.append(float(c))
    return SVMResult(float(np.mean(errors)), float(np.std(errors)), config.draws,
                     config.per_class, num_validation, len(test_labels),
                     int(train_features.shape[1]), tuple(chosen))
