"""Exports a run's E and G: the encoder as a reusable TF Hub SavedModel, G as a SavedModel.

    export_run("runs/digits_gali4", "hub/digits_gali4")   # -> "hub/digits_gali4/<step>"

writes, from the run's latest (or a given) checkpoint, the version directory

    <step>/encoder/        reusable TF2 SavedModel (TF Hub format): __call__(images,
                           training=False) -> ALI features; signatures encode,
                           encode_uint8, serving_default; training endpoints
                           encode_training, serving_default_training (for
                           keras.layers.TFSMLayer's call_training_endpoint)
    <step>/generator/      SavedModel with signatures generate(z), reconstruct(images)
    <step>/metadata.json   variant, tuple set, shapes, value range, step, the run's flags

A conditional run (ALI 4.4) exports E(x, y) and G(z, y): every signature takes the
label vector `y` [batch, condition_dim] next to its images or z (one-hot classes, or
CelebA's 40 attributes as 0/1 in `metadata.json`'s "condition" order), and __call__
takes {"images": ..., "y": ...}.

Keras' `model.export()` writes an inference-only artifact that `hub.KerasLayer` cannot
fine-tune, so the encoder is hand-built: a `tf.train.Checkpoint` (as in the TF Hub docs)
holding the variables and tf.functions that close over the restored Keras networks.

The version is written to a hidden temp directory next to it and renamed into place
only when complete, so `<step>/` is either absent or a whole export. --overwrite moves
the old version aside first (two renames); an export killed between them leaves only
`.old-<step>-*`. `recover_versions`, run by the next export and by the loaders of
export directories, renames such a copy back and removes leftover temp directories
of exports that are no longer running (`gali_tf.exports`, where the layout and its
reader live).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Optional

import tensorflow as tf

from gali_tf import data, exports, files, run_dir, visualize
from gali_tf.errors import ConfigError
# The layout and its reader live in the library (gali_tf.exports); the writer is here.
from gali_tf.exports import (ENCODER_DIR, FORMAT, GENERATOR_DIR, TRAINING_ENDPOINTS,
                             VALUE_RANGE, recover_versions)

def _tf_variables(keras_variables):
    """The tf.Variables behind Keras 3 variables: what tf_keras/hub.KerasLayer can train."""
    out = []
    for v in keras_variables:
        value = getattr(v, "value", v)
        if not isinstance(value, tf.Variable):
            raise TypeError(f"variable {v.name} is not backed by a tf.Variable")
        out.append(value)
    return out


def _checked(images, shape):
    """Signature callers (TF Serving, C++) can bypass the input spec's shape check, and a
    wrong channel count would fail deep inside a conv: fail on the input, naming shapes."""
    return tf.ensure_shape(images, shape, name="check_input_shape")


def _encoder_outputs(encoder, images, z_noise=None, condition=None):
    """The encode signature's outputs on the z = mu (inference) path."""
    mu, log_sigma = encoder(images, training=False, condition=condition)
    stdev = tf.exp(log_sigma) if log_sigma is not None else tf.zeros_like(mu)
    noise = tf.random.normal(tf.shape(mu)) if z_noise is None else z_noise
    return {
        "z_mean": mu,
        "z_stdev": stdev,
        "z_sample": mu + stdev * noise,
        "features": encoder.features(images, training=False, condition=condition),
    }


def _encoder_training_outputs(encoder, images, condition=None):
    """encode's outputs with training=True (BatchNorm on batch statistics), for fine-tuning.

    One forward pass, where the inference path runs two (E and E.features): each
    training pass updates BatchNorm's moving averages, so two would count every batch
    twice. mu and log_sigma are the last columns of the features (E's raw output,
    `Encoder.features`). z_sample draws fresh noise: the reparameterised sample trains.
    """
    features = encoder.features(images, training=True, condition=condition)
    latent = int(encoder.latent_dim)
    raw = features[:, -latent * (2 if encoder.stochastic else 1):]
    mu = raw[:, :latent]
    stdev = tf.exp(raw[:, latent:]) if encoder.stochastic else tf.zeros_like(mu)
    return {
        "z_mean": mu,
        "z_stdev": stdev,
        "z_sample": mu + stdev * tf.random.normal(tf.shape(mu)),
        "features": features,
    }


