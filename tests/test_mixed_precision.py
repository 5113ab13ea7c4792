"""Mixed precision: a train step under each Keras policy on CPU, float32 where it matters."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gali_tf import data, networks, training
from gali_tf.errors import ConfigError
from gali_tf.model import GALIModel, ModelConfig, check_model_config


def _model(policy):
    config = ModelConfig(tuples="gali4", mixed_precision=policy)
    network = networks.NetworkConfig(arch="small", example_shape=(8, 8, 1), latent_dim=3,
                                     width=4)
    model = GALIModel(network, config, global_batch_size=4, total_steps=10, steps_per_epoch=5)
    model.build()
    return model


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_conditional_step_under_each_policy(policy):
    # D's condition embedding is a float32 (spectrally normalised) layer beside trunks
    # that compute in the policy's dtype: their outputs must meet in one dtype.
    config = ModelConfig(tuples="ali", mixed_precision=policy, conditional=True)
    network = networks.NetworkConfig(arch="small", example_shape=(8, 8, 1), latent_dim=3,
                                     width=4, condition_dim=10)
    model = GALIModel(network, config, global_batch_size=4, total_steps=10, steps_per_epoch=5)
    model.build()
    x = tf.random.stateless_uniform([4, 8, 8, 1], [1, 2], -1.0, 1.0)
    y = tf.one_hot([0, 1, 2, 3], 10)
    logs = tf.function(model.train_step)((x, y))
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert model.reconstruct(x, condition=y).dtype == tf.float32


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_step_under_each_policy(policy):
    model = _model(policy)
    assert keras.config.dtype_policy().name == "float32"  # not left set process-wide
    compute = policy.split("_")[1]
    assert model.encoder.hidden_blocks[0][0].compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.weights)
    # Spectral norm: the wrapper computes sigma in float32 around a mixed-precision layer.
    sn = [layer for layer in model.discriminator.trunks["image"].layers
          if isinstance(layer, networks.SpectralNormalization)]
    assert sn and all(layer.compute_dtype == "float32" and layer.vector_u.dtype == "float32"
                      and layer.layer.compute_dtype == compute for layer in sn)
    scaled = isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer) == scaled

    x = tf.random.stateless_uniform([4, 8, 8, 1], [1, 2], -1.0, 1.0)
    before = [w.numpy().copy() for w in model.discriminator.trainable_variables]
    logs = tf.function(model.train_step)(x)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert int(model.step.numpy()) == 1
    after = model.discriminator.trainable_variables
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before, after))
    assert model.reconstruct(x).dtype == tf.float32
    assert model.generate(tf.zeros([2, 3])).dtype == tf.float32


def test_unknown_policy_names_the_flag():
    with pytest.raises(ConfigError, match="--mixed_precision='float8'"):
        check_model_config(ModelConfig(mixed_precision="float8"))


def test_a_float32_checkpoint_resumes_under_mixed_float16(tmp_path):
    def config(steps, policy):
        return training.TrainConfig(
            model_dir=str(tmp_path), data=data.DataConfig(dataset="digits", image_size=8),
            network=networks.NetworkConfig(arch="small", latent_dim=3, width=4),
            model=ModelConfig(mixed_precision=policy), batch_size=50, steps=steps,
            verbose=0, jit_compile=False, image_every=0, checkpoint_every=1)
    assert training.train(config(1, "float32")).step == 1
    assert training.train(config(2, "mixed_float16")).step == 2
