"""Ternary processing element: N lanes of ``activation x weight`` summed by an adder tree.

How a negative weight is applied decides most of a PE's area, so it is a parameter
(``negation``):

``"carry"`` (default)
    ``-x == ~x + 1``. Each lane's operand is ``nonzero & (x ^ negative)``, one LUT4 per bit fed
    straight from the two t2 code flags and the activation bit; the ``+1`` of every negative lane
    enters the tree as the carry-in of an adder (an N-lane tree has N-1 adders; the last ``+1``
    goes into the accumulator or a final adder). Operands stay B bits wide.
``"shared"``
    ``-x`` is computed once per activation vector (shared by every PE of an array) and each lane
    picks ``x``, ``-x`` or 0: one LUT4 per bit, but B+1 bits wide, and no carry-ins.
``"local"``
    Every lane negates its own activation and then picks: the naive design, kept as a baseline.

All three produce the same integer; the area table in docs/area.md compares them.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .formats import WeightMode, weight_vector_layout
from .params import check_choice, check_mode, check_positive, check_range, signed_width

__all__ = ["TernaryPE", "NEGATIONS", "dot_output_range", "tree_depth"]

NEGATIONS = ("carry", "shared", "local")


def tree_depth(lanes):
    """Adder levels of a balanced binary tree over ``lanes`` leaves."""
    return (lanes - 1).bit_length()


def pipeline_latency(lanes, pipeline):
    """Register stages a tree of ``lanes`` leaves gets with a register every ``pipeline`` levels."""
    if pipeline == 0:
        return 0
    return -(-tree_depth(lanes) // pipeline)


def dot_output_range(lanes, act_bits):
    """Range of a lane-sum: every legal input of ``act_bits`` activations, weights in {-1,0,1}."""
    bound = lanes * (1 << (act_bits - 1))
    return -bound, bound


def check_pe_params(lanes, act_bits, weights, pipeline, negation):
    check_positive("Lane count", lanes)
    check_range("Activation width", act_bits, 2, 16)
    mode = check_mode(weights)
    check_range("Pipeline interval", pipeline, 0)
    check_choice("Negation", negation, NEGATIONS)
    return mode


def negate_activations(m, acts, act_bits):
    """``-x`` for every lane, B+1 bits wide (``-(-2**(B-1))`` needs the extra bit)."""
    negs = []
    for i, x in enumerate(acts):
        n = Signal(signed(act_bits + 1), name=f"neg{i}")
        m.d.comb += n.eq(-x)
        negs.append(n)
    return negs


def build_dot(m, acts, codes, *, act_bits, mode, negation, pipeline, enable, negs=None,
              name="pe"):
    """Build one PE's datapath into ``m``.

    Returns ``(value, carry, lo, hi)``: the registered tree output, the one ``+1`` of the
    ``"carry"`` scheme that the tree had no adder left for (None for the other schemes), and the
    range of ``value + carry``. Registers advance when ``enable`` is high; ``enable`` may also
    be a list with one signal per register stage (stage 0 first), e.g. ``enable`` and the stage
    holding a valid tile, so that data registers keep still while no tile passes.
    """
    B = act_bits
    lanes = len(acts)
    leaves = []
    carries = []
    for i, (x, code) in enumerate(zip(acts, codes, strict=True)):
        if mode is WeightMode.TERNARY:
            pos, neg = code[0], code[1]
            nonzero = pos | neg
        else:
            neg = code[0]
            nonzero = Const(1)
        if negation == "carry":
            leaf = Signal(signed(B), name=f"{name}_op{i}")
            m.d.comb += leaf.eq(Mux(nonzero, x ^ neg.replicate(B), 0))
            leaves.append((leaf, -(1 << (B - 1)), (1 << (B - 1)) - 1))
            carries.append(neg)
        else:
            nx = negs[i] if negation == "shared" else -x
            leaf = Signal(signed(B + 1), name=f"{name}_op{i}")
            m.d.comb += leaf.eq(Mux(neg, nx, Mux(nonzero, x, 0)))
            leaves.append((leaf, -(1 << (B - 1)), 1 << (B - 1)))

    level = 0
    stage = 0
    items = leaves
    while len(items) > 1:
        level += 1
        nxt = []
        for j in range(0, len(items) - 1, 2):
            (a, alo, ahi), (b, blo, bhi) = items[j], items[j + 1]
            lo, hi = alo + blo, ahi + bhi
            expr = a + b
            if carries:
                expr = expr + carries.pop(0)
                hi += 1
            s = Signal(signed(signed_width(lo, hi)), name=f"{name}_l{level}_{j // 2}")
            m.d.comb += s.eq(expr)
            nxt.append((s, lo, hi))
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
        if pipeline and (level % pipeline == 0 or len(items) == 1):
            en = enable[stage] if isinstance(enable, (list, tuple)) else enable
            items, carries = _register(m, items, carries, en, f"{name}_p{level}")
            stage += 1
    value, lo, hi = items[0]
    carry = None
    if carries:
        (carry,) = carries
        hi += 1
    assert lanes == 1 or level == tree_depth(lanes)
    return value, carry, lo, hi


def _register(m, items, carries, enable, name):
    regs = []
    for j, (v, lo, hi) in enumerate(items):
        r = Signal(v.shape(), name=f"{name}_{j}")
        with m.If(enable):
            m.d.sync += r.eq(v)
        regs.append((r, lo, hi))
    if carries:
        c = Signal(len(carries), name=f"{name}_c")
        with m.If(enable):
            m.d.sync += c.eq(Cat(*carries))
        carries = [c[i] for i in range(len(carries))]
    return regs, carries


class TernaryPE(wiring.Component):
    """A processing element: the exact dot product of N activations with N weights.

    Parameters
    ----------
    lanes : int
        Number of lanes N (any positive integer).
    act_bits : int
        Signed activation width B, 2 to 16.
    weights : str or WeightMode
        ``"ternary"`` (2-bit t2 codes per lane) or ``"binary"`` (sign bit per lane).
    pipeline : int
        A register after every ``pipeline`` adder-tree levels (and after the last one);
        0 builds a combinational tree.
    negation : str
        How negative weights are applied: ``"carry"``, ``"shared"`` or ``"local"`` (see module
        docs). A lone PE computes its own negations for ``"shared"``.

    Attributes
    ----------
    i_stream : In(stream.Signature(input_layout))
        ``act`` (N signed activations) and ``weight`` (N weight codes), lane 0 lowest.
    o_stream : Out(stream.Signature(signed(output_width)))
        The sum, wide enough for every legal input.
    latency : int
        Cycles from accepting an input to its sum being valid, without backpressure.

    Raises
    ------
    TypeError, ValueError
        For parameters of the wrong type or value.
    """

    def __init__(self, *, lanes, act_bits=8, weights="ternary", pipeline=1, negation="carry"):
        self._mode = check_pe_params(lanes, act_bits, weights, pipeline, negation)
        self._lanes = lanes
        self._act_bits = act_bits
        self._pipeline = pipeline
        self._negation = negation
        lo, hi = dot_output_range(lanes, act_bits)
        self._output_width = signed_width(lo, hi)
        super().__init__({
            "i_stream": In(stream.Signature(self.input_layout)),
            "o_stream": Out(stream.Signature(signed(self._output_width))),
        })

    lanes = property(lambda self: self._lanes)
    act_bits = property(lambda self: self._act_bits)
    mode = property(lambda self: self._mode)
    pipeline = property(lambda self: self._pipeline)
    negation = property(lambda self: self._negation)
    output_width = property(lambda self: self._output_width)

    @property
    def input_layout(self):
        return data.StructLayout({
            "act": data.ArrayLayout(signed(self._act_bits), self._lanes),
            "weight": weight_vector_layout(self._mode, self._lanes),
        })

    @property
    def latency(self):
        return pipeline_latency(self._lanes, self._pipeline)

    def elaborate(self, platform):
        m = Module()
        o_valid = self.o_stream.valid
        enable = Signal()
        m.d.comb += enable.eq(~o_valid | self.o_stream.ready)

        acts = [self.i_stream.payload.act[i] for i in range(self._lanes)]
        codes = [Value.cast(self.i_stream.payload.weight[i]) for i in range(self._lanes)]
        negs = None
        if self._negation == "shared":
            negs = negate_activations(m, acts, self._act_bits)
        value, carry, _, _ = build_dot(
            m, acts, codes, act_bits=self._act_bits, mode=self._mode, negation=self._negation,
            pipeline=self._pipeline, enable=enable, negs=negs)
        m.d.comb += self.o_stream.payload.eq(value + carry if carry is not None else value)

        if self.latency == 0:
            m.d.comb += [
                o_valid.eq(self.i_stream.valid),
                self.i_stream.ready.eq(self.o_stream.ready),
            ]
        else:
            valid = Signal(self.latency)
            with m.If(enable):
                m.d.sync += valid.eq(Cat(self.i_stream.valid, valid[:-1]))
            m.d.comb += [
                o_valid.eq(valid[-1]),
                self.i_stream.ready.eq(enable),
            ]
        return m
