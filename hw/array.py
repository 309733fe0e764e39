"""PE array: P ternary PEs sharing one broadcast activation vector, accumulating across K tiles."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .formats import weight_vector_layout
from .params import check_bool, check_positive, signed_width
from .pe import (
    build_dot,
    ccu2c_accumulate,
    cell_family,
    check_pe_params,
    fused_leaves,
    ice40_adder,
    negate_activations,
    pipeline_latency,
)

__all__ = ["PEArray", "accumulator_range"]


def accumulator_range(max_k, act_bits):
    """Range of a row sum of up to ``max_k`` columns (padded lanes carry zero activations)."""
    bound = max_k * (1 << (act_bits - 1))
    return -bound, bound


class PEArray(wiring.Component):
    """P processing elements of N lanes computing P rows of a matrix-vector product at once.

    Every cycle one tile is accepted: an activation vector of N lanes, broadcast to all PEs, and
    one weight vector of N lanes per PE. A row block of P rows and K columns arrives as
    ``ceil(K / N)`` tiles framed by ``first`` (on the first tile) and ``last`` (on the final
    tile); a tile that is both first and last is a whole row block. The array emits one output
    per row block: P exact sums. Work that depends only on the activations (the ``"shared"``
    negation) is done once for all PEs.

    The pipeline advances as a whole whenever the output register is empty or being read, so the
    array sustains one tile per cycle while its input is valid and its output ready; a stalled
    output freezes every stage, so nothing is lost or duplicated.

    Parameters
    ----------
    lanes : int
        Lanes per PE (N).
    pes : int
        Number of PEs (P), i.e. rows per row block.
    act_bits : int
        Signed activation width, 2 to 16.
    weights : str or WeightMode
        ``"ternary"`` or ``"binary"``.
    pipeline : int
        A register every ``pipeline`` adder-tree levels; 0 for a combinational tree.
    max_k : int
        Longest row (columns) the accumulators must hold without overflow; at least ``lanes``.
    negation : str
        ``"carry"``, ``"shared"`` or ``"local"`` (see :mod:`lpu.hw.pe`).
    vectors : int
        Activation vectors V that share each weight tile (matrix-matrix products). With V > 1
        the input carries a ``vector`` index and every PE keeps V accumulators; the tiles of a
        row block arrive as tile 0 for vectors 0..V-1, tile 1 for vectors 0..V-1, and so on,
        and the V results of a row block leave in vector order.
    input_register : bool
        A register stage in front of the tree for the activations, weights and framing (one
        more cycle of latency): the tree's first adders then take flip-flops, not the block RAM
        or the buffer that feeds the array (an ECP5 block RAM's output alone takes 5.6 ns).

    Attributes
    ----------
    i_stream : In(stream.Signature(input_layout))
        ``act`` (N signed), ``weight`` (P vectors of N codes), ``first``, ``last``.
    o_stream : Out(stream.Signature(output_layout))
        P signed sums of ``acc_width`` bits, PE 0 lowest.
    latency : int
        Cycles from accepting a ``last`` tile to its sums being valid, without backpressure.

    Raises
    ------
    TypeError, ValueError
        For parameters of the wrong type or value, or conflicting ``max_k`` and ``lanes``.
    """

    def __init__(self, *, lanes, pes, act_bits=8, weights="ternary", pipeline=1, max_k=4096,
                 negation="carry", vectors=1, input_register=False):
        self._mode = check_pe_params(lanes, act_bits, weights, pipeline, negation)
        check_positive("PE count", pes)
        check_positive("Maximum row length", max_k)
        check_positive("Vector count", vectors)
        if max_k < lanes:
            raise ValueError(f"Maximum row length ({max_k}) must be at least the lane count "
                             f"({lanes})")
        self._lanes = lanes
        self._pes = pes
        self._act_bits = act_bits
        self._pipeline = pipeline
        self._max_k = max_k
        self._negation = negation
        self._vectors = vectors
        self._input_register = check_bool("Input register", input_register)
        self._acc_width = signed_width(*accumulator_range(max_k, act_bits))
        super().__init__({
            "i_stream": In(stream.Signature(self.input_layout)),
            "o_stream": Out(stream.Signature(self.output_layout)),
        })

    lanes = property(lambda self: self._lanes)
    pes = property(lambda self: self._pes)
    act_bits = property(lambda self: self._act_bits)
    mode = property(lambda self: self._mode)
    pipeline = property(lambda self: self._pipeline)
    max_k = property(lambda self: self._max_k)
    negation = property(lambda self: self._negation)
    vectors = property(lambda self: self._vectors)
    input_register = property(lambda self: self._input_register)
    acc_width = property(lambda self: self._acc_width)

    @property
    def input_layout(self):
        return data.StructLayout({
            "act": data.ArrayLayout(signed(self._act_bits), self._lanes),
            "weight": data.ArrayLayout(weight_vector_layout(self._mode, self._lanes), self._pes),
            "first": 1,
            "last": 1,
            **({"vector": range(self._vectors)} if self._vectors > 1 else {}),
        })

    @property
    def output_layout(self):
        return data.ArrayLayout(signed(self._acc_width), self._pes)

    @property
    def latency(self):
        return pipeline_latency(self._lanes, self._pipeline) + 1 + self._input_register

    def elaborate(self, platform):
        m = Module()
        pay = self.i_stream.payload
        o_valid = self.o_stream.valid
        enable = Signal()
        m.d.comb += [
            enable.eq(~o_valid | self.o_stream.ready),
            self.i_stream.ready.eq(enable),
        ]

        in_valid = self.i_stream.valid
        if self._input_register:
            # (in simulation, as the tree's stages below, it takes a value only with a tile)
            pay_r = Signal(self.input_layout, name="in_r", reset_less=True)
            in_valid = Signal(name="valid_in")
            with m.If(enable):
                m.d.sync += in_valid.eq(self.i_stream.valid)
            with m.If(enable & (self.i_stream.valid if platform is None else 1)):
                m.d.sync += pay_r.eq(pay)
            pay = pay_r

        acts = [pay.act[i] for i in range(self._lanes)]
        negs = None
        if self._negation == "shared":
            negs = negate_activations(m, acts, self._act_bits)

        # Framing travels beside the data through the tree's register stages. In simulation
        # (no platform) a data register stage takes a value only when a tile enters it: an idle
        # tree keeps still and the simulator skips its logic (the fast simulator runs 5.5 times
        # faster). On an FPGA every register of the tree advances on `enable` alone: gating
        # each stage with its valid bit as well put a second LUT level on the stall's path, the
        # array's slowest. The sums are the same: a stage's data matter only with its valid bit.
        vec_in = pay.vector if self._vectors > 1 else Const(0, 1)
        ctrl = Cat(in_valid, pay.first, pay.last, vec_in)
        ctrl_prev = None
        stage_enables = []
        stages = pipeline_latency(self._lanes, self._pipeline)
        fuse = fused_leaves(platform, self._mode, self._negation)
        # Accumulators cleared ahead (see below): with one vector and a register stage, on all
        # but the ECP5, whose CCU2C adders fold the restart multiplexer in for nothing (and
        # cleared ahead, its array placed at 150 MHz where it placed at 175).
        ahead = (self._vectors == 1 and stages > 0
                 and getattr(platform, "family", None) != "ecp5")
        for stage in range(stages):
            last_stage = ahead and stage == stages - 1
            stage_enables.append(enable & ctrl[0] if platform is None and not last_stage
                                 else enable)
            # Only the valid bits need a reset: the framing matters only beside one.
            nxt = Cat(Signal(name=f"valid_p{stage}"),
                      Signal(len(ctrl) - 1, name=f"frame_p{stage}", reset_less=True))
            with m.If(enable):
                m.d.sync += nxt.eq(ctrl)
            ctrl_prev, ctrl = ctrl, nxt

        sums = []
        for p in range(self._pes):
            codes = [Value.cast(pay.weight[p][i]) for i in range(self._lanes)]
            sums.append(build_dot(
                m, acts, codes, act_bits=self._act_bits, mode=self._mode,
                negation=self._negation, pipeline=self._pipeline, enable=stage_enables,
                negs=negs, name=f"pe{p}", fuse=fuse,
                zero=~ctrl_prev[0] if ahead else None)[:2])

        valid, first, last, vec = ctrl[0], ctrl[1], ctrl[2], ctrl[3:]
        step = enable & valid

        # A sum restarts from 0 on a first tile or on the tile after a last one (`fresh`).
        # Without clearing ahead: with a register stage in the tree, whether the tile in the
        # last stage restarts is known a cycle ahead from the stage before it, and `restart` is
        # a register: the accumulators' carry chains start one LUT after a flip-flop.
        if ahead:
            # An accumulator is cleared (on an FPGA, by its flip-flops' synchronous reset) on
            # the cycle before a tile that restarts it arrives: as a last tile is added, while
            # the stage before holds a first tile, or on an idle cycle after a reset (`fresh`).
            # The tree's last stage holds 0 when it holds no tile. So the adder takes the
            # accumulator as it is, with no multiplexer in front, and these registers advance
            # on `enable` alone, with no reset of their own (which would widen their enable):
            # a finished sum goes to the output register, which takes each new total while the
            # output is not held (its contents matter only while o_stream.valid is high).
            fresh = Signal(init=1)
            with m.If(step):
                m.d.sync += fresh.eq(last)
            clear = Signal()
            m.d.comb += clear.eq(Mux(valid, last, fresh) | (ctrl_prev[0] & ctrl_prev[1]))
            for p, (value, carry) in enumerate(sums):
                acc = Signal(signed(self._acc_width), name=f"acc{p}", reset_less=True)
                out = Signal(signed(self._acc_width), name=f"out{p}", reset_less=True)
                total = _total(m, None, acc, value, carry, fuse, f"total{p}")
                copy = total
                if cell_family(platform) == "iCE40":
                    # An iCE40 logic cell's flip-flop takes its own LUT's output only when
                    # nothing else does: the output register gets an adder of its own (in
                    # cells, which yosys does not merge with the first), so that both registers
                    # share logic cells with their adders instead of taking cells of their own.
                    copy = ice40_adder(m, acc, value, carry, len(acc), f"copy{p}")
                m.d.comb += self.o_stream.payload[p].eq(out)
                with m.If(enable):
                    m.d.sync += [acc.eq(total), out.eq(copy)]
                    with m.If(clear):
                        m.d.sync += acc.eq(0)
        elif self._vectors == 1:
            # The accumulators double as the output register: they hold a finished row block
            # while o_stream.valid is high.
            fresh = Signal(init=1)
            fresh_next = Mux(step, last, fresh)
            m.d.sync += fresh.eq(fresh_next)
            restart = _restart(m, first | fresh, ctrl_prev, enable, first, fresh_next)
            for p, (value, carry) in enumerate(sums):
                acc = self.o_stream.payload[p]
                total = _total(m, restart, acc, value, carry, fuse, f"total{p}")
                with m.If(step):
                    m.d.sync += acc.eq(total)
        else:
            # One accumulator per vector and PE; a finished sum is copied to the output
            # register, so vector v+1 can finish on the very next cycle.
            fresh = Signal(self._vectors, init=(1 << self._vectors) - 1)
            fresh_next = Signal(self._vectors)
            m.d.comb += fresh_next.eq(fresh)
            with m.If(step):
                m.d.comb += fresh_next.bit_select(vec, 1).eq(last)
            m.d.sync += fresh.eq(fresh_next)
            vec_next = Mux(enable, ctrl_prev[3:], vec) if ctrl_prev is not None else None
            if ctrl_prev is None:
                restart = first | fresh.bit_select(vec, 1)
            else:
                # A register loaded as its tile moves into the last stage, and held with it:
                # `fresh` changes only as a tile leaves, so it holds still meanwhile. Its
                # vector's bit of `fresh` as the step leaves it, with no multiplexer on the
                # vector (`vec_next`) in front of the selection.
                pv = ctrl_prev[3:]
                restart = Signal(init=1)
                with m.If(enable):
                    m.d.sync += restart.eq(ctrl_prev[1] |
                                           Mux(valid & (vec == pv), last,
                                               fresh.bit_select(pv, 1)))
            for p, (value, carry) in enumerate(sums):
                if vec_next is None:
                    accs = [Signal(signed(self._acc_width), name=f"acc{p}_v{v}")
                            for v in range(self._vectors)]
                    acc = Array(accs)[vec]
                    total = _total(m, restart, acc, value, carry, fuse, f"total{p}")
                    with m.If(step):
                        m.d.sync += acc.eq(total)
                else:
                    # With a stage before the last, the accumulators are a small memory (on an
                    # FPGA, distributed RAM) read a cycle ahead at the next tile's vector: the
                    # adder takes a register, not a V-way multiplexer of them. The read port is
                    # transparent, so a tile of the same vector as the one before it reads the
                    # total written in the same cycle.
                    m.submodules[f"accs{p}"] = accs = Memory(
                        shape=signed(self._acc_width), depth=self._vectors, init=[])
                    wr = accs.write_port()
                    rd = accs.read_port(transparent_for=(wr,))
                    total = _total(m, restart, rd.data, value, carry, fuse, f"total{p}")
                    m.d.comb += [rd.addr.eq(vec_next), wr.addr.eq(vec), wr.data.eq(total),
                                 wr.en.eq(step)]
                with m.If(step & last):
                    m.d.sync += self.o_stream.payload[p].eq(total)
        with m.If(enable):
            m.d.sync += o_valid.eq(valid & last)
        return m


def _restart(m, now, ctrl_prev, enable, first, fresh_next):
    """``now`` (``first | fresh`` of the tile in the last stage) as a register computed a cycle
    ahead, when there is a stage before the last one; otherwise ``now`` itself."""
    if ctrl_prev is None:
        return now
    restart = Signal(init=1)
    m.d.sync += restart.eq(Mux(enable, ctrl_prev[1], first) | fresh_next)
    return restart


def _total(m, restart, acc, value, carry, fuse, name):
    """``(restart ? 0 : acc) + value + carry`` (``acc + value + carry`` when ``restart`` is
    None: the accumulators cleared ahead, never on the ECP5), as wide as ``acc``; on an ECP5
    (``fuse``) in CCU2C cells that fold the multiplexer into the adder."""
    if fuse:
        return ccu2c_accumulate(m, acc, value, carry, restart, len(acc), name)
    total = Signal(signed(len(acc)), name=name)
    expr = (acc if restart is None else Mux(restart, 0, acc)) + value
    m.d.comb += total.eq(expr + carry if carry is not None else expr)
    return total