class EncoderModule(tf.train.Checkpoint):
    """The reusable SavedModel of the encoder (TF Hub's reusable-SavedModel API).

    The Keras encoder is held by plain closures, not as a tracked attribute: only the
    variable lists and the tf.functions are saved. With condition_dim > 0 (a conditional
    run) every signature also takes y and __call__ takes {"images": ..., "y": ...}.

    `encode_training` and `serving_default_training` (exports.TRAINING_ENDPOINTS) give
    encode's and serving_default's outputs with training=True, so Keras 3's
    `TFSMLayer(call_training_endpoint=...)` fine-tunes with BatchNorm on batch
    statistics. They are attributes, not signatures: a model server must never run a
    function that updates BatchNorm's moving averages.
    """

    def __init__(self, encoder, example_shape, condition_dim: int = 0):
        super().__init__()
        self._features = encoder.features
        self._outputs = lambda images, y=None: _encoder_outputs(encoder, images, condition=y)
        self.variables = _tf_variables(encoder.variables)
        self.trainable_variables = _tf_variables(encoder.trainable_variables)
        self.regularization_losses = []  # E has no weight regularisers
        shape = tuple(int(s) for s in example_shape)
        spec = tf.TensorSpec((None,) + shape, tf.float32, name="images")
        y_specs = _condition_specs(condition_dim)
        call_spec = {"images": spec, "y": y_specs[0]} if y_specs else spec
        # Keras layers need `training` as a Python bool: trace both values.
        self.__call__.get_concrete_function(call_spec, training=False)
        self.__call__.get_concrete_function(call_spec, training=True)

        def encode(images, y=None):
            return self._outputs(_checked(images, spec.shape), y)

        self.encode = tf.function(encode, input_signature=[spec] + y_specs)

        def serving_default(images, y=None):
            return {"features": self._features(_checked(images, spec.shape), training=False,
                                               condition=y)}

        self.serving_default = tf.function(serving_default, input_signature=[spec] + y_specs)

        def encode_training(images, y=None):
            return _encoder_training_outputs(encoder, _checked(images, spec.shape), y)

        def serving_default_training(images, y=None):
            return {"features": self._features(_checked(images, spec.shape), training=True,
                                               condition=y)}

        self.encode_training = tf.function(encode_training, input_signature=[spec] + y_specs)
        self.serving_default_training = tf.function(serving_default_training,
                                                    input_signature=[spec] + y_specs)
        if len(shape) == 3:
            height, width, channels = shape

            def encode_uint8(images, y=None):
                images = _checked(images, (None, None, None, channels))
                return self._outputs(data.images_from_uint8(images, height, width), y)

            self.encode_uint8 = tf.function(encode_uint8, input_signature=[
                tf.TensorSpec((None, None, None, channels), tf.uint8, name="images")] + y_specs)

    @tf.function
    def __call__(self, images, training=False):
        if isinstance(images, dict):  # conditional: {"images": x, "y": y}
            return self._features(images["images"], training=training, condition=images["y"])
        return self._features(images, training=training)

    def signatures(self) -> dict:
        names = ["encode", "serving_default"] + (
            ["encode_uint8"] if hasattr(self, "encode_uint8") else [])
        return {name: getattr(self, name).get_concrete_function() for name in names}


def _condition_specs(condition_dim: int) -> list:
    """[the y input's spec] for a conditional run, [] otherwise."""
    if not int(condition_dim):
        return []
    return [tf.TensorSpec((None, int(condition_dim)), tf.float32, name="y")]


class GeneratorModule(tf.train.Checkpoint):
    """G's SavedModel: generate(z) and reconstruct(images) = G(mu(E(x))), inference mode;
    generate(z, y) and reconstruct(images, y) for a conditional run."""

    def __init__(self, encoder, generator, example_shape, latent_dim: int,
                 condition_dim: int = 0):
        super().__init__()
        self.variables = _tf_variables(generator.variables) + _tf_variables(encoder.variables)
        shape = tuple(int(s) for s in example_shape)
        is_image = len(shape) == 3
        y_specs = _condition_specs(condition_dim)

        def outputs(images):
            out = {"images": images}
            if is_image:
                out["images_uint8"] = visualize.to_uint8(images)
            return out

        def generate(z, y=None):
            return outputs(generator(z, training=False, condition=y))

        def reconstruct(images, y=None):
            mu, _ = encoder(_checked(images, (None,) + shape), training=False, condition=y)
            return outputs(generator(mu, training=False, condition=y))

        self.generate = tf.function(generate, input_signature=[
            tf.TensorSpec((None, int(latent_dim)), tf.float32, name="z")] + y_specs)
        self.reconstruct = tf.function(reconstruct, input_signature=[
            tf.TensorSpec((None,) + shape, tf.float32, name="images")] + y_specs)

    def signatures(self) -> dict:
        return {"generate": self.generate.get_concrete_function(),
                "reconstruct": self.reconstruct.get_concrete_function(),
                "serving_default": self.generate.get_concrete_function()}


def metadata(run: run_dir.RestoredRun, flags_text: Optional[str]) -> dict:
    """What metadata.json holds: enough to feed the modules without gali_tf."""
    record = run.record
    tuple_set = record.tuple_set
    shape = list(record.example_shape)
    condition_dim = run.condition_dim
    return {
        "format": FORMAT,
        "variant": tuple_set.name,
        "tuples": tuple_set.spec,
        "dataset": record.dataset,
        "arch": record.network.arch,
        "image_shape": shape,
        "latent_dim": record.latent_dim,
        "feature_dim": int(run.encoder.feature_width()),
        "stochastic_encoder": record.network.stochastic_encoder,
        "value_range": list(VALUE_RANGE),
        # Conditional runs: what the signatures' y holds, column by column.
        "condition": ({"dim": condition_dim, "columns": data.condition_columns(
            record.dataset, condition_dim)} if condition_dim else None),
        "step": int(run.step),
        "checkpoint": (run.checkpoint if "://" in run.checkpoint
                       else os.path.abspath(run.checkpoint)),
        "flags": flags_text.splitlines() if flags_text is not None else None,
        "signatures": {
            ENCODER_DIR: ["__call__", "encode", "serving_default"]
                         + (["encode_uint8"] if len(shape) == 3 else []),
            GENERATOR_DIR: ["generate", "reconstruct", "serving_default"],
        },
        # The encoder's fine-tuning twins (attributes, not signatures), keyed by the
        # inference endpoint they pair with in TFSMLayer(call_endpoint=key,
        # call_training_endpoint=value).
        "training_endpoints": dict(TRAINING_ENDPOINTS),
    }


