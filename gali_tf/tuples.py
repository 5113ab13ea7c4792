"""The chain and tuple algebra of GALI (GALI Fig. 1 and eq. 3).

Two chains start at a real image and at a prior sample,

    x -> E(x) -> G(E(x)) -> E(G(E(x))) -> ...
    z -> G(z) -> E(G(z)) -> G(E(G(z))) -> ...

and a model is a *tuple set*: an ordered list of classes, each an ordered tuple of
chain nodes, which the discriminator learns to tell apart (an n-way classifier).
Tuple sets are data written in a small language, e.g. ALI is

    "x, E(x); G(z), z"

classes are separated by ``;``, nodes by ``,``; an entry ``l2: a, b`` is not a class
but an explicit reconstruction term ``||a - b||^2`` (ALICE). Node names are parsed
into `Node` trees; `ChainEvaluator` computes each distinct node once per step with a
memo table, and `tuple_logits` runs each discriminator trunk once on all distinct
nodes of its kind and the joint head once on all tuples.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, Mapping, Tuple

import tensorflow as tf

from gali_tf.errors import InputError

IMAGE, LATENT, FEATURE = "image", "latent", "feature"

# Leaves of the two chains and their kinds.
LEAVES = {"x": IMAGE, "z": LATENT}

# Operator family -> (argument kind, result kind). `mask` and `mix` carry an index
# (mask1, mix2, ...): the same index means the same mask sample within one step.
OPERATORS = {
    "E": (IMAGE, LATENT),      # encoder sample z = mu + sigma * eps
    "G": (LATENT, IMAGE),      # generator
    "M": (IMAGE, FEATURE),     # frozen pretrained feature model (GALI-PT)
    "mask": (IMAGE, IMAGE),    # image with a random hole (GALI-mix)
    "mix": (IMAGE, IMAGE),     # image whose hole is filled from G(E(mask(image)))
}
INDEXED_OPERATORS = ("mask", "mix")

# Built-in tuple sets (README, "Models are tuple sets"). GALI-8 writes x^ = G(E(x)), z^ = E(x^),
# g = G(z), z' = E(g), g~ = G(z') and permutes images and latents within the two
# 4-tuples (x, E(x), x^, z^) and (g, z, g~, z') (GALI, "Extension to Arbitrary
# Number and Size of Tuples").
TUPLE_SETS: Dict[str, str] = {
    "ali": "x, E(x); G(z), z",
    "alice": "x, E(x); G(z), z; l2: x, G(E(x))",
    "gali4": "x, E(x); x, E(G(E(x))); G(z), z; G(E(G(z))), z",
    "gali8": (
        "x, E(x), G(E(x)), E(G(E(x)));"
        "x, E(G(E(x))), G(E(x)), E(x);"
        "G(E(x)), E(x), x, E(G(E(x)));"
        "G(E(x)), E(G(E(x))), x, E(x);"
        "G(z), z, G(E(G(z))), E(G(z));"
        "G(z), E(G(z)), G(E(G(z))), z;"
        "G(E(G(z))), z, G(z), E(G(z));"
        "G(E(G(z))), E(G(z)), G(z), z"
    ),
    # GALI-mix (GALI, "Self-Supervised Feedback using Mixed Images"): every encoder
    # input is masked with a fresh mask; mix1(x) fills the hole of x from G(E(mask1(x))).
    "gali_mix": (
        "x, E(mask1(x));"
        "G(z), z;"
        "x, E(mask2(G(E(mask1(x)))));"
        "G(E(mask3(G(z)))), z;"
        "mix1(x), E(mask1(x));"
        "mix1(x), E(mask2(G(E(mask1(x)))));"
        "x, E(mask4(mix1(x)));"
        "G(E(mask1(x))), E(mask4(mix1(x)))"
    ),
    # GALI-PT (GALI, "Incorporation of Learned Knowledge"): GALI-4's classes, each with
    # the frozen pretrained model's features of the chain partner of the tuple's image
    # (x <-> G(E(x)), G(z) <-> G(E(G(z)))), as the paper writes them. So both chains give
    # feature feedback: D compares each reconstruction with its original's features.
    # (M(G(E(G(z)))) in the last class, i.e. M of the tuple's own image, would drop the
    # z-chain's feedback and break the symmetry with the second class.)
    "gali_pt": ("x, E(x), M(x); x, E(G(E(x))), M(G(E(x))); G(z), z, M(G(z)); "
                "G(E(G(z))), z, M(G(z))"),
    # The appendix ablations: ALI tuples with M, and ALI + L2 on M's features (ALICE-PT).
    "ali_pt": "x, E(x), M(x); G(z), z, M(G(z))",
    "alice_pt": "x, E(x); G(z), z; l2: M(x), M(G(E(x)))",
    # The masked-input baselines of GALI Table 5.
    "ali_mask": "x, E(mask1(x)); G(z), z",
    "alice_mask": "x, E(mask1(x)); G(z), z; l2: x, G(E(mask1(x)))",
    "gali4_mask": ("x, E(mask1(x)); x, E(mask2(G(E(mask1(x))))); G(z), z; "
                   "G(E(mask3(G(z)))), z"),
}


class TupleError(InputError):
    """A tuple set or node name that cannot be parsed or type-checked."""


@dataclasses.dataclass(frozen=True)
class Node:
    """A chain node such as ``E(G(z))``: an operator applied to a node, or a leaf."""

    name: str                 # canonical text, e.g. "E(G(z))"
    kind: str                 # IMAGE, LATENT or FEATURE
    op: str | None = None     # "E", "G", "M", "mask1", ... (None for leaves)
    arg: "Node | None" = None

    @property
    def family(self) -> str | None:
        """The operator without its index: "mask" for "mask3"."""
        return None if self.op is None else self.op.rstrip("0123456789")

    @property
    def index(self) -> int | None:
        """The index of an indexed operator: 3 for "mask3"."""
        if self.op is None or self.family not in INDEXED_OPERATORS:
            return None
        return int(self.op[len(self.family):])

    def ancestors(self) -> Tuple["Node", ...]:
        """This node and every node it is computed from, leaves first."""
        return (self.arg.ancestors() if self.arg is not None else ()) + (self,)


_TOKEN = re.compile(r"\s*([A-Za-z]+[0-9]*|\(|\))")


def parse_node(text: str) -> Node:
    """Parses a chain-node name like ``E(G(z))`` and checks operator kinds."""
    tokens = _tokenize(text)
    node, rest = _parse(tokens, text)
    if rest:
        raise TupleError(f"chain node {text.strip()!r}: unexpected {' '.join(rest)!r} at the end")
    return node


def _tokenize(text: str) -> list:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise TupleError(f"chain node {text.strip()!r}: cannot read {text[pos:].strip()!r}")
        tokens.append(match.group(1))
        pos = match.end()
    if not tokens:
        raise TupleError("empty chain node (expected a name like x, z, E(x), G(E(x)))")
    return tokens


def _parse(tokens: list, text: str) -> Tuple[Node, list]:
    head, rest = tokens[0], tokens[1:]
    if head in LEAVES:
        return Node(name=head, kind=LEAVES[head]), rest
    family = head.rstrip("0123456789")
    if family not in OPERATORS or (family in INDEXED_OPERATORS) == (family == head):
        expected = "x, z, " + ", ".join(
            f"{op}K(...)" if op in INDEXED_OPERATORS else f"{op}(...)" for op in OPERATORS)
        raise TupleError(f"chain node {text.strip()!r}: unknown name {head!r} (expected {expected})")
    if not rest or rest[0] != "(":
        raise TupleError(f"chain node {text.strip()!r}: {head} needs an argument in parentheses")
    arg, rest = _parse(rest[1:], text) if len(rest) > 1 else (None, [])
    if arg is None or not rest or rest[0] != ")":
        raise TupleError(f"chain node {text.strip()!r}: unbalanced parentheses")
    wants, gives = OPERATORS[family]
    if arg.kind != wants:
        raise TupleError(
            f"chain node {text.strip()!r}: {head} takes an {wants}, but {arg.name} is a {arg.kind}")
    return Node(name=f"{head}({arg.name})", kind=gives, op=head, arg=arg), rest[1:]


@dataclasses.dataclass(frozen=True)
class TupleSet:
    """The classes the discriminator separates, plus explicit L2 reconstruction terms."""

    name: str
    classes: Tuple[Tuple[Node, ...], ...]
    reconstruction_pairs: Tuple[Tuple[Node, Node], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def slot_kinds(self) -> Tuple[str, ...]:
        """Kinds of the tuple slots in D's input order, the same for every class."""
        return tuple(node.kind for node in self.classes[0])

    @property
    def spec(self) -> str:
        """The tuple set written back in the tuple language (parses to an equal set)."""
        parts = [", ".join(n.name for n in c) for c in self.classes]
        parts += [f"l2: {a.name}, {b.name}" for a, b in self.reconstruction_pairs]
        return "; ".join(parts)

    def slot_nodes(self) -> Tuple[Node, ...]:
        """Distinct nodes that appear in some tuple, in first-appearance order."""
        return _distinct(node for cls in self.classes for node in cls)

    def required_nodes(self) -> Tuple[Node, ...]:
        """Every node the step must compute (tuples, L2 terms and their ancestors),
        in an order where each node follows its argument."""
        roots = list(self.slot_nodes())
        roots += [n for pair in self.reconstruction_pairs for n in pair]
        return _distinct(a for node in roots for a in node.ancestors())

    def operator_families(self) -> frozenset:
        return frozenset(n.family for n in self.required_nodes() if n.op is not None)


