"""Encoder E, generator G and discriminator D for each architecture.

Architectures (ALI paper appendix tables; the official GALI code for SVHN):

- ``svhn32``   ALI Table 4, 32x32xC images (latent 256 in the papers).
- ``celeba64`` ALI Table 5, 64x64xC images (latent 512 in the papers).
- ``small``    a width-scalable conv net for HxW images with H, W divisible by 4
               (the digits default and the tests).
- ``mlp``      the 25-Gaussian toy of ALI section 4.5, vectors of shape (D,).

E and G use conv (no bias) -> BatchNorm -> LeakyReLU hidden blocks; D uses spectral
normalisation on every layer and no BatchNorm or dropout. Weights are initialised
N(0, 0.01) and biases 0, as in the papers. BatchNorm uses momentum 0.9 and epsilon
1e-5, PyTorch's defaults, which the official code runs with.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import tensorflow as tf
import numpy as np
from keras import ops

from gali_tf.errors import InputError

ARCHITECTURES = ("svhn32", "celeba64", "small", "mlp")
SLOT_KINDS = ("image", "latent", "feature")

_IMAGE_SIZES = {"svhn32": 32, "celeba64": 64}


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    arch: str = "small"
    # (H, W, C) for image architectures; (D,) for "mlp".
    example_shape: tuple[int, ...] = (16, 16, 1)
    latent_dim: int = 64
    # Base width of the "small" conv set; every layer of it scales with this.
    width: int = 16
    # Hidden width of the "mlp" architecture.
    mlp_hidden: int = 400
    # LeakyReLU negative slope everywhere (official: 0.01 SVHN, 0.02 CelebA).
    leaky_slope: float = 0.01
    # False gives the deterministic BiGAN encoder (outputs mu only).
    stochastic_encoder: bool = True
    # Synchronised BatchNorm in E and G; set it under a multi-replica strategy, where
    # per-replica statistics diverge.
    synchronized_bn: bool = False
    # > 0: D gets a D_y MLP trunk for feature vectors of this size (GALI-PT).
    feature_dim: int = 0
    # > 0: conditional ALI (ALI 4.4): a fully observed y of this size (one-hot class,
    # CelebA's 40 attributes) is embedded linearly into `condition_embedding` units in
    # each of E (next to its last hidden layer), G (next to z) and D (next to the trunks).
    condition_dim: int = 0
    condition_embedding: int = 64
    # > 0: semi-supervised ALI (ALI 4.3): D splits the first tuple class into this many
    # label classes (K + n - 1 outputs for n tuple classes).
    label_classes: int = 0


class ArchitectureError(InputError):
    """A network configuration that cannot be built; the message is one line naming a flag."""


# --------------------------------------------------------------------------- helpers


def _kernel_init():
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def validate_config(cfg: NetworkConfig) -> None:
    """Raises ArchitectureError if `cfg` cannot be built."""
    if cfg.arch not in ARCHITECTURES:
        raise ArchitectureError(
            f"--arch={cfg.arch} is unknown; choose one of {', '.join(ARCHITECTURES)}")
    if int(cfg.latent_dim) < 1:
        raise ArchitectureError(f"--latent_dim must be >= 1, got {cfg.latent_dim}")
    if int(cfg.feature_dim) < 0:
        raise ArchitectureError(f"--feature_dim must be >= 0, got {cfg.feature_dim}")
    if int(cfg.condition_dim) < 0 or int(cfg.label_classes) < 0:
        raise ArchitectureError("condition_dim and label_classes must be >= 0, got "
                                f"{cfg.condition_dim}, {cfg.label_classes}")
    if int(cfg.condition_dim) > 0 and int(cfg.condition_embedding) < 1:
        raise ArchitectureError(
            f"--condition_embedding must be >= 1, got {cfg.condition_embedding}")
    shape = tuple(int(s) for s in cfg.example_shape)
    if any(s < 1 for s in shape):
        raise ArchitectureError(
            f"--arch={cfg.arch} got an example shape with a zero dimension: {shape}")
    if cfg.arch == "mlp":
        if len(shape) != 1:
            raise ArchitectureError(
                f"--arch=mlp needs vectors of shape (D,), got {_shape_str(shape)} examples "
                "(use --arch=small, svhn32 or celeba64 for images)")
        if int(cfg.mlp_hidden) < 1:
            raise ArchitectureError(f"--mlp_hidden must be >= 1, got {cfg.mlp_hidden}")
        return
    if len(shape) != 3:
        raise ArchitectureError(
            f"--arch={cfg.arch} needs images of shape (H, W, C), got {_shape_str(shape)} "
            "examples (use --arch=mlp for vectors)")
    h, w, _ = shape
    if cfg.arch in _IMAGE_SIZES:
        size = _IMAGE_SIZES[cfg.arch]
        if (h, w) != (size, size):
            raise ArchitectureError(
                f"--arch={cfg.arch} needs {size}x{size} images, got {_shape_str(shape)} "
                f"(use --image_size={size} or --arch=small)")
    else:  # small
        if h % 4 or w % 4:
            raise ArchitectureError(
                f"--arch=small needs an image size divisible by 4, got {_shape_str(shape)} "
                "(change --image_size)")
        if int(cfg.width) < 1:
            raise ArchitectureError(f"--width must be >= 1, got {cfg.width}")


class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization computed by TensorFlow's fused kernel where it can be.

    Keras 3 builds batch norm from separate ops (moments: Mean, SquaredDifference, ...;
    the normalisation: Sub, Mul, RealDiv, ...; as many again in the gradient), which
    took about a quarter of the digits step's op time on a 2-core CPU. FusedBatchNormV3
    (oneDNN's kernel on CPUs, cuDNN's on GPUs, and XLA compiles it) is one op each way.
    Same variables, statistics and float32 arithmetic as Keras' layer: the fused
    kernel's batch variance carries Bessel's correction, undone here, so the moving
    variance is Keras' (the biased batch variance). Synchronised BN (several replicas),
    masks, renorm and other axes take Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        if (self.synchronized or mask is not None or self.renorm or rank not in (2, 4)
                or self.axis not in (-1, rank - 1) or not (self.scale and self.center)):
            return super().call(inputs, training=training, mask=mask)
        # As Keras' layer: float32 statistics whatever the compute dtype.
        x = tf.cast(inputs, tf.float32)
        if rank == 2:
            x = x[:, None, None, :]
        gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=empty, variance=empty,
                epsilon=self.epsilon, data_format="NHWC", is_training=True)
            count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum
                                    + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum
                                        + variance * (1.0 - self.momentum))
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        if rank == 2:
            y = y[:, 0, 0, :]
        return tf.cast(y, self.compute_dtype)


def _bn(cfg: NetworkConfig):
    return BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=cfg.synchronized_bn)


def _lrelu(cfg: NetworkConfig):
    return keras.layers.LeakyReLU(negative_slope=cfg.leaky_slope)


class Conv2D(keras.layers.Conv2D):
    """Conv2D that runs as one matmul when its window covers the whole input.

    A "valid" KxK conv on a KxK input (the last conv of svhn32/celeba64 E and D_x)
    is a dense layer on the flattened input. Same kernel variable and the same
    function, but XLA's CPU convolution emitter is slow for it (its input gradient,
    a conv of a 1x1 map padded by K-1, cost ~100 ms per batch of 100 against ~4 ms as
    a matmul; see benchmarks/train_step.py).
    """

    def convolution_op(self, inputs, kernel):
        kh, kw, cin, cout = kernel.shape
        if (self.padding == "valid" and self.data_format == "channels_last"
                and tuple(self.dilation_rate) == (1, 1)
                and tuple(inputs.shape[1:3]) == (kh, kw)):
            flat = ops.reshape(inputs, (-1, kh * kw * cin))
            out = ops.matmul(flat, ops.reshape(ops.cast(kernel, flat.dtype), (kh * kw * cin, cout)))
            return ops.reshape(out, (-1, 1, 1, cout))
        return super().convolution_op(inputs, kernel)


class Conv2DTranspose(keras.layers.Conv2DTranspose):
    """Conv2DTranspose that runs as one matmul on a 1x1 input (G's first layer).

    out[b, i, j, o] = sum_c z[b, c] * kernel[i, j, o, c] for a "valid" transposed conv
    of a 1x1 map, whatever the stride: XLA's CPU emitter took ~45 ms for it where the
    matmul takes a few.
    """

    def call(self, inputs):
        kh, kw, cout, cin = self.kernel.shape
        if (self.padding != "valid" or self.data_format != "channels_last"
                or tuple(inputs.shape[1:3]) != (1, 1) or self.output_padding is not None
                or tuple(self.dilation_rate) != (1, 1)):
            return super().call(inputs)
        kernel = ops.cast(self.kernel, inputs.dtype)
        matrix = ops.reshape(ops.transpose(kernel, (3, 0, 1, 2)), (cin, kh * kw * cout))
        out = ops.reshape(ops.matmul(ops.reshape(inputs, (-1, cin)), matrix),
                          (-1, kh, kw, cout))
        if self.use_bias:
            out = ops.add(out, ops.cast(self.bias, out.dtype))
        return self.activation(out) if self.activation is not None else out


def _conv(filters, kernel, stride=1, padding="valid", use_bias=False, transpose=False):
    cls = Conv2DTranspose if transpose else Conv2D
    return cls(filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
               kernel_initializer=_kernel_init(), bias_initializer="zeros")


def _dense(units, use_bias=False):
    return keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=_kernel_init(),
                              bias_initializer="zeros")


def _apply(layers, x, training):
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            x = layer(x, training=training)
        else:
            x = layer(x)
    return x


class _CheckpointedSublayers:
    """Puts every Keras-tracked sublayer into tf.train.Checkpoint's object graph.

    Keras 3 tracks layers held in lists and dicts (our blocks, D's trunks) for its
    own `weights`, but TensorFlow's checkpoint graph does not see them: without this,
    a checkpoint of E holds none of its kernels or BatchNorm statistics. Children
    are keyed by position ("layer3"), which construction order fixes, not by the
    process-global Keras layer names.
    """

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        sublayers = self._flatten_layers(include_self=False, recursive=False)
        for index, layer in enumerate(sublayers):
            children.setdefault(f"layer{index}", layer)
        return children


def _condition_embedding(cfg: NetworkConfig):
    """The linear embedding of y in E and G (ALI 4.4), or None for unconditional nets."""
    if not int(cfg.condition_dim):
        return None
    return _dense(int(cfg.condition_embedding), use_bias=True)


def _with_condition(h, embedding, condition):
    """Concatenates the embedding of `condition` to h on the channel axis, broadcast
    over h's spatial positions when h is a feature map."""
    if embedding is None:
        return h
    if condition is None:
        raise ValueError("this network is conditional: pass condition=y "
                         "([batch, condition_dim])")
    e = ops.cast(embedding(condition), h.dtype)
    if len(h.shape) == 4:
        e = ops.tile(ops.reshape(e, (-1, 1, 1, e.shape[-1])), (1, h.shape[1], h.shape[2], 1))
    return ops.concatenate([h, e], axis=-1)


# --------------------------------------------------------------------------- encoder


class Encoder(_CheckpointedSublayers, keras.Model):
    """x -> (mu, log_sigma), each [B, latent_dim].

    Deterministic-encoder output: `call` always returns a 2-tuple. When
    `stochastic` is False it is `(mu, None)`. Keras accepts a None output in eager
    calls, under tf.function and GradientTape, but NOT in `Model.predict` or when
    called on a symbolic `keras.Input`; use `enc(x, training=False)[0]` in a hand-built
    tf.function/tf.Module instead. A stochastic encoder works everywhere.

    `features(x)` is ALI section 4.3's SVM representation:
    concat(flatten of the last three hidden activations, flatten of the final
    layer's raw output, i.e. mu and log_sigma before the split).

    Conditional (cfg.condition_dim > 0, ALI 4.4): E(x, y) concatenates a linear
    embedding of y to the last hidden layer before the output layer (as the official
    ALI code does); pass `condition=y` to every call.
    """

    def __init__(self, cfg: NetworkConfig, hidden_blocks, output_layers, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.stochastic = bool(cfg.stochastic_encoder)
        self.latent_dim = int(cfg.latent_dim)
        # Each block ends with an activation whose output is a "hidden layer" for features.
        self.hidden_blocks = [list(b) for b in hidden_blocks]
        self.output_layers = list(output_layers)
        self._flatten = keras.layers.Flatten()
        # Assigned last (None when unconditional), so unconditional checkpoints keep
        # their layer positions.
        self.condition_embedding = _condition_embedding(cfg)

    def _forward(self, x, training, condition=None):
        hiddens = []
        h = x
        for block in self.hidden_blocks:
            h = _apply(block, h, training)
            hiddens.append(h)
        h = _with_condition(h, self.condition_embedding, condition)
        out = self._flatten(_apply(self.output_layers, h, training))
        return hiddens, out

    def call(self, x, training=False, condition=None):
        _, out = self._forward(x, training, condition)
        if not self.stochastic:
            return out, None
        return out[:, : self.latent_dim], out[:, self.latent_dim:]

    def features(self, x, training=False, condition=None):
        """[B, F] SVM features; F = sum of the last three hidden widths + output width."""
        hiddens, out = self._forward(x, training, condition)
        parts = [self._flatten(h) for h in hiddens[-3:]] + [out]
        return ops.concatenate(parts, axis=-1)

    def feature_width(self) -> int:
        """The documented width of `features`: last three hidden sizes + the output size."""
        shape = (1,) + tuple(self.cfg.example_shape)
        widths = []
        for block in self.hidden_blocks:
            for layer in block:
                shape = layer.compute_output_shape(shape)
            widths.append(int(np.prod(shape[1:])))
        out_units = (2 if self.stochastic else 1) * self.latent_dim
        return sum(widths[-3:]) + out_units


def build_encoder(cfg: NetworkConfig) -> Encoder:
    validate_config(cfg)
    c = cfg
    out_units = (2 if c.stochastic_encoder else 1) * c.latent_dim

    def conv_block(filters, kernel, stride=1, padding="valid"):
        return [_conv(filters, kernel, stride, padding), _bn(c), _lrelu(c)]

    def dense_block(units, flatten=False):
        pre = [keras.layers.Flatten()] if flatten else []
        return pre + [_dense(units), _bn(c), _lrelu(c)]

    if c.arch == "svhn32":
        hidden = [conv_block(32, 5), conv_block(64, 4, 2), conv_block(128, 4),
                  conv_block(256, 4, 2), conv_block(512, 4), conv_block(512, 1)]
        output = [_conv(out_units, 1, use_bias=True)]
    elif c.arch == "celeba64":
        hidden = [conv_block(64, 2), conv_block(128, 7, 2), conv_block(256, 5, 2),
                  conv_block(256, 7, 2), conv_block(512, 4)]
        output = [_conv(out_units, 1, use_bias=True)]
    elif c.arch == "small":
        w = c.width
        hidden = [conv_block(w, 3, 1, "same"), conv_block(2 * w, 4, 2, "same"),
                  conv_block(4 * w, 4, 2, "same"), dense_block(8 * w, flatten=True)]
        output = [_dense(out_units, use_bias=True)]
    else:  # mlp
        hidden = [dense_block(c.mlp_hidden), dense_block(c.mlp_hidden)]
        output = [_dense(out_units, use_bias=True)]
    enc = Encoder(cfg, hidden, output, name="encoder")
    enc(ops.zeros((1,) + tuple(cfg.example_shape)), training=False,  # build
        condition=_zero_condition(cfg))
    return enc


def _zero_condition(cfg: NetworkConfig):
    return ops.zeros((1, int(cfg.condition_dim))) if int(cfg.condition_dim) else None


# --------------------------------------------------------------------------- generator


class Generator(_CheckpointedSublayers, keras.Model):
    """z [B, latent_dim] -> examples [B, *example_shape].

    Image archs: tanh(h + output_bias), h the last (bias-free, linear) conv and
    output_bias a per-pixel trainable bias of shape example_shape. "mlp": linear output.
    Conditional (cfg.condition_dim > 0): G(z, y) reads concat(z, linear embedding of y);
    pass `condition=y`.
    """

    def __init__(self, cfg: NetworkConfig, input_layers, body_layers, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.is_image = cfg.arch != "mlp"
        self.input_layers = list(input_layers)
        self.body_layers = list(body_layers)
        if self.is_image:
            self.output_bias = self.add_weight(
                shape=tuple(int(s) for s in cfg.example_shape), initializer="zeros",
                trainable=True, name="output_bias")
        else:
            self.output_bias = None
        self.condition_embedding = _condition_embedding(cfg)

    def call(self, z, training=False, condition=None):
        z = _with_condition(z, self.condition_embedding, condition)
        h = _apply(self.input_layers, z, training)
        h = _apply(self.body_layers, h, training)
        if not self.is_image:
            return h
        return ops.tanh(h + ops.cast(self.output_bias, h.dtype))

    def set_output_bias_from_images(self, images) -> None:
        """Log-odds init: b = 0.5 * logit(clip(mean_batch((x + 1) / 2), 1e-3, 1 - 1e-3)).

        0.5 because tanh(b) = 2 sigmoid(2b) - 1, so tanh(b) is then the mean image in
        [-1, 1]. `images` are in [-1, 1] with any batch size. A no-op for "mlp".
        """
        if not self.is_image:
            return
        images = ops.convert_to_tensor(images, dtype="float32")
        p = ops.clip(ops.mean((images + 1.0) / 2.0, axis=0), 1e-3, 1.0 - 1e-3)
        bias = 0.5 * ops.log(p / (1.0 - p))
        self.output_bias.assign(ops.cast(bias, self.output_bias.dtype))


def build_generator(cfg: NetworkConfig) -> Generator:
    validate_config(cfg)
    c = cfg

    def convt_block(filters, kernel, stride=1, padding="valid"):
        return [_conv(filters, kernel, stride, padding, transpose=True), _bn(c), _lrelu(c)]

    def conv_block(filters, kernel, padding="valid"):
        return [_conv(filters, kernel, 1, padding), _bn(c), _lrelu(c)]

    def dense_block(units):
        return [_dense(units), _bn(c), _lrelu(c)]

    shape = tuple(int(s) for s in c.example_shape)
    # G's input: z, or concat(z, embedding of y) when conditional.
    in_dim = c.latent_dim + (c.condition_embedding if c.condition_dim else 0)
    if c.arch == "svhn32":
        ch = shape[-1]
        inp = [keras.layers.Reshape((1, 1, in_dim))]
        body = (convt_block(256, 4) + convt_block(128, 4, 2) + convt_block(64, 4)
                + convt_block(32, 4, 2) + convt_block(32, 5) + conv_block(32, 1)
                + [_conv(ch, 1)])
    elif c.arch == "celeba64":
        ch = shape[-1]
        inp = [keras.layers.Reshape((1, 1, in_dim))]
        body = (convt_block(512, 4) + convt_block(256, 7, 2) + convt_block(256, 5, 2)
                + convt_block(128, 7, 2) + convt_block(64, 2) + [_conv(ch, 1)])
    elif c.arch == "small":
        h, w, ch = shape
        width = c.width
        inp = dense_block((h // 4) * (w // 4) * 4 * width) + [
            keras.layers.Reshape((h // 4, w // 4, 4 * width))]
        body = (convt_block(2 * width, 4, 2, "same") + convt_block(width, 4, 2, "same")
                + [_conv(ch, 3, 1, "same")])
    else:  # mlp
        inp = []
        body = []
        for _ in range(4):
            body += dense_block(c.mlp_hidden)
        body.append(_dense(shape[0], use_bias=True))
    gen = Generator(cfg, inp, body, name="generator")
    out = gen(ops.zeros((1, c.latent_dim)), training=False,  # build
              condition=_zero_condition(c))
    if tuple(out.shape[1:]) != shape:  # guards the tables' size arithmetic
        raise ArchitectureError(
            f"--arch={c.arch} generator produced {_shape_str(out.shape[1:])}, "
            f"expected {_shape_str(shape)}")
    return gen


# --------------------------------------------------------------------------- discriminator


class SpectralNormalization(keras.layers.SpectralNormalization):
    """Spectral normalisation as a reparameterisation (Miyato et al. 2018, eq. 8):
    the layer computes with W_SN = W / sigma(W), sigma(W) = u^T W v.

    u and v come from one power iteration per training call (u is kept between calls,
    v is recomputed from it) and are constants for the gradient, but sigma is not: the
    gradient w.r.t. W is (dL/dW_SN - <dL/dW_SN, W_SN> u v^T) / sigma (Miyato eq. 12),
    whose second term keeps the top singular direction from taking over the layer. This
    is what torch.nn.utils.spectral_norm computes (the PyTorch peer uses it).

    Keras' own layer instead writes W / sigma into the kernel before each call and takes
    the gradient w.r.t. that kernel, a projection without the second term. With it,
    whatever direction the loss keeps pushing grows and the renormalisation shrinks all
    others each step, so D's layers drift towards rank one. On digits, 300 D steps of the
    semi-supervised loss took the stable rank ||W||_F^2 / sigma_1^2 of 6 of D's 8 layers
    from 8-120 down to 1.0-1.2 (with this layer: 5-89), and that D (one "real" direction
    shared by its K label logits) stayed at chance on its own 100 labelled digits; with
    this layer it learned them in 200 steps.

    The variables are Keras' (kernel, vector_u): checkpoints written with Keras' layer
    restore, and as their kernels already have sigma close to 1, D's outputs match
    (within 1e-5 on a digits ALI run). Wraps Dense and this module's Conv2D.
    """

    def build(self, input_shape):
        if not isinstance(self.layer, (keras.layers.Dense, Conv2D)):
            raise ArchitectureError(f"SpectralNormalization wraps Dense or Conv2D layers, "
                                    f"got {type(self.layer).__name__}")
        super().build(input_shape)

    def _singular_vectors(self, weights, training):
        u = _unit(self.vector_u.value)  # Keras initialises it unnormalised
        v = _unit(ops.matmul(u, ops.transpose(weights)))
        if training:  # one power iteration per training call; u is stored for the next
            u = _unit(ops.matmul(v, weights))
            self.vector_u.assign(u)
        return ops.stop_gradient(u), ops.stop_gradient(v)

    def normalized_kernel(self, training=False):
        """W / sigma(W), differentiable w.r.t. W (sigma included)."""
        weights = ops.reshape(self.kernel, (-1, self.kernel_shape[-1]))
        u, v = self._singular_vectors(weights, training)
        sigma = ops.sum(ops.matmul(v, weights) * u)
        return ops.divide(self.kernel, sigma)

    def call(self, inputs, training=False):
        layer = self.layer
        x = ops.cast(inputs, layer.compute_dtype)
        kernel = ops.cast(self.normalized_kernel(training), layer.compute_dtype)
        if isinstance(layer, Conv2D):
            out = layer.convolution_op(x, kernel)
        else:
            out = ops.matmul(x, kernel)
        if layer.use_bias:  # channels-last: the bias broadcasts over the last axis
            out = ops.add(out, ops.cast(layer.bias, out.dtype))
        if layer.activation is not None:
            out = layer.activation(out)
        return ops.cast(out, inputs.dtype)


def _unit(x):
    return x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-12)


def _sn(layer):
    # float32 wrapper: under a mixed-precision policy the power iteration, the vector u
    # and sigma stay float32 (in bfloat16 sigma would be off by up to ~0.4%); the
    # wrapped layer still computes in the policy's compute dtype.
    return SpectralNormalization(layer, dtype="float32")


class Discriminator(_CheckpointedSublayers, keras.Model):
    """Tuples (one tensor per slot) -> [B, num_classes] logits.

    `trunks[kind]` maps one slot's tensor to [B, width_kind] (kind in "image",
    "latent", "feature"); `head` maps the slot-order concatenation of trunk outputs
    to logits. Every Dense/Conv is spectrally normalised (`SpectralNormalization`,
    whose u only updates when called with training=True, so `training` is passed to all).

    Conditional (cfg.condition_dim > 0): D(x, z, y); `condition` is a spectrally
    normalised linear embedding of y, appended after the slots' trunk outputs, and y
    is the last element of `inputs`.
    """

    def __init__(self, cfg: NetworkConfig, slot_kinds, num_classes, trunks, head,
                 condition=None, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.slot_kinds = tuple(slot_kinds)
        self.num_classes = int(num_classes)
        self.trunks = dict(trunks)
        self.head = head
        self.trunk_widths = {k: int(t.output_shape[-1]) for k, t in trunks.items()}
        self.head_input_width = sum(self.trunk_widths[k] for k in self.slot_kinds)
        # Assigned after the head (None when unconditional): unconditional checkpoints
        # keep their layer positions.
        self.condition = condition
        if condition is not None:
            self.head_input_width += int(condition.output_shape[-1])

    def call(self, inputs, training=True):
        inputs = list(inputs)
        expected = len(self.slot_kinds) + (self.condition is not None)
        if len(inputs) != expected:
            raise ValueError(
                f"Discriminator expects {expected} inputs {self.slot_kinds}"
                f"{' + condition' if self.condition is not None else ''}, got {len(inputs)}")
        feats = [self.trunks[k](t, training=training)
                 for k, t in zip(self.slot_kinds, inputs)]
        if self.condition is not None:
            # The embedding is spectrally normalised, a float32 layer (_sn): under mixed
            # precision it joins the trunks' outputs in their compute dtype.
            feats.append(ops.cast(self.condition(inputs[-1], training=training),
                                  feats[0].dtype))
        return self.head(ops.concatenate(feats, axis=-1), training=training)


def build_discriminator(cfg: NetworkConfig, slot_kinds: Sequence[str],
                        num_classes: int) -> Discriminator:
    validate_config(cfg)
    c = cfg
    slot_kinds = tuple(slot_kinds)
    if not slot_kinds:
        raise ArchitectureError("the discriminator needs at least one slot")
    for k in slot_kinds:
        if k not in SLOT_KINDS:
            raise ArchitectureError(f"unknown slot kind {k!r}; expected one of {SLOT_KINDS}")
    if "feature" in slot_kinds and c.feature_dim < 1:
        raise ArchitectureError("feature slots need --feature_dim > 0")
    if int(num_classes) < 1:
        raise ArchitectureError(f"the discriminator needs >= 1 classes, got {num_classes}")

    def act():
        return _lrelu(c)

    def sn_conv(filters, kernel, stride=1, padding="valid"):
        return [_sn(_conv(filters, kernel, stride, padding, use_bias=True)), act()]

    def sn_dense(units):
        return [_sn(_dense(units, use_bias=True)), act()]

    def mlp(units_list, last=None):
        layers = []
        for u in units_list:
            layers += sn_dense(u)
        if last is not None:
            layers.append(_sn(_dense(last, use_bias=True)))
        return layers

    if c.arch == "svhn32":
        image = (sn_conv(32, 5) + sn_conv(64, 4, 2) + sn_conv(128, 4) + sn_conv(256, 4, 2)
                 + sn_conv(512, 4))
        latent, head, feat = [512, 512], [1024, 1024], [512, 512]
    elif c.arch == "celeba64":
        image = (sn_conv(64, 2) + sn_conv(128, 7, 2) + sn_conv(256, 5, 2)
                 + sn_conv(256, 7, 2) + sn_conv(512, 4))
        latent, head, feat = [1024, 1024], [2048, 2048], [512, 512]
    elif c.arch == "small":
        w = c.width
        image = sn_conv(w, 3, 1, "same") + sn_conv(2 * w, 4, 2, "same") + sn_conv(
            4 * w, 4, 2, "same")
        latent, head, feat = [8 * w, 8 * w], [16 * w, 16 * w], [8 * w, 8 * w]
    else:  # mlp
        hdn = c.mlp_hidden
        image = mlp([hdn, hdn])
        latent, head, feat = [hdn, hdn], [hdn], [512, 512]
    if c.arch != "mlp":
        image = image + [keras.layers.Flatten()]

    specs = {
        "image": (tuple(c.example_shape), image),
        "latent": ((c.latent_dim,), mlp(latent)),
        "feature": ((c.feature_dim,), mlp(feat)),
    }
    trunks = {}
    for kind in SLOT_KINDS:
        if kind in slot_kinds:
            shape, layers = specs[kind]
            trunks[kind] = keras.Sequential(
                [keras.Input(shape=shape)] + layers, name=f"d_{kind}")
    width = sum(int(trunks[k].output_shape[-1]) for k in slot_kinds)
    condition = None
    if int(c.condition_dim):
        condition = keras.Sequential(
            [keras.Input(shape=(int(c.condition_dim),)),
             _sn(_dense(int(c.condition_embedding), use_bias=True))], name="d_condition")
        width += int(c.condition_embedding)
    head_model = keras.Sequential(
        [keras.Input(shape=(width,))] + mlp(head, last=int(num_classes)), name="d_head")
    return Discriminator(cfg, slot_kinds, num_classes, trunks, head_model, condition,
                         name="discriminator")
