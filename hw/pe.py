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

from amaranth.hdl import Cat, Const, Instance, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .formats import WeightMode, weight_vector_layout
from .params import check_choice, check_mode, check_positive, check_range, signed_width

__all__ = ["TernaryPE", "NEGATIONS", "dot_output_range", "tree_depth", "fused_leaves",
           "ccu2c_leaf_init", "ccu2c_accumulate", "ice40_adder",
           "cell_family"]

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


def fused_leaves(platform, mode, negation):
    """Whether the adders are built from ECP5 ``CCU2C`` cells, the first level's folding one
    lane's weight into the adder (:func:`ccu2c_leaf_init`) and the accumulators their restart
    (:func:`ccu2c_accumulate`): on an ECP5 platform, for t2 weights and the ``"carry"``
    negation."""
    return (cell_family(platform) == "ecp5" and mode is WeightMode.TERNARY
            and negation == "carry")


def cell_family(platform):
    """The FPGA family whose cells the array instantiates for ``platform``: ``"ecp5"``,
    ``"iCE40"``, or None (generic adders: no platform, another family, or a stand-in platform
    with ``cells`` False)."""
    family = getattr(platform, "family", None)
    if family in ("ecp5", "iCE40") and getattr(platform, "cells", True):
        return family
    return None


def ccu2c_leaf_init():
    """The ``INIT`` of a ``CCU2C`` half that adds a t2-weighted activation bit to a bit ``y``.

    A ``CCU2C`` half (yosys ``ccu2c_sim.vh``) propagates with a LUT4 of inputs A-D and
    generates with a LUT2 of A and B that uses the same table's first four entries (C = D = 0).
    With A = y, B = x, C = the +1 flag and D = the -1 flag, the LUT4 is
    ``y ^ (nonzero & (x ^ negative))``; where C = D = 0 the operand is 0 and the LUT2 is y.
    When the propagate is 0 the two summands are equal, so y is the right generate: one LUT4
    per bit for ``y + w * x`` (the ``+1`` of a negative weight is the chain's carry-in) instead
    of one for the operand and one for the adder.
    """
    init = 0
    for i in range(16):
        a, b, c, d = (i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1, (i >> 3) & 1
        op = (c | d) & (b ^ d)
        init |= (a ^ op) << i
    assert init & 0xF == 0xA      # the LUT2 (C = D = 0) is A
    return init


def _ccu2c_init(function, generate):
    """A CCU2C half's ``INIT`` for inputs A, B, C and D = 1: ``function(a, b, c)`` where D = 1
    (the propagate), and the LUT2 ``generate`` (A, B) in the entries where C = D = 0, which the
    propagate does not use."""
    init = 0
    for i in range(8):
        a, b, c = i & 1, (i >> 1) & 1, (i >> 2) & 1
        init |= function(a, b, c) << (8 + i)
    for i in range(4):
        init |= generate(i & 1, (i >> 1) & 1) << i
    return init


# A half that passes A to its carry-out whatever its carry-in: propagate 0, generate A. It
# starts each adder of a chain, from a fabric signal, without the cell nextpnr adds to feed a
# chain's carry-in; and as it ignores the carry coming in, several adders share one chain.
_CCU2C_CARRY_IN = _ccu2c_init(lambda a, b, c: 0, lambda a, b: a)
# A half of a plain adder, A + B: propagate A ^ B, generate A.
_CCU2C_ADD = _ccu2c_init(lambda a, b, c: a ^ b, lambda a, b: a)
# An accumulator half, ``(restart ? 0 : acc) + value``: A = acc, B = value, C = restart. Where
# the propagate is 0 the two summands are equal, so the generate is B.
_CCU2C_ACCUMULATE = _ccu2c_init(lambda a, b, c: (a & (1 - c)) ^ b, lambda a, b: b)
# Adders per CCU2C chain: nextpnr places a chain from the first slice of a tile of four, so a
# chain of 5 cells (a first-level adder) leaves 3 slices unused; two 9-bit (or 10-, 11-bit)
# adders fill whole tiles or nearly. Longer chains did not pay: static timing follows the
# carry through every cell, not knowing that each adder's first half ignores it.
_CHAIN_ADDERS = 2


def _ccu2c_halves(init, cin, width, a, b, c=None, d=None):
    """The CCU2C halves of one ``width``-bit adder: the carry-in half bringing ``cin``, then a
    half of table ``init`` per bit, on bit j of ``a`` and ``b`` (sign-extended) and on ``c``
    and ``d`` (default 0 and 1)."""
    c = Const(0) if c is None else c
    d = Const(1) if d is None else d
    halves = [(_CCU2C_CARRY_IN, (cin, Const(0), Const(0), Const(1)))]
    for j in range(width):
        halves.append((init, (_bit(a, j), _bit(b, j), c, d)))
    return halves


def _bit(v, j):
    """Bit ``j`` of the signed value ``v``, sign-extended past its width."""
    return v[min(j, len(v) - 1)]


def ccu2c_accumulate(m, acc, value, carry, restart, width, name):
    """``(restart ? 0 : acc) + value + carry`` (``carry`` may be None) in one CCU2C chain,
    ``width`` bits: the restart multiplexer is folded into the adder's LUTs."""
    out = Signal(signed(width), name=name)
    cin = carry if carry is not None else Const(0)
    _ccu2c_chain(m, [(out, _ccu2c_halves(_CCU2C_ACCUMULATE, cin, width, acc, value, restart))],
                 f"{name}_ch")
    return out


# An iCE40 adder bit (yosys's ice40 arith_map.v): the LUT is I1 ^ I2 ^ I3 (I0 is 0), with
# I3 the carry in; the SB_CARRY beside it takes the same I1 and I2.
_ICE40_SUM = 0x6996


def ice40_adder(m, a, b, carry, width, name):
    """``a + b + carry`` (``carry`` may be None), ``width`` bits, built from iCE40 ``SB_LUT4``
    and ``SB_CARRY`` cells, as yosys maps an adder, but in cells of its own: yosys merges two
    adders of the same operands, these it leaves alone."""
    out = Signal(signed(width), name=name)
    cin = carry if carry is not None else Const(0)
    bits = []
    for j in range(width):
        aj, bj = _bit(a, j), _bit(b, j)
        o = Signal(name=f"{name}_o{j}")
        m.submodules[f"{name}_lut{j}"] = Instance(
            "SB_LUT4", p_LUT_INIT=Const(_ICE40_SUM, 16),
            i_I0=Const(0), i_I1=aj, i_I2=bj, i_I3=cin, o_O=o)
        if j < width - 1:
            co = Signal(name=f"{name}_co{j}")
            m.submodules[f"{name}_cy{j}"] = Instance(
                "SB_CARRY", i_I0=aj, i_I1=bj, i_CI=cin, o_CO=co)
            cin = co
        bits.append(o)
    m.d.comb += out.eq(Cat(*bits))
    return out


def _ccu2c_chain(m, adders, name):
    """One CCU2C chain of ``adders``, each ``(out, halves)``: drives every ``out`` with the sums
    of its halves after the first (its carry-in half)."""
    halves, taps = [], []
    for out, hs in adders:
        taps.append((out, len(halves) + 1))
        halves += hs
    if len(halves) % 2:
        halves.append((0, (Const(0), Const(0), Const(0), Const(0))))
    sums = []
    carry = Const(0)
    for i in range(0, len(halves), 2):
        (init0, (a0, b0, c0, d0)), (init1, (a1, b1, c1, d1)) = halves[i], halves[i + 1]
        cout = Signal(name=f"{name}_co{i // 2}")
        s0, s1 = Signal(name=f"{name}_s{i}"), Signal(name=f"{name}_s{i + 1}")
        m.submodules[f"{name}_ccu{i // 2}"] = Instance(
            "CCU2C",
            p_INIT0=Const(init0, 16), p_INIT1=Const(init1, 16),
            p_INJECT1_0="NO", p_INJECT1_1="NO",
            i_CIN=carry, i_A0=a0, i_B0=b0, i_C0=c0, i_D0=d0,
            i_A1=a1, i_B1=b1, i_C1=c1, i_D1=d1,
            o_S0=s0, o_S1=s1, o_COUT=cout)
        sums += [s0, s1]
        carry = cout
    for out, start in taps:
        m.d.comb += out.eq(Cat(*sums[start:start + len(out)]))


def build_dot(m, acts, codes, *, act_bits, mode, negation, pipeline, enable, negs=None,
              name="pe", fuse=False, zero=None):
    """Build one PE's datapath into ``m``.

    Returns ``(value, carry, lo, hi)``: the registered tree output, the one ``+1`` of the
    ``"carry"`` scheme that the tree had no adder left for (None for the other schemes), and the
    range of ``value + carry``. Registers advance when ``enable`` is high; ``enable`` may also
    be a list with one signal per register stage (stage 0 first), e.g. ``enable`` and the stage
    holding a valid tile, so that data registers keep still while no tile passes.
    ``fuse`` builds the adders from ECP5 ``CCU2C`` cells, the first level's folding the odd
    lanes' weights into the adders (see :func:`fused_leaves`): the same sums, fewer LUTs.
    With ``zero`` given (a signal), the last register stage takes 0 (value and carry) instead
    of the sum while ``zero`` is high, e.g. for a stage taking no tile.
    """
    B = act_bits
    lanes = len(acts)
    leaves = []
    carries = []
    raw = []
    for i, (x, code) in enumerate(zip(acts, codes, strict=True)):
        if mode is WeightMode.TERNARY:
            pos, neg = code[0], code[1]
            nonzero = pos | neg
        else:
            neg = code[0]
            nonzero = Const(1)
        raw.append((x, code))
        if fuse and i % 2 == 1:
            # Folded into the first level's adder below.
            leaves.append((None, -(1 << (B - 1)), (1 << (B - 1)) - 1))
            carries.append(neg)
            continue
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
    fused = []
    while len(items) > 1:
        level += 1
        nxt = []
        for j in range(0, len(items) - 1, 2):
            (a, alo, ahi), (b, blo, bhi) = items[j], items[j + 1]
            lo, hi = alo + blo, ahi + bhi
            if b is None:
                # The odd lane j + 1's weight is folded into this adder (first level only).
                hi += 1
                x, code = raw[j + 1]
                width = signed_width(lo, hi)
                assert width == B + 1
                s = Signal(signed(width), name=f"{name}_l{level}_{j // 2}")
                fused.append((s, _ccu2c_halves(ccu2c_leaf_init(), carries.pop(0), width, a,
                                               x, code[0], code[1])))
                nxt.append((s, lo, hi))
                continue
            if fuse and carries:
                # The other levels' adders in CCU2C chains too, several to a chain.
                hi += 1
                s = Signal(signed(signed_width(lo, hi)), name=f"{name}_l{level}_{j // 2}")
                fused.append((s, _ccu2c_halves(_CCU2C_ADD, carries.pop(0), len(s), a, b)))
                nxt.append((s, lo, hi))
                continue
            expr = a + b
            if carries:
                expr = expr + carries.pop(0)
                hi += 1
            s = Signal(signed(signed_width(lo, hi)), name=f"{name}_l{level}_{j // 2}")
            m.d.comb += s.eq(expr)
            nxt.append((s, lo, hi))
        for c in range(0, len(fused), _CHAIN_ADDERS):
            _ccu2c_chain(m, fused[c:c + _CHAIN_ADDERS], f"{name}_l{level}_ch{c // _CHAIN_ADDERS}")
        fused = []
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
        if pipeline and (level % pipeline == 0 or len(items) == 1):
            en = enable[stage] if isinstance(enable, (list, tuple)) else enable
            items, carries = _register(m, items, carries, en, f"{name}_p{level}",
                                       zero if len(items) == 1 else None)
            stage += 1
    value, lo, hi = items[0]
    carry = None
    if carries:
        (carry,) = carries
        hi += 1
    assert lanes == 1 or level == tree_depth(lanes)
    return value, carry, lo, hi


def _register(m, items, carries, enable, name, zero=None):
    # Data registers need no reset (the valid bits travelling beside them have one); without
    # it the reset does not fan out to every flip-flop of the tree. `zero` is a synchronous
    # clear: on an FPGA, the flip-flops' own reset input.
    regs, pairs = [], []
    for j, (v, lo, hi) in enumerate(items):
        r = Signal(v.shape(), name=f"{name}_{j}", reset_less=True)
        regs.append((r, lo, hi))
        pairs.append((r, v))
    if carries:
        c = Signal(len(carries), name=f"{name}_c", reset_less=True)
        pairs.append((c, Cat(*carries)))
        carries = [c[i] for i in range(len(carries))]
    with m.If(enable):
        for r, v in pairs:
            m.d.sync += r.eq(v)
        if zero is not None:
            with m.If(zero):
                m.d.sync += [r.eq(0) for r, _ in pairs]
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
            pipeline=self._pipeline, enable=enable, negs=negs,
            fuse=fused_leaves(platform, self._mode, self._negation))
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
