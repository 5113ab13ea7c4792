"""One keras.Model for ALI, ALICE and every GALI variant.

A variant is a `TupleSet` plus a few options (`ModelConfig`); the training step is
shared: `n_dis` discriminator steps, then one generator-encoder step with a fresh
discriminator forward pass on the same chain nodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Dict, List

import keras
import tensorflow as tf

from gali_tf import masks, networks, objectives, tuples
from gali_tf.errors import ConfigError

NOISE_SCHEDULES = ("linear", "exponential", "constant")
# Keras dtype policies for --mixed_precision ("float32" = full precision).
PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# --mixed_precision's default: float32 or mixed_bfloat16, whichever the trainer's
# start-up measurement finds faster (gali_tf.execution); a model is built in a policy.
AUTO_PRECISION = "auto"

# The exponential instance-noise schedule decays to this fraction of its start value
# by the end of training (the GALI paper says "exponentially decaying" noise but
# gives no rate; the official code uses the linear schedule, our default).
EXPONENTIAL_NOISE_FINAL_RATIO = 0.01


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Options of the adversarial game; field names equal the trainer's flags."""

    tuples: str = "gali4"                 # built-in name or a tuple list (gali_tf.tuples)
    generator_loss: str = "product_of_terms"
    # The terms' weights: the paper's 2/m, or the official scripts' (objectives.term_weights).
    loss_weighting: str = "paper"
    l2_weight: float = 1.0                # lambda of the tuple set's l2 terms (ALICE)
    n_dis: int = 1                        # discriminator steps per generator-encoder step
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    beta_2: float = 0.999
    instance_noise: float = 0.1           # initial std of the noise on every image D sees
    noise_schedule: str = "linear"        # linear | exponential | constant
    seed: int = 0
    mask_fill: float = -1.0               # value of maskK's hole (-1 = black), GALI-mix
    feature_model: str = ""               # M of GALI-PT: "" none, DIR or inception_v3:PATH
    feature_output: str = ""              # named output of M's signature ("" = its only one)
    feature_signature: str = "serving_default"
    feature_image_size: int = 0           # M's input size when not inferable (0 = inferred)
    # A PRECISION_POLICIES name (Keras dtype policy), or AUTO_PRECISION: measured by
    # training.train, which builds the model in the policy it chose.
    mixed_precision: str = AUTO_PRECISION
    # Conditional ALI (ALI 4.4): E(x, y), G(z, y), D(..., y) with the data label y.
    conditional: bool = False
    # Semi-supervised ALI (ALI 4.3): > 0 labelled training examples (balanced per
    # class, chosen with labeled_seed); D gets K label classes for the data tuple.
    num_labeled: int = 0
    labeled_seed: int = 0
    # fresh: E/G take their gradient through a new D forward after D's update (the
    # default); shared: through the D forward of the last D step, with D's weights
    # before its update, as the official scripts and the PyTorch peer do.
    d_forward: str = "fresh"


D_FORWARDS = ("fresh", "shared")

# train_step's logs hold each metric twice: under its name, the running mean since the
# epoch began (Keras' convention: fit's history, the progress line), and under
# STEP_PREFIX + name, the value of that step alone (the TensorBoard curves), as
# Keras names validation metrics "val_" + name.
STEP_PREFIX = "step_"


