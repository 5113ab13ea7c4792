"""tf.data input pipelines: sklearn digits, TFDS datasets, image folders, toy mixture.

Every source yields float32 examples; images are (H, W, C) scaled to [-1, 1], the toy
mixture is (2,) and unscaled. Config field names equal the trainer's flag names, so
errors can name the flag as `--field`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import sys
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from gali_tf.errors import InputError, first_line

DATASETS = ("digits", "fashion_mnist", "svhn_cropped", "cifar10", "celeb_a", "folder", "toy25")
SPLITS = ("train", "test")
# What the train split may be made of, per dataset (default: its "train" only).
TRAIN_SPLITS = {"svhn_cropped": ("train", "extra", "train+extra")}

# Default (image_size, channels) per image dataset.
_IMAGE_DEFAULTS = {
    "digits": (16, 1),
    "fashion_mnist": (28, 1),
    "svhn_cropped": (32, 3),
    "cifar10": (32, 3),
    "celeb_a": (64, 3),
    "folder": (64, 3),
}

DIGITS_NUM_TEST = 297  # 1797 images: 1500 train + 297 test.
_DIGITS_MAX_VALUE = 16.0  # load_digits pixels are counts in 0..16.

# Fashion-MNIST (Xiao et al. 2017) as its four IDX files; where they are looked for when
# --data_dir is unset: the Debian package dataset-fashion-mnist, then Keras' download cache.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_UINT8 = 0x08  # the IDX type code of unsigned bytes

# CelebA images are 218x178 with the face roughly centred; a central 140x140 crop keeps
# the face and drops most background (the crop used by the usual DCGAN/ALI CelebA code).
CELEBA_CROP_SIZE = 140

# The 40 CelebA attribute names, sorted: the column order of the label vector.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)

# ALI paper section 4.5: 25 equally weighted Gaussians on the grid {-4,-2,0,2,4}^2.
_TOY25_GRID = (-4.0, -2.0, 0.0, 2.0, 4.0)
TOY25_MEANS = np.array([(x, y) for x in _TOY25_GRID for y in _TOY25_GRID], np.float32)
TOY25_STD = 0.05
_TOY25_SIZES = {"train": (100_000, 0), "test": (10_000, 1)}  # split -> (n, RandomState seed)

# tf.io.decode_image reads the first five; WebP goes through Pillow (_decode_webp).
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Each format's magic bytes -> what a whole file ends with: JPEG's EOI marker, PNG's
# empty IEND chunk with its CRC, GIF's trailer; BMP has none (such files are decoded in
# full to be checked). WebP ("RIFF", its length, "WEBP") has no end marker but states
# its length (_webp_is_whole).
_IMAGE_FORMATS = {b"\xff\xd8\xff": b"\xff\xd9", b"\x89PNG": _PNG_END, b"GIF8": b"\x3b",
                  b"BM": None}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data to read and how; field names are the trainer's flag names."""

    dataset: str = "digits"  # one of DATASETS
    # TFDS data_dir (prepared data; loaded with download=False); fashion_mnist: the folder of
    # its four IDX files (or a TFDS data_dir), None = FASHION_MNIST_DIRS.
    data_dir: str | None = None
    image_dir: str | None = None  # dataset="folder": searched recursively for jpg/png/gif/bmp/webp
    image_size: int | None = None  # None = the dataset's default
    channels: int | None = None  # None = the dataset's default (digits 1, others 3)
    shuffle_buffer: int = 10_000
    # What "train" reads: "train", or for svhn_cropped also its 531k "extra" images
    # ("extra", as the official GALI and ALI scripts train, or "train+extra").
    train_split: str = "train"
    # dataset="folder": leave out unreadable images (one warning line) instead of failing.
    skip_bad_images: bool = False


class DataError(InputError):
    """One-line, user-facing input error naming the flag/path and what was expected."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset as `make_dataset` will yield it."""

    name: str
    example_shape: tuple[int, ...]  # (H, W, C) for images, (2,) for toy25
    num_train: int
    num_test: int  # 0 if the source has no test split
    num_classes: int  # 0 unlabelled; celeb_a: 40 binary attributes (multi-label)
    is_image: bool


# ----------------------------------------------------------------------------- config


# RunRecord.dataset (and the `dataset` training flag) of a run trained on the images a
# caller passed to gali_tf.train(dataset=...), not on a DataConfig source: no tool can
# read them again.
CALLER_DATA = "caller"


def _check_config(cfg: DataConfig) -> None:
    if cfg.dataset == CALLER_DATA:
        raise DataError(
            f"--dataset={CALLER_DATA}: the run was trained on images passed to "
            "gali_tf.train(dataset=...), which it does not keep, so no tool can read them; "
            "use gali_tf.restore(MODEL_DIR) with those images in Python, or train on a "
            "folder of them (--dataset=folder)")
    if cfg.dataset not in DATASETS:
        raise DataError(
            f"--dataset={cfg.dataset}: unknown dataset "
            f"(expected one of {', '.join(DATASETS)})"
        )
    if cfg.image_size is not None and (cfg.image_size < 4 or cfg.image_size % 4):
        raise DataError(
            f"--image_size={cfg.image_size}: expected a multiple of 4, at least 4"
        )
    if cfg.channels is not None and cfg.channels not in (1, 3):
        raise DataError(f"--channels={cfg.channels}: expected 1 or 3")
    if cfg.train_split not in TRAIN_SPLITS.get(cfg.dataset, ("train",)):
        raise DataError(
            f"--train_split={cfg.train_split}: expected one of "
            f"{', '.join(TRAIN_SPLITS.get(cfg.dataset, ('train',)))} for --dataset={cfg.dataset}"
        )
    if cfg.shuffle_buffer < 1:
        raise DataError(f"--shuffle_buffer={cfg.shuffle_buffer}: expected at least 1")


