"""The frozen pretrained feature model M of GALI-PT ("Incorporation of Learned Knowledge"),
and the FID network.

`load_feature_model(FeatureConfig(...))` returns a `FeatureModel`: images in [-1, 1] ->
[B, F] float32 features. M never trains: its weights are held by a plain Python object
(not a Keras layer or tf.Module attribute of GALIModel), so they are in no
`trainable_variables` list and in no run checkpoint; it runs in inference mode
(signatures traced with training=False, Keras models called with training=False and
`trainable=False`, so no dropout and frozen BatchNorm statistics). Gradients flow *through*
M into the images, hence into G and E: nothing here stops them.

Sources (one spec string, flag --feature_model, or --fid_model for the FID network):

- `DIR`: a SavedModel / TF Hub module directory (TF2 SavedModel or TF1 Hub format),
  loaded with `hub.load` (which picks a TF1 module's default graph variant). The
  signature `--feature_signature` (default serving_default; a TF1 Hub module's is
  "default") is called and its output `--feature_output` taken (optional when the
  signature has a single output). Input contract: the signature's single image input
  TensorSpec gives (H, W, C, dtype); H and W may be unknown, then `--feature_image_size`
  sets them. The value range is read from `DIR/metadata.json` ("value_range": [lo, hi])
  when present, else **[-1, 1] is assumed** (the convention of this project's exports,
  trainers.classifier and export/).
- `inception_v3:PATH`: `keras.applications.InceptionV3(include_top=False, pooling="avg",
  weights=PATH)` (2048-d pool features, the paper's CelebA choice for M) at
  `--feature_image_size` (default 299, at least 75), inputs in [-1, 1] as InceptionV3's
  own preprocessing ("tf" mode) gives. This is Keras' ImageNet InceptionV3, *not* the FID
  Inception of the papers: FIDs on it are not comparable with published ones.
- `ttur:PATH.pb`: the FID Inception of the papers as TTUR's fid.py (and pytorch-fid's
  port) runs it: the frozen graph `classify_image_graph_def.pb` of
  inception-2015-12-05.tgz, fed at `ExpandDims:0` with float images in [0, 255] and read
  at `pool_3:0` ([N, 1, 1, 2048]).
- `tfgan:DIR`: the same network as TF-GAN's TF Hub module `tfgan/eval/inception/1`,
  called as TF-GAN does (`hub.load(DIR)(images)["pool_3"]`; a TF1 Hub-format copy through
  its "default" signature), on 299x299 images prepared as TF-GAN's preprocess_image
  does (TF1's bilinear resize, a pixel p becomes (p - 128) / 128).

Only the last two give FIDs comparable with the papers' (`FeatureModel.papers_fid`).

Images are resized bilinearly to M's input size (`resize_images`: TF2's half-pixel
resize, or for `ttur:` and `tfgan:` TF1's, which the graph itself uses), grey images are tiled to 3
channels (and colour images averaged to 1) when M wants it, and values are mapped
linearly from [-1, 1] to M's range. Every bad input raises `FeatureModelError` (one
line) at load time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf
from google.protobuf.message import DecodeError

from gali_tf import files
from gali_tf.errors import ConfigError, first_line

INCEPTION_PREFIX = "inception_v3:"
INCEPTION_DEFAULT_SIZE = 299
INCEPTION_MIN_SIZE = 75
INCEPTION_DESCRIPTION = ("Keras' ImageNet InceptionV3 (not the FID Inception of the papers; "
                         "its FIDs are not comparable with published ones)")

# The FID Inception of the papers (Heusel et al.'s TTUR code, TF-GAN): its 2048-d pool_3.
TTUR_PREFIX = "ttur:"
TFGAN_PREFIX = "tfgan:"
FID_INCEPTION_SIZE = 299
FID_INCEPTION_DIM = 2048
FID_INCEPTION_OUTPUT = "pool_3"
TTUR_INPUT = "ExpandDims:0"      # after TTUR's JPEG decoding, before the graph's own resize
TTUR_OUTPUT = "pool_3:0"
TTUR_SCOPE = "FID_Inception_Net"   # the import name TTUR's fid.py uses
TFGAN_SIGNATURE = "default"        # a TF1 Hub module's signature
# TF-GAN's preprocess_image maps a pixel p to (p - 128) / 128: 0 -> -1, 255 -> 127/128.
TFGAN_VALUE_RANGE = (-1.0, 127.0 / 128.0)

# FeatureModel.resize_method values (see resize_images).
RESIZE_BILINEAR = "bilinear"
RESIZE_TF1_BILINEAR = "tf1_bilinear"


class FeatureModelError(ConfigError):
    """A --feature_* flag that does not describe a usable feature model (one line)."""


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Where M comes from; field names equal the trainer's flags."""

    # "" = no M; DIR, inception_v3:PATH, or the papers' FID network: ttur:PATH, tfgan:DIR
    feature_model: str = ""
    feature_output: str = ""                   # named output of the signature ("" = the only one)
    feature_signature: str = "serving_default"
    feature_image_size: int = 0                # 0 = inferred (inception_v3:, ttur:, tfgan: 299)
    # The flags' common prefix, for messages: "feature" (--feature_model, ...) or e.g.
    # "fid" when trainers.evaluate loads its FID network from --fid_model, --fid_output.
    flag_prefix: str = "feature"


