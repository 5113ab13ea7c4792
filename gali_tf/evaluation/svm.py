"""The linear-SVM protocol on encoder features (ALI section 4.3, GALI Table 2).

Features are `Encoder.features(x)`: the concatenation of E's last three hidden layers
and its output (ALI 4.3). "A 10,000 example held-out validation set is taken from the
training set and is used for model selection. The SVM is trained on 1000 examples taken
at random from the remainder of the training set. The test error rate is measured for
100 different SVMs trained on different random 1000-example training sets" (ALI 4.3):

1. one validation set of up to `validation_size` train examples is drawn, stratified by
   class and leaving at least `per_class` examples of every class for the draws;
2. each of `draws` draws takes `per_class` labelled examples of every class from the
   remainder (100 per class = the papers' 1000 labels for 10 classes);
3. an L2-SVM (`LinearSVC`, squared hinge, one-vs-rest) is fitted on the standardised
   labelled features for every C of `c_grid`; the C with the lowest validation error
   is kept, and its misclassification rate on the whole test split recorded.

The result is the mean ± std of the test error over the draws. Standardisation (fitted
on the labelled examples only) puts the hidden layers and the output, whose scales
differ by orders of magnitude, on one footing.

Speed: with 1000 examples of thousands of dimensions, the SVM's weight vector lies in
the span of the labelled examples (and the constant feature liblinear appends for the
bias), so every problem is solved exactly in that <= 1001-d span (an SVD of the labelled
features), which is several times faster than in the full feature space.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

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
    # Its std over draws (the papers' "±"); None when every draw took the same labelled
    # set (a split too small for the protocol): no spread was measured.
    std_error: Optional[float]
    draws: int
    per_class: int
    num_validation: int
    num_test: int
    feature_dim: int
    chosen_c: Tuple[float, ...]  # the validation-selected C of every draw
    distinct_draws: int = 0      # how many different labelled sets the draws took
    # The draws asked for (--svm_draws); more than `draws` when the split allows only
    # one labelled set, which is then drawn once.
    draws_asked: int = 0

    def __str__(self) -> str:
        spread = (f" ± {100 * self.std_error:.2f}" if self.std_error is not None
                  else " (no spread: every draw took the same labelled set)")
        return (f"{100 * self.mean_error:.2f}{spread} % ({self.draws} draws, "
                f"{self.distinct_draws} distinct, of {self.per_class}/class, "
                f"{self.feature_dim}-d features, {self.num_test} test examples)")


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


def validation_indices(labels: np.ndarray, per_class: int, validation_size: int,
                       rng: np.random.RandomState) -> np.ndarray:
    """A held-out validation set: up to `validation_size` examples, stratified by class,
    leaving at least `per_class` examples of every class for the labelled draws.

    Raises ValueError when a class has fewer than `per_class + 1` examples.
    """
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() <= per_class:
        short = classes[np.argmin(counts)]
        raise ValueError(f"--svm_per_class={per_class}: class {short} has only "
                         f"{counts.min()} training examples (the labelled draws and the "
                         "validation set that chooses C need more)")
    chosen = []
    for label, count in zip(classes, counts):
        share = min(count - per_class, max(1, int(validation_size * count / len(labels))))
        chosen.append(rng.choice(np.flatnonzero(labels == label), share, replace=False))
    return np.sort(np.concatenate(chosen))


def draw_labelled(labels: np.ndarray, pool: np.ndarray, per_class: int,
                  rng: np.random.RandomState) -> np.ndarray:
    """`per_class` random indices of every class, from the indices in `pool`."""
    return np.concatenate([rng.choice(pool[labels[pool] == label], per_class, replace=False)
                           for label in np.unique(labels)])


class _LabelledSpan:
    """Standardisation + the orthonormal basis of the labelled examples' span, as one
    affine map x -> x @ weights + offset.

    LinearSVC's bias is a regularised weight on an appended constant-1 feature
    (intercept_scaling=1), so that feature is appended before the basis is taken and
    the SVM is fitted without its own intercept: the same optimisation problem.

    The basis comes from the n x n Gram matrix of the n labelled examples (an
    eigendecomposition, not an SVD of the n x F features: with F ~ 10^4 that SVD took
    most of the protocol's time), and the standardisation is folded into the map, so
    the validation and test features are never copied.
    """

    def __init__(self, x_lab: np.ndarray):
        x = x_lab.astype(np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale[scale == 0.0] = 1.0   # StandardScaler's rule for constant features
        augmented = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        eigenvalues, eigenvectors = np.linalg.eigh(augmented @ augmented.T)
        # Singular values below 1e-5 of the largest span no direction the SVM can use.
        keep = eigenvalues > eigenvalues.max() * 1e-10
        basis = augmented.T @ (eigenvectors[:, keep] / np.sqrt(eigenvalues[keep]))
        self.weights = (basis[:-1] / scale[:, None]).astype(x_lab.dtype)
        self.offset = (basis[-1] - (mean / scale) @ basis[:-1]).astype(x_lab.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.offset


def _fit_and_select(x_lab, y_lab, x_val, y_val, c_grid: Sequence[float], max_iter: int):
    """(projection, LinearSVC, C) with the lowest validation error; ties go to smaller C."""
    from sklearn.svm import LinearSVC

    project = _LabelledSpan(x_lab)
    x_lab, x_val = project(x_lab), project(x_val)
    best = None
    for c in c_grid:
        # The dual solver: ~1000 examples against as many dimensions, where it is
        # several times faster than the primal one at the larger Cs (measured on digits).
        svm = LinearSVC(C=c, loss="squared_hinge", dual=True, fit_intercept=False,
                        tol=1e-3, max_iter=max_iter, random_state=0).fit(x_lab, y_lab)
        error = float(np.mean(svm.predict(x_val) != y_val))
        if best is None or error < best[0]:
            best = (error, c, svm)
    return project, best[2], best[1]


def svm_protocol(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray,
                 config: SVMConfig = SVMConfig(),
                 progress: Optional[Callable[[str], None]] = None) -> SVMResult:
    """Mean ± std test misclassification of validation-tuned linear SVMs over draws;
    `progress` is told each draw's test error as it comes."""
    if config.draws < 1 or config.per_class < 1:
        raise ValueError(f"--svm_draws={config.draws}, --svm_per_class={config.per_class}: "
                         "expected at least 1")
    rng = np.random.RandomState(config.seed)
    validation = validation_indices(train_labels, config.per_class, config.validation_size, rng)
    pool = np.setdiff1d(np.arange(len(train_labels)), validation)
    # A draw that repeats an earlier labelled set has its result (the fit is
    # deterministic); when the pool holds only `per_class` examples of every class, all
    # draws are one, so one is made (a spread over copies would not be a measurement).
    outcome_of: Dict[Tuple[int, ...], Tuple[float, float]] = {}
    errors, chosen = [], []
    draws = 1 if _one_labelled_set(train_labels[pool], config.per_class) else config.draws
    for _ in range(draws):
        labelled = draw_labelled(train_labels, pool, config.per_class, rng)
        key = tuple(np.sort(labelled))
        if key not in outcome_of:
            outcome_of[key] = _test_error(train_features, train_labels, labelled, validation,
                                          test_features, test_labels, config)
        error, c = outcome_of[key]
        errors.append(error)
        chosen.append(c)
        if progress is not None:
            progress(f"  svm draw {len(errors)}/{draws}: test error "
                     f"{100 * error:.2f}% (C={c:g}, {len(outcome_of)} distinct so far)")
    distinct = len(outcome_of)
    return SVMResult(float(np.mean(errors)), float(np.std(errors)) if distinct > 1 else None,
                     draws, config.per_class, len(validation), len(test_labels),
                     int(train_features.shape[1]), tuple(chosen), distinct, config.draws)


def _one_labelled_set(pool_labels: np.ndarray, per_class: int) -> bool:
    """Whether the pool holds at most `per_class` examples of every class: then every
    draw takes all of them, the same labelled set."""
    return bool(np.all(np.unique(pool_labels, return_counts=True)[1] <= per_class))


def _test_error(train_features, train_labels, labelled, validation, test_features,
                test_labels, config: SVMConfig) -> Tuple[float, float]:
    """(test error, chosen C) of the SVM of one labelled draw."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # A large C may stop at max_iter; it is then judged on validation like the rest.
        warnings.simplefilter("ignore", ConvergenceWarning)
        project, svm, c = _fit_and_select(
            train_features[labelled], train_labels[labelled],
            train_features[validation], train_labels[validation],
            config.c_grid, config.max_iter)
    predictions = svm.predict(project(test_features))
    return float(np.mean(predictions != test_labels)), float(c)