def write_metadata(path: str, values: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(values, indent=2) + "\n")


def _check_finite(run: run_dir.RestoredRun) -> None:
    """Refuses to export NaN or Inf weights (a diverged run): the modules would load
    fine and then answer NaN to every caller."""
    bad = run_dir.nonfinite_variables(list(run.encoder.variables)
                                      + list(run.generator.variables))
    if bad:
        raise ConfigError(f"--checkpoint={run.checkpoint}: non-finite weights (NaN or Inf in "
                          f"{len(bad)} variables of E and G, e.g. {bad[0]}); export an "
                          "earlier checkpoint with --checkpoint=RUN/checkpoints/ckpt-<step>")


def _write_version(run: run_dir.RestoredRun, directory: str, flags_text: Optional[str]) -> None:
    """Writes the three parts of a version into `directory` (a fresh temp dir)."""
    shape = run.record.example_shape
    encoder_module = EncoderModule(run.encoder, shape, run.condition_dim)
    tf.saved_model.save(encoder_module, os.path.join(directory, ENCODER_DIR),
                        signatures=encoder_module.signatures())
    generator_module = GeneratorModule(run.encoder, run.generator, shape,
                                       run.record.latent_dim, run.condition_dim)
    tf.saved_model.save(generator_module, os.path.join(directory, GENERATOR_DIR),
                        signatures=generator_module.signatures())
    write_metadata(os.path.join(directory, files.METADATA_FILE), metadata(run, flags_text))


def _check_export_dir(export_dir: str) -> None:
    if not export_dir:
        raise ConfigError("--export_dir is empty: expected a directory for the exports")
    # A file anywhere on the path would make makedirs fail half-way with an OS error.
    path = os.path.abspath(export_dir) if "://" not in export_dir else export_dir
    while path and path not in ("/",) and not tf.io.gfile.exists(path):
        path = os.path.dirname(path)
    if path and tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
        where = "is a file" if path == os.path.abspath(export_dir) else f"is under a file ({path})"
        raise ConfigError(f"--export_dir={export_dir} {where}: expected a directory")


def export_run(model_dir: str, export_dir: str, checkpoint: Optional[str] = None,
               overwrite: bool = False, flags_text: Optional[str] = None) -> str:
    """Exports a run's checkpoint to `export_dir/<step>/` and returns that directory.

    `checkpoint` is a prefix such as RUN/checkpoints/ckpt-450 (None: the latest);
    `flags_text` defaults to RUN/flags.txt. Raises ConfigError (one line) for a bad
    run, checkpoint or export_dir, or an existing version without `overwrite`; nothing
    is written then.
    """
    _check_export_dir(export_dir)
    run = run_dir.restore_networks(model_dir, checkpoint)
    if flags_text is None:
        flags_path = os.path.join(model_dir, run_dir.FLAGS_FILE)
        if tf.io.gfile.exists(flags_path):
            with tf.io.gfile.GFile(flags_path) as f:
                flags_text = f.read()
    return export_networks(run, export_dir, overwrite=overwrite, flags_text=flags_text)


def export_networks(run: run_dir.RestoredRun, export_dir: str, overwrite: bool = False,
                    flags_text: Optional[str] = None) -> str:
    """Exports restored networks to `export_dir/<run.step>/`, atomically; returns it.

    Refuses non-finite weights; first repairs what killed exports left (`recover_versions`).
    """
    _check_export_dir(export_dir)
    _check_finite(run)
    for line in recover_versions(export_dir):
        run_dir.warn(line)
    final = os.path.join(export_dir, str(run.step))
    if tf.io.gfile.exists(final) and not overwrite:
        raise ConfigError(f"--export_dir={export_dir}: version {run.step} already exists "
                          f"({final}); pass --overwrite to replace it")
    created_export_dir = not tf.io.gfile.exists(export_dir)
    tf.io.gfile.makedirs(export_dir)
    # The owner in the names lets a later export tell a dead export's leftovers.
    owner = f"{exports.host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(export_dir, f".tmp-{run.step}-{owner}")
    old = os.path.join(export_dir, f".old-{run.step}-{owner}")
    try:
        _write_version(run, tmp, flags_text)
        files.swap_in_directory(tmp, final, old)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        if created_export_dir and not tf.io.gfile.listdir(export_dir):
            tf.io.gfile.rmtree(export_dir)
        raise
    return final
