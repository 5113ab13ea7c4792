"""Fréchet distance between generated and real images (GALI Table 3).

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

over the features of a network M (Heusel et al. 2017). The papers' M is InceptionV3's
2048-d pool3; its weights need the internet, so M is pluggable (gali_tf.features): a local
InceptionV3 notop weights file or a trainers.classifier export. FIDs computed with
different networks are not comparable, so every result carries M's description. KID
(`kernel_distance`) is computed on the same features.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Iterable, Tuple

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class FIDResult:
    value: float
    num_generated: int
    num_real: int
    network: str           # which M produced the features
    # KID on the same features (kernel_distance): mean and std over its subsets.
    kid: float = float("nan")
    kid_std: float = float("nan")

    def __str__(self) -> str:
        return (f"{self.value:.4f} ({self.num_generated} generated vs {self.num_real} real, "
                f"features of {self.network})")


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean [F], covariance [F, F]) of [N, F] features, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) of two Gaussians."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID: feature sizes differ ({mu1.shape} vs {mu2.shape})")
    with warnings.catch_warnings():
        # A singular product is handled below; scipy's warning about it is not news.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        # Singular product (fewer samples than features): regularise the diagonal, as the
        # reference implementation (TTUR) does.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)   # round-off can leave a tiny imaginary part
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# clean-fid's and torchmetrics' KID defaults: 100 subsets of (up to) 1000 examples.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def kernel_distance(real: np.ndarray, generated: np.ndarray, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> Tuple[float, float]:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 between the two feature sets
    under the cubic kernel k(a, b) = (a.b / F + 1)^3, averaged over random subsets of
    m = min(subset_size, N_real, N_generated) examples each; (mean, std over subsets).

        MMD^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
                - 2 sum_{i,j} k(x_i, y_j) / m^2

    Unlike FID it has no bias from the sample size, so a small real set (297 digits)
    against many samples still compares."""
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    m = min(subset_size, len(real), len(generated))
    if m < 2:
        raise ValueError(f"KID needs at least 2 examples of each set, got {len(real)} real "
                         f"and {len(generated)} generated")
    dim = real.shape[1]
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        x = generated[rng.choice(len(generated), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        k_xx = (x @ x.T / dim + 1.0) ** 3
        k_yy = (y @ y.T / dim + 1.0) ** 3
        k_xy = (x @ y.T / dim + 1.0) ** 3
        values.append((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                      + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - 2.0 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def collect_features(feature_fn: Callable[[tf.Tensor], tf.Tensor],
                     batches: Iterable[tf.Tensor]) -> np.ndarray:
    feature_fn = tf.function(feature_fn)
    features = [np.asarray(feature_fn(images), np.float64) for images in batches]
    if not features:
        raise ValueError("FID: no images")
    return np.concatenate(features)


def fid(feature_fn: Callable[[tf.Tensor], tf.Tensor], generated_batches: Iterable[tf.Tensor],
        real_batches: Iterable[tf.Tensor], network: str) -> FIDResult:
    """FID (and KID) between two streams of image batches in [-1, 1] on `feature_fn`'s
    features."""
    generated = collect_features(feature_fn, generated_batches)
    real = collect_features(feature_fn, real_batches)
    value = frechet_distance(*feature_statistics(real), *feature_statistics(generated))
    kid, kid_std = kernel_distance(real, generated)
    return FIDResult(value, len(generated), len(real), network, kid, kid_std)