def _image_shape(cfg: DataConfig) -> tuple[int, int, int]:
    default_size, default_channels = _IMAGE_DEFAULTS[cfg.dataset]
    size = cfg.image_size or default_size
    return (size, size, cfg.channels or default_channels)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split={split!r}: expected one of {', '.join(SPLITS)}")


# ------------------------------------------------------------------ shared image steps


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Converts a float (H, W, 1|3) image to `channels` channels."""
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 1:
        return tf.image.rgb_to_grayscale(image)
    return tf.image.grayscale_to_rgb(image)


def _central_square_crop(image: tf.Tensor, crop: int | None = None) -> tf.Tensor:
    """Central crop to (crop, crop); crop=None uses min(height, width)."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.minimum(height, width) if crop is None else tf.constant(crop)
    return tf.image.crop_to_bounding_box(
        image, (height - side) // 2, (width - side) // 2, side, side
    )


def images_from_uint8(images: tf.Tensor, height: int, width: int,
                      channels: Optional[int] = None) -> tf.Tensor:
    """uint8 images ([H, W, C] or [N, H, W, C], any size) -> float32 [-1, 1] at
    height x width (bilinear, without antialiasing) and `channels` (None: as given):
    the one conversion of pixels into the model's range, for training data, exported
    signatures and user images alike."""
    images = tf.cast(images, tf.float32)
    if channels is not None:
        images = _to_channels(images, channels)
    if images.shape[-3] != height or images.shape[-2] != width:
        images = tf.image.resize(images, (height, width), method="bilinear")
    return tf.clip_by_value(images / 127.5 - 1.0, -1.0, 1.0)


