"""A linear classifier on an exported encoder (the "used-by" case, end to end), or on raw
pixels as the baseline: what `trainers.downstream` runs.

The classifier is a tf_keras model `hub.KerasLayer(module, trainable=fine_tune) ->
standardisation (fixed, from train-set statistics) -> Dense` (softmax) trained on the
train split; `run_downstream` returns its test accuracy. Images are fed in the module's
input contract: float32 [-1, 1] at the shape in the export's metadata.json (read from
the module's `__call__` signature when there is no metadata.json).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import tensorflow as tf

from gali_tf import data, exports, files, run_dir
from gali_tf.errors import ConfigError

# Labelled single-label image datasets the classifier can be trained on.
DATASETS = ("digits", "fashion_mnist", "svhn_cropped", "cifar10")


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    """What trainers.downstream's flags say; field names equal the flags."""

    hub_module: Optional[str] = None   # None only with raw_pixels
    dataset: str = "digits"             # one of DATASETS
    data_dir: Optional[str] = None
    fine_tune: bool = False
    raw_pixels: bool = False
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    verbose: int = 0


@dataclasses.dataclass(frozen=True)
class DownstreamResult:
    test_accuracy: float
    description: str


def _restore_interrupted_version(version_dir: str) -> None:
    """An EXPORT_DIR/<step> missing because an --overwrite export was killed mid-swap is
    renamed back from its `.old-<step>-*` copy (exports.recover_versions)."""
    if tf.io.gfile.exists(version_dir) or not os.path.basename(version_dir).isdigit():
        return
    for line in exports.recover_versions(os.path.dirname(version_dir) or "."):
        run_dir.warn(line)


def _metadata_image_shape(metadata: dict, metadata_path: str, hub_module: str) -> tuple:
    try:
        shape = tuple(int(s) for s in metadata["image_shape"])
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--hub_module={hub_module}: image_shape in {metadata_path} is "
                          f"{metadata['image_shape']!r}, expected [height, width, channels]; "
                          "re-export the run with export.main --overwrite")
    return shape


def module_image_shape(hub_module: str) -> tuple:
    """(H, W, C) the module expects: metadata.json next to it, else its __call__ signature."""
    version_dir = os.path.dirname(os.path.normpath(hub_module))
    _restore_interrupted_version(version_dir)
    if not tf.io.gfile.exists(os.path.join(hub_module, "saved_model.pb")):
        raise ConfigError(f"--hub_module={hub_module}: not a SavedModel directory (expected "
                          "EXPORT_DIR/<step>/encoder written by export.main)")
    metadata_path = os.path.join(version_dir, files.METADATA_FILE)
    if tf.io.gfile.exists(metadata_path):
        metadata = exports.read_metadata(metadata_path, f"--hub_module={hub_module}")
        if metadata.get("condition"):
            # E(x, y) of conditional ALI needs the label it would be asked to predict.
            raise ConfigError(f"--hub_module={hub_module}: a conditional run's encoder takes "
                              "the label y as input; classify with an unconditional export")
        return _metadata_image_shape(metadata, metadata_path, hub_module)
    module = tf.saved_model.load(hub_module)
    call = getattr(module, "__call__", None)
    functions = call.concrete_functions if call is not None else []
    if not functions:
        raise ConfigError(f"--hub_module={hub_module}: no __call__ and no metadata.json next "
                          "to it: cannot tell its input image shape")
    spec = functions[0].structured_input_signature[0][0]
    return tuple(int(s) for s in spec.shape[1:])


def _datasets(config: DownstreamConfig, shape: tuple):
    if len(shape) != 3 or shape[0] != shape[1]:
        raise ConfigError(f"--hub_module={config.hub_module}: expects inputs of shape "
                          f"{shape}; the downstream trainer handles square images only")
    data_config = data.DataConfig(dataset=config.dataset, data_dir=config.data_dir,
                                  image_size=shape[0], channels=shape[2])
    info = data.dataset_info(data_config)
    if info.num_classes < 2 or config.dataset == "celeb_a" or not info.num_test:
        raise ConfigError(f"--dataset={config.dataset}: needs single-label classes and a "
                          "test split")
    train = data.make_dataset(data_config, "train", config.batch_size, shuffle=True,
                              repeat=False, seed=config.seed, with_labels=True,
                              drop_remainder=False)
    test = data.make_dataset(data_config, "test", config.batch_size, shuffle=False,
                             repeat=False, with_labels=True, drop_remainder=False)
    return train, test, info.num_classes


def _standardiser(tf_keras, body, train: tf.data.Dataset, training: bool):
    """A fixed affine map to zero mean and unit variance per feature (train-set statistics).

    The scales of E's features differ by orders of magnitude (weights start N(0, 0.01)),
    too much for Adam to fit a linear layer in a few epochs; this map keeps the
    classifier linear in the features. When fine-tuning, the statistics are those of
    the training-mode features (batch statistics in E's BatchNorm), which the fine-tuned
    E's inference features approach once its moving averages have caught up.
    """
    count, shift, total, total_sq = 0, None, 0.0, 0.0
    for images, _ in train:
        features = body(images, training=training).numpy().astype("float64")
        if shift is None:
            shift = features.mean(axis=0)  # shifted sums keep the variance exact
        centred = features - shift
        count += len(features)
        total = total + centred.sum(axis=0)
        total_sq = total_sq + (centred ** 2).sum(axis=0)
    mean = total / count
    variance = (total_sq / count - mean ** 2).clip(min=0.0)
    return tf_keras.layers.Normalization(mean=mean + shift, variance=variance)


def run_downstream(config: DownstreamConfig) -> DownstreamResult:
    """Trains the linear classifier and returns its test accuracy."""
    # tf_keras and tensorflow_hub are imported here: only this trainer needs them.
    import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel
    import tf_keras  # pylint: disable=import-outside-toplevel

    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError("--epochs and --batch_size must be >= 1")
    if config.hub_module:
        shape = module_image_shape(config.hub_module)
    elif config.raw_pixels:
        shape = data.dataset_info(data.DataConfig(dataset=config.dataset,
                                                  data_dir=config.data_dir)).example_shape
    else:
        raise ConfigError("--hub_module is required (or pass --raw_pixels for the baseline)")
    train, test, num_classes = _datasets(config, shape)

    tf_keras.utils.set_random_seed(config.seed)
    if config.raw_pixels:
        body = tf_keras.layers.Flatten()
        description = "linear on raw pixels"
    else:
        body = hub.KerasLayer(config.hub_module, trainable=config.fine_tune)
        description = ("linear on fine-tuned exported encoder" if config.fine_tune
                       else "linear on exported encoder features")
    model = tf_keras.Sequential([
        tf_keras.Input(shape=shape), body, _standardiser(tf_keras, body, train, config.fine_tune),
        tf_keras.layers.Dense(num_classes, kernel_initializer="zeros")])
    model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train, epochs=config.epochs, verbose=config.verbose)
    _, accuracy = model.evaluate(test, verbose=0)
    return DownstreamResult(float(accuracy), description)
