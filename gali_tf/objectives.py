"""GALI / ALI / ALICE objectives as pure functions of discriminator logits.

Convention: ``logits`` has shape [n, batch, n]; ``logits[c, i]`` are D's n logits
for the i-th tuple of class c, and ``p = softmax(logits)``. Every function returns
per-example losses of shape [batch] (example i owns the i-th tuple of every class,
all built from the same x_i and z_i); `reduce_loss` averages them once by the
*global* batch, which is what a tf.distribute strategy needs.

Weighting (GALI appendix, "Architecture and Setup"): an objective with m log terms
is weighted by 2/m, so that ALI's discriminator and generator losses have weight 1.
`loss_weighting="official_code"` takes the official scripts' relative weights instead
(`term_weights`), the code the paper's tables came from.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

GENERATOR_LOSSES = ("product_of_terms", "minimax", "misclassification")
LOSS_WEIGHTINGS = ("paper", "official_code")


def term_weights(n: int, weighting: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """(w_D [n], w_G [n, n]): the weight of D's term -log p_c(t_c) and of E/G's term
    -log p_j(t_c) (j != c; the diagonal is 0).

    - "paper": 2/m for an objective of m terms: w_D = 2/n, w_G = 2/(n(n - 1)).
    - "official_code": the official scripts' sums as written. GALI-4 (n = 4) reads
      `0.5*CE(t_0, 0) + CE(t_1, 1) + ...` and `(1/6)*CE(t_0, 1) + CE(t_0, 2) + ...`: by
      operator precedence 2/m scales only the first term of each sum. ALI (n = 2) and
      GALI-8 (n = 8) add every term with weight 1. Under Adam a constant factor on a
      loss changes nothing, so what differs from "paper" are the terms' relative
      weights (for GALI-4: D's data term at half, E/G's term t_0 -> class 1 at 1/6)
      and their scale against added terms such as ALICE's lambda * l2.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"--loss_weighting={weighting!r}: expected one of "
                         f"{', '.join(LOSS_WEIGHTINGS)}")
    off_diagonal = 1.0 - np.eye(n)
    if weighting == "paper":
        return np.full(n, 2.0 / n), off_diagonal * 2.0 / (n * (n - 1))
    d_weights, g_weights = np.ones(n), off_diagonal
    if n == 4:
        d_weights[0] = 2.0 / n
        g_weights[0, 1] = 2.0 / (n * (n - 1))
    return d_weights, g_weights


def _own_class_log_probs(logits: tf.Tensor) -> tf.Tensor:
    """log p_c(t_c) for every class c: shape [batch, n]."""
    log_p = tf.nn.log_softmax(logits, axis=-1)                 # [n, batch, n]
    return tf.linalg.diag_part(tf.transpose(log_p, [1, 0, 2]))  # [batch, n]


def discriminator_loss(logits: tf.Tensor, weighting: str = "paper") -> tf.Tensor:
    """GALI eq. 3 (n-way cross-entropy): L_D = -(2/n) sum_c log p_c(t_c).

    For n = 2 this is ALI's discriminator loss -log D(x, E(x)) - log(1 - D(G(z), z)).
    `weighting` replaces 2/n by `term_weights`' w_D[c].
    """
    weights = tf.constant(term_weights(logits.shape[0], weighting)[0], logits.dtype)
    return -tf.reduce_sum(weights * _own_class_log_probs(logits), axis=-1)


def minimax_generator_loss(logits: tf.Tensor, weighting: str = "paper") -> tf.Tensor:
    """GALI eq. 2 for the generator-encoder: L_G = -L_D (saturates; an ablation)."""
    return -discriminator_loss(logits, weighting)


def misclassification_generator_loss(logits: tf.Tensor, weighting: str = "paper") -> tf.Tensor:
    """L_G = -(2/n) sum_c log(1 - p_c(t_c)) (GALI "Misclassification Likelihood").

    log(1 - p_c) = logsumexp_{j != c} l_j - logsumexp_j l_j, computed without
    forming 1 - p_c, which underflows when D is confident. Weighted as D's terms.
    """
    n = logits.shape[0]
    own = tf.eye(n, dtype=tf.bool)[:, None, :]                           # [n, 1, n]
    others = tf.where(own, tf.constant(-float("inf"), logits.dtype), logits)
    log_not_c = tf.reduce_logsumexp(others, axis=-1) - tf.reduce_logsumexp(logits, axis=-1)
    weights = tf.constant(term_weights(n, weighting)[0], logits.dtype)[:, None]
    return -tf.reduce_sum(weights * log_not_c, axis=0)                   # [n, b] -> [b]


def product_of_terms_generator_loss(logits: tf.Tensor, weighting: str = "paper") -> tf.Tensor:
    """GALI eq. 4: L_G = -(2/m) sum_c sum_{j != c} log p_j(t_c), m = n(n - 1).

    Every wrong class's probability is pushed up, so the gradient does not vanish
    when D rejects some classes confidently. For n = 2 this is exactly ALI's
    non-saturating loss -log(1 - D(x, E(x))) - log D(G(z), z) (ALI eq. 4).
    `weighting` replaces 2/m by `term_weights`' w_G[c, j].
    """
    weights = tf.constant(term_weights(logits.shape[0], weighting)[1], logits.dtype)
    log_p = tf.nn.log_softmax(logits, axis=-1)                        # [n, b, n]
    return -tf.einsum("cbj,cj->b", log_p, weights)


