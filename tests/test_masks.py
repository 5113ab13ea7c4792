"""Masks and the GALI-mix operators: distribution, mix, XLA, once per step, replicas."""

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import masks, networks, tuples
from gali_tf.errors import ConfigError
from gali_tf.model import GALIModel, ModelConfig, StepNoise, check_model_config

H, W = 6, 5


def _boxes(mask):
    """(y, x, h, w) of each rectangular hole, read back from the mask."""
    m = mask[..., 0].numpy()
    rows, cols = m.any(axis=2), m.any(axis=1)
    y, x = rows.argmax(axis=1), cols.argmax(axis=1)
    return y, x, rows.sum(axis=1), cols.sum(axis=1)


def test_mask_distribution():
    n = 20_000
    mask = masks.sample_masks(StepNoise(1, tf.constant(0)), (n, H, W, 3))
    assert mask.shape == (n, H, W, 1)
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    y, x, h, w = _boxes(mask)
    # Every hole is non-empty, inside the image and an exact h x w rectangle.
    assert (h >= 1).all() and (w >= 1).all()
    assert (y + h <= H).all() and (x + w <= W).all()
    np.testing.assert_array_equal(mask.numpy().sum(axis=(1, 2, 3)), h * w)
    # Marginals: h ~ U{1..H}, w ~ U{1..W}; y | h ~ U{0..H-h}, x | w ~ U{0..W-w}.
    assert set(h) == set(range(1, H + 1)) and set(w) == set(range(1, W + 1))
    for value, size in ((h, H), (w, W)):
        counts = np.bincount(value, minlength=size + 1)[1:] / n
        np.testing.assert_allclose(counts, 1 / size, atol=0.015)
    expected_y = np.mean([(H - k) / 2 for k in range(1, H + 1)])   # E[y] = E[(H-h)/2]
    expected_x = np.mean([(W - k) / 2 for k in range(1, W + 1)])
    assert abs(y.mean() - expected_y) < 0.05 and abs(x.mean() - expected_x) < 0.05
    for k in range(1, H + 1):   # the corner range depends on h (not on w: the official bug)
        assert set(y[h == k]) == set(range(0, H - k + 1))
    for k in range(1, W + 1):
        assert set(x[w == k]) == set(range(0, W - k + 1))


def test_apply_mask_and_mix():
    images = tf.random.stateless_uniform([2, H, W, 3], [0, 1], -1, 1)
    filler = tf.random.stateless_uniform([2, H, W, 3], [0, 2], -1, 1)
    mask = masks.box_masks(2, H, W, x=1, y=2, w=3, h=2)
    hole = np.broadcast_to(mask.numpy() > 0, images.shape)
    masked = masks.apply_mask(images, mask, fill=-1.0).numpy()
    np.testing.assert_array_equal(masked[hole], -1.0)
    np.testing.assert_array_equal(masked[~hole], images.numpy()[~hole])
    mixed = masks.mix(images, mask, filler).numpy()
    np.testing.assert_array_equal(mixed[hole], filler.numpy()[hole])
    np.testing.assert_array_equal(mixed[~hole], images.numpy()[~hole])


def test_mask_sampling_compiles_with_xla():
    @tf.function(jit_compile=True)
    def draw(step):
        return masks.sample_masks(StepNoise(3, step), (64, H, W, 1))

    compiled = draw(tf.constant(5))
    y, x, h, w = _boxes(compiled)
    assert (h >= 1).all() and (y + h <= H).all() and (x + w <= W).all()
    np.testing.assert_array_equal(compiled.numpy().sum(axis=(1, 2, 3)), h * w)
    np.testing.assert_array_equal(draw(tf.constant(5)), compiled)      # deterministic
    assert not np.array_equal(draw(tf.constant(6)), compiled)          # fresh per step
    # (XLA's stateless RNG gives other numbers than the non-XLA kernels for the same
    # seed, so a compiled draw is not compared with an eager one.)