def check_model_config(config: ModelConfig,
                       has_feature_model: bool | None = None) -> tuples.TupleSet:
    """Validates the options and returns the parsed tuple set.

    `has_feature_model`: whether a feature model M is given (None: whether
    `config.feature_model` names one); tuple sets with M(...) need it.
    """
    if has_feature_model is None:
        has_feature_model = bool(config.feature_model)
    tuple_set = tuples.parse_tuple_set(config.tuples)
    if config.d_forward not in D_FORWARDS:
        raise ConfigError(f"--d_forward={config.d_forward!r}: expected one of "
                          f"{', '.join(D_FORWARDS)}")
    if config.generator_loss not in objectives.GENERATOR_LOSSES:
        raise ConfigError(f"--generator_loss={config.generator_loss!r}: expected one of "
                          f"{', '.join(objectives.GENERATOR_LOSSES)}")
    if config.loss_weighting not in objectives.LOSS_WEIGHTINGS:
        raise ConfigError(f"--loss_weighting={config.loss_weighting!r}: expected one of "
                          f"{', '.join(objectives.LOSS_WEIGHTINGS)}")
    if config.n_dis < 1:
        raise ConfigError(f"--n_dis={config.n_dis}: expected an integer >= 1")
    if config.noise_schedule not in NOISE_SCHEDULES:
        raise ConfigError(f"--noise_schedule={config.noise_schedule!r}: expected one of "
                          f"{', '.join(NOISE_SCHEDULES)}")
    if config.learning_rate <= 0:
        raise ConfigError(f"--learning_rate={config.learning_rate}: expected > 0")
    if config.instance_noise < 0:
        raise ConfigError(f"--instance_noise={config.instance_noise}: expected >= 0")
    if config.mixed_precision not in (AUTO_PRECISION, *PRECISION_POLICIES):
        raise ConfigError(f"--mixed_precision={config.mixed_precision!r}: expected one of "
                          f"{', '.join((AUTO_PRECISION, *PRECISION_POLICIES))}")
    if not -1.0 <= config.mask_fill <= 1.0:
        raise ConfigError(f"--mask_fill={config.mask_fill}: expected a value in [-1, 1]")
    if config.num_labeled < 0:
        raise ConfigError(f"--num_labeled={config.num_labeled}: expected >= 0 (0 = unsupervised)")
    if config.num_labeled and config.conditional:
        raise ConfigError("--conditional and --num_labeled exclude each other (a conditional "
                          "model observes every label; semi-supervised D predicts them)")
    if config.num_labeled and not any(n.name == "x" for n in tuple_set.classes[0]):
        raise ConfigError(f"--num_labeled needs a tuple set whose first class is the data "
                          f"tuple, e.g. (x, E(x)); --tuples={config.tuples!r} starts with "
                          f"({', '.join(n.name for n in tuple_set.classes[0])})")
    if "M" in tuple_set.operator_families() and not has_feature_model:
        raise ConfigError(f"--tuples={config.tuples!r}: M(...) needs a pretrained feature "
                          "model: set --feature_model (a SavedModel directory or "
                          "inception_v3:WEIGHTS.h5)")
    # A masked image is only an encoder input (GALI-mix): shown to D or compared by
    # an l2 term, its flat hole would make its class trivially separable.
    nodes = tuple_set.required_nodes()
    exposed = set(tuple_set.slot_nodes()) | {n for p in tuple_set.reconstruction_pairs for n in p}
    exposed |= {n.arg for n in nodes if n.arg is not None and n.op != "E"}
    for node in nodes:
        if node.family == "mask" and node in exposed:
            raise ConfigError(f"--tuples={config.tuples!r}: {node.name} may only appear as an "
                              f"encoder input, as in E({node.name})")
    return tuple_set


def discriminator_outputs(tuple_set: tuples.TupleSet, label_classes: int = 0) -> int:
    """D's outputs: one per tuple class, or K + n - 1 when semi-supervised D splits
    the data class into K label classes."""
    n = tuple_set.num_classes
    return n + int(label_classes) - 1 if label_classes else n


def instance_noise_std(config: ModelConfig, progress: tf.Tensor) -> tf.Tensor:
    """Std of the instance noise at training progress in [0, 1].

    linear (official code): std0 * (1 - epoch / epochs); exponential (the paper's
    wording): std0 * r ** progress with r = EXPONENTIAL_NOISE_FINAL_RATIO.
    """
    std0 = tf.constant(config.instance_noise, tf.float32)
    progress = tf.clip_by_value(tf.cast(progress, tf.float32), 0.0, 1.0)
    if config.noise_schedule == "linear":
        return std0 * (1.0 - progress)
    if config.noise_schedule == "exponential":
        return std0 * tf.pow(EXPONENTIAL_NOISE_FINAL_RATIO, progress)
    return std0


