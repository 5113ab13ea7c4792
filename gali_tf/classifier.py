"""The auxiliary classifier of GALI-PT and feature MSE (GALI appendix, "Pretrained models").

A small conv net trained on a labelled dataset: digits / SVHN 10-way softmax, CelebA
40-attribute multi-label sigmoid. Its last hidden layer is the feature vector M(x). The
export is a hand-built SavedModel (tf.Module; `hub.KerasLayer`/`model.export()` are not
reusable under Keras 3, see docs/architecture.md):

    serving_default(images: float32 [None, H, W, C] in [-1, 1])
        -> {"features": [None, feature_dim], "logits": [None, num_classes]}

plus `metadata.json` (image_shape, value_range [-1, 1], dataset, num_classes, multi_label,
test_accuracy, feature_dim), so `--feature_model=DIR --feature_output=features` loads it
as M (gali_tf.features).
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import keras
import tensorflow as tf

from gali_tf import data as data_lib
from gali_tf import files
from gali_tf.errors import ConfigError

# The labelled datasets a classifier can be trained on (celeb_a: 40 binary attributes).
DATASETS = ("digits", "fashion_mnist", "svhn_cropped", "celeb_a")
MULTI_LABEL = {"celeb_a"}
VALUE_RANGE = (-1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    data: data_lib.DataConfig = data_lib.DataConfig()
    export_dir: str = ""
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    width: int = 32
    feature_dim: int = 128
    dropout: float = 0.3
    seed: int = 0
    verbose: int = 2                 # Keras' fit output: one line per epoch


@dataclasses.dataclass(frozen=True)
class ClassifierResult:
    test_accuracy: float     # top-1 accuracy, or mean attribute accuracy (multi-label)
    export_dir: str
    metadata: dict


def build_classifier(image_shape, num_classes: int, width: int = 32, feature_dim: int = 128,
                     dropout: float = 0.3):
    """(classifier: images -> logits, features: images -> last hidden layer)."""
    images = keras.Input(shape=tuple(image_shape), name="images")
    h = images
    size = int(image_shape[0])
    channels = width
    while True:
        h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(h)
        h = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu")(h)
        size = (size + 1) // 2
        if size <= 4:
            break
        channels = min(channels * 2, 8 * width)
    h = keras.layers.Flatten()(h)
    features = keras.layers.Dense(feature_dim, activation="relu", name="features")(h)
    logits = keras.layers.Dense(num_classes, name="logits")(
        keras.layers.Dropout(dropout)(features))
    return keras.Model(images, logits, name="classifier"), keras.Model(images, features)


class ClassifierModule(tf.Module):
    """The exported classifier: closures over the Keras nets, variables saved as lists."""

    def __init__(self, classifier, feature_net, image_shape):
        super().__init__()
        self.variables_list = [getattr(v, "value", v) for v in classifier.variables]
        spec = tf.TensorSpec((None, *[int(s) for s in image_shape]), tf.float32, name="images")

        def serving_default(images):
            images = tf.ensure_shape(images, spec.shape)
            return {"features": feature_net(images, training=False),
                    "logits": classifier(images, training=False)}

        self.serving_default = tf.function(serving_default, input_signature=[spec])


def _check(config: ClassifierConfig, info: data_lib.DatasetInfo) -> None:
    if not config.export_dir:
        raise ConfigError("--export_dir is empty: expected a directory for the SavedModel")
    if tf.io.gfile.exists(config.export_dir) and not tf.io.gfile.isdir(config.export_dir):
        raise ConfigError(f"--export_dir={config.export_dir} is a file: expected a directory")
    if not info.is_image or info.num_classes < 1:
        raise ConfigError(f"--dataset={config.data.dataset}: expected a labelled image dataset")
    if not info.num_test:
        raise ConfigError(f"--dataset={config.data.dataset}: has no test split")
    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError("--epochs and --batch_size must be >= 1")


def train_classifier(config: ClassifierConfig) -> ClassifierResult:
    """Trains, reports test accuracy and exports (atomically: temp dir, then rename)."""
    info = data_lib.dataset_info(config.data)
    _check(config, info)
    keras.utils.set_random_seed(config.seed)
    multi = config.data.dataset in MULTI_LABEL
    classifier, feature_net = build_classifier(info.example_shape, info.num_classes,
                                               config.width, config.feature_dim, config.dropout)
    if multi:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metric = keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")  # logits
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    classifier.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                       metrics=[metric])
    train_ds = data_lib.make_dataset(config.data, "train", config.batch_size, shuffle=True,
                                     repeat=False, seed=config.seed, with_labels=True)
    test_ds = data_lib.make_dataset(config.data, "test", config.batch_size, shuffle=False,
                                    repeat=False, with_labels=True, drop_remainder=False)
    classifier.fit(train_ds, epochs=config.epochs, verbose=config.verbose)
    accuracy = float(classifier.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"])
    metadata = {
        "format": "gali_tf-classifier-1",
        "image_shape": [int(s) for s in info.example_shape],
        "value_range": list(VALUE_RANGE),
        "dataset": config.data.dataset,
        "num_classes": int(info.num_classes),
        "multi_label": multi,
        "test_accuracy": accuracy,
        "accuracy_kind": "mean attribute accuracy" if multi else "top-1 accuracy",
        "feature_dim": int(config.feature_dim),
        "signature": "serving_default(images) -> {features, logits}",
    }
    export_classifier(classifier, feature_net, info.example_shape, config.export_dir, metadata)
    return ClassifierResult(accuracy, config.export_dir, metadata)


def export_classifier(classifier, feature_net, image_shape, export_dir: str,
                      metadata: dict) -> None:
    """Writes the SavedModel + metadata.json to a temp dir, then renames it into place
    (an existing export is replaced only once the new one is complete)."""
    export_dir = export_dir.rstrip("/")
    parent = os.path.dirname(export_dir) or "."
    tf.io.gfile.makedirs(parent)
    tmp = os.path.join(parent, f".{os.path.basename(export_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    module = ClassifierModule(classifier, feature_net, image_shape)
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": module.serving_default.get_concrete_function()})
    with tf.io.gfile.GFile(os.path.join(tmp, files.METADATA_FILE), "w") as f:
        f.write(json.dumps(metadata, indent=2))
    files.swap_in_directory(tmp, export_dir, tmp + ".old")