def resize_images(images: tf.Tensor, size: Tuple[int, int],
                  method: str = RESIZE_BILINEAR) -> tf.Tensor:
    """Bilinear resize of [B, H, W, C] float images to `size` (height, width).

    RESIZE_BILINEAR is TF2's `tf.image.resize` (half-pixel centres), for every other M.
    RESIZE_TF1_BILINEAR is TF1's ResizeBilinear (align_corners=False,
    half_pixel_centers=False), the op inside TTUR's graph, in TF-GAN's preprocess_image
    and in clean-fid's "legacy_tensorflow" mode. The two sample the source a fraction
    of a pixel apart, which is enough to move an FID."""
    if method == RESIZE_TF1_BILINEAR:
        return tf.raw_ops.ResizeBilinear(images=images, size=tf.constant(size, tf.int32),
                                         align_corners=False, half_pixel_centers=False)
    if method != RESIZE_BILINEAR:
        raise ValueError(f"resize method {method!r}: expected {RESIZE_BILINEAR} or "
                         f"{RESIZE_TF1_BILINEAR}")
    return tf.image.resize(images, size, method="bilinear")


class FeatureModel:
    """A frozen feature function M: images [B, H, W, C] in [-1, 1] -> [B, F] float32.

    `papers_fid` is True only for the FID Inception of the papers (ttur:, tfgan:): FIDs
    on other networks compare only with FIDs on the same network."""

    def __init__(self, fn: Callable[[tf.Tensor], tf.Tensor], input_shape: Sequence[int],
                 value_range: Tuple[float, float] = (-1.0, 1.0),
                 variables: Sequence[tf.Variable] = (), input_dtype=tf.float32,
                 description: str = "", dim: Optional[int] = None, holder=None,
                 fingerprint: str = "", resize_method: str = RESIZE_BILINEAR,
                 papers_fid: bool = False):
        self._fn = fn
        self.input_shape = tuple(int(s) for s in input_shape)   # (H, W, C) M expects
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.input_dtype = tf.as_dtype(input_dtype)
        if resize_method not in (RESIZE_BILINEAR, RESIZE_TF1_BILINEAR):
            raise ValueError(f"resize_method={resize_method!r}: expected {RESIZE_BILINEAR} "
                             f"or {RESIZE_TF1_BILINEAR}")
        self.resize_method = resize_method
        self.papers_fid = bool(papers_fid)
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
            images = resize_images(images, (height, width), self.resize_method)
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
    # "~" is expanded here: the shell leaves it alone after "--flag=prefix:".
    for prefix, load in ((INCEPTION_PREFIX, _load_inception), (TTUR_PREFIX, _load_ttur),
                         (TFGAN_PREFIX, _load_tfgan)):
        if spec.startswith(prefix):
            return load(os.path.expanduser(spec[len(prefix):]), config)
    return _load_saved_model(os.path.expanduser(spec), config)


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
                        description=f"{flag}: {INCEPTION_DESCRIPTION}",
                        dim=int(model.output_shape[-1]), holder=model,
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
        raise FeatureModelError(
            f"{flag}: no such directory (expected a SavedModel directory, "
            f"{INCEPTION_PREFIX}WEIGHTS.h5, {TTUR_PREFIX}GRAPH.pb or {TFGAN_PREFIX}DIR)")
    if not _is_saved_model(path):
        raise FeatureModelError(f"{flag}: not a SavedModel (no saved_model.pb in it)")
    loaded = _load_module(path, flag)
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