class StepNoise:
    """Deterministic random numbers for one train step, different for each draw.

    Each draw is generated for the *global* batch from a stateless seed
    (run seed, step, draw index) and sliced to this replica's share. Replicas
    therefore get different noise, a run on R devices draws the same numbers as a
    run on one device with the same global batch, a resumed run draws what the
    uninterrupted run would have drawn, and it all compiles under XLA. (XLA and
    non-XLA stateless kernels give different numbers for one seed, so these
    equalities hold between runs with the same --jit_compile; under a strategy
    XLA is off.)
    """

    def __init__(self, seed: int, step: tf.Tensor):
        self._seed = tf.cast(step, tf.int64) + tf.constant(seed, tf.int64) * 1_000_003
        self._draws = 0
        context = tf.distribute.get_replica_context()
        self._replica = 0 if context is None else context.replica_id_in_sync_group
        self._replicas = tf.distribute.get_strategy().num_replicas_in_sync

    def normal(self, shape, dtype=tf.float32) -> tf.Tensor:
        """N(0, 1) noise of this replica's static `shape` ([local_batch, ...])."""
        return self._draw(tf.random.stateless_normal, shape, dtype)

    def uniform(self, shape, dtype=tf.float32) -> tf.Tensor:
        """U[0, 1) numbers of this replica's static `shape` ([local_batch, ...])."""
        return self._draw(tf.random.stateless_uniform, shape, dtype)

    def _draw(self, sampler, shape, dtype) -> tf.Tensor:
        self._draws += 1
        shape = [int(d) for d in shape]
        local = shape[0]
        seed = tf.stack([self._seed, tf.constant(self._draws, tf.int64)])
        full = sampler([local * self._replicas, *shape[1:]], seed, dtype=dtype)
        return full[self._replica * local:(self._replica + 1) * local] if self._replicas > 1 else full


