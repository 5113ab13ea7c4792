"""Fréchet distance between generated and real images (GALI Table 3).

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

over the features of a network M (Heusel et al. 2017). The papers' M is the FID
Inception's 2048-d pool_3 (TTUR's graph, TF-GAN's module); its weights need the
internet, so M is pluggable (gali_tf.features): a local copy of that network
(`ttur:GRAPH.pb`, `tfgan:DIR`), Keras' ImageNet InceptionV3 (another network) or a
trainers.classifier export. FIDs computed with different networks are not comparable,
so every result carries M's description and whether it is the papers' network. KID
(`kernel_distance`) is computed on the same features.

As the field computes it (clean-fid, Parmar et al. 2022): both streams are quantised to
the 256 levels of an 8-bit PNG before M sees them (`quantize`), and the real side's
features can be kept in a cache file (`ReferenceKey`, `load_reference`,
`save_reference`) keyed by everything that determines them, down to a digest of the
real images' bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import uuid
import warnings
import zipfile
from typing import Callable, Iterable, Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf

from gali_tf import data as data_lib
from gali_tf import visualize
from gali_tf.errors import first_line


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


# ------------------------------------------------------------------ quantisation

# Recorded in every cache key and report: what the images were before M saw them.
QUANTISATION = "uint8"


def quantize(images: tf.Tensor) -> tf.Tensor:
    """[-1, 1] images -> uint8, the 256 levels a saved PNG holds (clipped, rounded;
    gali_tf.visualize.to_uint8, the inverse of gali_tf.data.images_from_uint8).

    Why: the field's FIDs (TTUR, clean-fid, torchmetrics) are computed on image files,
    so generated images reach M rounded to 8 bits. Parmar et al. (2022, clean-fid)
    showed that such low-level differences (quantisation, JPEG, resizing) move FID by
    as much as the gaps papers report; a float G(z) compared with 8-bit real images
    is not the number anyone else computes. Real images decoded from 8-bit files come back
    unchanged; resized or rescaled ones (digits' 17 levels, CelebA's 64x64 resize) are
    rounded exactly as a PNG of them would be, so both streams are treated alike."""
    return visualize.to_uint8(images)


def dequantize(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [N, H, W, C] -> float32 [-1, 1] at the same size (M's input scale)."""
    return data_lib.images_from_uint8(pixels, pixels.shape[-3], pixels.shape[-2])


def collect_features(feature_fn: Callable[[tf.Tensor], tf.Tensor],
                     batches: Iterable[tf.Tensor]) -> np.ndarray:
    """`feature_fn`'s [N, F] features of a stream of [-1, 1] image batches, each batch
    quantised to 8 bits first: the one place both FID streams pass through."""
    quantized_fn = tf.function(lambda images: feature_fn(dequantize(quantize(images))))
    features = [np.asarray(quantized_fn(images), np.float64) for images in batches]
    if not features:
        raise ValueError("FID: no images")
    return np.concatenate(features)


def fid(feature_fn: Callable[[tf.Tensor], tf.Tensor], generated_batches: Iterable[tf.Tensor],
        real_batches: Iterable[tf.Tensor], network: str) -> FIDResult:
    """FID (and KID) between two streams of image batches in [-1, 1] on `feature_fn`'s
    features, both quantised to 8 bits."""
    return fid_of_features(collect_features(feature_fn, generated_batches),
                           collect_features(feature_fn, real_batches), network)


def fid_of_features(generated: np.ndarray, real: np.ndarray, network: str) -> FIDResult:
    """FID and KID of two [N, F] feature sets (e.g. the real ones read from a cache)."""
    value = frechet_distance(*feature_statistics(real), *feature_statistics(generated))
    kid, kid_std = kernel_distance(real, generated)
    return FIDResult(value, len(generated), len(real), network, kid, kid_std)


# ------------------------------------------------------------ reference statistics