def _finish_uint8_image(image: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    """uint8 (H, W, C) -> float32 `shape` in [-1, 1]."""
    return tf.ensure_shape(images_from_uint8(image, *shape), shape)


# ------------------------------------------------------------------------- pipeline


@dataclasses.dataclass(frozen=True)
class _DatasetStep:
    """Preprocessing applied to the whole stream rather than mapped per example: what a
    source needs when decoding may drop an example or must name the one that failed."""

    apply: Callable[[tf.data.Dataset], tf.data.Dataset]


def _pipeline(
    ds: tf.data.Dataset,
    preprocess: Callable | _DatasetStep | None,
    *,
    cfg: DataConfig,
    batch_size: int,
    shuffle: bool,
    repeat: bool,
    seed: int,
    group: int,
    drop_remainder: bool,
) -> tf.data.Dataset:
    """The common tail: shuffle -> repeat -> preprocess -> (group) -> batch -> prefetch."""
    if shuffle:
        # Shuffle raw records, before decoding, so the buffer holds small elements.
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if isinstance(preprocess, _DatasetStep):
        ds = preprocess.apply(ds)
    elif preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if group > 1:
        ds = ds.batch(group, drop_remainder=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------- digits


def _load_digits():
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    return load_digits()


def _digits_arrays(split: str, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images float32 [N, *shape] in [-1, 1], labels int32 [N]) of a split."""
    digits = _load_digits()
    order = np.random.RandomState(0).permutation(len(digits.images))
    num_train = len(order) - DIGITS_NUM_TEST
    index = order[:num_train] if split == "train" else order[num_train:]
    images = digits.images[index].astype(np.float32)[..., None]
    size, _, channels = shape
    images = tf.image.resize(images, (size, size), method="bilinear").numpy()
    images = np.clip(images / _DIGITS_MAX_VALUE * 2.0 - 1.0, -1.0, 1.0)
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    return images.astype(np.float32), digits.target[index].astype(np.int32)


def _digits_info(cfg: DataConfig) -> DatasetInfo:
    num_train = len(_load_digits().target) - DIGITS_NUM_TEST
    return DatasetInfo(cfg.dataset, _image_shape(cfg), num_train, DIGITS_NUM_TEST, 10, True)


def _digits_source(cfg: DataConfig, split: str, seed: int, shuffle: bool, with_labels: bool):
    del seed, shuffle
    images, labels = _digits_arrays(split, _image_shape(cfg))
    return tf.data.Dataset.from_tensor_slices((images, labels) if with_labels else images), None


# --------------------------------------------------------------------- fashion_mnist


def _idx_path(directory: str, stem: str) -> Optional[str]:
    """The IDX file `stem` in `directory`, gzipped (as distributed) or not; None if absent."""
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _fashion_mnist_idx_dir(cfg: DataConfig) -> Optional[str]:
    """The first candidate folder holding all four IDX files, or None."""
    candidates = [cfg.data_dir] if cfg.data_dir else list(FASHION_MNIST_DIRS)
    for directory in (os.path.expanduser(d) for d in candidates):
        if all(_idx_path(directory, stem) for pair in FASHION_MNIST_FILES.values()
               for stem in pair):
            return directory
    return None


def _fashion_mnist_uses_tfds(cfg: DataConfig) -> bool:
    """True when no IDX folder is found but TFDS has fashion_mnist prepared; else raises
    DataError saying how to get the data (no download here)."""
    if _fashion_mnist_idx_dir(cfg):
        return False
    with contextlib.suppress(Exception):
        if tfds.builder("fashion_mnist", data_dir=cfg.data_dir).is_prepared():
            return True
    where = f"--data_dir={cfg.data_dir}" if cfg.data_dir else " or ".join(FASHION_MNIST_DIRS)
    raise DataError(
        f"--dataset=fashion_mnist: its four IDX files are not in {where} (install them with "
        f"`apt-get install dataset-fashion-mnist`, or put train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        f"in a folder and pass it as --data_dir)"
    )


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped) of unsigned bytes as a uint8
    array of its stored shape; DataError names the file when it is not one."""
    import gzip  # pylint: disable=import-outside-toplevel
    import zlib  # pylint: disable=import-outside-toplevel

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises zlib.error for a damaged stream past a valid header.
        raise DataError(f"{path}: unreadable IDX file ({error})") from None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != _IDX_UINT8 or not raw[3]:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: {len(raw) - header} bytes of data, the header says "
                        f"{int(np.prod(shape))} (shape {shape}): truncated or damaged")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _fashion_mnist_arrays(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of a split, from the IDX files."""
    return _read_fashion_mnist(_fashion_mnist_idx_dir(cfg), split)


@functools.lru_cache(maxsize=4)
def _read_fashion_mnist(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    # Cached: info, the train and test pipelines and the labels all read the same files.
    images_stem, labels_stem = FASHION_MNIST_FILES[split]
    images = read_idx(_idx_path(directory, images_stem))
    labels = read_idx(_idx_path(directory, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"--data_dir={directory}: {split} images {images.shape} and labels "
                        f"{labels.shape} do not pair up (expected [N, H, W] and [N])")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"--data_dir={directory}: {split} labels above "
                        f"{len(FASHION_MNIST_CLASSES) - 1}")
    return images[..., None], labels.astype(np.int32)


def _fashion_mnist_info(cfg: DataConfig) -> DatasetInfo:
    if _fashion_mnist_uses_tfds(cfg):
        return _tfds_info(cfg)
    num = {split: len(_fashion_mnist_arrays(cfg, split)[1]) for split in SPLITS}
    return DatasetInfo(cfg.dataset, _image_shape(cfg), num["train"], num["test"],
                       len(FASHION_MNIST_CLASSES), True)


def _fashion_mnist_source(cfg: DataConfig, split: str, seed: int, shuffle: bool,
                          with_labels: bool):
    if _fashion_mnist_uses_tfds(cfg):
        return _tfds_source(cfg, split, seed, shuffle, with_labels)
    images, labels = _fashion_mnist_arrays(cfg, split)
    shape = _image_shape(cfg)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))

    def preprocess(image, label):
        image = _finish_uint8_image(image, shape)
        return (image, label) if with_labels else image

    return ds, preprocess


# ----------------------------------------------------------------------------- toy25


def toy25_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (points float32 [N, 2], component index int32 [N]) of a toy25 split."""
    _check_split(split)
    num, rng_seed = _TOY25_SIZES[split]
    rng = np.random.RandomState(rng_seed)
    labels = rng.randint(len(TOY25_MEANS), size=num)
    points = TOY25_MEANS[labels] + TOY25_STD * rng.randn(num, 2)
    return points.astype(np.float32), labels.astype(np.int32)


def _toy25_info(cfg: DataConfig) -> DatasetInfo:
    return DatasetInfo(
        cfg.dataset, (2,), _TOY25_SIZES["train"][0], _TOY25_SIZES["test"][0],
        len(TOY25_MEANS), False,
    )


def _toy25_source(cfg: DataConfig, split: str, seed: int, shuffle: bool, with_labels: bool):
    del cfg, seed, shuffle
    points, labels = toy25_arrays(split)
    return tf.data.Dataset.from_tensor_slices((points, labels) if with_labels else points), None


# ------------------------------------------------------------------------------ TFDS


def _svhn_cifar_image(image: tf.Tensor) -> tf.Tensor:
    return image


def _celeba_image(image: tf.Tensor) -> tf.Tensor:
    return _central_square_crop(image, CELEBA_CROP_SIZE)


def _class_label(example: dict) -> tf.Tensor:
    return tf.cast(example["label"], tf.int32)


def _celeba_attributes(example: dict) -> tf.Tensor:
    attributes = example["attributes"]
    return tf.stack([tf.cast(attributes[k], tf.float32) for k in CELEBA_ATTRIBUTES], -1)


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    num_classes: int
    crop_image: Callable[[tf.Tensor], tf.Tensor]  # uint8 decoded image -> uint8 image
    label: Callable[[dict], tf.Tensor]


_TFDS = {
    "svhn_cropped": _TfdsSpec(10, _svhn_cifar_image, _class_label),
    "cifar10": _TfdsSpec(10, _svhn_cifar_image, _class_label),
    "fashion_mnist": _TfdsSpec(len(FASHION_MNIST_CLASSES), _svhn_cifar_image, _class_label),
    "celeb_a": _TfdsSpec(len(CELEBA_ATTRIBUTES), _celeba_image, _celeba_attributes),
}


def _tfds_builder(cfg: DataConfig) -> tfds.core.DatasetBuilder:
    """Returns the prepared TFDS builder, or raises DataError (never downloads)."""
    builder = tfds.builder(cfg.dataset, data_dir=cfg.data_dir)
    # is_prepared() looks for dataset_info.json/features.json of this version on disk.
    if not builder.is_prepared():
        where = (
            f"--data_dir={cfg.data_dir}" if cfg.data_dir
            else f"the default --data_dir (unset; looked in {builder.data_dir})"
        )
        data_dir = cfg.data_dir or "DIR"
        raise DataError(
            f"--dataset={cfg.dataset} is not prepared in {where} "
            f"(expected TFDS files there; prepare it on a machine with internet: "
            f"tfds build {cfg.dataset} --data_dir={data_dir})"
        )
    if cfg.dataset == "celeb_a":
        names = tuple(sorted(builder.info.features["attributes"].keys()))
        if names != CELEBA_ATTRIBUTES:
            raise DataError(
                f"--dataset=celeb_a in --data_dir={cfg.data_dir}: unexpected attribute "
                f"names ({len(names)} found, expected the 40 CelebA attributes)"
            )
    return builder


def _tfds_info(cfg: DataConfig) -> DatasetInfo:
    builder = _tfds_builder(cfg)
    splits = builder.info.splits
    num_train = sum(splits[part].num_examples for part in cfg.train_split.split("+")
                    if part in splits)
    num_test = splits["test"].num_examples if "test" in splits else 0
    return DatasetInfo(
        cfg.dataset, _image_shape(cfg), num_train, num_test,
        _TFDS[cfg.dataset].num_classes, True,
    )


def _tfds_source(cfg: DataConfig, split: str, seed: int, shuffle: bool, with_labels: bool):
    builder = _tfds_builder(cfg)
    spec = _TFDS[cfg.dataset]
    shape = _image_shape(cfg)
    image_feature = builder.info.features["image"]
    ds = builder.as_dataset(
        split=cfg.train_split if split == "train" else split,
        shuffle_files=shuffle,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
        # Decode after the shuffle: a buffer of encoded images is ~10x smaller.
        decoders={"image": tfds.decode.SkipDecoding()},
    )

    def preprocess(example):
        image = spec.crop_image(image_feature.decode_example(example["image"]))
        image = _finish_uint8_image(image, shape)
        return (image, spec.label(example)) if with_labels else image

    return ds, preprocess


# ---------------------------------------------------------------------------- folder


def _folder_files(cfg: DataConfig) -> list[str]:
    """Sorted image paths under --image_dir (by extension; not yet checked)."""
    image_dir = cfg.image_dir
    if not image_dir or not os.path.isdir(image_dir):
        raise DataError(f"--image_dir={image_dir}: no such directory")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(image_dir, followlinks=True)
        for name in names
        if name.lower().endswith(_IMAGE_EXTENSIONS)
    )
    if not paths:
        raise DataError(f"--image_dir={image_dir}: no {'/'.join(_IMAGE_EXTENSIONS)} files "
                        "found")
    return paths


def _folder_labelled_files(cfg: DataConfig) -> tuple[list[str], list[int], tuple[str, ...]]:
    """(sorted paths, each path's class index, class names) of an image folder. The
    classes are its first-level subfolders, sorted, when every image lies in one of
    them and there are at least two (the layout of Keras' image_dataset_from_directory
    and TFDS' ImageFolder); otherwise there are none and every index is 0."""
    paths = _folder_files(cfg)
    tops = [rel.split(os.sep)[0] if os.sep in rel else ""
            for rel in (os.path.relpath(path, cfg.image_dir) for path in paths)]
    classes = tuple(sorted(set(tops)))
    if len(classes) < 2 or "" in classes:
        return paths, [0] * len(paths), ()
    index = {name: k for k, name in enumerate(classes)}
    return paths, [index[top] for top in tops], classes


def folder_classes(cfg: DataConfig) -> tuple[str, ...]:
    """The class names of a labelled image folder (see _folder_labelled_files), or ()."""
    return _folder_labelled_files(cfg)[2]


def _read_ends(path: str) -> tuple[bytes, bytes]:
    """The first 12 and the last len(_PNG_END) bytes of a file: two small reads."""
    with open(path, "rb") as f:
        head = f.read(12)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - len(_PNG_END)))
        return head, f.read()


