"""GALIModel: one train step per variant, distribution equivalence, noise."""

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import networks
from gali_tf.errors import ConfigError
from gali_tf.model import (GALIModel, ModelConfig, StepNoise, check_model_config,
                           instance_noise_std)

BATCH = 4
SHAPE = (8, 8, 1)


def tiny_model(batch=BATCH, synchronized_bn=False, jit=False, **options):
    net = networks.NetworkConfig(arch="small", example_shape=SHAPE, latent_dim=3, width=4,
                                 synchronized_bn=synchronized_bn)
    model = GALIModel(net, ModelConfig(**{"mixed_precision": "float32", **options}), global_batch_size=batch,
                      total_steps=10, steps_per_epoch=5)
    model.build()
    model.compile(optimizer=None, jit_compile=jit)
    return model


def images(n=BATCH, group=1, seed=0):
    shape = (n, group, *SHAPE) if group > 1 else (n, *SHAPE)
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape), tf.float32)


def fit_steps(model, x, steps=1):
    return model.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=steps,
                     epochs=1, verbose=0).history


def snapshot(model):
    return {part: [w.numpy().copy() for w in getattr(model, part).trainable_weights]
            for part in ("encoder", "generator", "discriminator")}


@pytest.mark.parametrize("options", [
    dict(tuples="ali"), dict(tuples="alice"), dict(tuples="gali4"), dict(tuples="gali8"),
    dict(tuples="gali4", n_dis=2), dict(tuples="gali4", generator_loss="minimax"),
    dict(tuples="gali4", generator_loss="misclassification"),
    dict(tuples="gali4", loss_weighting="official_code"),
    dict(tuples="x, E(x); G(z), z; G(E(x)), E(x)"),
], ids=lambda o: "-".join(str(v) for v in o.values()))
def test_one_step_moves_every_network_and_gives_finite_losses(options):
    model = tiny_model(**options)
    before = snapshot(model)
    history = fit_steps(model, images(group=options.get("n_dis", 1)))
    after = snapshot(model)
    for part in before:
        moved = [not np.allclose(b, a) for b, a in zip(before[part], after[part])]
        assert any(moved), f"{part} did not change"
    for name in ("d_loss", "g_loss") + (("l2",) if options["tuples"] == "alice" else ()):
        assert np.isfinite(history[name][0]), name
    n = model.tuple_set.num_classes
    probs = [history[f"p{c + 1}"][0] for c in range(n)]
    assert all(0 < p < 1 for p in probs)
    assert int(model.step.numpy()) == 1
    assert int(model.d_optimizer.iterations.numpy()) == options.get("n_dis", 1)


def test_xla_compiled_step_runs():
    model = tiny_model(tuples="gali4", jit=True)
    history = fit_steps(model, images(), steps=2)
    assert np.isfinite(history["g_loss"][0]) and int(model.step.numpy()) == 2


def test_stochastic_encoder_is_reparameterised_and_deterministic_uses_mu():
    model = tiny_model()
    x = images()
    noise = StepNoise(0, tf.constant(0))
    mu, log_sigma = model.encoder(x)
    sample = model.encode_sample(x, noise)
    assert not np.allclose(sample, mu)
    np.testing.assert_allclose(model.encode_sample(x), mu)  # evaluation path: z = mu


def _copy_weights(source, target):
    for part in ("encoder", "generator", "discriminator"):
        for s, t in zip(getattr(source, part).weights, getattr(target, part).weights):
            assert s.shape == t.shape, (part, s.path, t.path)
            t.assign(s.numpy())


def test_mirrored_step_equals_single_device_step():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    single = tiny_model(tuples="gali4")
    with strategy.scope():
        mirrored = tiny_model(tuples="gali4", synchronized_bn=True)
    _copy_weights(single, mirrored)
    x = images()
    fit_steps(single, x)
    fit_steps(mirrored, x)
    for part, weights in snapshot(single).items():
        for s, m in zip(weights, snapshot(mirrored)[part]):
            np.testing.assert_allclose(m, s, rtol=1e-4, atol=1e-5, err_msg=part)