def images_digest(batches: Iterable[tf.Tensor]) -> Tuple[str, int]:
    """(SHA-256 of the quantised images' bytes and image shape, in order; their
    number). Independent of the batching: --batch_size does not change the key.

    Part of the cache key: the dataset's name and split do not pin its pixels (an image
    folder gains files, TFDS data are prepared again, a crop changes in gali_tf.data),
    and reading the images is cheap next to running M on them."""
    digest, count, shape = hashlib.sha256(), 0, ()
    for images in batches:
        pixels = quantize(images).numpy()
        digest.update(pixels.tobytes())
        count, shape = count + pixels.shape[0], pixels.shape[1:]
    digest.update(repr(shape).encode())   # the same bytes as other (H, W, C) differ
    return digest.hexdigest(), count


@dataclasses.dataclass(frozen=True)
class ReferenceKey:
    """Everything that determines the real side's features; equal keys, equal features."""

    network: str                       # M's description (spec, signature:output)
    network_fingerprint: str           # M's weights (gali_tf.features.weights_fingerprint)
    network_input: Tuple[int, ...]     # M's (H, W, C): --fid_image_size is in no fingerprint
    network_value_range: Tuple[float, float]   # from a SavedModel's metadata.json
    network_resize: str                # FeatureModel.resize_method (TF1's or TF2's bilinear)
    network_input_dtype: str           # the dtype M's input is cast to
    dataset: str
    split: str
    image_shape: Tuple[int, ...]       # the images' (H, W, C) before M's resize
    num_images: int
    images_sha256: str                 # images_digest
    quantisation: str = QUANTISATION
    version: int = 2                   # of this file format and key

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def file_name(self) -> str:
        """DATASET-SPLIT-N-HASH.npz: readable, and unique for the whole key."""
        hashed = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        dataset = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.dataset)
        return f"{dataset}-{self.split}-{self.num_images}-{hashed}.npz"


def load_reference(path: str, key: ReferenceKey) -> Optional[np.ndarray]:
    """The cached [N, F] features for `key`, or None when there is no file. A file
    that cannot be read, or holds another key or a wrong shape, is a warning and None:
    the features are computed again (and the file replaced), never a crash."""
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            stored = np.load(io.BytesIO(f.read()), allow_pickle=False)
            stored_key, features = str(stored["key"]), np.asarray(stored["features"])
        if stored_key != key.to_json():
            raise ValueError("it was written for other images or another network")
        if features.ndim != 2 or features.shape[0] != key.num_images:
            raise ValueError(f"features of shape {features.shape}, expected "
                             f"{key.num_images} rows")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            tf.errors.OpError) as error:
        warnings.warn(f"FID reference cache {path} is unreadable ({type(error).__name__}: "
                      f"{first_line(error)}); computing the real images' features again",
                      stacklevel=2)
        return None
    return features.astype(np.float64)


def save_reference(path: str, key: ReferenceKey, features: np.ndarray) -> bool:
    """Writes the features under a unique temporary name and renames it into place, so
    an interrupted run (or two evaluations at once) never leaves half a file; returns
    False, with a warning, when the cache cannot be written (a cache is an
    optimisation: the evaluation goes on). float32 holds M's float32 outputs exactly."""
    temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key.to_json()), features=features.astype(np.float32))
    try:
        tf.io.gfile.makedirs(os.path.dirname(path) or ".")
        with tf.io.gfile.GFile(temporary, "wb") as f:
            f.write(buffer.getvalue())
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException as error:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        if not isinstance(error, (OSError, tf.errors.OpError)):
            raise   # an interrupt or a bug, not an unwritable cache
        warnings.warn(f"FID reference cache {path} not written ({type(error).__name__}: "
                      f"{first_line(error)})", stacklevel=2)
        return False
    return True


def writing_pngs(batches: Iterable[tf.Tensor], directory: str) -> Iterator[tf.Tensor]:
    """Yields `batches` unchanged while writing each image, quantised as FID sees it,
    as DIRECTORY/000000.png, 000001.png, ...: the very samples of the FID, for
    clean-fid or torchmetrics to read (a PNG keeps the 8-bit levels exactly)."""
    tf.io.gfile.makedirs(directory)
    index = 0
    for images in batches:
        for pixels in quantize(images):
            tf.io.write_file(os.path.join(directory, f"{index:06d}.png"),
                             tf.io.encode_png(pixels))
            index += 1
        yield images