def test_replicas_draw_different_masks_that_tile_the_global_draw():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    @tf.function
    def draw():
        return strategy.run(lambda: masks.sample_masks(StepNoise(7, tf.constant(3)),
                                                       (16, H, W, 1)))

    first, second = strategy.experimental_local_results(draw())
    assert not np.array_equal(first, second)
    single = masks.sample_masks(StepNoise(7, tf.constant(3)), (32, H, W, 1))
    np.testing.assert_array_equal(np.concatenate([first, second]), single)


SHAPE = (8, 8, 1)


def tiny_model(tuples_name, **options):
    net = networks.NetworkConfig(arch="small", example_shape=SHAPE, latent_dim=3, width=4)
    model = GALIModel(net, ModelConfig(tuples=tuples_name, mixed_precision="float32", **options), global_batch_size=4,
                      total_steps=10, steps_per_epoch=5)
    model.build()
    model.compile(optimizer=None, jit_compile=False)
    return model


def images(n=4):
    return tf.constant(np.random.default_rng(0).uniform(-1, 1, (n, *SHAPE)), tf.float32)


def test_mix_node_is_original_outside_and_reconstruction_inside():
    model = tiny_model("gali_mix", mask_fill=0.5)
    x = images()
    values = model.chain_values(x, StepNoise(0, tf.constant(0)))
    hole = np.broadcast_to(values["mask1"].numpy() > 0, x.shape)
    assert hole.any() and (~hole).any()
    mixed = values["mix1(x)"].numpy()
    np.testing.assert_array_equal(mixed[~hole], x.numpy()[~hole])
    np.testing.assert_array_equal(mixed[hole], values["G(E(mask1(x)))"].numpy()[hole])
    np.testing.assert_array_equal(values["mask1(x)"].numpy()[hole], 0.5)
    # mask4 is a different sample from mask1, applied to mix1(x).
    assert not np.array_equal(values["mask4"], values["mask1"])


def test_gali_mix_step_samples_each_mask_once(monkeypatch):
    calls = []
    sample = masks.sample_masks
    monkeypatch.setattr(masks, "sample_masks",
                        lambda noise, shape: calls.append(tuple(shape)) or sample(noise, shape))
    model = tiny_model("gali_mix")
    values = model.chain_values(images(), StepNoise(0, tf.constant(0)))
    assert len(calls) == 4 and {k for k in values if k.startswith("mask") and "(" not in k} == {
        "mask1", "mask2", "mask3", "mask4"}
    calls.clear()
    history = model.fit(tf.data.Dataset.from_tensors(images()).repeat(), steps_per_epoch=2,
                        epochs=1, verbose=0).history
    assert len(calls) == 4          # one trace of the train step: four mask draws
    assert model.tuple_set.num_classes == 8
    assert np.isfinite(history["g_loss"]).all() and np.isfinite(history["d_loss"]).all()


@pytest.mark.parametrize("name", ["ali_mask", "alice_mask", "gali4_mask", "gali_mix"])
def test_masked_tuple_sets_type_check(name):
    tuple_set = check_model_config(ModelConfig(tuples=name))
    assert "mask" in tuple_set.operator_families()
    assert tuples.parse_tuple_set(tuple_set.spec).spec == tuple_set.spec


@pytest.mark.parametrize("options, flag", [
    (dict(tuples="x, E(x); mask1(x), E(x)"), "--tuples"),          # D would see the hole
    (dict(tuples="x, E(x); G(z), z; l2: x, mask1(x)"), "--tuples"),
    (dict(tuples="x, E(x), M(x); G(z), z, M(G(E(mask1(x))))"), "--tuples"),  # M: another issue
    (dict(tuples="gali_mix", mask_fill=2.0), "--mask_fill"),
])
def test_bad_mask_options(options, flag):
    with pytest.raises(ConfigError, match=flag) as info:
        check_model_config(ModelConfig(**options))
    assert "\n" not in str(info.value)