def test_replicas_draw_different_noise_that_tiles_the_global_draw():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    @tf.function
    def draw():
        return strategy.run(lambda: StepNoise(7, tf.constant(3)).normal([2, 5]))

    first, second = strategy.experimental_local_results(draw())
    assert not np.allclose(first, second)
    single = StepNoise(7, tf.constant(3)).normal([4, 5])
    np.testing.assert_allclose(np.concatenate([first, second]), single)
    # Successive draws and steps differ; the same (seed, step, draw) repeats.
    noise = StepNoise(7, tf.constant(3))
    np.testing.assert_allclose(noise.normal([4, 5]), single)
    assert not np.allclose(noise.normal([4, 5]), single)
    assert not np.allclose(StepNoise(7, tf.constant(4)).normal([4, 5]), single)


def test_instance_noise_schedules():
    linear = ModelConfig(instance_noise=0.1, noise_schedule="linear")
    np.testing.assert_allclose(instance_noise_std(linear, 0.0), 0.1)
    np.testing.assert_allclose(instance_noise_std(linear, 0.25), 0.075)
    np.testing.assert_allclose(instance_noise_std(linear, 1.0), 0.0)
    expo = ModelConfig(instance_noise=0.1, noise_schedule="exponential")
    np.testing.assert_allclose(instance_noise_std(expo, 0.5), 0.1 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(instance_noise_std(expo, 1.0), 0.1 * 0.01, rtol=1e-6)


def test_noise_follows_the_epoch_as_in_the_official_code():
    model = tiny_model(instance_noise=0.1)          # 10 steps, 5 per epoch
    fit_steps(model, images(), steps=6)             # step 6 is in epoch 2 of 2
    np.testing.assert_allclose(model._noise_std(), 0.05, rtol=1e-6)


@pytest.mark.parametrize("options, flag", [
    (dict(n_dis=0), "--n_dis"), (dict(generator_loss="hinge"), "--generator_loss"),
    (dict(loss_weighting="code"), "--loss_weighting"),
    (dict(noise_schedule="cosine"), "--noise_schedule"), (dict(learning_rate=0.0), "--learning_rate"),
    (dict(tuples="x, E(x); mask1(x), E(x)"), "--tuples"),
])
def test_bad_options_are_one_line_errors(options, flag):
    with pytest.raises(ConfigError, match=flag) as info:
        check_model_config(ModelConfig(**options))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tuple_set", ["ali", "alice"])
def test_shared_d_forward_is_fresh_against_d_before_its_step(tuple_set):
    """--d_forward=shared: D steps as with a fresh forward, and E/G step as a fresh
    forward would against D's weights before its update (D's learning rate 0 there)."""
    options = dict(tuples=tuple_set, instance_noise=0.0)   # no per-forward noise draws
    tf.keras.utils.set_random_seed(0)
    shared = tiny_model(d_forward="shared", **options)
    tf.keras.utils.set_random_seed(0)
    fresh = tiny_model(**options)
    tf.keras.utils.set_random_seed(0)
    frozen_d = tiny_model(**options)
    frozen_d.d_adam.learning_rate = 0.0
    start = snapshot(shared)
    for model in (shared, fresh):
        model.train_step(images())
    # The fresh step by hand, with D's spectral-norm vectors put back after D's step:
    # the second forward's power iteration must not move them either.
    noise = StepNoise(frozen_d.config.seed, frozen_d.step)
    tape = tf.GradientTape()
    with tape:
        values = frozen_d.chain_values(images(), noise)
    vectors = frozen_d.discriminator.non_trainable_weights
    saved = [v.numpy() for v in vectors]
    frozen_d._discriminator_step(values, noise, frozen_d._noise_std())
    for variable, value in zip(vectors, saved):
        variable.assign(value)
    frozen_d._generator_step(tape, values, noise, frozen_d._noise_std())
    after = snapshot(shared)
    for part in ("encoder", "generator", "discriminator"):
        assert any(not np.allclose(a, b) for a, b in zip(start[part], after[part])), part
    for a, b in zip(after["discriminator"], snapshot(fresh)["discriminator"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for part in ("encoder", "generator"):
        for a, b in zip(after[part], snapshot(frozen_d)[part]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # ... and not as the fresh forward against the updated D.
    assert any(not np.allclose(a, b, rtol=1e-5, atol=1e-6)
               for a, b in zip(after["generator"], snapshot(fresh)["generator"]))


def test_unknown_d_forward_is_refused():
    with pytest.raises(ConfigError, match="--d_forward='once': expected one of fresh, shared"):
        check_model_config(ModelConfig(d_forward="once"))
