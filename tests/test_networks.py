"""Shape, init and spectral-norm checks for gali_tf.networks."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from gali_tf import networks as nets
from gali_tf.networks import ArchitectureError, NetworkConfig

SMALL = NetworkConfig(arch="small", example_shape=(16, 16, 1), latent_dim=8, width=4)
MLP = NetworkConfig(arch="mlp", example_shape=(2,), latent_dim=2, mlp_hidden=16)
SVHN = NetworkConfig(arch="svhn32", example_shape=(32, 32, 3), latent_dim=256)
CELEBA = NetworkConfig(arch="celeba64", example_shape=(64, 64, 3), latent_dim=512,
                       leaky_slope=0.02)
CONFIGS = {"small": SMALL, "mlp": MLP, "svhn32": SVHN, "celeba64": CELEBA}


def _images(cfg, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch,) + tuple(cfg.example_shape)).astype("float32")


def _expected_feature_width(cfg):
    """The documented formula: last three hidden layers of E + its raw output."""
    out = 2 * cfg.latent_dim if cfg.stochastic_encoder else cfg.latent_dim
    if cfg.arch == "svhn32":  # conv4 s2 256 (4x4), conv4 s1 512 (1x1), 1x1 conv 512
        return 4 * 4 * 256 + 512 + 512 + out
    if cfg.arch == "celeba64":  # conv5 s2 256 (13x13), conv7 s2 256 (4x4), conv4 512
        return 13 * 13 * 256 + 4 * 4 * 256 + 512 + out
    if cfg.arch == "small":
        h, w, _ = cfg.example_shape
        k = cfg.width
        return (h // 2) * (w // 2) * 2 * k + (h // 4) * (w // 4) * 4 * k + 8 * k + out
    return 2 * cfg.mlp_hidden + out  # mlp has only two hidden layers


@pytest.mark.parametrize("arch", ["small", "mlp", "svhn32", "celeba64"])
def test_shapes(arch):
    cfg = CONFIGS[arch]
    enc, gen = nets.build_encoder(cfg), nets.build_generator(cfg)
    disc = nets.build_discriminator(cfg, ("image", "latent"), num_classes=4)
    x = _images(cfg)
    mu, log_sigma = enc(x, training=True)
    assert tuple(mu.shape) == (2, cfg.latent_dim)
    assert tuple(log_sigma.shape) == (2, cfg.latent_dim)
    feats = enc.features(x)
    assert tuple(feats.shape) == (2, _expected_feature_width(cfg))
    assert enc.feature_width() == _expected_feature_width(cfg)
    x_gen = gen(mu, training=True)
    assert tuple(x_gen.shape) == (2,) + tuple(cfg.example_shape)
    if arch != "mlp":
        assert np.all(np.abs(x_gen.numpy()) <= 1.0)
    logits = disc([x, mu], training=True)
    assert tuple(logits.shape) == (2, 4)


def test_generator_output_bounded_under_large_weights():
    gen = nets.build_generator(SMALL)
    for v in gen.trainable_weights:
        v.assign(v * 1000.0)
    out = gen(np.random.default_rng(1).normal(size=(4, SMALL.latent_dim)).astype("float32"))
    assert np.all(np.abs(out.numpy()) <= 1.0)


@pytest.mark.parametrize("arch", ["small", "svhn32"])
def test_output_bias_log_odds_init(arch):
    cfg = CONFIGS[arch]
    gen = nets.build_generator(cfg)
    rng = np.random.default_rng(2)
    # Per-pixel means well inside (-1, 1) so the clip does not bite.
    images = np.clip(rng.uniform(-0.8, 0.8, (1,) + tuple(cfg.example_shape))
                     + rng.normal(0, 0.05, (8,) + tuple(cfg.example_shape)), -1, 1)
    gen.set_output_bias_from_images(images.astype("float32"))
    last_conv = gen.body_layers[-1]
    last_conv.kernel.assign(np.zeros(last_conv.kernel.shape, "float32"))
    out = gen(np.zeros((2, cfg.latent_dim), "float32"), training=False).numpy()
    np.testing.assert_allclose(out[0], images.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(out[1], images.mean(axis=0), atol=1e-4)


def test_output_bias_noop_for_mlp():
    gen = nets.build_generator(MLP)
    before = [w.numpy().copy() for w in gen.weights]
    gen.set_output_bias_from_images(np.ones((4, 2), "float32"))
    for b, w in zip(before, gen.weights):
        np.testing.assert_array_equal(b, w.numpy())


@pytest.mark.parametrize("arch", ["small", "mlp"])
def test_deterministic_encoder(arch):
    cfg = NetworkConfig(**{**CONFIGS[arch].__dict__, "stochastic_encoder": False})
    enc = nets.build_encoder(cfg)
    assert enc.stochastic is False
    x = _images(cfg, batch=3)
    enc(x, training=True)  # moves BN statistics; inference must still be repeatable
    mu1, ls1 = enc(x, training=False)
    mu2, ls2 = enc(x, training=False)
    assert ls1 is None and ls2 is None
    assert tuple(mu1.shape) == (3, cfg.latent_dim)
    np.testing.assert_array_equal(mu1.numpy(), mu2.numpy())
    # Under tf.function too (the train step is traced).
    mu3, ls3 = tf.function(lambda t: enc(t, training=False))(x)
    assert ls3 is None
    np.testing.assert_allclose(mu3.numpy(), mu1.numpy(), rtol=1e-5, atol=1e-6)
    assert tuple(enc.features(x).shape) == (3, _expected_feature_width(cfg))


def _all_layers(model):
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        out.append(layer)
    return out


@pytest.mark.parametrize("arch", ["small", "mlp"])
def test_discriminator_spectral_norm(arch):
    cfg = NetworkConfig(**{**CONFIGS[arch].__dict__, "feature_dim": 5})
    kinds = ("image", "latent", "feature")
    disc = nets.build_discriminator(cfg, kinds, num_classes=3)
    layers = _all_layers(disc)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in layers)
    assert not any(isinstance(l, keras.layers.Dropout) for l in layers)
    sn = [l for l in layers if isinstance(l, nets.SpectralNormalization)]
    wrapped = {id(l.layer) for l in sn}
    kernels = [l for l in layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))]
    assert kernels and all(id(l) in wrapped for l in kernels)
    assert set(disc.trunks) == set(kinds)

    rng = np.random.default_rng(3)
    inputs = [_images(cfg, batch=4), rng.normal(size=(4, cfg.latent_dim)).astype("float32"),
              rng.normal(size=(4, 5)).astype("float32")]
    for _ in range(30):
        disc(inputs, training=True)
    for l in sn:
        k = l.normalized_kernel().numpy()
        top = np.linalg.svd(k.reshape(-1, k.shape[-1]), compute_uv=False)[0]
        assert abs(top - 1.0) < 0.1, (l.name, top)


def _sn_dense(kernel, bias):
    layer = nets.SpectralNormalization(keras.layers.Dense(kernel.shape[1]))
    layer.build((None, kernel.shape[0]))
    layer.layer.kernel.assign(kernel)
    layer.layer.bias.assign(bias)
    return layer


def test_spectral_norm_computes_with_w_over_its_top_singular_value():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(6, 4)).astype("float32")
    bias = rng.normal(size=4).astype("float32")
    x = rng.normal(size=(3, 6)).astype("float32")
    layer = _sn_dense(kernel, bias)
    # Before any training call, sigma comes from Keras' random (unnormalised) u, made a
    # unit vector: v = u W^T / |u W^T|, sigma = v W u^T.
    u = layer.vector_u.numpy() / np.linalg.norm(layer.vector_u.numpy())
    v = u @ kernel.T / np.linalg.norm(u @ kernel.T)
    sigma = (v @ kernel @ u.T).item()
    np.testing.assert_allclose(layer(x, training=False).numpy(), x @ (kernel / sigma) + bias,
                               rtol=1e-4, atol=1e-5)
    for _ in range(50):  # one power iteration per training call
        out = layer(x, training=True).numpy()
    sigma = np.linalg.svd(kernel, compute_uv=False)[0]
    np.testing.assert_allclose(out, x @ (kernel / sigma) + bias, rtol=1e-4, atol=1e-5)
    # The kernel variable itself is never overwritten (Keras' layer writes W / sigma).
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), kernel)
    u = layer.vector_u.numpy()
    np.testing.assert_allclose(layer(x, training=False).numpy(), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer.vector_u.numpy(), u)  # inference leaves u alone


def test_spectral_norm_gradient_is_miyato_eq_12():
    """dL/dW = (dL/dW_SN - <dL/dW_SN, W_SN> v^T u) / sigma, with sigma = v W u^T for the
    call's singular vectors (rows; W is [in, out]): the gradient also flows through sigma
    (Miyato et al. 2018)."""
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(5, 3))
    layer = _sn_dense(kernel.astype("float32"), np.zeros(3, "float32"))
    x = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    target = tf.constant(rng.normal(size=(4, 3)), tf.float32)
    u_before = layer.vector_u.numpy().astype(np.float64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x, training=True) - target))
    grad = tape.gradient(loss, layer.layer.kernel).numpy()

    # By hand, in float64: the call's power iteration, then eq. 12.
    v = u_before @ kernel.T
    v /= np.linalg.norm(v)
    u = v @ kernel
    u /= np.linalg.norm(u)
    sigma = (v @ kernel @ u.T).item()
    w_sn = kernel / sigma
    d_out = 2 * (x.numpy() @ w_sn - target.numpy())
    d_w_sn = x.numpy().T @ d_out
    expected = (d_w_sn - np.sum(d_w_sn * w_sn) * (v.T @ u)) / sigma
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_spectral_norm_conv_matches_conv_with_the_normalised_kernel():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    for padding, shape in (("same", (6, 6, 3)), ("valid", (6, 6, 3))):
        kernel = (rng.normal(size=(6 if padding == "valid" else 3,) * 2 + (3, 5))
                  .astype("float32"))
        conv = nets.Conv2D(5, kernel.shape[0], padding=padding, use_bias=True)
        layer = nets.SpectralNormalization(conv)
        layer.build((None,) + shape)
        conv.kernel.assign(kernel)
        conv.bias.assign(rng.normal(size=5).astype("float32"))
        for _ in range(300):  # 108 x 5 Gaussian: sigma_2 / sigma_1 is near 1, slow to converge
            out = layer(x, training=True).numpy()
        sigma = np.linalg.svd(kernel.reshape(-1, 5), compute_uv=False)[0]
        plain = keras.layers.Conv2D(5, kernel.shape[0], padding=padding)
        plain.build((None,) + shape)
        plain.set_weights([kernel / sigma, conv.bias.numpy()])
        np.testing.assert_allclose(out, plain(x).numpy(), rtol=1e-4, atol=1e-4)


def test_spectral_norm_refuses_other_layers():
    with pytest.raises(ArchitectureError, match="Dense or Conv2D"):
        nets.SpectralNormalization(keras.layers.Conv2DTranspose(2, 3)).build((None, 4, 4, 1))


def test_discriminator_direct_parts():
    disc = nets.build_discriminator(SMALL, ("image", "latent"), num_classes=2)
    x = _images(SMALL, batch=2)
    z = np.zeros((2, SMALL.latent_dim), "float32")
    hx = disc.trunks["image"](x, training=True)
    hz = disc.trunks["latent"](z, training=True)
    logits = disc.head(tf.concat([hx, hz], axis=-1), training=True)
    assert tuple(logits.shape) == (2, 2)
    assert disc.head_input_width == hx.shape[-1] + hz.shape[-1]


def test_head_width_doubles_for_gali8():
    d2 = nets.build_discriminator(SMALL, ("image", "latent"), num_classes=2)
    d8 = nets.build_discriminator(SMALL, ("image", "latent", "image", "latent"), 8)
    assert d8.head_input_width == 2 * d2.head_input_width
    assert d8.head.input_shape[-1] == 2 * d2.head.input_shape[-1]
    x = _images(SMALL, batch=2)
    z = np.zeros((2, SMALL.latent_dim), "float32")
    assert tuple(d8([x, z, x, z]).shape) == (2, 8)


@pytest.mark.parametrize(
    "cfg, needle",
    [
        (NetworkConfig(arch="svhn32", example_shape=(16, 16, 1), latent_dim=8),
         "--image_size"),
        (NetworkConfig(arch="celeba64", example_shape=(32, 32, 3)), "--image_size"),
        (NetworkConfig(arch="small", example_shape=(18, 18, 1)), "--image_size"),
        (NetworkConfig(arch="small", example_shape=(2,)), "--arch"),
        (NetworkConfig(arch="mlp", example_shape=(8, 8, 1)), "--arch"),
        (NetworkConfig(arch="resnet"), "--arch"),
        (NetworkConfig(arch="small", latent_dim=0), "--latent_dim"),
    ],
)
def test_architecture_errors(cfg, needle):
    for build in (nets.build_encoder, nets.build_generator,
                  lambda c: nets.build_discriminator(c, ("image", "latent"), 2)):
        with pytest.raises(ArchitectureError) as info:
            build(cfg)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg


def test_svhn32_error_message():
    cfg = NetworkConfig(arch="svhn32", example_shape=(16, 16, 1))
    with pytest.raises(ArchitectureError, match=r"--arch=svhn32 needs 32x32 images, got 16x16x1"):
        nets.build_encoder(cfg)


@pytest.mark.parametrize("part", ["encoder", "generator", "discriminator"])
def test_checkpoint_holds_and_restores_every_weight(tmp_path, part):
    """Regression: Keras 3 layers kept in lists/dicts were invisible to tf.train.Checkpoint."""
    cfg = nets.NetworkConfig(arch="small", example_shape=(8, 8, 1), latent_dim=3, width=4)
    build = {"encoder": nets.build_encoder, "generator": nets.build_generator,
             "discriminator": lambda c: nets.build_discriminator(c, ("image", "latent"), 2)}
    source, target = build[part](cfg), build[part](cfg)
    rng = np.random.default_rng(0)
    for w in source.weights:  # includes BatchNorm moving statistics and SN's u vectors
        w.assign(rng.normal(size=w.shape).astype(w.dtype))
    path = tf.train.Checkpoint(net=source).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(net=target).restore(path).assert_consumed()
    assert len(source.weights) == len(target.weights)
    for s, t in zip(source.weights, target.weights):
        np.testing.assert_array_equal(t.numpy(), s.numpy(), err_msg=s.path)


@pytest.mark.parametrize("shape", [(8, 5, 5, 3), (16, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_computes_what_keras_batch_norm_computes(shape, training):
    x = tf.random.stateless_normal(shape, [1, 2]) * 3.0 + 1.0
    layers = [keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
              nets.BatchNormalization(momentum=0.9, epsilon=1e-5)]
    for layer in layers:
        layer.build(shape)
        for i, weight in enumerate(layer.weights):
            weight.assign(np.random.RandomState(i).uniform(0.5, 1.5, weight.shape))
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x, training=training)))
        results.append([layer(x, training=False)] + tape.gradient(
            loss, [x, layer.gamma, layer.beta]) + [layer.moving_mean, layer.moving_variance])
    keras_values, fused_values = results
    for name, expected, got in zip(["y", "dx", "dgamma", "dbeta", "moving mean",
                                    "moving variance"], keras_values, fused_values):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5,
                                   atol=5e-5, err_msg=name)
    # The fused kernel ran (its op is in the graph), not Keras' path.
    graph = tf.function(lambda t: layers[1](t, training=training)).get_concrete_function(
        tf.TensorSpec(shape)).graph
    assert any(op.type == "FusedBatchNormV3" for op in graph.get_operations())


def test_synchronized_batch_norm_keeps_keras_cross_replica_statistics():
    layer = nets.BatchNormalization(synchronized=True)
    layer.build((4, 3, 3, 2))
    graph = tf.function(lambda t: layer(t, training=True)).get_concrete_function(
        tf.TensorSpec((4, 3, 3, 2))).graph
    assert not any(op.type == "FusedBatchNormV3" for op in graph.get_operations())