def _is_webp(head: bytes) -> bool:
    """Whether a file starting with `head` (12 bytes or more) is WebP: a RIFF container
    of type WEBP (other RIFF files, such as WAV, are not images)."""
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _webp_is_whole(head: bytes, size: int) -> bool:
    """Whether a WebP file of `size` bytes is as long as its RIFF header says: the
    little-endian length at bytes 4-8 counts every byte after the first 8."""
    return size == 8 + int.from_bytes(head[4:8], "little")


def _decode_problem(path: str) -> Optional[str]:
    """Why PIL cannot decode `path` in full (None: it can)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Image.DecompressionBombError:
        return None  # whole but huge: PIL's guard against bombs, not a damaged file
    except Exception as error:  # pylint: disable=broad-except
        # PIL raises OSError, SyntaxError, ValueError... depending on where the damage is.
        reason = first_line(error, 100) if str(error).strip() else ""
        return f"truncated or corrupt: {reason or type(error).__name__}"
    return None


# (path, size, mtime_ns) -> problem or None: a file is judged once per process unless
# it changes, so dataset_info and each split's pipeline do not decode it again.
_VERDICTS: dict = {}


def _image_problem(path: str) -> Optional[str]:
    """Why `path` cannot be a training image (None: it looks whole).

    Cheap where most files are fine: the magic bytes and the format's end marker (two
    small reads) catch the usual damage, a copy or download cut short. A missing end
    marker alone does not condemn a file (some cameras append data after a JPEG's EOI):
    such a file is decoded in full, and that decides. Damage that leaves both ends
    intact is caught when the pipeline decodes the file (`_folder_decoding`).
    """
    try:
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in _VERDICTS:
            head, tail = _read_ends(path)
            ends = [end for magic, end in _IMAGE_FORMATS.items() if head.startswith(magic)]
            if _is_webp(head):
                _VERDICTS[key] = (None if _webp_is_whole(head, stat.st_size)
                                  else _decode_problem(path))
            elif not ends:
                _VERDICTS[key] = "not a JPEG, PNG, GIF, BMP or WebP"
            elif ends[0] is not None and tail.endswith(ends[0]):
                _VERDICTS[key] = None
            else:
                _VERDICTS[key] = _decode_problem(path)
        return _VERDICTS[key]
    except OSError as error:
        return f"unreadable: {error.strerror or error}"


def _unreadable_message(path: str, problem: str, others: int = 0) -> str:
    more = f" and {others} more unreadable image(s)" if others else ""
    return (f"--image_dir: cannot read image {path!r} ({problem}){more}; delete or replace "
            f"{'them' if others else 'it'}, or pass --skip_bad_images to leave unreadable "
            "images out")


_WARNED: set = set()


def _warn_once(message: str) -> None:
    """One warning line on stderr, once per process (every pipeline of a run checks)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _readable(cfg: DataConfig, paths: list[str], what: str) -> list[str]:
    """`paths` without unreadable images when --skip_bad_images (one warning line);
    else a DataError naming the first unreadable one."""
    bad = [(path, problem) for path in paths if (problem := _image_problem(path))]
    if not bad:
        return paths
    path, problem = bad[0]
    if not cfg.skip_bad_images:
        raise DataError(_unreadable_message(path, problem, len(bad) - 1))
    if len(bad) == len(paths):
        raise DataError(f"--image_dir={cfg.image_dir}: all {len(paths)} images of the {what} "
                        f"are unreadable (first: {path!r}, {problem})")
    _warn_once(f"--image_dir={cfg.image_dir}: leaving out {len(bad)} unreadable image(s) of "
               f"{len(paths)} in the {what} (first: {path!r}, {problem})")
    skipped = {p for p, _ in bad}
    return [p for p in paths if p not in skipped]


# The test split: a seeded shuffle of the sorted files (of each class, when labelled)
# puts a tenth of them aside, so it is neither the newest files nor the last class.
_FOLDER_SPLIT_SEED = 0


def _folder_split_labelled(cfg: DataConfig, split: str
                           ) -> tuple[list[str], list[int], tuple[str, ...]]:
    """(readable paths of a split, sorted; their class indices; the class names). The
    split is cut before unreadable files are left out, so --skip_bad_images never moves
    a file between train and test; fewer than 10 files (of a class) give no test files
    (of it)."""
    paths, labels, classes = _folder_labelled_files(cfg)
    rng = np.random.RandomState(_FOLDER_SPLIT_SEED)
    test = set()
    for label in sorted(set(labels)):
        members = [path for path, k in zip(paths, labels) if k == label]
        order = rng.permutation(len(members))
        test.update(members[i] for i in order[:len(members) // 10])
    label_of = {path: k for path, k in zip(paths, labels) if (path in test) == (split == "test")}
    kept = _readable(cfg, list(label_of), f"{split} split") if label_of else []
    return kept, [label_of[path] for path in kept], classes


def _folder_split(cfg: DataConfig, split: str) -> list[str]:
    return _folder_split_labelled(cfg, split)[0]


def _folder_info(cfg: DataConfig) -> DatasetInfo:
    train, _, classes = _folder_split_labelled(cfg, "train")
    return DatasetInfo(cfg.dataset, _image_shape(cfg), len(train),
                       len(_folder_split(cfg, "test")), len(classes), True)


# Brackets the path in the message of the assertion that stops a pipeline at an
# image that fails to decode; `unreadable_image_error` finds it there.
_UNREADABLE_OPEN = "<<gali_tf.data unreadable image:"
_UNREADABLE_CLOSE = ">>"
_UNREADABLE_PATTERN = re.compile(
    re.escape(f"[{_UNREADABLE_OPEN}] [") + "(.*?)" + re.escape(f"] [{_UNREADABLE_CLOSE}]"),
    re.DOTALL)


def _decode_or_flag(decode: Callable, shape: tuple[int, int, int]) -> Callable:
    """(path, *label) -> a one-element dataset (path, image, decoded, *label): decoded
    is False, with a zero image, where `decode` fails. tf.data has no try/except;
    ignore_errors on a dataset of one element is how a failed decode becomes a value
    that names its file."""
    def one(path, *label):
        decoded = tf.data.Dataset.from_tensors((path, *label)).map(
            lambda p, *l: (p, decode(p), True, *l))
        failed = tf.data.Dataset.from_tensors((path, tf.zeros(shape), False, *label))
        return decoded.ignore_errors().concatenate(failed).take(1)
    return one


def _stop_at_unreadable(path, image, ok, *label):
    check = tf.debugging.Assert(ok, [_UNREADABLE_OPEN, path, _UNREADABLE_CLOSE])
    with tf.control_dependencies([check]):
        image = tf.identity(image)
    return (image, *label) if label else image


def _without_path(path, image, ok, *label):
    del path, ok
    return (image, *label) if label else image


def _keep_readable(cfg: DataConfig) -> Callable:
    def keep(path, image, ok, *label):
        del image, label

        def report():
            tf.print(tf.strings.join([f"warning: --image_dir={cfg.image_dir}: leaving out "
                                      "unreadable image ", path]), output_stream=sys.stderr)
            return ok
        return tf.cond(ok, lambda: ok, report)
    return keep


def _pil_rgb(contents) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] by Pillow: the first frame of an
    animation, alpha dropped (as tf.io.decode_image drops a PNG's)."""
    if isinstance(contents, np.ndarray):
        # numpy_function passes bytes in a graph but a 0-d object array eagerly; not
        # np.asarray(...).item() for both: numpy's bytes dtype drops trailing NULs.
        contents = contents.item()
    with Image.open(io.BytesIO(contents)) as image:
        return np.asarray(image.convert("RGB"))


def decode_rgb(contents: bytes) -> tf.Tensor:
    """Encoded image bytes (JPEG, PNG, GIF, BMP or WebP) -> uint8 [H, W, 3], eagerly, as
    the folder pipeline decodes them: WebP by Pillow (see _decode_webp), the rest by
    TensorFlow (the first frame of a GIF). Raises what the decoder raises."""
    if _is_webp(contents[:12]):
        return tf.constant(_pil_rgb(contents))
    return tf.io.decode_image(contents, channels=3, expand_animations=False)


def _decode_webp(contents: tf.Tensor) -> tf.Tensor:
    """WebP bytes -> uint8 [H, W, 3], by Pillow in a tf.numpy_function.

    Not tf.io.decode_image, although TF 2.21 reads some WebP: only at the file's own
    channel count (no grey, no RGBA -> RGB), and an animated WebP comes out wrong and
    corrupts the heap (measured: the process aborts). A Pillow error fails the element,
    which `_decode_or_flag` turns into an unreadable file named as for other formats.
    """
    image = tf.numpy_function(_pil_rgb, [contents], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def _folder_decoding(cfg: DataConfig, shape: tuple[int, int, int]) -> _DatasetStep:
    """Paths -> images. A file that passed `_image_problem` but still fails to decode
    (damaged between its intact ends, or changed since) stops the pipeline with an
    error that `unreadable_image_error` turns into a DataError naming it, or is left out
    with a warning line under --skip_bad_images."""
    def decode(path):
        contents = tf.io.read_file(path)

        def decoded(channels):
            return tf.io.decode_image(contents, channels=channels, expand_animations=False)
        # By content, as _image_problem judged it: WebP never reaches tf.io.decode_image.
        is_webp = tf.logical_and(tf.equal(tf.strings.substr(contents, 0, 4), b"RIFF"),
                                 tf.equal(tf.strings.substr(contents, 8, 4), b"WEBP"))

        def colour():
            return tf.cond(is_webp, lambda: _decode_webp(contents), lambda: decoded(3))
        if shape[-1] == 1:
            # TensorFlow decodes GIF and BMP to colour only, Pillow WebP here too: grey
            # by TensorFlow's luma weights for all three.
            colour_only = tf.reduce_any([tf.equal(tf.strings.substr(contents, 0, 3), b"GIF"),
                                         tf.equal(tf.strings.substr(contents, 0, 2), b"BM"),
                                         is_webp])
            image = tf.cond(colour_only, lambda: tf.image.rgb_to_grayscale(colour()),
                            lambda: decoded(1))
        else:
            image = colour()
        return _finish_uint8_image(_central_square_crop(image), shape)

    def apply(ds):
        ds = ds.interleave(_decode_or_flag(decode, shape),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if cfg.skip_bad_images:
            return ds.filter(_keep_readable(cfg)).map(_without_path)
        return ds.map(_stop_at_unreadable)
    return _DatasetStep(apply)


def _folder_source(cfg: DataConfig, split: str, seed: int, shuffle: bool, with_labels: bool):
    del seed, shuffle
    paths, labels, classes = _folder_split_labelled(cfg, split)
    if with_labels and not classes:
        raise DataError(
            f"--dataset=folder (--image_dir={cfg.image_dir}) has no labels: put each "
            "class's images in a subfolder of its own (at least two, no images at the top)")
    if not paths:
        raise DataError(
            f"--image_dir={cfg.image_dir}: no {split} split "
            "(a tenth of the files, of each class, is the test split; needs at least 10)"
        )
    if with_labels:
        source = tf.data.Dataset.from_tensor_slices((paths, np.array(labels, np.int32)))
    else:
        source = tf.data.Dataset.from_tensor_slices(paths)
    return source, _folder_decoding(cfg, _image_shape(cfg))


def unreadable_image_error(error: BaseException) -> Optional[DataError]:
    """The DataError naming the file, when `error` is a folder pipeline stopping at an
    image that failed to decode (raised from iteration, e.g. inside Keras' fit); else None."""
    match = _UNREADABLE_PATTERN.search(str(error))
    if not isinstance(error, tf.errors.OpError) or match is None:
        return None
    return DataError(_unreadable_message(match.group(1), "truncated or corrupt: it failed "
                                         "to decode during the run"))


@contextlib.contextmanager
def naming_unreadable_images() -> Iterator[None]:
    """Around code that iterates a folder dataset (fit, evaluation): a file that fails to
    decode mid-run becomes one DataError line naming it instead of a TF traceback."""
    try:
        yield
    except tf.errors.OpError as error:
        data_error = unreadable_image_error(error)
        if data_error is None:
            raise
        raise data_error from None


# ------------------------------------------------------------------------ public API

_INFO = {
    "digits": _digits_info,
    "fashion_mnist": _fashion_mnist_info,
    "svhn_cropped": _tfds_info,
    "cifar10": _tfds_info,
    "celeb_a": _tfds_info,
    "folder": _folder_info,
    "toy25": _toy25_info,
}
_SOURCE = {
    "digits": _digits_source,
    "fashion_mnist": _fashion_mnist_source,
    "svhn_cropped": _tfds_source,
    "cifar10": _tfds_source,
    "celeb_a": _tfds_source,
    "folder": _folder_source,
    "toy25": _toy25_source,
}


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Validates `cfg` and describes the dataset without decoding it."""
    _check_config(cfg)
    return _INFO[cfg.dataset](cfg)


def make_dataset(
    cfg: DataConfig,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    repeat: bool,
    seed: int = 0,
    group: int = 1,
    with_labels: bool = False,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Batched examples of `split` ("train" | "test"), optionally with labels.

    Elements are (batch, *example_shape), or (batch, group, *example_shape) when
    group > 1 (consecutive examples, e.g. one per discriminator step).
    """
    _check_config(cfg)
    _check_split(split)
    if batch_size < 1 or group < 1:
        raise DataError(f"batch_size={batch_size}, group={group}: expected at least 1")
    ds, preprocess = _SOURCE[cfg.dataset](cfg, split, seed, shuffle, with_labels)
    return _pipeline(
        ds, preprocess, cfg=cfg, batch_size=batch_size, shuffle=shuffle, repeat=repeat,
        seed=seed, group=group, drop_remainder=drop_remainder,
    )


def steps_per_epoch(info: DatasetInfo, batch_size: int, group: int = 1) -> int:
    """Train steps per pass over the train split (at least 1)."""
    return max(1, info.num_train // (batch_size * group))


# ------------------------------------------------- labels: conditioning, semi-supervision


# Datasets whose labels are binary attributes (CelebA's 40); the others have one class.
MULTI_LABEL_DATASETS = ("celeb_a",)


def is_multi_label(info: DatasetInfo) -> bool:
    return info.name in MULTI_LABEL_DATASETS


def _check_labelled(info: DatasetInfo, flag: str) -> None:
    if not info.num_classes:
        raise DataError(f"{flag} needs a labelled dataset, --dataset={info.name} has no labels")


def condition_vector(labels: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
    """The conditioning variable y of conditional ALI: the one-hot class ([..., K]), or
    CelebA's 40 attributes as 0/1 floats."""
    _check_labelled(info, "--conditional")
    if is_multi_label(info):
        return tf.cast(labels, tf.float32)
    return tf.one_hot(tf.cast(labels, tf.int32), info.num_classes, dtype=tf.float32)


def condition_columns(dataset: str, condition_dim: int) -> list:
    """What each column of y holds: CelebA's attribute names, else "class k" (one-hot)."""
    if dataset in MULTI_LABEL_DATASETS:
        return list(CELEBA_ATTRIBUTES)
    return [f"class {k}" for k in range(int(condition_dim))]


def make_conditional_dataset(cfg: DataConfig, info: DatasetInfo, split: str, batch_size: int,
                             **kwargs) -> tf.data.Dataset:
    """`make_dataset` with labels turned into conditioning vectors: (images, y) batches."""
    _check_labelled(info, "--conditional")
    ds = make_dataset(cfg, split, batch_size, with_labels=True, **kwargs)
    return ds.map(lambda x, labels: (x, condition_vector(labels, info)))


def train_labels(cfg: DataConfig) -> np.ndarray:
    """int32 labels of the train split in source order (the order of an unshuffled
    `make_dataset`), read without decoding images."""
    if cfg.dataset == "digits":
        return _digits_arrays("train", _image_shape(cfg))[1]
    if cfg.dataset == "toy25":
        return toy25_arrays("train")[1]
    if cfg.dataset == "fashion_mnist" and not _fashion_mnist_uses_tfds(cfg):
        return _fashion_mnist_arrays(cfg, "train")[1]
    if cfg.dataset == "folder":
        _, labels, classes = _folder_split_labelled(cfg, "train")
        if classes:
            return np.array(labels, np.int32)
    if cfg.dataset not in _TFDS:
        raise DataError(f"--dataset={cfg.dataset} has no labels")
    builder = _tfds_builder(cfg)
    ds = builder.as_dataset(split=cfg.train_split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(_TFDS[cfg.dataset].label).batch(10_000)
    return np.concatenate([b.numpy() for b in ds]).astype(np.int32)


def labeled_subset(labels: np.ndarray, num_labeled: int, num_classes: int,
                   seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced labelled subset: num_labeled / num_classes
    examples of each class, drawn without replacement by RandomState(seed)."""
    labels = np.asarray(labels)
    if num_labeled < num_classes or num_labeled % num_classes:
        raise DataError(f"--num_labeled={num_labeled}: expected a positive multiple of the "
                        f"{num_classes} classes (a balanced subset)")
    if num_labeled > len(labels):
        raise DataError(f"--num_labeled={num_labeled}: larger than the train split "
                        f"({len(labels)} examples)")
    per_class = num_labeled // num_classes
    rng = np.random.RandomState(seed)
    chosen = []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) < per_class:
            raise DataError(f"--num_labeled={num_labeled}: class {k} has only {len(members)} "
                            f"train examples, {per_class} needed")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def make_semi_supervised_dataset(cfg: DataConfig, info: DatasetInfo, batch_size: int,
                                 num_labeled: int, labeled_seed: int = 0, *, seed: int = 0,
                                 group: int = 1) -> tf.data.Dataset:
    """Endless (images, labels) train batches for semi-supervised ALI (ALI 4.3).

    Each batch interleaves batch_size // 2 examples of the labelled subset
    (`labeled_subset(..., labeled_seed)`, reshuffled each pass) with unlabelled ones
    from the whole train split, whose label is -1. As in Salimans et al. (2016),
    the few labelled examples are seen every few steps rather than once per epoch.
    With group > 1: ([batch, group, ...], [batch, group]).
    """
    _check_labelled(info, "--num_labeled")
    if is_multi_label(info):
        raise DataError(f"--num_labeled: --dataset={info.name} has multi-label attributes, "
                        "semi-supervised ALI needs one class per example")
    subset = labeled_subset(train_labels(cfg), num_labeled, info.num_classes, labeled_seed)
    num_lab = batch_size // 2
    num_unl = batch_size - num_lab
    if num_lab < 1:
        raise DataError(f"--batch_size={batch_size}: semi-supervised batches need at least 2")
    keep = np.zeros(info.num_train, bool)
    keep[subset] = True
    keep = tf.constant(keep)

    ds, preprocess = _SOURCE[cfg.dataset](cfg, "train", seed, False, True)
    labelled = ds.enumerate().filter(lambda i, _: tf.gather(keep, i)).map(lambda _, e: e)
    if isinstance(preprocess, _DatasetStep):   # a labelled image folder
        labelled = preprocess.apply(labelled)
    elif preprocess is not None:
        labelled = labelled.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    labelled = labelled.cache().shuffle(len(subset), seed=seed,
                                        reshuffle_each_iteration=True).repeat()
    unlabelled = make_dataset(cfg, "train", 1, shuffle=True, repeat=True, seed=seed,
                              with_labels=True).unbatch()
    unlabelled = unlabelled.map(lambda x, y: (x, tf.fill(tf.shape(y), -1)))

    def batched(part, size):
        if group > 1:
            part = part.batch(group, drop_remainder=True)
        return part.batch(size, drop_remainder=True)

    # Interleave labelled and unlabelled rows, so each replica of a strategy gets both.
    order = tf.constant(np.argsort(np.concatenate([2 * np.arange(num_unl),
                                                   2 * np.arange(num_lab) + 1]),
                                   kind="stable"))

    def merge(unl, lab):
        return tuple(tf.gather(tf.concat([u, l], axis=0), order) for u, l in zip(unl, lab))

    ds = tf.data.Dataset.zip(batched(unlabelled, num_unl), batched(labelled, num_lab))
    return ds.map(merge).prefetch(tf.data.AUTOTUNE)
