"""Objectives against values worked out by hand (cf. TF-GAN losses_impl_test)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import objectives

LOG = math.log


def _logits(*rows):
    """[n, batch=1, n] logits from one row per class."""
    return tf.constant([[row] for row in rows], tf.float32)


# n = 2: class-1 tuple has p = (3/4, 1/4), class-2 tuple has p = (1/2, 1/2).
ALI_LOGITS = _logits([LOG(3.0), 0.0], [0.0, 0.0])
# n = 3: p(t_1) = (1/2, 1/4, 1/4), p(t_2) = (1/3, 1/3, 1/3), p(t_3) = (1/4, 1/4, 1/2).
THREE_LOGITS = _logits([LOG(2.0), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, LOG(2.0)])


def test_discriminator_loss_n2_is_ali():
    # -log D(x, E(x)) - log(1 - D(G(z), z)) with D = p_1: -log(3/4) - log(1/2).
    np.testing.assert_allclose(objectives.discriminator_loss(ALI_LOGITS), [-LOG(3 / 8)], rtol=1e-6)


def test_discriminator_loss_n3_weighted_two_thirds():
    # (2/3) * (-log 1/2 - log 1/3 - log 1/2) = (2/3) log 12.
    np.testing.assert_allclose(objectives.discriminator_loss(THREE_LOGITS),
                               [2 / 3 * LOG(12.0)], rtol=1e-6)


def test_product_of_terms_n2_equals_ali_non_saturating():
    # ALI eq. 4: -log(1 - D(x, E(x))) - log D(G(z), z) = -log(1/4) - log(1/2) = log 8.
    expected = -LOG(1 - 3 / 4) - LOG(1 / 2)
    np.testing.assert_allclose(objectives.product_of_terms_generator_loss(ALI_LOGITS),
                               [expected], rtol=1e-6)
    np.testing.assert_allclose(expected, LOG(8.0), rtol=1e-12)


def test_product_of_terms_n3():
    # m = 6 terms, weight 2/6: -(1/3)(2 log 1/4 + 2 log 1/3 + 2 log 1/4) = log(2304) / 3.
    np.testing.assert_allclose(objectives.product_of_terms_generator_loss(THREE_LOGITS),
                               [LOG(2304.0) / 3], rtol=1e-6)


def test_misclassification_n3():
    # -(2/3)(log(1 - 1/2) + log(1 - 1/3) + log(1 - 1/2)) = (2/3) log 6.
    np.testing.assert_allclose(objectives.misclassification_generator_loss(THREE_LOGITS),
                               [2 / 3 * LOG(6.0)], rtol=1e-6)


def test_misclassification_n2_equals_product_of_terms():
    np.testing.assert_allclose(objectives.misclassification_generator_loss(ALI_LOGITS),
                               objectives.product_of_terms_generator_loss(ALI_LOGITS), rtol=1e-6)


def test_minimax_is_minus_discriminator_loss():
    np.testing.assert_allclose(objectives.minimax_generator_loss(THREE_LOGITS),
                               -objectives.discriminator_loss(THREE_LOGITS), rtol=1e-6)


def test_misclassification_stable_when_discriminator_is_certain():
    # p_c(t_c) = 1 - e^-100: log(1 - p) must be about -100, not -inf.
    logits = _logits([100.0, 0.0], [0.0, 100.0])
    loss = objectives.misclassification_generator_loss(logits).numpy()
    np.testing.assert_allclose(loss, [200.0], rtol=1e-4)


def test_uniform_discriminator_losses():
    logits = tf.zeros([4, 3, 4])
    np.testing.assert_allclose(objectives.discriminator_loss(logits), [2 * LOG(4.0)] * 3, rtol=1e-6)
    np.testing.assert_allclose(objectives.product_of_terms_generator_loss(logits),
                               [2 * LOG(4.0)] * 3, rtol=1e-6)


def test_own_class_probabilities():
    np.testing.assert_allclose(objectives.own_class_probabilities(THREE_LOGITS),
                               [1 / 2, 1 / 3, 1 / 2], rtol=1e-6)


def test_l2_reconstruction_loss_per_example():
    target = tf.constant([[[0.0, 1.0]], [[1.0, 1.0]]])
    recon = tf.constant([[[1.0, 1.0]], [[1.0, -1.0]]])
    np.testing.assert_allclose(objectives.l2_reconstruction_loss(target, recon), [0.5, 2.0])


def test_reduce_loss_divides_by_global_batch():
    per_example = tf.constant([1.0, 2.0, 3.0])
    np.testing.assert_allclose(objectives.reduce_loss(per_example, global_batch_size=6), 1.0)


def test_generator_loss_by_name_and_unknown_name():
    np.testing.assert_allclose(objectives.generator_loss("minimax", ALI_LOGITS),
                               [LOG(3 / 8)], rtol=1e-6)
    with pytest.raises(ValueError, match="--generator_loss"):
        objectives.generator_loss("wasserstein", ALI_LOGITS)


# n = 4, one example: p(t_c) = softmax of row c.
FOUR_ROWS = np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0],
                      [-0.5, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.5]])
FOUR_LOGITS = _logits(*FOUR_ROWS.tolist())


def _log_p(rows):
    return rows - np.log(np.exp(rows).sum(-1, keepdims=True))


def test_official_code_weighting_is_the_gali4_scripts_sums_as_written():
    # The official GALI-4 script: loss_d = 0.5*CE(t0,0) + CE(t1,1) + CE(t2,2) + CE(t3,3),
    # loss_g = (1/6)*CE(t0,1) + the other 11 terms with weight 1 (operator precedence).
    log_p = _log_p(FOUR_ROWS)
    d_expected = -(0.5 * log_p[0, 0] + log_p[1, 1] + log_p[2, 2] + log_p[3, 3])
    g_terms = [(c, j) for c in range(4) for j in range(4) if j != c]
    g_expected = -sum((1 / 6 if (c, j) == (0, 1) else 1.0) * log_p[c, j] for c, j in g_terms)
    np.testing.assert_allclose(
        objectives.discriminator_loss(FOUR_LOGITS, "official_code"), [d_expected], rtol=1e-6)
    np.testing.assert_allclose(
        objectives.product_of_terms_generator_loss(FOUR_LOGITS, "official_code"),
        [g_expected], rtol=1e-6)
    # The paper's weights on the same logits: 2/4 and 2/12 on every term.
    np.testing.assert_allclose(objectives.discriminator_loss(FOUR_LOGITS),
                               [-0.5 * np.trace(log_p)], rtol=1e-6)
    np.testing.assert_allclose(objectives.product_of_terms_generator_loss(FOUR_LOGITS),
                               [-sum(log_p[c, j] for c, j in g_terms) / 6], rtol=1e-6)


def test_official_code_weighting_of_ali_and_gali8_is_a_plain_sum():
    # ALI's script adds its two terms; so does GALI-8's (all 8 and all 56 terms).
    for n in (2, 8):
        d_weights, g_weights = objectives.term_weights(n, "official_code")
        np.testing.assert_array_equal(d_weights, np.ones(n))
        np.testing.assert_array_equal(g_weights, 1.0 - np.eye(n))
    np.testing.assert_allclose(objectives.discriminator_loss(ALI_LOGITS, "official_code"),
                               objectives.discriminator_loss(ALI_LOGITS), rtol=1e-6)
    with pytest.raises(ValueError, match="--loss_weighting='x'"):
        objectives.term_weights(4, "x")
