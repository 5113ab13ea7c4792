"""FID as the field computes it (issue 17): the papers' FID Inception from TTUR's frozen
graph (ttur:) and from TF-GAN's TF Hub module (tfgan:), tested on tiny stand-ins with the
same interface (node names, signature, input key, outputs, 2048-d pool_3)."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import features

DIM = features.FID_INCEPTION_DIM
SIZE = features.FID_INCEPTION_SIZE
RNG_SEED = 17


def load(spec, **options):
    return features.load_feature_model(features.FeatureConfig(spec, **options))


def images_in_unit_range(n=4, size=32, channels=3, seed=0):
    """[-1, 1] images, as G(z) and the data pipelines give them."""
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-1, 1, (n, size, size, channels)), tf.float32)


# ------------------------------------------------------------ TTUR's frozen graph


def _attr(**value):
    return tf.compat.v1.AttrValue(**value)


def _dtype(dtype):
    return _attr(type=tf.as_dtype(dtype).as_datatype_enum)


def _ints(values):
    return _attr(list=tf.compat.v1.AttrValue.ListValue(i=values))


def _node(name, op, inputs=(), **attrs):
    node = tf.compat.v1.NodeDef(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _const(name, value):
    value = np.asarray(value)
    return _node(name, "Const", dtype=_dtype(value.dtype),
                 value=_attr(tensor=tf.make_tensor_proto(value)))


def ttur_stand_in(dim=DIM, seed=RNG_SEED):
    """A GraphDef shaped like classify_image_graph_def.pb: JPEG decoder -> Cast ->
    ExpandDims ([1, H, W, 3]) -> ResizeBilinear to 299 (TF1 attributes) -> (x-128)/128
    -> conv -> Inception 2015's BatchNormWithGlobalNormalization (removed from TF at
    GraphDef version 9, so the file's producer version is 8) -> ReLU -> AvgPool ->
    pool_3 [N, 1, 1, dim] -> pool_3/_reshape to [1, dim] (batch 1 only, as in the real
    graph). A 23x23 stride-23 conv keeps it small but sensitive to where pixels are."""
    rng = np.random.default_rng(seed)
    f32 = _dtype(tf.float32)
    graph = tf.compat.v1.GraphDef()
    graph.versions.producer = 8
    graph.node.extend([
        _node("DecodeJpeg/contents", "Placeholder", dtype=_dtype(tf.string)),
        _node("DecodeJpeg", "DecodeJpeg", ["DecodeJpeg/contents"], channels=_attr(i=3)),
        _node("Cast", "Cast", ["DecodeJpeg"], SrcT=_dtype(tf.uint8), DstT=f32),
        _const("ExpandDims/dim", np.int32(0)),
        _node("ExpandDims", "ExpandDims", ["Cast", "ExpandDims/dim"], T=f32,
              Tdim=_dtype(tf.int32)),
        _const("ResizeBilinear/size", np.array([SIZE, SIZE], np.int32)),
        _node("ResizeBilinear", "ResizeBilinear", ["ExpandDims", "ResizeBilinear/size"],
              T=f32, align_corners=_attr(b=False)),
        _const("Sub/y", np.float32(128.0)),
        _node("Sub", "Sub", ["ResizeBilinear", "Sub/y"], T=f32),
        _const("Mul/y", np.float32(1.0 / 128.0)),
        _node("Mul", "Mul", ["Sub", "Mul/y"], T=f32),
        _const("conv/conv2d_params", rng.normal(0, 0.05, (23, 23, 3, 8)).astype(np.float32)),
        _node("conv/Conv2D", "Conv2D", ["Mul", "conv/conv2d_params"], T=f32,
              strides=_ints([1, 23, 23, 1]), padding=_attr(s=b"VALID")),
        _const("conv/batchnorm/moving_mean", rng.normal(size=8).astype(np.float32)),
        _const("conv/batchnorm/moving_variance", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        _const("conv/batchnorm/beta", rng.normal(size=8).astype(np.float32)),
        _const("conv/batchnorm/gamma", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        _node("conv/batchnorm", "BatchNormWithGlobalNormalization",
              ["conv/Conv2D", "conv/batchnorm/moving_mean", "conv/batchnorm/moving_variance",
               "conv/batchnorm/beta", "conv/batchnorm/gamma"],
              T=f32, variance_epsilon=_attr(f=0.001), scale_after_normalization=_attr(b=True)),
        _node("conv", "Relu", ["conv/batchnorm"], T=f32),
        _node("pool", "AvgPool", ["conv"], T=f32, ksize=_ints([1, 13, 13, 1]),
              strides=_ints([1, 1, 1, 1]), padding=_attr(s=b"VALID")),
        _const("pool_3/weights", rng.normal(size=(1, 1, 8, dim)).astype(np.float32)),
        _node("pool_3", "Conv2D", ["pool", "pool_3/weights"], T=f32,
              strides=_ints([1, 1, 1, 1]), padding=_attr(s=b"VALID")),
        _const("pool_3/_reshape/shape", np.array([1, dim], np.int32)),
        _node("pool_3/_reshape", "Reshape", ["pool_3", "pool_3/_reshape/shape"], T=f32,
              Tshape=_dtype(tf.int32)),
    ])
    return graph


def write_graph(path, graph_def):
    """Writes a GraphDef (or raw bytes, for a damaged file); returns the path."""
    path.write_bytes(graph_def if isinstance(graph_def, bytes) else
                     graph_def.SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def ttur_graph(tmp_path_factory):
    return write_graph(tmp_path_factory.mktemp("ttur") / "classify_image_graph_def.pb",
                       ttur_stand_in())


def ttur_pool_3(graph_path, images_0_255):
    """What TTUR's fid.py computes: the graph imported as FID_Inception_Net into a TF1
    Session, each image fed at FID_Inception_Net/ExpandDims:0 at its own size (the graph
    resizes it) and pool_3:0 read. One image per run: without TTUR's shape patch (which
    no longer works in TF2) the graph takes batches of one only."""
    graph_def = tf.compat.v1.GraphDef.FromString(pathlib.Path(graph_path).read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="FID_Inception_Net")
    feed = graph.get_tensor_by_name("FID_Inception_Net/ExpandDims:0")
    assert feed.shape.as_list() == [1, None, None, 3]
    pool_3 = graph.get_tensor_by_name("FID_Inception_Net/pool_3:0")
    with tf.compat.v1.Session(graph=graph) as session:
        return np.concatenate([session.run(pool_3, {feed: image[None]})
                               for image in np.asarray(images_0_255)]).reshape(
                                   len(images_0_255), -1)


def test_ttur_features_equal_ttur_fid_py_on_the_images_at_their_own_size(ttur_graph):
    m = load(f"ttur:{ttur_graph}")
    assert m.papers_fid and m.dim == DIM and m.input_shape == (SIZE, SIZE, 3)
    assert m.value_range == (0.0, 255.0) and m.resize_method == features.RESIZE_TF1_BILINEAR
    assert m.variables == [] and len(m.fingerprint) == 12
    assert m.description == f"--feature_model=ttur:{ttur_graph} (TTUR's FID Inception, pool_3)"

    x = images_in_unit_range()
    ours = m(x).numpy()
    assert ours.shape == (4, DIM) and ours.dtype == np.float32
    reference = ttur_pool_3(ttur_graph, (x.numpy() + 1.0) * 127.5)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
    # A batch gives what each image gives alone (TTUR ran one at a time).
    np.testing.assert_allclose(m(x[2:3]).numpy(), ours[2:3], rtol=1e-5, atol=1e-5)
    # The same with --fid_model: the flag is named after the prefix.
    fid = features.load_feature_model(features.FeatureConfig(
        f"ttur:{ttur_graph}", flag_prefix="fid"))
    assert fid.description.startswith(f"--fid_model=ttur:{ttur_graph}")


def test_recorded_batch_1_shapes_do_not_pin_the_batch(tmp_path):
    """A graph written with add_shapes=True records each output's shape, batch 1 here
    (what TTUR's patch of the static shapes was for): batches still give TTUR's features."""
    graph = ttur_stand_in()
    recorded = {"Mul": [1, SIZE, SIZE, 3], "conv/batchnorm": [1, 13, 13, 8],
                "conv": [1, 13, 13, 8], "pool": [1, 1, 1, 8], "pool_3": [1, 1, 1, DIM]}
    for node in graph.node:
        if node.name in recorded:
            node.attr["_output_shapes"].list.shape.append(
                tf.TensorShape(recorded[node.name]).as_proto())
    path = write_graph(tmp_path / "with_shapes.pb", graph)
    x = images_in_unit_range()
    np.testing.assert_allclose(load(f"ttur:{path}")(x).numpy(),
                               ttur_pool_3(path, (x.numpy() + 1.0) * 127.5),
                               rtol=1e-4, atol=1e-4)


def test_ttur_input_is_0_255_and_resized_as_the_graph_does(ttur_graph):
    m = load(f"ttur:{ttur_graph}")
    ends = m.prepare(tf.constant([-1.0, 1.0])[:, None, None, None] * tf.ones([2, SIZE, SIZE, 3]))
    np.testing.assert_array_equal(ends.numpy()[:, 0, 0, 0], [0.0, 255.0])
    # Grey images are tiled to the 3 channels the graph wants.
    grey = images_in_unit_range(n=2, channels=1)
    np.testing.assert_allclose(m(grey).numpy(), m(tf.tile(grey, [1, 1, 1, 3])).numpy())
    # TF2's half-pixel resize (tf.image.resize) would feed the graph other pixels: the
    # TF1 resize is what makes our features TTUR's, and the difference is not small.
    x = images_in_unit_range()
    x_255 = (x + 1.0) * 127.5
    half_pixel = ttur_pool_3(ttur_graph, tf.image.resize(x_255, (SIZE, SIZE)))
    tf1 = ttur_pool_3(ttur_graph, features.resize_images(
        x_255, (SIZE, SIZE), features.RESIZE_TF1_BILINEAR))
    np.testing.assert_allclose(tf1, ttur_pool_3(ttur_graph, x_255), rtol=1e-5, atol=1e-5)
    assert np.abs(half_pixel - tf1).max() > 0.01 * np.abs(tf1).max()


def test_gradients_reach_the_images_through_the_ttur_graph(ttur_graph):
    """ttur: can also serve as GALI-PT's M (the graph is differentiable)."""
    m = load(f"ttur:{ttur_graph}")
    x = images_in_unit_range(n=2, size=16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(m(x))
    gradient = tape.gradient(total, x)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0


def _one_const_graph():
    graph = tf.compat.v1.GraphDef()
    graph.node.extend([_const("ExpandDims", np.zeros([1, 2, 2, 3], np.float32))])
    return graph


@pytest.mark.parametrize("make, expected", [
    (lambda d: str(d / "missing.pb"),
     "no graph file there (expected TTUR's classify_image_graph_def.pb from "
     "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz; it "
     "cannot be downloaded here: fetch it on a machine with internet)"),
    (lambda d: str(d), "no graph file there"),
    (lambda d: write_graph(d / "garbage.pb", b"\xff" * 7), "not a frozen GraphDef ("),
    (lambda d: write_graph(d / "other.pb", _one_const_graph()),
     "the graph has no pool_3:0 tensor (expected TTUR's classify_image_graph_def.pb, fed at "
     "ExpandDims:0, read at pool_3:0)"),
    (lambda d: write_graph(d / "empty.pb", tf.compat.v1.GraphDef()),
     "the graph has no ExpandDims:0 and no pool_3:0 tensor"),
    (lambda d: write_graph(d / "narrow.pb", ttur_stand_in(dim=16)),
     "pool_3 has 16 features, expected 2048 (is it TTUR's FID Inception?)"),
])
def test_bad_ttur_graphs_are_one_line_naming_the_flag(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(features.FeatureModelError) as info:
        features.load_feature_model(features.FeatureConfig(
            f"ttur:{path}", flag_prefix="fid"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--fid_model=ttur:{path}: {expected}")


@pytest.mark.parametrize("options, expected", [
    ({"feature_image_size": 64}, "--fid_image_size=64: TTUR's FID Inception takes 299x299 "
                                 "images; leave it 0"),
    ({"feature_output": "logits"}, "--fid_output=logits: TTUR's FID Inception gives pool_3 "
                                   "(the FID features) only"),
])
def test_ttur_options_that_cannot_apply(ttur_graph, options, expected):
    with pytest.raises(features.FeatureModelError) as info:
        features.load_feature_model(features.FeatureConfig(
            f"ttur:{ttur_graph}", flag_prefix="fid", **options))
    assert str(info.value) == expected
    assert load(f"ttur:{ttur_graph}", feature_image_size=SIZE, feature_output="pool_3").papers_fid


# ------------------------------------------------------- TF-GAN's TF Hub module

STRIDE = 46   # 7x7 pixels of a 299x299 image reach pool_3: small, and sensitive to resizing


def stand_in_weights(dim=DIM, seed=RNG_SEED):
    pixels = len(range(0, SIZE, STRIDE)) ** 2 * 3
    return np.random.default_rng(seed).normal(0, 0.3, (pixels, dim)).astype(np.float32)


def stand_in_pool_3(images_299, weights):
    """pool_3 of the module stand-ins, [N, F], from [N, 299, 299, 3] images in [-1, 1]."""
    images = np.asarray(images_299)
    pixels = images[:, ::STRIDE, ::STRIDE, :].reshape(len(images), -1)
    return np.tanh(pixels @ weights)


def _stand_in_outputs(images, weights):
    pixels = tf.reshape(images[:, ::STRIDE, ::STRIDE, :], [tf.shape(images)[0], -1])
    pool = tf.tanh(tf.matmul(pixels, weights))
    return {"pool_3": tf.reshape(pool, [-1, 1, 1, weights.shape[-1]]), "logits": pool[:, :8]}


class StandInInceptionModule(tf.Module):
    """Like TF-GAN's own FakeInceptionModule (inception_metrics_test.py): a TF2
    SavedModel whose root is called on images and returns {"logits", "pool_3"}."""

    def __init__(self, weights):
        super().__init__()
        self.weights = tf.Variable(weights, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec(shape=None, dtype=tf.float32)])
    def __call__(self, images):
        return _stand_in_outputs(images, self.weights)


@pytest.fixture(scope="module")
def tf2_module(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfgan") / "inception_1")
    tf.saved_model.save(StandInInceptionModule(stand_in_weights()), path)
    return path


def save_tf1_hub_module(path, weights, outputs=("pool_3", "logits")):
    """A TF1 Hub-format module: a TF1 SavedModel with the default graph variant (tags
    []) and a "train" one, signature "default" taking "images" [N, 299, 299, 3], and
    tfhub_module.pb beside it (a ModuleDef{format: FORMAT_V3}, which hub.load looks for)."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="images")
        variable = tf.compat.v1.get_variable("module/weights", initializer=weights)
        tensors = _stand_in_outputs(images, variable)
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"images": images}, {name: tensors[name] for name in outputs})
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(session, [],
                                                 signature_def_map={"default": signature})
            builder.add_meta_graph(["train"], signature_def_map={"default": signature})
            builder.save()
    with open(f"{path}/tfhub_module.pb", "wb") as f:
        f.write(b"\x08\x03")
    return path


@pytest.fixture(scope="module")
def tf1_hub_module(tmp_path_factory):
    return save_tf1_hub_module(str(tmp_path_factory.mktemp("tfgan_tf1") / "inception_1"),
                               stand_in_weights())


@pytest.mark.parametrize("module", ["tf2_module", "tf1_hub_module"])
def test_tfgan_features_equal_the_modules_pool_3(request, module):
    path = request.getfixturevalue(module)
    m = load(f"tfgan:{path}")
    assert m.papers_fid and m.dim == DIM and m.input_shape == (SIZE, SIZE, 3)
    assert m.resize_method == features.RESIZE_TF1_BILINEAR
    assert m.description == f"--feature_model=tfgan:{path} (TF-GAN's FID Inception, pool_3)"
    # The module's weights (what must stay frozen) and their fingerprint.
    assert len(m.variables) == 1 and m.variables[0].shape == (147, DIM)
    assert len(m.fingerprint) == 12
    x = images_in_unit_range()
    expected = stand_in_pool_3(tfgan_preprocess_image((x + 1.0) * 127.5), stand_in_weights())
    np.testing.assert_allclose(m(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def tfgan_preprocess_image(pixels):
    """TF-GAN's classifier_metrics.preprocess_image, as written there: [0, 255] images ->
    TF1's bilinear resize to 299 -> (p - 128) / 128."""
    resized = tf.compat.v1.image.resize_bilinear(pixels, [SIZE, SIZE])
    return (resized - 128.0) / 128.0


def test_tfgan_maps_pixels_as_tf_gan_does():
    """Black is -1 and white 127/128 (not 1): TF-GAN subtracts 128, not 127.5."""
    model = features.FeatureModel(lambda x: tf.reshape(x, [tf.shape(x)[0], -1]),
                                  (2, 2, 1), features.TFGAN_VALUE_RANGE)
    x = tf.constant([-1.0, 1.0, 0.0, 1.0 / 255.0], shape=[1, 2, 2, 1])
    np.testing.assert_allclose(model(x).numpy()[0],
                               [-1.0, 127 / 128, (127.5 - 128) / 128, (128 - 128) / 128],
                               atol=1e-6)


def test_a_tf1_hub_module_also_loads_as_a_plain_saved_model_directory(tf1_hub_module):
    """The DIR source reads a TF1 Hub-format directory too, through hub.load's default
    graph variant: tf.saved_model.load alone refuses a module with two variants."""
    with pytest.raises(ValueError, match="tags"):
        tf.saved_model.load(tf1_hub_module)
    m = load(tf1_hub_module, feature_signature="default", feature_output="pool_3")
    assert m.input_shape == (SIZE, SIZE, 3) and m.dim == DIM and not m.papers_fid
    x = images_in_unit_range(n=2)
    # As a plain directory it is an M like any other: TF2's resize, [-1, 1] as it is.
    expected = stand_in_pool_3(tf.image.resize(x, (SIZE, SIZE)), stand_in_weights())
    np.testing.assert_allclose(m(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_bad_tfgan_modules_are_one_line_naming_the_flag(tmp_path, tf2_module):
    def error_of(path):
        with pytest.raises(features.FeatureModelError) as info:
            features.load_feature_model(features.FeatureConfig(f"tfgan:{path}",
                                                               flag_prefix="fid"))
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error_of(tmp_path / "missing") == (
        f"--fid_model=tfgan:{tmp_path}/missing: no TF Hub module there (expected the "
        "directory of TF-GAN's tfgan/eval/inception/1, with saved_model.pb in it; it cannot "
        "be downloaded here: fetch it on a machine with internet)")
    logits_only = save_tf1_hub_module(str(tmp_path / "logits_only"), stand_in_weights(),
                                      outputs=("logits",))
    assert error_of(logits_only) == (
        f"--fid_model=tfgan:{logits_only}: its \"default\" signature has no pool_3 output "
        "(it has: logits)")
    narrow = str(tmp_path / "narrow")
    tf.saved_model.save(StandInInceptionModule(stand_in_weights(dim=32)), narrow)
    assert error_of(narrow) == (f"--fid_model=tfgan:{narrow}: pool_3 has 32 features, "
                                "expected 2048 (is it TF-GAN's FID Inception?)")


# ------------------------------------------------------- which FIDs compare with papers'


def test_only_the_papers_inception_claims_papers_fids(tmp_path, monkeypatch, tf1_hub_module):
    """inception_v3: is Keras' ImageNet InceptionV3 and says so; a SavedModel is whatever
    it is. (A tiny Keras model stands in for InceptionV3 here: same call, same weights
    argument, so the test stays fast.)"""
    import keras

    def tiny_inception(include_top, pooling, weights, input_shape):
        assert (include_top, pooling) == (False, "avg")
        model = keras.Sequential([keras.Input(input_shape), keras.layers.Conv2D(4, 3),
                                  keras.layers.GlobalAveragePooling2D()])
        model.load_weights(weights)
        return model

    weights = str(tmp_path / "tiny.weights.h5")
    keras.Sequential([keras.Input((75, 75, 3)), keras.layers.Conv2D(4, 3),
                      keras.layers.GlobalAveragePooling2D()]).save_weights(weights)
    monkeypatch.setattr(features.keras.applications, "InceptionV3", tiny_inception)
    m = features.load_feature_model(features.FeatureConfig(
        f"inception_v3:{weights}", feature_image_size=75, flag_prefix="fid"))
    assert not m.papers_fid
    assert m.description == (
        f"--fid_model=inception_v3:{weights}: Keras' ImageNet InceptionV3 (not the FID "
        "Inception of the papers; its FIDs are not comparable with published ones)")
    saved_model = load(tf1_hub_module, feature_signature="default", feature_output="pool_3")
    assert not saved_model.papers_fid