def _load_module(path: str, flag: str):
    """`hub.load(path)`: a TF2 SavedModel as tf.saved_model.load gives it, and for a TF1
    Hub-format directory (tfhub_module.pb) its default graph variant (tags=[]), which
    tf.saved_model.load cannot pick when the module has several (e.g. a "train" one)."""
    import tensorflow_hub as hub  # pylint: disable=import-outside-toplevel

    try:
        return hub.load(path)
    except (ValueError, OSError, RuntimeError, tf.errors.OpError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: cannot load the SavedModel ({first})") from None


# ------------------------------------------------------- the FID Inception of the papers


def _check_fid_inception_options(config: FeatureConfig, what: str) -> None:
    """The papers' FID network has one input size and one feature layer."""
    size = config.feature_image_size
    if size not in (0, FID_INCEPTION_SIZE):
        raise FeatureModelError(f"--feature_image_size={size}: {what} takes "
                                f"{FID_INCEPTION_SIZE}x{FID_INCEPTION_SIZE} images; leave it 0")
    if config.feature_output not in ("", FID_INCEPTION_OUTPUT):
        raise FeatureModelError(f"--feature_output={config.feature_output}: {what} gives "
                                f"{FID_INCEPTION_OUTPUT} (the FID features) only")


def _fid_inception(fn: Callable[[tf.Tensor], tf.Tensor], flag: str, what: str,
                   value_range: Tuple[float, float], resize_method: str,
                   **kwargs) -> FeatureModel:
    """A FeatureModel of the papers' FID Inception; a network that does not run on a
    299x299x3 batch or gives other than 2048 features is not it."""
    try:
        model = FeatureModel(fn, (FID_INCEPTION_SIZE, FID_INCEPTION_SIZE, 3), value_range,
                             description=f"{flag} ({what}, {FID_INCEPTION_OUTPUT})",
                             resize_method=resize_method, papers_fid=True, **kwargs)
    except FeatureModelError:
        raise
    except (ValueError, TypeError, KeyError, tf.errors.OpError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: calling it on a {FID_INCEPTION_SIZE}x"
                                f"{FID_INCEPTION_SIZE}x3 batch failed ({first})") from None
    if model.dim != FID_INCEPTION_DIM:
        raise FeatureModelError(f"{flag}: {FID_INCEPTION_OUTPUT} has {model.dim} features, "
                                f"expected {FID_INCEPTION_DIM} (is it {what}?)")
    return model


def _read_graph_def(path: str, flag: str) -> tf.compat.v1.GraphDef:
    if not path or not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise FeatureModelError(
            f"{flag}: no graph file there (expected TTUR's classify_image_graph_def.pb from "
            "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz; "
            "it cannot be downloaded here: fetch it on a machine with internet)")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return tf.compat.v1.GraphDef.FromString(f.read())
    except (DecodeError, OSError, tf.errors.OpError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: not a frozen GraphDef ({first})") from None


def _without_global_batch_norm(graph_def: tf.compat.v1.GraphDef) -> tf.compat.v1.GraphDef:
    """A copy of `graph_def` with every BatchNormWithGlobalNormalization node (Inception
    2015's batch norm) replaced by the same arithmetic in current ops, under the same node
    name so its consumers are unchanged:

        y = (x - mean) * (rsqrt(variance + epsilon) [* gamma]) + beta

    (the kernel's order; gamma only when scale_after_normalization). Why: TensorFlow
    removed that op at GraphDef version 9. A Session still runs it (the imported graph
    keeps the file's old version), but a wrap_function runs at the current version and
    fails with "Op BatchNormWithGlobalNormalization is not available in GraphDef version".
    """
    result = tf.compat.v1.GraphDef()
    result.CopyFrom(graph_def)
    del result.node[:]
    for node in graph_def.node:
        if node.op != "BatchNormWithGlobalNormalization":
            result.node.add().CopyFrom(node)
            continue
        x, mean, variance, beta, gamma = node.input[:5]
        dtype = node.attr["T"]
        scope = f"{node.name}/decomposed"

        def add(name, op, inputs, **attrs):
            new = result.node.add(name=name, op=op, input=inputs, device=node.device)
            for key, value in attrs.items():
                new.attr[key].CopyFrom(value)
            return name

        epsilon = tf.make_tensor_proto(node.attr["variance_epsilon"].f,
                                       tf.as_dtype(dtype.type))
        add(f"{scope}/epsilon", "Const", [],
            dtype=tf.compat.v1.AttrValue(type=dtype.type),
            value=tf.compat.v1.AttrValue(tensor=epsilon))
        shifted = add(f"{scope}/variance_epsilon", "AddV2", [variance, f"{scope}/epsilon"],
                      T=dtype)
        scale = add(f"{scope}/rsqrt", "Rsqrt", [shifted], T=dtype)
        if node.attr["scale_after_normalization"].b:
            scale = add(f"{scope}/scale", "Mul", [scale, gamma], T=dtype)
        centred = add(f"{scope}/centred", "Sub", [x, mean], T=dtype)
        scaled = add(f"{scope}/scaled", "Mul", [centred, scale], T=dtype)
        add(node.name, "AddV2", [scaled, beta], T=dtype)
    return result


def _import_ttur_graph(graph_def: tf.compat.v1.GraphDef, images: tf.Tensor) -> tf.Tensor:
    # input_map puts our [None, None, None, 3] tensor in place of ExpandDims:0, whose
    # inferred shape is [1, ?, ?, 3] (one decoded JPEG): shape inference then carries an
    # open batch size through the graph. TTUR's fid.py gets the same by patching the first
    # dimension of every op's static shape to None (_get_inception_layer).
    return tf.graph_util.import_graph_def(graph_def, input_map={TTUR_INPUT: images},
                                          return_elements=[TTUR_OUTPUT], name=TTUR_SCOPE)[0]


def _load_ttur(path: str, config: FeatureConfig) -> FeatureModel:
    """TTUR's frozen Inception graph, fed at ExpandDims:0 with float images in [0, 255].

    We resize to 299x299 ourselves with TF1's ResizeBilinear (align_corners=False,
    half_pixel_centers=False), the very op and attributes the graph applies after
    ExpandDims: its own 299 -> 299 resize is then an exact identity, so the features equal
    TTUR's on the images at their own size (clean-fid's "legacy_tensorflow" mode), while
    every FeatureModel keeps one fixed input shape. The graph has no variables."""
    flag = f"--feature_model={TTUR_PREFIX}{path}"
    what = "TTUR's FID Inception"
    _check_fid_inception_options(config, what)
    graph_def = _read_graph_def(path, flag)
    names = {node.name for node in graph_def.node}
    missing = [t for t in (TTUR_INPUT, TTUR_OUTPUT) if t.split(":")[0] not in names]
    if missing:
        raise FeatureModelError(
            f"{flag}: the graph has no {' and no '.join(missing)} tensor (expected TTUR's "
            f"classify_image_graph_def.pb, fed at {TTUR_INPUT}, read at {TTUR_OUTPUT})")
    graph_def = _without_global_batch_norm(graph_def)
    try:
        wrapped = tf.compat.v1.wrap_function(
            functools.partial(_import_ttur_graph, graph_def),
            [tf.TensorSpec([None, None, None, 3], tf.float32)])
        # Only what lies between the input and pool_3 (not the JPEG decoder in front).
        fn = wrapped.prune(wrapped.inputs[0], wrapped.outputs[0])
    except (ValueError, TypeError, KeyError, tf.errors.OpError) as error:
        first = first_line(error)
        raise FeatureModelError(f"{flag}: cannot import the graph ({first})") from None
    return _fid_inception(fn, flag, what, (0.0, 255.0), RESIZE_TF1_BILINEAR, holder=fn,
                          fingerprint=weights_fingerprint(path))


def _tfgan_outputs(loaded, flag: str) -> Callable[[tf.Tensor], Dict]:
    """images -> the module's output dict, called as TF-GAN's classifier_fn_from_tfhub
    does (`hub.load(module)(images)`, a TF2 SavedModel's callable root); a TF1 Hub-format
    module has no callable root, so its "default" signature is called instead."""
    if callable(loaded):
        return loaded
    signatures = getattr(loaded, "signatures", {}) or {}
    if TFGAN_SIGNATURE not in signatures:
        raise FeatureModelError(f"{flag}: the module is not callable and has no "
                                f"\"{TFGAN_SIGNATURE}\" signature (it has: "
                                f"{', '.join(sorted(signatures)) or 'none'})")
    signature = signatures[TFGAN_SIGNATURE]
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise FeatureModelError(f"{flag}: its \"{TFGAN_SIGNATURE}\" signature takes "
                                f"{len(inputs)} inputs ({', '.join(sorted(inputs))}), "
                                "expected one image input")
    if FID_INCEPTION_OUTPUT not in signature.structured_outputs:
        raise FeatureModelError(f"{flag}: its \"{TFGAN_SIGNATURE}\" signature has no "
                                f"{FID_INCEPTION_OUTPUT} output (it has: "
                                f"{', '.join(sorted(signature.structured_outputs))})")
    key = next(iter(inputs))
    return lambda images: signature(**{key: images})


def _load_tfgan(path: str, config: FeatureConfig) -> FeatureModel:
    """TF-GAN's Inception module (tfgan/eval/inception/1): its pool_3 on 299x299 images
    prepared as TF-GAN's `preprocess_image` prepares them (the preprocessing of the
    inception-2015-12-05 graph, the same as `ttur:`): TF1's bilinear resize, then a
    pixel p in [0, 255] becomes (p - 128) / 128, i.e. [-1, 1] is mapped onto
    [-1, 127/128]."""
    flag = f"--feature_model={TFGAN_PREFIX}{path}"
    what = "TF-GAN's FID Inception"
    _check_fid_inception_options(config, what)
    if not path or not tf.io.gfile.isdir(path) or not _is_saved_model(path):
        raise FeatureModelError(
            f"{flag}: no TF Hub module there (expected the directory of TF-GAN's "
            "tfgan/eval/inception/1, with saved_model.pb in it; it cannot be downloaded "
            "here: fetch it on a machine with internet)")
    loaded = _load_module(path, flag)
    outputs_of = _tfgan_outputs(loaded, flag)

    def pool_3(images):
        outputs = outputs_of(images)
        if not isinstance(outputs, dict) or FID_INCEPTION_OUTPUT not in outputs:
            names = ", ".join(sorted(outputs)) if isinstance(outputs, dict) else "one tensor"
            raise FeatureModelError(f"{flag}: the module gives no {FID_INCEPTION_OUTPUT} "
                                    f"output (it gives: {names})")
        return outputs[FID_INCEPTION_OUTPUT]

    return _fid_inception(pool_3, flag, what, TFGAN_VALUE_RANGE, RESIZE_TF1_BILINEAR,
                          variables=_module_variables(loaded), holder=loaded,
                          fingerprint=weights_fingerprint(path))


def _module_variables(loaded) -> List[tf.Variable]:
    """Every variable a loaded module tracks (a revived TF2 module has no `.variables`)."""
    return [node for node in tf.train.TrackableView(loaded).descendants()
            if isinstance(node, tf.Variable)]