def _distinct(nodes) -> Tuple[Node, ...]:
    seen: Dict[str, Node] = {}
    for node in nodes:
        seen.setdefault(node.name, node)
    return tuple(seen.values())


def parse_tuple_set(text: str, name: str | None = None) -> TupleSet:
    """Parses a built-in name (``gali4``) or a tuple set written in the tuple language.

    Every class must have the same slot kinds (D has one input layout), and the
    classes must be distinct (otherwise D is asked to separate a class from itself).
    """
    text = text.strip()
    if text in TUPLE_SETS:
        return parse_tuple_set(TUPLE_SETS[text], name=text)
    if "(" not in text and ";" not in text and "," not in text:
        raise TupleError(
            f"--tuples={text!r}: unknown tuple set (expected one of {', '.join(TUPLE_SETS)} "
            "or a tuple list such as 'x, E(x); G(z), z')")
    classes, pairs = [], []
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        is_l2 = entry.startswith("l2:")
        names = [n for n in entry[3:].split(",")] if is_l2 else entry.split(",")
        try:
            nodes = tuple(parse_node(n) for n in names)
        except TupleError as error:
            raise TupleError(f"--tuples entry {entry!r}: {error}") from None
        if is_l2:
            if len(nodes) != 2 or nodes[0].kind != nodes[1].kind:
                raise TupleError(
                    f"--tuples entry {entry!r}: an l2 term takes two nodes of the same kind")
            pairs.append(nodes)
        else:
            classes.append(nodes)
    if len(classes) < 2:
        raise TupleError(f"--tuples={text!r}: need at least two classes separated by ';'")
    layouts = {tuple(n.kind for n in c) for c in classes}
    if len(layouts) > 1:
        raise TupleError(
            f"--tuples={text!r}: every class needs the same slot kinds, got "
            + " vs ".join("(" + ", ".join(layout) + ")" for layout in sorted(layouts)))
    names = [tuple(n.name for n in c) for c in classes]
    if len(set(names)) != len(names):
        raise TupleError(f"--tuples={text!r}: two classes are identical")
    return TupleSet(name=name or "custom", classes=tuple(classes),
                    reconstruction_pairs=tuple(pairs))


