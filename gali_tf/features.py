"""The frozen pretrained feature model M of GALI-PT ("Incorporation of Learned Knowledge").

`load_feature_model(FeatureConfig(...))` returns a `FeatureModel`: images in [-1, 1] ->
[B, F] float32 features. M never trains: its weights are held by a plain Python object
(not a Keras layer or tf.Module attribute of GALIModel), so they are in no
`trainable_variables` list and in no run checkpoint; it runs in inference mode
(signatures traced with training=False, Keras models called with training=False and
`trainable=False`, so no dropout and frozen BatchNorm statistics). Gradients flow *through*
M into the images, hence into G and E: nothing here stops them.

Sources (one spec string, flag --feature_model):

- `DIR`: a SavedModel / TF Hub module directory, loaded with `tf.saved_model.load`. The
  signature `--feature_signature` (default serving_default) is called and its output
  `--feature_output` taken (optional when the signature has a single output). Input
  contract: the signature's single image input TensorSpec gives (H, W, C, dtype); H and W
  may be unknown, then `--feature_image_size` sets them. The value range is read from
  `DIR/metadata.json` ("value_range": [lo, hi]) when present, else **[-1, 1] is assumed**
  (the convention of this project's exports, trainers.classifier and export/).
- `inception_v3:PATH`: `keras.applications.InceptionV3(include_top=False, pooling="avg",
  weights=PATH)` (2048-d pool features, the paper's CelebA choice) at
  `--feature_image_size` (default 299, at least 75), inputs in [-1, 1] as InceptionV3's
  own preprocessing ("tf" mode) gives.

Images are resized bilinearly to M's input size, grey images are tiled to 3 channels
(and colour images averaged to 1) when M wants it, and values are mapped linearly from
[-1, 1] to M's range. Every bad input raises `FeatureModelError` (one line) at load time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from gali_tf import files
from gali_tf.errors import ConfigError, first_line

INCEPTION_PREFIX = "inception_v3:"
INCEPTION_DEFAULT_SIZE = 299
INCEPTION_MIN_SIZE = 75


class FeatureModelError(ConfigError):
    """A --feature_* flag that does not describe a usable feature model (one line)."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Where M comes from; field names equal the trainer's flags."""

    feature_model: str = ""                    # "" = no M; DIR or inception_v3:PATH
    feature_output: str = ""                   # named output of the signature ("" = the only one)
    feature_signature: str = "serving_default"
    feature_image_size: int = 0                # 0 = inferred (inception_v3: 299)
    # The flags' common prefix, for messages: "feature" (--feature_model, ...) or e.g.
    # "fid" when trainers.evaluate loads its FID network from --fid_model, --fid_output.
    flag_prefix: str = "feature"


class FeatureModel:
    """A frozen feature function M: images [B, H, W, C] in [-1, 1] -> [B, F] float32."""

    def __init__(self, fn: Callable[[tf.Tensor], tf.Tensor], input_shape: Sequence[int],
                 value_range: Tuple[float, float] = (-1.0, 1.0),
                 variables: Sequence[tf.Variable] = (), input_dtype=tf.float32,
                 description: str = "", dim: Optional[int] = None, holder=None,
                 fingerprint: str = ""):
        self._fn = fn
        self.input_shape = tuple(int(s) for s in input_shape)   # (H, W, C) M expects
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.input_dtype = tf.as_dtype(input_dtype)
        self.variables: List[tf.Variable] = list(variables)
        self.description = description or "feature model"
        # What identifies the weights (see weights_fingerprint): two runs' feature MSEs or
        # FIDs compare only on the same M, and a retrained classifier is another M.
        self.fingerprint = fingerprint
        self._holder = holder   # keeps a loaded SavedModel alive (its variables)
        self.dim = int(dim) if dim is not None else self._infer_dim()

    def _infer_dim(self) -> int:
        out = self(tf.zeros((1, *self.input_shape[:2], self.input_shape[2])))
        return int(out.shape[-1])

    def prepare(self, images: tf.Tensor) -> tf.Tensor:
        """[-1, 1] images of any size/channels -> M's input contract (differentiable)."""
        images = tf.convert_to_tensor(images, tf.float32)
        height, width, channels = self.input_shape
        if images.shape[-1] != channels:
            if channels == 3 and images.shape[-1] == 1:
                images = tf.tile(images, [1, 1, 1, 3])
            elif channels == 1 and images.shape[-1] == 3:
                images = tf.reduce_mean(images, axis=-1, keepdims=True)
            else:
                raise FeatureModelError(f"{self.description}: expects {channels} channels, "
                                        f"got images of shape {images.shape}")
        if tuple(images.shape[1:3]) != (height, width):
            images = tf.image.resize(images, (height, width), method="bilinear")
        lo, hi = self.value_range
        if (lo, hi) != (-1.0, 1.0):
            images = (images + 1.0) * ((hi - lo) / 2.0) + lo
        return tf.cast(images, self.input_dtype)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        features = tf.cast(self._fn(self.prepare(images)), tf.float32)
        if features.shape.rank != 2:
            features = tf.reshape(features, [tf.shape(features)[0], -1])
        return features