@contextlib.contextmanager
def _dtype_policy(name: str):
    """Builds layers under a Keras dtype policy without leaving it set process-wide."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class GALIModel(keras.Model):
    """Encoder E, generator G and discriminator D trained on a tuple set."""

    def __init__(self, network_config: networks.NetworkConfig, config: ModelConfig,
                 global_batch_size: int, total_steps: int, steps_per_epoch: int,
                 feature_model=None, **kwargs):
        super().__init__(**kwargs)
        self.network_config = network_config
        self.config = config
        self.tuple_set = check_model_config(config, feature_model is not None)
        if config.mixed_precision == AUTO_PRECISION:
            raise ConfigError("GALIModel computes in one Keras dtype policy: pass "
                              f"mixed_precision as one of {', '.join(PRECISION_POLICIES)} "
                              "(training.train resolves 'auto' by measurement)")
        # M (gali_tf.features.FeatureModel) is a plain Python object, invisible to Keras'
        # and tf.train's tracking: its weights are in no trainable_variables list and in
        # no checkpoint of the run, and stay frozen.
        self._frozen = {"feature_model": feature_model}
        self.global_batch_size = int(global_batch_size)
        self.total_steps = max(int(total_steps), 1)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        # Mixed precision: the layers compute in float16/bfloat16 and keep float32
        # variables; chain nodes and logits are cast back to float32 (below), so the
        # losses, noise and masks stay float32, and so do D's spectral-norm vectors
        # (networks._sn).
        with _dtype_policy(config.mixed_precision):
            self.encoder = networks.build_encoder(network_config)
            self.generator = networks.build_generator(network_config)
            self.discriminator = networks.build_discriminator(
                network_config, self.tuple_set.slot_kinds,
                discriminator_outputs(self.tuple_set, network_config.label_classes))
        # Two Adam optimizers, one per side of the game (docs/architecture.md: build
        # both in the strategy scope before fit, or their state is not mirrored/restored).
        self.d_adam = keras.optimizers.Adam(config.learning_rate, config.beta_1,
                                            config.beta_2, name="d_adam")
        self.g_adam = keras.optimizers.Adam(config.learning_rate, config.beta_1,
                                            config.beta_2, name="g_adam")
        if config.mixed_precision == "mixed_float16":
            # float16 gradients underflow without loss scaling; each side scales its own
            # loss (dynamic scale, a step with inf/nan gradients is skipped).
            self.d_optimizer = keras.optimizers.LossScaleOptimizer(self.d_adam, name="d_scale")
            self.g_optimizer = keras.optimizers.LossScaleOptimizer(self.g_adam, name="g_scale")
        else:
            self.d_optimizer, self.g_optimizer = self.d_adam, self.g_adam
        self._trackers = {name: keras.metrics.Mean(name=name)
                          for name in ("d_loss", "g_loss", "noise_std")}
        if self.tuple_set.reconstruction_pairs:
            self._trackers["l2"] = keras.metrics.Mean(name="l2")
        for c in range(self.tuple_set.num_classes):
            self._trackers[f"p{c + 1}"] = keras.metrics.Mean(name=f"p{c + 1}")
        if self.label_classes:
            # D's K-way accuracy on this step's labelled real pairs.
            self._trackers["label_acc"] = keras.metrics.Mean(name="label_acc")

    # ------------------------------------------------------------------ building

    def build(self, input_shape=None):
        """Creates every weight and both optimizers' slots (call in strategy scope)."""
        example_shape = tuple(self.network_config.example_shape)
        x = tf.zeros((2, *example_shape))
        z = tf.zeros((2, self.network_config.latent_dim))
        condition = (tf.zeros((2, self.condition_dim)) if self.condition_dim else None)
        self.encoder(x, condition=condition)
        self.generator(z, condition=condition)
        y = tf.zeros((2, max(int(self.network_config.feature_dim), 1)))
        self.discriminator([{tuples.IMAGE: x, tuples.LATENT: z, tuples.FEATURE: y}[k]
                            for k in self.tuple_set.slot_kinds]
                           + ([condition] if condition is not None else []), training=True)
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator_encoder_variables)
        self.built = True

    @property
    def generator_encoder_variables(self) -> List[tf.Variable]:
        return self.encoder.trainable_variables + self.generator.trainable_variables

    @property
    def condition_dim(self) -> int:
        """Size of y for conditional ALI (0: unconditional)."""
        return int(self.network_config.condition_dim)

    @property
    def label_classes(self) -> int:
        """K of semi-supervised D (0: unsupervised)."""
        return int(self.network_config.label_classes)

    @property
    def feature_model(self):
        """The frozen feature model M (or None)."""
        return self._frozen["feature_model"]

    @property
    def step(self) -> tf.Variable:
        """Generator-encoder steps taken: the run's step count (checkpointed)."""
        return self.g_adam.iterations

    @property
    def metrics(self):
        return list(self._trackers.values())

    # ------------------------------------------------------------ chain and noise

    def encode_sample(self, x, noise: StepNoise | None = None, training: bool = False,
                      condition=None):
        """E(x): z = mu + exp(log_sigma) * eps, or mu when noise is None or E is deterministic."""
        mu, log_sigma = self.encoder(x, training=training, condition=condition)
        mu = tf.cast(mu, tf.float32)   # latent nodes are float32 under mixed precision
        if noise is None or log_sigma is None:
            return mu
        return mu + tf.exp(tf.cast(log_sigma, tf.float32)) * noise.normal(mu.shape)

    def _operators(self, noise: StepNoise, training: bool,
                   condition=None) -> Dict[str, tuples.Operator]:
        # Conditional ALI: every node of example i, in both chains, is computed with
        # y_i, the label of the batch's i-th data example. For the z-chain that is a
        # draw from the training label distribution p(y), independent of z_i (eq. 7),
        # and each D class then carries the same multiset of y, so y alone tells D
        # nothing about the class (the official ALI code feeds D [y, y] likewise).
        def mask_sample(ev, index, like):
            # One mask per index per chain evaluation, whatever image it is applied to.
            key = f"mask{index}"
            if key not in ev.memo:
                ev.memo[key] = masks.sample_masks(noise, like.shape)
            return ev.memo[key]

        def mask(ev, node):
            image = ev.value(node.arg)
            return masks.apply_mask(image, mask_sample(ev, node.index, image),
                                    self.config.mask_fill)

        def mix(ev, node):
            # mixK(a): a outside mask K's hole, G(E(maskK(a))) inside (shared node).
            filler = ev.value(f"G(E(mask{node.index}({node.arg.name})))")
            return masks.mix(ev.value(node.arg), ev.memo[f"mask{node.index}"], filler)

        return {
            "E": lambda ev, node: self.encode_sample(ev.value(node.arg), noise, training,
                                                     condition),
            "G": lambda ev, node: tf.cast(self.generator(ev.value(node.arg), training=training,
                                                         condition=condition), tf.float32),
            "mask": mask,
            "mix": mix,
            # Frozen M: inference mode, no weight updates, but gradients reach its input.
            "M": lambda ev, node: self.feature_model(ev.value(node.arg)),
        }

    def chain_values(self, x, noise: StepNoise, training: bool = True,
                     condition=None) -> Dict[str, tf.Tensor]:
        """Every node of the tuple set (and its L2 terms), each computed once."""
        z = noise.normal([x.shape[0], self.network_config.latent_dim])
        evaluator = tuples.ChainEvaluator(self._operators(noise, training, condition),
                                          {"x": x, "z": z})
        for node in self.tuple_set.required_nodes():
            evaluator.value(node)
        return evaluator.memo

    def _noise_std(self) -> tf.Tensor:
        epoch_start = (tf.cast(self.step, tf.float32) // self.steps_per_epoch) * self.steps_per_epoch
        return instance_noise_std(self.config, epoch_start / self.total_steps)

    def _discriminator_inputs(self, values, noise: StepNoise, std) -> Dict[str, tf.Tensor]:
        """Slot nodes with instance noise on images (once per distinct image node)."""
        inputs = {}
        for node in self.tuple_set.slot_nodes():
            value = values[node.name]
            if node.kind == tuples.IMAGE and self.config.instance_noise > 0:
                value = value + std * noise.normal(value.shape, value.dtype)
            inputs[node.name] = value
        return inputs

    # ------------------------------------------------------------------ training

    def _discriminator_logits(self, values, noise: StepNoise, std, condition=None):
        return tf.cast(tuples.tuple_logits(self.discriminator, self.tuple_set,
                                           self._discriminator_inputs(values, noise, std),
                                           condition=condition), tf.float32)

    def _discriminator_loss(self, logits, labels=None):
        """Per-example D loss: the n-way cross-entropy (GALI eq. 3), or the K + n - 1
        way semi-supervised loss when D has label classes (ALI 4.3)."""
        if self.label_classes:
            return objectives.semi_supervised_discriminator_loss(
                logits, labels, self.label_classes, self.config.loss_weighting)
        return objectives.discriminator_loss(logits, self.config.loss_weighting)

    def _generator_loss(self, logits, values):
        """Per-example E/G loss (GALI eq. 4 by default) and the l2 terms (ALICE)."""
        if self.label_classes:
            per_example = objectives.semi_supervised_generator_loss(
                self.config.generator_loss, logits, self.label_classes,
                self.config.loss_weighting)
        else:
            per_example = objectives.generator_loss(self.config.generator_loss, logits,
                                                    self.config.loss_weighting)
        l2 = tf.zeros_like(per_example)
        for target, reconstruction in self.tuple_set.reconstruction_pairs:
            l2 += objectives.l2_reconstruction_loss(values[target.name],
                                                    values[reconstruction.name])
        return per_example, l2

    def _reduced(self, per_example, optimizer):
        # Identity unless loss scaling (mixed_float16); apply_gradients unscales.
        return optimizer.scale_loss(objectives.reduce_loss(per_example,
                                                           self.global_batch_size))

    def _discriminator_step(self, values, noise: StepNoise, std, condition=None, labels=None):
        """One Adam step on D's loss, on chain values it cannot push gradients into."""
        values = {name: tf.stop_gradient(v) for name, v in values.items()}
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits = self._discriminator_logits(values, noise, std, condition)
            per_example = self._discriminator_loss(logits, labels)
            scaled = self._reduced(per_example, self.d_optimizer)
        self.d_optimizer.apply_gradients(zip(tape.gradient(scaled, d_vars), d_vars))
        return per_example, logits

    def _generator_step(self, tape: tf.GradientTape, values, noise: StepNoise, std,
                        condition=None):
        """One Adam step on E and G against the updated D (fresh forward pass)."""
        with tape:
            logits = self._discriminator_logits(values, noise, std, condition)
            per_example, l2 = self._generator_loss(logits, values)
            scaled = self._reduced(per_example + self.config.l2_weight * l2, self.g_optimizer)
        ge_vars = self.generator_encoder_variables
        self.g_optimizer.apply_gradients(zip(tape.gradient(scaled, ge_vars), ge_vars))
        return per_example, l2

    def _shared_step(self, tape: tf.GradientTape, values, noise: StepNoise, std,
                     condition=None, labels=None):
        """D's step and E/G's step from one D forward (d_forward="shared"): both
        gradients are taken before either update, so E/G see D's weights before its
        step, as in the official scripts. `tape` must be persistent (two gradients)."""
        with tape:
            logits = self._discriminator_logits(values, noise, std, condition)
            d_per_example = self._discriminator_loss(logits, labels)
            g_per_example, l2 = self._generator_loss(logits, values)
            d_scaled = self._reduced(d_per_example, self.d_optimizer)
            g_scaled = self._reduced(g_per_example + self.config.l2_weight * l2,
                                     self.g_optimizer)
        d_vars, ge_vars = self.discriminator.trainable_variables, self.generator_encoder_variables
        d_grads = tape.gradient(d_scaled, d_vars)
        ge_grads = tape.gradient(g_scaled, ge_vars)
        self.d_optimizer.apply_gradients(zip(d_grads, d_vars))
        self.g_optimizer.apply_gradients(zip(ge_grads, ge_vars))
        return d_per_example, logits, g_per_example, l2

    def train_step(self, data):
        """One D/E/G step; returns the logs described at STEP_PREFIX.

        Each replica returns its own share's values; fit averages them over the replicas
        (equal shares: the global batch's value), the running means and step values alike.
        """
        # data: [batch, n_dis, ...] when n_dis > 1 (one real batch per D step), else [batch, ...];
        # conditional: (images, y float [batch, (n_dis,) condition_dim]); semi-supervised:
        # (images, labels int [batch, (n_dis)], -1 = unlabelled).
        n_dis = self.config.n_dis
        images, side = data if isinstance(data, (tuple, list)) else (data, None)
        batches = [images[:, k] for k in range(n_dis)] if n_dis > 1 else [images]
        sides = ([side[:, k] for k in range(n_dis)] if n_dis > 1 else [side]) \
            if side is not None else [None] * n_dis
        if (self.condition_dim or self.label_classes) and side is None:
            raise ValueError("a conditional or semi-supervised model trains on (images, labels) "
                             "batches")
        conditions = sides if self.condition_dim else [None] * n_dis
        labels = sides if self.label_classes else [None] * n_dis
        noise = StepNoise(self.config.seed, self.step)
        std = self._noise_std()
        for x, condition, label in zip(batches[:-1], conditions[:-1], labels[:-1]):
            d_loss, d_logits = self._discriminator_step(
                self.chain_values(x, noise, condition=condition), noise, std, condition, label)
        # The last D step and the E/G step share one computation of the chain:
        # D trains on it (gradients stopped), then E/G take gradients through it.
        shared = self.config.d_forward == "shared"
        tape = tf.GradientTape(persistent=shared)
        with tape:
            values = self.chain_values(batches[-1], noise, condition=conditions[-1])
        if shared:
            d_loss, d_logits, g_loss, l2 = self._shared_step(tape, values, noise, std,
                                                             conditions[-1], labels[-1])
        else:
            d_loss, d_logits = self._discriminator_step(values, noise, std, conditions[-1],
                                                        labels[-1])
            g_loss, l2 = self._generator_step(tape, values, noise, std, conditions[-1])
        if self.label_classes:
            labelled = tf.cast(labels[-1] >= 0, tf.float32)
            correct = tf.cast(tf.equal(objectives.label_predictions(d_logits[0], self.label_classes),
                                       tf.cast(labels[-1], tf.int32)), tf.float32)
            d_logits = objectives.merge_label_logits(d_logits, self.label_classes)

        values = {"d_loss": tf.reduce_mean(d_loss), "g_loss": tf.reduce_mean(g_loss),
                  "noise_std": std}
        weights = {}
        if "l2" in self._trackers:
            values["l2"] = tf.reduce_mean(l2)
        for c, p in enumerate(tf.unstack(objectives.own_class_probabilities(d_logits))):
            values[f"p{c + 1}"] = p
        if self.label_classes:
            # Over this step's labelled examples (0 when it has none); the running mean
            # weighs each step by its count, so it is the accuracy over all of them.
            weights["label_acc"] = tf.reduce_sum(labelled)
            values["label_acc"] = tf.math.divide_no_nan(tf.reduce_sum(correct * labelled),
                                                        weights["label_acc"])
        for name, value in values.items():
            self._trackers[name].update_state(value, sample_weight=weights.get(name))
        logs = {name: tracker.result() for name, tracker in self._trackers.items()}
        logs.update({STEP_PREFIX + name: value for name, value in values.items()})
        if tf.distribute.get_strategy().extended._in_multi_worker_mode():  # pylint: disable=protected-access
            # Keras 3.15's fit averages multi-worker logs with strategy.reduce(MEAN,
            # axis=0), which fails on scalars ("Invalid reduction dimension 0").
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    # ---------------------------------------------------------------- inference

    def call(self, x, training=False):
        """Reconstruction G(mu(E(x))) (the evaluation path: z = mu)."""
        return self.reconstruct(x, training=training)

    def reconstruct(self, x, training=False, condition=None):
        """G(mu(E(x))); conditional models take y as `condition` in both."""
        z = self.encode_sample(x, training=training, condition=condition)
        return tf.cast(self.generator(z, training=training, condition=condition), tf.float32)

    def generate(self, z, training=False, condition=None):
        return tf.cast(self.generator(z, training=training, condition=condition), tf.float32)

    def prior_sample(self, n: int, seed: int = 0) -> tf.Tensor:
        return tf.random.stateless_normal([n, self.network_config.latent_dim], [seed, 0])