def generator_loss(name: str, logits: tf.Tensor, weighting: str = "paper") -> tf.Tensor:
    """The generator-encoder loss selected by name (one of GENERATOR_LOSSES)."""
    losses = {
        "product_of_terms": product_of_terms_generator_loss,
        "minimax": minimax_generator_loss,
        "misclassification": misclassification_generator_loss,
    }
    if name not in losses:
        raise ValueError(f"--generator_loss={name!r}: expected one of {', '.join(losses)}")
    return losses[name](logits, weighting)


# ------------------------------------------------------------ semi-supervised (ALI 4.3)
#
# Salimans et al. (2016) style: D has K + n - 1 outputs; the first tuple class (the
# data tuple (x, E(x))) is split into K label classes, the other n - 1 tuple classes
# keep one output each (for ALI: K + 1 outputs, generated pairs are class K + 1).
# Logits then have shape [n, batch, K + n - 1]; labels are int [batch], -1 = unlabelled.


def merge_label_logits(logits: tf.Tensor, num_labels: int) -> tf.Tensor:
    """[n, b, K + n - 1] -> [n, b, n]: l'_0 = logsumexp_{k<K} l_k, l'_c = l_{K+c-1} (c > 0).

    softmax(l')_0 = sum_{k<K} p_k is the probability of "real, any label", so every
    n-way objective above applies unchanged to the merged logits.
    """
    real = tf.reduce_logsumexp(logits[..., :num_labels], axis=-1, keepdims=True)
    return tf.concat([real, logits[..., num_labels:]], axis=-1)


def label_log_probs(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """log p_{y_i}(t_0,i) over all K + n - 1 outputs, shape [batch] (0 where y_i < 0)."""
    log_p = tf.nn.log_softmax(logits[0], axis=-1)                       # [b, K + n - 1]
    labels = tf.cast(labels, tf.int32)
    picked = tf.gather(log_p, tf.maximum(labels, 0), axis=-1, batch_dims=1)
    return tf.where(labels >= 0, picked, tf.zeros_like(picked))


def semi_supervised_discriminator_loss(logits: tf.Tensor, labels: tf.Tensor,
                                       num_labels: int, weighting: str = "paper") -> tf.Tensor:
    """L_D = -(2/n) [log p_{y}(t_0) if labelled else log sum_{k<K} p_k(t_0)] - (2/n) sum_{c>0} log p_{K+c-1}(t_c).

    Labelled real pairs must get their label, unlabelled real pairs any of the K
    labels, every other class (generated pairs; GALI's other chains) its own output.
    Computed as eq. 3 on the merged logits plus, for labelled examples, the swap of
    log p'_0 = log sum_k p_k for log p_y. For n = 2 the weight 2/n is 1.
    """
    merged = merge_label_logits(logits, num_labels)
    unsupervised = discriminator_loss(merged, weighting)
    log_real = _own_class_log_probs(merged)[:, 0]                       # log sum_k p_k(t_0)
    labelled = tf.cast(labels, tf.int32) >= 0
    swap = tf.where(labelled, log_real - label_log_probs(logits, labels),
                    tf.zeros_like(log_real))
    return unsupervised + float(term_weights(logits.shape[0], weighting)[0][0]) * swap


def semi_supervised_generator_loss(name: str, logits: tf.Tensor, num_labels: int,
                                   weighting: str = "paper") -> tf.Tensor:
    """The selected generator loss on the merged logits: E and G try to make D take
    real pairs for generated ones and vice versa, labels play no part (no feature
    matching, ALI 4.3)."""
    return generator_loss(name, merge_label_logits(logits, num_labels), weighting)


def label_predictions(logits: tf.Tensor, num_labels: int) -> tf.Tensor:
    """D's K-way prediction argmax_{k<K} l_k for logits [..., K + n - 1] of real pairs."""
    return tf.argmax(logits[..., :num_labels], axis=-1, output_type=tf.int32)


def l2_reconstruction_loss(target: tf.Tensor, reconstruction: tf.Tensor) -> tf.Tensor:
    """ALICE's explicit cycle term per example: mean((target - reconstruction)^2).

    On the model's own scale ([-1, 1] for images); the caller multiplies by lambda
    (official: 1.0 SVHN, 0.02 CelebA).
    """
    squared = tf.square(tf.cast(target, tf.float32) - tf.cast(reconstruction, tf.float32))
    return tf.reduce_mean(tf.reshape(squared, [tf.shape(squared)[0], -1]), axis=-1)


def own_class_probabilities(logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of p_c(t_c) for each class c: shape [n].

    What the official GALI code prints while training: how sure D is of each class.
    """
    return tf.reduce_mean(tf.exp(_own_class_log_probs(logits)), axis=0)


def reduce_loss(per_example: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """Sum of per-example losses over this replica / the global batch size.

    Under a strategy the replicas' gradients are summed, so each replica divides by
    the global batch once; no extra 1/num_replicas on top.
    """
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