# ------------------------------------------------------------------------ loading


def weights_fingerprint(path: str) -> str:
    """A short SHA-256 of the weights at `path`: a file (Keras .h5) or every file of a
    SavedModel's variables/ directory, in name order; "" when there are none."""
    if tf.io.gfile.isdir(path):
        files_to_hash = sorted(tf.io.gfile.glob(os.path.join(path, "variables", "*")))
    else:
        files_to_hash = [path] if tf.io.gfile.exists(path) else []
    if not files_to_hash:
        return ""
    digest = hashlib.sha256()
    for name in files_to_hash:
        with tf.io.gfile.GFile(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def load_feature_model(config: FeatureConfig) -> Optional[FeatureModel]:
    """The configured M, or None when --feature_model is empty."""
    if config.flag_prefix == "feature":
        return _load_feature_model(config)
    renamed = f"--{config.flag_prefix}_"
    try:
        model = _load_feature_model(config)
    except FeatureModelError as error:
        raise FeatureModelError(str(error).replace("--feature_", renamed)) from None
    if model is not None:
        model.description = model.description.replace("--feature_", renamed)
    return model


def _load_feature_model(config: FeatureConfig) -> Optional[FeatureModel]:
    spec = (config.feature_model or "").strip()
    if not spec:
        return None
    if config.feature_image_size < 0:
        raise FeatureModelError(f"--feature_image_size={config.feature_image_size}: expected >= 0")
    if spec.startswith(INCEPTION_PREFIX):
        return _load_inception(spec[len(INCEPTION_PREFIX):], config)
    return _load_saved_model(spec, config)


def _load_inception(path: str, config: FeatureConfig) -> FeatureModel:
    flag = f"--feature_model={INCEPTION_PREFIX}{path}"
    size = config.feature_image_size or INCEPTION_DEFAULT_SIZE
    if size < INCEPTION_MIN_SIZE:
        raise FeatureModelError(f"--feature_image_size={size}: InceptionV3 needs at least "
                                f"{INCEPTION_MIN_SIZE}")
    if not path or not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise FeatureModelError(
            f"{flag}: no weights file there (expected Keras' "
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5; it cannot be downloaded "
            "here: fetch it on a machine with internet, see the README, \"Getting the InceptionV3 weights\")")
    try:
        model = keras.applications.InceptionV3(
            include_top=False, pooling="avg", weights=path, input_shape=(size, size, 3))
    except (ValueError, OSError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: not InceptionV3 notop weights ({first})") from None
    model.trainable = False
    return FeatureModel(lambda x: model(x, training=False), (size, size, 3), (-1.0, 1.0),
                        variables=[getattr(v, "value", v) for v in model.weights],
                        description=flag, dim=int(model.output_shape[-1]), holder=model,
                        fingerprint=weights_fingerprint(path))


def _is_saved_model(path: str) -> bool:
    return any(tf.io.gfile.exists(os.path.join(path, name))
               for name in ("saved_model.pb", "saved_model.pbtxt"))


def _read_value_range(path: str, flag: str) -> Tuple[float, float]:
    metadata_path = os.path.join(path, files.METADATA_FILE)
    if not tf.io.gfile.exists(metadata_path):
        return (-1.0, 1.0)
    try:
        with tf.io.gfile.GFile(metadata_path) as f:
            metadata = json.load(f)
    except (ValueError, UnicodeDecodeError, OSError, tf.errors.OpError) as error:
        raise FeatureModelError(f"{flag}: {metadata_path} is not readable JSON ({error}); "
                                "fix or delete it (without it [-1, 1] is assumed)") from None
    if not isinstance(metadata, dict):
        raise FeatureModelError(f"{flag}: {metadata_path} holds a JSON "
                                f"{type(metadata).__name__}, not an object")
    value_range = metadata.get("value_range", [-1.0, 1.0])
    try:
        lo, hi = (float(v) for v in value_range)
    except (ValueError, TypeError) as error:
        raise FeatureModelError(f"{flag}: unreadable value_range in {metadata_path} "
                                f"({error})") from None
    if not lo < hi:
        raise FeatureModelError(f"{flag}: value_range {[lo, hi]} in {metadata_path}: "
                                "expected [low, high] with low < high")
    return lo, hi


def _load_saved_model(path: str, config: FeatureConfig) -> FeatureModel:
    flag = f"--feature_model={path}"
    if not tf.io.gfile.isdir(path):
        raise FeatureModelError(f"{flag}: no such directory (expected a SavedModel "
                                f"directory or {INCEPTION_PREFIX}WEIGHTS.h5)")
    if not _is_saved_model(path):
        raise FeatureModelError(f"{flag}: not a SavedModel (no saved_model.pb in it)")
    try:
        loaded = tf.saved_model.load(path)
    except (ValueError, OSError, tf.errors.OpError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: cannot load the SavedModel ({first})") from None
    signatures = getattr(loaded, "signatures", {}) or {}
    name = config.feature_signature or "serving_default"
    if name not in signatures:
        raise FeatureModelError(f"--feature_signature={name}: {path} has no such signature "
                                f"(it has: {', '.join(sorted(signatures)) or 'none'})")
    fn = signatures[name]
    inputs = [s for s in fn.structured_input_signature[1].values()]
    if len(inputs) != 1 or inputs[0].shape.rank != 4:
        raise FeatureModelError(f"--feature_signature={name} of {path}: expected one image "
                                f"input [batch, H, W, C], found {inputs}")
    input_spec = inputs[0]
    input_key = next(iter(fn.structured_input_signature[1]))
    if not input_spec.dtype.is_floating:
        raise FeatureModelError(f"--feature_signature={name} of {path}: input dtype "
                                f"{input_spec.dtype.name} is not a float (gradients cannot "
                                "flow through it)")
    outputs = sorted(fn.structured_outputs)
    output = config.feature_output
    if not output:
        if len(outputs) != 1:
            raise FeatureModelError(f"--feature_output is needed: {path} signature {name} has "
                                    f"outputs {', '.join(outputs)}")
        output = outputs[0]
    elif output not in outputs:
        raise FeatureModelError(f"--feature_output={output}: no such output of {path} "
                                f"signature {name} (it has: {', '.join(outputs)})")
    _, height, width, channels = input_spec.shape.as_list()
    size = config.feature_image_size
    if height is None or width is None:
        if not size:
            raise FeatureModelError(f"{flag}: its input shape {input_spec.shape} leaves the "
                                    "image size open: set --feature_image_size")
        height = height or size
        width = width or size
    elif size and (height, width) != (size, size):
        raise FeatureModelError(f"--feature_image_size={size}: {path} expects "
                                f"{height}x{width} images")
    if channels is None:
        channels = 3   # most image models; a wrong guess fails in the dimension probe below
    value_range = _read_value_range(path, flag)

    def call(images):
        return fn(**{input_key: images})[output]

    try:
        return FeatureModel(call, (height, width, channels), value_range,
                            # The variables the signature reads (what must stay frozen).
                            variables=list(fn.variables),
                            input_dtype=input_spec.dtype,
                            description=f"{flag} ({name}:{output})", holder=loaded,
                            fingerprint=weights_fingerprint(path))
    except (ValueError, TypeError, tf.errors.OpError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: calling signature {name} on a "
                                f"{height}x{width}x{channels} batch failed ({first})") from None
