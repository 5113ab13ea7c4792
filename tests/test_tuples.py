"""The tuple algebra: parsing, the built-in tuple sets, once-per-node evaluation."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from gali_tf import networks, tuples
from gali_tf.tuples import IMAGE, LATENT, FEATURE


def names(tuple_set):
    return [tuple(n.name for n in cls) for cls in tuple_set.classes]


def test_parse_node_kinds_and_ancestors():
    node = tuples.parse_node(" E( G (E(x)) ) ")
    assert node.name == "E(G(E(x)))" and node.kind == LATENT
    assert [a.name for a in node.ancestors()] == ["x", "E(x)", "G(E(x))", "E(G(E(x)))"]
    assert tuples.parse_node("G(z)").kind == IMAGE
    assert tuples.parse_node("M(G(z))").kind == FEATURE
    mask = tuples.parse_node("mask12(x)")
    assert (mask.family, mask.index, mask.kind) == ("mask", 12, IMAGE)
    assert tuples.parse_node("mix1(x)").family == "mix"


@pytest.mark.parametrize("text, message", [
    ("E(z)", "takes an image"),
    ("G(x)", "takes an latent"),
    ("F(x)", "unknown name 'F'"),
    ("mask(x)", "unknown name 'mask'"),
    ("E2(x)", "unknown name 'E2'"),
    ("E(x", "unbalanced"),
    ("E x", "needs an argument"),
    ("E(x))", "unexpected"),
    ("", "empty"),
    ("x+z", "cannot read"),
])
def test_parse_node_errors(text, message):
    with pytest.raises(tuples.TupleError, match=message):
        tuples.parse_node(text)


def test_builtin_tuple_sets_match_design_table():
    assert names(tuples.parse_tuple_set("ali")) == [("x", "E(x)"), ("G(z)", "z")]
    assert names(tuples.parse_tuple_set("gali4")) == [
        ("x", "E(x)"), ("x", "E(G(E(x)))"), ("G(z)", "z"), ("G(E(G(z)))", "z")]
    alice = tuples.parse_tuple_set("alice")
    assert names(alice) == names(tuples.parse_tuple_set("ali"))
    assert [(a.name, b.name) for a, b in alice.reconstruction_pairs] == [("x", "G(E(x))")]
    gali8 = tuples.parse_tuple_set("gali8")
    xh, zh, g, zp, gt = "G(E(x))", "E(G(E(x)))", "G(z)", "E(G(z))", "G(E(G(z)))"
    assert names(gali8) == [
        ("x", "E(x)", xh, zh), ("x", zh, xh, "E(x)"), (xh, "E(x)", "x", zh), (xh, zh, "x", "E(x)"),
        (g, "z", gt, zp), (g, zp, gt, "z"), (gt, "z", g, zp), (gt, zp, g, "z")]
    assert gali8.slot_kinds == (IMAGE, LATENT, IMAGE, LATENT)


def test_spec_round_trips_and_user_written_sets():
    for name in tuples.TUPLE_SETS:
        ts = tuples.parse_tuple_set(name)
        again = tuples.parse_tuple_set(ts.spec)
        assert names(again) == names(ts) and again.reconstruction_pairs == ts.reconstruction_pairs
    custom = tuples.parse_tuple_set("x, E(x); G(z), z; G(E(x)), E(x)")
    assert custom.name == "custom" and custom.num_classes == 3


@pytest.mark.parametrize("text, message", [
    ("gali5", "unknown tuple set"),
    ("x, E(x)", "at least two classes"),
    ("x, E(x); z, G(z)", "same slot kinds"),
    ("x, E(x); x, E(x)", "identical"),
    ("x, E(x); G(z), z; l2: x, E(x)", "same kind"),
    ("x, E(x); G(z", "--tuples entry"),
])
def test_tuple_set_errors_name_the_flag_and_are_one_line(text, message):
    with pytest.raises(tuples.TupleError, match=message) as info:
        tuples.parse_tuple_set(text)
    assert "--tuples" in str(info.value) and "\n" not in str(info.value)


def test_required_nodes_follow_their_arguments():
    order = [n.name for n in tuples.parse_tuple_set("gali8").required_nodes()]
    for position, name in enumerate(order):
        arg = tuples.parse_node(name).arg
        assert arg is None or order.index(arg.name) < position


class CountingOps:
    """Stand-in E and G that count calls per input node."""

    def __init__(self):
        self.calls = collections.Counter()

    def operators(self):
        def encode(ev, node):
            self.calls["E"] += 1
            return ev.value(node.arg)[:, :2] * 2.0

        def generate(ev, node):
            self.calls["G"] += 1
            return tf.concat([ev.value(node.arg)] * 2, axis=-1) + 1.0
        return {"E": encode, "G": generate}


@pytest.mark.parametrize("name, e_calls, g_calls", [
    ("ali", 1, 1), ("alice", 1, 2), ("gali4", 3, 3), ("gali8", 3, 3)])
def test_each_distinct_node_is_computed_once(name, e_calls, g_calls):
    ops = CountingOps()
    evaluator = tuples.ChainEvaluator(ops.operators(), {"x": tf.ones([3, 4]), "z": tf.ones([3, 2])})
    for node in tuples.parse_tuple_set(name).required_nodes():
        evaluator.value(node)
    evaluator.value("E(x)")  # asking again hits the memo
    assert ops.calls == {"E": e_calls, "G": g_calls}
    # G(E(x)) = concat(2x, 2x) + 1 = 3 for x = 1.
    if "G(E(x))" in evaluator.memo:
        np.testing.assert_allclose(evaluator.memo["G(E(x))"], np.full([3, 4], 3.0))


def test_missing_operator_is_a_clear_error():
    evaluator = tuples.ChainEvaluator({}, {"x": tf.ones([1, 2])})
    with pytest.raises(tuples.TupleError, match="no 'mask' operator"):
        evaluator.value("mask1(x)")


class CountingDiscriminator:
    """Wraps a real Discriminator, counting trunk and head calls and their batch sizes."""

    def __init__(self, d):
        self.d, self.calls = d, []
        self.trunks = {k: self._wrap(k, t) for k, t in d.trunks.items()}
        self.head = self._wrap("head", d.head)

    def _wrap(self, name, layer):
        def call(t, training):
            self.calls.append((name, t.shape[0]))
            return layer(t, training=training)
        return call


@pytest.mark.parametrize("name", ["gali4", "gali8"])
def test_tuple_logits_runs_each_trunk_once_and_matches_per_tuple_calls(name):
    ts = tuples.parse_tuple_set(name)
    cfg = networks.NetworkConfig(arch="small", example_shape=(8, 8, 1), latent_dim=3, width=4)
    d = networks.build_discriminator(cfg, ts.slot_kinds, ts.num_classes)
    rng = np.random.default_rng(0)
    values = {n.name: tf.constant(rng.normal(size=(2, 8, 8, 1) if n.kind == IMAGE else (2, 3)),
                                  tf.float32) for n in ts.slot_nodes()}
    counting = CountingDiscriminator(d)
    logits = tuples.tuple_logits(counting, ts, values, training=False)
    assert logits.shape == (ts.num_classes, 2, ts.num_classes)
    images = sum(n.kind == IMAGE for n in ts.slot_nodes())
    latents = sum(n.kind == LATENT for n in ts.slot_nodes())
    assert sorted(counting.calls) == sorted(
        [("image", 2 * images), ("latent", 2 * latents), ("head", 2 * ts.num_classes)])
    for c, cls in enumerate(ts.classes):
        direct = d([values[n.name] for n in cls], training=False)
        np.testing.assert_allclose(logits[c], direct, rtol=1e-5, atol=1e-6)