# An operator implementation takes the evaluator (so that it can ask for other
# nodes, e.g. mix needs G(E(mask(x)))) and the node to compute.
Operator = Callable[["ChainEvaluator", Node], tf.Tensor]


class ChainEvaluator:
    """Computes chain nodes on demand, each distinct node once (memo table)."""

    def __init__(self, operators: Mapping[str, Operator], leaves: Mapping[str, tf.Tensor]):
        self._operators = operators
        self.memo: Dict[str, tf.Tensor] = dict(leaves)

    def value(self, node: Node | str) -> tf.Tensor:
        if isinstance(node, str):
            node = parse_node(node)
        if node.name not in self.memo:
            if node.family not in self._operators:
                raise TupleError(
                    f"chain node {node.name}: this model has no {node.family!r} operator")
            self.memo[node.name] = self._operators[node.family](self, node)
        return self.memo[node.name]


def tuple_logits(discriminator, tuple_set: TupleSet, values: Mapping[str, tf.Tensor],
                 training: bool = True, condition: tf.Tensor | None = None) -> tf.Tensor:
    """Discriminator logits for every class, shape [num_classes, batch, D's outputs].

    Each trunk (D_x, D_z, D_y) runs once on the batch-concatenation of the distinct
    nodes of its kind, and the joint head once on all tuples stacked on the batch
    axis, so D's cost grows with distinct nodes, not with the number of classes.
    D has no batch statistics (spectral norm, no BatchNorm), so this is the same
    function as calling D tuple by tuple. D's outputs are num_classes, or K + n - 1
    for semi-supervised D (gali_tf.objectives.merge_label_logits).

    `condition` (conditional ALI, ALI 4.4): y [batch, condition_dim]; every tuple of
    example i carries y_i, embedded once and appended after the tuple's slots.
    """
    nodes = tuple_set.slot_nodes()
    features: Dict[str, tf.Tensor] = {}
    for kind in dict.fromkeys(n.kind for n in nodes):
        names = [n.name for n in nodes if n.kind == kind]
        trunk_out = discriminator.trunks[kind](
            tf.concat([values[name] for name in names], axis=0), training=training)
        features.update(zip(names, tf.split(trunk_out, len(names), axis=0)))
    extra = []
    if getattr(discriminator, "condition", None) is not None:
        if condition is None:
            raise TupleError("this discriminator is conditional: tuple_logits needs condition=y")
        # A float32 layer (spectral norm): cast to the trunks' compute dtype, which
        # differs under mixed precision.
        trunk_dtype = features[nodes[0].name].dtype
        extra = [tf.cast(discriminator.condition(condition, training=training), trunk_dtype)]
    joint = tf.concat(
        [tf.concat([features[n.name] for n in cls] + extra, axis=-1)
         for cls in tuple_set.classes],
        axis=0)
    logits = discriminator.head(joint, training=training)
    return tf.stack(tf.split(logits, tuple_set.num_classes, axis=0))
