"""Scale unit: applies per-tensor and per-group scales to the PE array's sums on the fabric.

The fixed point is defined once in the golden model (:mod:`lpu.sim.golden`): every output row
``o`` has an exponent ``e[o]`` and one signed 16-bit mantissa ``m[o, g]`` per group ``g`` (a
per-tensor scale is one group spanning the row). The :class:`ScaleUnit` forms, exactly,

    ``acc[o, v] = sum_g m[o, g] * P[o, g, v]``

from the array's group sums ``P`` and emits one ``acc`` per row and vector; the host finishes
``y = acc * 2**e[o] / s[v]`` (:func:`lpu.host.quant.bitlinear`). The host never receives
per-group partial sums.

Scale memory layout (:func:`scale_address`, :func:`scale_image`, used by the gateware, the
driver and the tests): the memory holds ``scale_depth`` words of P signed 16-bit mantissas, so
the P mantissas an input beat needs come from one read. Word ``scale_base + block * groups + g``
of a job holds ``m[block * P + p, g]`` in lane ``p`` (PE ``p``), where ``block = row // P`` and
``groups = ceil(cols / group)`` (1 when ``group`` is 0); the lanes of the last block past the
job's rows are zero (the unit also ignores them). A job takes :func:`scale_words` ``=
ceil(rows / P) * groups`` words; one whose words run past the memory (``scale_base +
scale_words > scale_depth``) is refused in set-up with
:attr:`~lpu.hw.streamer.StreamError.SCALES`.

Input order (from the streamer and array): row block, then group, then vector, each beat P sums
(PE 0 lowest). The unit keeps ``max_vectors`` words of P running sums in a small memory (a
register for ``max_vectors`` 1, which the row block's last group clears) and emits one beat of
P results per (row block, vector) when the row block's last group arrives, so the output order
is row block, then vector, as for a per-tensor job without the unit.

Widths: a row sum of ``max_k`` columns fits ``acc_width`` bits (``|P| <= B = max_k *
2**(act_bits-1)``, :func:`lpu.hw.array.accumulator_range`). The groups partition the row, so
``sum_g |P[o, g, v]| <= B`` as well, and ``|acc| <= 2**15 * B < 2**(acc_width + 15)``: the
products and the running sums are ``acc_width + 16`` bits (:attr:`ScaleUnit.out_width`) and no
legal input overflows, whatever the number of groups.

Throughput: P ``16 x acc_width`` multipliers (plain ``*``, one per PE, so yosys maps them to
DSPs where the device has them) in a four-stage pipeline take one beat per cycle
(:attr:`ScaleUnit.cycles_per_beat`): stage 0 accepts the beat and reads its mantissa word,
stage 1 puts the mantissas into a register (a block RAM's output is slow), stage 1b multiplies
registers and reads the vector's running sums, stage 2 adds and writes the running sums back,
or, on the row block's last group, loads the output register. Beats of the same vector follow
each other ``V`` beats apart (``V = 1``: back to back); stage 2's sums are written a cycle
late, from a register; the running-sum read port is transparent to that write, a beat moving
to stage 2 takes the sums stage 2 writes in the same cycle from the register, and older writes
are already in the memory. With ``max_vectors`` 1 the sums are a
register that stage 2 adds into and that the row block's last group clears (the next first
group then adds to zero), so the adders take flip-flops and feed the register directly. The
array delivers a beat every ``group / lanes`` cycles at best, so the unit never holds it back
unless the output is not ready: a finished beat waits in the output register, and only a beat
that finishes rows waits for it (holding the stages before it and the input; nothing is lost or
repeated). The last result leaves :attr:`ScaleUnit.latency` cycles after its beat was accepted.
"""

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import SequentialDivider, SequentialMultiplier
from .bram import RegisteredRAM
from .dsp import registered_product
from .params import check_bool, check_positive, check_range
from .streamer import DESCRIPTOR_LAYOUT

__all__ = ["ScaleUnit", "JOB_LAYOUT", "SCALE_BITS", "SCALE_STATUS_LAYOUT", "scale_address",
           "scale_groups", "scale_image", "scale_words"]

#: Width of a signed scale mantissa (as :data:`lpu.sim.golden.SCALE_BITS`).
SCALE_BITS = 16

#: Low bits of a sum multiplied apart from the rest with ``split_product``: unsigned, they and
#: the 16-bit mantissa fit an 18 x 18 signed multiplier.
PRODUCT_SPLIT = 17

#: A ``RUN`` job: the streamer's descriptor followed by the word address of its mantissas in the
#: scale memory. The streamer's descriptor is the low :data:`DESCRIPTOR_LAYOUT` bits.
JOB_LAYOUT = data.StructLayout({
    **{name: field.shape for name, field in DESCRIPTOR_LAYOUT},
    "scale_base": 16,
})

SCALE_STATUS_LAYOUT = data.StructLayout({
    "busy": 1,      # a job accepted and not finished (set-up, running or a result waiting)
    "setup": 1,     # checking the job's scale range
    "error": 1,     # the last job's mantissas run past the scale memory
})

#: Width of the set-up divisions ``ceil(cols / group)`` and ``ceil(rows / P)``: < 2**17.
_GROUP_DIV_WIDTH = 17


def scale_groups(cols, group):
    """Mantissas per row of a job: ``ceil(cols / group)``, 1 for whole rows (``group`` 0)."""
    return -(-cols // group) if group else 1


def scale_words(rows, groups, pes):
    """Scale-memory words of a job: ``ceil(rows / pes) * groups``."""
    return -(-rows // pes) * groups


def scale_address(scale_base, block, g, groups):
    """Scale-memory word of row block ``block`` (rows ``block * P ..``), group ``g``."""
    return scale_base + block * groups + g


def scale_image(mantissa, pes):
    """The scale-memory words of a job's ``(rows, groups)`` mantissas, in address order:
    an int64 array ``(scale_words, pes)``, lane ``p`` of a word for row ``block * pes + p``.

    Raises
    ------
    ValueError
        If ``mantissa`` is not 2-D integers in the signed 16-bit range.
    """
    m = np.asarray(mantissa)
    if m.ndim != 2 or (m.size and m.dtype.kind not in "iu"):
        raise ValueError(f"Scale mantissas must be a 2-D integer array (rows x groups), not "
                         f"{m.dtype} {m.shape}")
    lo, hi = -(1 << (SCALE_BITS - 1)), (1 << (SCALE_BITS - 1)) - 1
    if m.size and (m.min() < lo or m.max() > hi):
        raise ValueError(f"Scale mantissas must be in [{lo}, {hi}]")
    rows, groups = m.shape
    blocks = -(-rows // pes)
    words = np.zeros((blocks * groups, pes), dtype=np.int64)
    r, g = np.meshgrid(np.arange(rows), np.arange(groups), indexing="ij")
    words[scale_address(0, r // pes, g, groups), r % pes] = m
    return words


class ScaleUnit(wiring.Component):
    """Multiplies each group sum by its row's mantissa and accumulates across a row's groups.

    See the module docstring for the arithmetic, the scale memory and the throughput.

    Parameters
    ----------
    pes : int
        Sums per beat (the array's P).
    acc_width : int
        Width of the array's signed sums.
    scale_depth : int
        Words (of P mantissas) the scale memory holds, 1 to 65536.
    max_vectors : int
        Most activation vectors per job, 1 to 255.
    split_product : bool
        Two more pipeline stages (two more cycles of :attr:`latency`), for a fast clock:
        stage 1m copies the mantissas from the scale memory's output register (on an ECP5
        the block RAM's own, far from the multipliers) into flip-flops with their beat; it
        forms each product as two registered partial products, of the sum's low
        :data:`PRODUCT_SPLIT` bits (unsigned) and of the rest, so each fits one 18 x 18
        multiplier, and stage 1c adds them.

    Attributes
    ----------
    desc : In(stream.Signature(JOB_LAYOUT))
        A job; the unit checks its scale range and then waits for its sums.
    i_stream : In(stream.Signature(ArrayLayout(signed(acc_width), pes)))
        Group sums in the array's order.
    o_stream : Out(stream.Signature(ArrayLayout(signed(out_width), pes)))
        One beat per row block and vector.
    scale_wr : In(stream.Signature({"addr", "data"}))
        Scale-memory word writes (``data``: P signed 16-bit mantissas, lane ``p`` for PE
        ``p``); ``ready`` is always high.
    abort : In(1)
        Drop the current job (the streamer refused it); the unit returns to idle.
    status : Out(SCALE_STATUS_LAYOUT)

    Raises
    ------
    TypeError, ValueError
        For parameters of the wrong type or value.
    """

    def __init__(self, *, pes, acc_width, scale_depth=1024, max_vectors=1, split_product=False):
        check_positive("PE count", pes)
        self._split = check_bool("Split product", split_product)
        check_range("Accumulator width", acc_width, 2, 48)
        check_range("Scale memory depth", scale_depth, 1, 65536)
        check_range("Maximum vector count", max_vectors, 1, 255)
        self._pes = pes
        self._acc_width = acc_width
        self._scale_depth = scale_depth
        self._max_vectors = max_vectors
        super().__init__({
            "desc": In(stream.Signature(JOB_LAYOUT)),
            "i_stream": In(stream.Signature(data.ArrayLayout(signed(acc_width), pes))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(self.out_width), pes))),
            "scale_wr": In(stream.Signature(data.StructLayout({
                "addr": range(scale_depth),
                "data": data.ArrayLayout(signed(SCALE_BITS), pes)}))),
            "abort": In(1),
            "status": Out(SCALE_STATUS_LAYOUT),
        })

    pes = property(lambda self: self._pes)
    acc_width = property(lambda self: self._acc_width)
    scale_depth = property(lambda self: self._scale_depth)
    max_vectors = property(lambda self: self._max_vectors)

    @property
    def out_width(self):
        """Width of a scaled sum: ``acc_width + 16`` (module docstring)."""
        return self._acc_width + SCALE_BITS

    @property
    def setup_cycles(self):
        """Cycles of a job's set-up: the descriptor cycle, the divisions ``ceil(cols / group)``
        and ``ceil(rows / P)`` side by side, the ``blocks * groups`` multiplication (each with a
        start cycle) and the range check."""
        return 1 + 1 + (_GROUP_DIV_WIDTH + 1) + 1 + (16 + 1) + 1

    @property
    def cycles_per_beat(self):
        """Cycles from accepting one input beat to accepting the next, without stalls."""
        return 1

    @property
    def latency(self):
        """Cycles from accepting a row block's last beat to its results being offered."""
        return 4 + 2 * self._split

    def elaborate(self, platform):
        m = Module()
        P, W = self._pes, self.out_width
        # The divisor is the 16-bit group, so the remainder (below it) is 16 bits too.
        m.submodules.div = div = SequentialDivider(_GROUP_DIV_WIDTH, den_width=16)
        m.submodules.mul = mul = SequentialMultiplier(16)
        # (the mantissas' register, s1b_mant below, is the RAM's output register)
        m.submodules.scales = scales = RegisteredRAM(
            shape=data.ArrayLayout(signed(SCALE_BITS), P), depth=self._scale_depth)
        m.d.comb += [
            scales.w_addr.eq(self.scale_wr.payload.addr),
            scales.w_data.eq(self.scale_wr.payload.data),
            scales.w_en.eq(self.scale_wr.valid),
            self.scale_wr.ready.eq(1),
        ]

        job = Signal(JOB_LAYOUT)
        groups = Signal(16)
        # For the beat counters, registers: groups - 2 and vectors - 2 (the counters one short
        # of the last, so the next is the last) and whether a row has one group, a job one
        # vector.
        g_penult = Signal(16)
        v_penult = Signal(8)
        g_single = Signal()
        v_single = Signal()
        blocks = Signal(16)
        error = Signal()
        m.d.comb += self.status.error.eq(error)

        # ceil(rows / P): a shift for a power of two, else a second divider beside the first.
        rows_up = job.rows + (P - 1)
        if P & (P - 1) == 0:
            blocks_quot = rows_up >> (P.bit_length() - 1)
            blocks_busy = Const(0)
            blocks_start = Signal()
        else:
            m.submodules.blocks_div = bdiv = SequentialDivider(_GROUP_DIV_WIDTH,
                                                               den_width=P.bit_length())
            m.d.comb += [bdiv.num.eq(rows_up), bdiv.den.eq(P)]
            blocks_quot, blocks_busy, blocks_start = bdiv.quot, bdiv.busy, bdiv.start

        # Position of the next input beat: vector v of group g of the row block at scale word
        # `block_addr`, with `rows_left` rows of the job from the block's first row on (CHECK
        # sets them, so they need no reset). `v_last`, `g_last` and `block_last` tell that v,
        # g and the block are the last ones, kept with them so that taking a beat depends on
        # flip-flops rather than on comparisons.
        v = Signal(8, reset_less=True)
        g = Signal(16, reset_less=True)
        block_addr = Signal(18, reset_less=True)
        rows_left = Signal(17, reset_less=True)
        v_last = Signal(reset_less=True)
        g_last = Signal(reset_less=True)
        block_last = Signal(reset_less=True)
        # With split products (the pipelined form), the scale word of the next beat, block_addr
        # + g, kept with them: the mantissa memory's read address is a register, not an adder.
        r_addr = Signal.like(block_addr, name="r_addr")

        # The pipeline (module docstring). Stage 1 holds the accepted beat (its mantissa word
        # is on the scale memory's read port), stage 2 the products (its running sums on the
        # sums memory's read port).
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_beat = Signal(self.i_stream.payload.shape())
        s1_ok = Signal(P)                 # lanes of the job's rows (not the last block's padding)
        s1_v = Signal(range(self._max_vectors))
        # Stage 1b: the beat with its mantissas in a register (block RAM output is slow).
        s1b_valid, s1b_first, s1b_last = Signal(), Signal(), Signal()
        s1b_beat = Signal(self.i_stream.payload.shape())
        s1b_mant = scales.r_data
        s1b_v = Signal(range(self._max_vectors))
        s2_valid, s2_first, s2_last = Signal(), Signal(), Signal()
        s2_prod = Signal(data.ArrayLayout(signed(W), P))
        s2_v = Signal(range(self._max_vectors))

        o_valid = self.o_stream.valid
        out_free = ~o_valid | self.o_stream.ready
        s2_adv = s2_valid & (~s2_last | out_free)
        # With split products, stages 1m (the mantissas beside the multipliers) and 1c (the
        # partial products) between 1b and 2; `pre_*` is the stage that moves into stage 2:
        # 1c, or 1b without them.
        s1c_valid = Signal()
        s1m_valid = Signal()
        if self._split:
            s1c_first, s1c_last = Signal(), Signal()
            s1c_v = Signal(range(self._max_vectors))
            s1c_adv = s1c_valid & (~s2_valid | s2_adv)
            s1m_adv = s1m_valid & (~s1c_valid | s1c_adv)
            s1b_adv = s1b_valid & (~s1m_valid | s1m_adv)
            pre_first, pre_last, pre_v, pre_adv = s1c_first, s1c_last, s1c_v, s1c_adv
        else:
            s1b_adv = s1b_valid & (~s2_valid | s2_adv)
            pre_first, pre_last, pre_v, pre_adv = s1b_first, s1b_last, s1b_v, s1b_adv
        s1_adv = s1_valid & (~s1b_valid | s1b_adv)
        accept = self.i_stream.valid & self.i_stream.ready

        # The range check ``scale_base + words > scale_depth`` as ``words > room``, the room
        # behind ``scale_base`` a register (the job holds still from GROUPS on), and its
        # verdict registered: the product is final in the last cycle of MUL (the multiplier's
        # ``busy`` low), so CHECK acts on a flip-flop. The register holds ``-room - 1`` (the
        # room inverted), and ``words > room`` is ``words + ~room >= 0``: an adder of
        # flip-flops whose sign is the verdict.
        room_n = Signal(signed(18), reset_less=True)
        over = Signal(signed(len(mul.product) + 2))
        past_end = Signal()
        m.d.comb += over.eq(mul.product + room_n)
        m.d.sync += [room_n.eq(job.scale_base - self._scale_depth - 1), past_end.eq(~over[-1])]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                with m.If(self.desc.valid):
                    m.d.sync += [job.eq(self.desc.payload), error.eq(0)]
                    m.next = "GROUPS"
            with m.State("GROUPS"):
                m.d.comb += [div.start.eq(1), div.num.eq(job.cols + job.group - 1),
                             div.den.eq(job.group), blocks_start.eq(1)]
                m.next = "DIV"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("DIV"):
                with m.If(~div.busy & ~blocks_busy):
                    m.d.sync += [groups.eq(Mux(job.group == 0, 1, div.quot)),
                                 v_penult.eq(job.vectors - 2),
                                 v_single.eq(job.vectors == 1),
                                 blocks.eq(blocks_quot)]
                    m.next = "SIZE"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("SIZE"):
                # From `groups` rather than the quotient: its last bit comes out of the
                # divider's carry chain in the last cycle of DIV, so it feeds one register.
                m.d.comb += [mul.start.eq(1), mul.a.eq(blocks), mul.b.eq(groups)]
                m.d.sync += [g_penult.eq(groups - 2), g_single.eq(groups == 1)]
                m.next = "MUL"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("MUL"):
                with m.If(~mul.busy):
                    m.next = "CHECK"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("CHECK"):
                with m.If(past_end):
                    m.d.sync += error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    if self._split:
                        m.d.sync += r_addr.eq(job.scale_base)
                    m.d.sync += [v.eq(0), g.eq(0), block_addr.eq(job.scale_base),
                                 rows_left.eq(job.rows), v_last.eq(v_single),
                                 g_last.eq(g_single), block_last.eq(job.rows <= P)]
                    m.next = "RUN"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("RUN"):
                # Stage 0: take a beat whenever stage 1 is free or moves on this cycle.
                m.d.comb += self.i_stream.ready.eq(~s1_valid | s1_adv)
                with m.If(accept):
                    m.d.sync += [
                        s1_beat.eq(self.i_stream.payload),
                        s1_first.eq(g == 0),
                        s1_last.eq(g_last),
                        s1_v.eq(v),
                        s1_ok.eq(Cat(rows_left > p for p in range(P))),
                        v.eq(Mux(v_last, 0, v + 1)),
                        v_last.eq(Mux(v_last, v_single, v == v_penult)),
                    ]
                    with m.If(v_last):
                        m.d.sync += [g.eq(Mux(g_last, 0, g + 1)),
                                     g_last.eq(Mux(g_last, g_single, g == g_penult))]
                        if self._split:
                            m.d.sync += r_addr.eq(Mux(g_last, block_addr + groups, r_addr + 1))
                        with m.If(g_last):
                            m.d.sync += [block_addr.eq(block_addr + groups),
                                         rows_left.eq(rows_left - P),
                                         block_last.eq(rows_left <= 2 * P)]
                            with m.If(block_last):
                                m.next = "IDLE"         # the job's last beat
                with m.If(self.abort):
                    m.next = "IDLE"

        # Busy out of IDLE or while a beat is in the pipeline; set-up in the states before RUN
        # (state tests: one flip-flop each with one-hot state coding).
        idle = fsm.ongoing("IDLE")
        m.d.comb += [
            self.status.busy.eq(~idle | s1_valid | s1b_valid | s1m_valid | s1c_valid | s2_valid |
                               o_valid),
            self.status.setup.eq(~idle & ~fsm.ongoing("RUN")),
        ]

        # Stage 0 reads the mantissa word of the beat it accepts.
        m.d.comb += [scales.r_addr.eq(r_addr if self._split else block_addr + g),
                     scales.r_en.eq(accept), scales.r_oe.eq(s1_adv)]
        with m.If(accept):
            m.d.sync += s1_valid.eq(1)
        with m.Elif(s1_adv):
            m.d.sync += s1_valid.eq(0)

        # Stage 1: the mantissas into a register, straight from the block RAM; the padding
        # rows of the last block get a zero sum instead (the same product, zero).
        with m.If(s1_adv):
            m.d.sync += [s1b_valid.eq(1), s1b_first.eq(s1_first), s1b_last.eq(s1_last),
                         s1b_v.eq(s1_v)]
            for p in range(P):
                m.d.sync += s1b_beat[p].eq(Mux(s1_ok[p], s1_beat[p], 0))
        with m.Elif(s1b_adv):
            m.d.sync += s1b_valid.eq(0)

        # Stage 1b: P products of registers (split: stage 1m forms P pairs of partial
        # products, and stage 1c adds each pair).
        if self._split:
            # Stage 1m: the mantissas and the beat in flip-flops beside the multipliers.
            s1m_first, s1m_last = Signal(), Signal()
            s1m_v = Signal(range(self._max_vectors))
            s1m_beat = Signal.like(s1b_beat)
            s1m_mant = Signal.like(s1b_mant)
            with m.If(s1b_adv):
                m.d.sync += [s1m_valid.eq(1), s1m_first.eq(s1b_first), s1m_last.eq(s1b_last),
                             s1m_v.eq(s1b_v), s1m_beat.eq(s1b_beat), s1m_mant.eq(s1b_mant)]
            with m.Elif(s1m_adv):
                m.d.sync += s1m_valid.eq(0)
            k = PRODUCT_SPLIT
            hi_w = max(1, len(s1m_beat[0]) - k)
            # (each partial product's register is, on an ECP5, its DSP's own)
            s1c_lo, s1c_hi = [], []
            for p in range(P):
                beat = s1m_beat[p]
                lo, hi = (beat[:k], beat[k:].as_signed()) if len(beat) > k else (beat, 0)
                s1c_lo.append(registered_product(m, platform, s1m_mant[p], lo, en=s1m_adv,
                                                 shape=signed(SCALE_BITS + k + 1),
                                                 name=f"s1c_lo{p}"))
                s1c_hi.append(registered_product(m, platform, s1m_mant[p], hi, en=s1m_adv,
                                                 shape=signed(SCALE_BITS + hi_w),
                                                 name=f"s1c_hi{p}")
                              if len(beat) > k else Const(0, signed(SCALE_BITS + hi_w)))
            with m.If(s1m_adv):
                m.d.sync += [s1c_valid.eq(1), s1c_first.eq(s1m_first), s1c_last.eq(s1m_last),
                             s1c_v.eq(s1m_v)]
            with m.Elif(s1c_adv):
                m.d.sync += s1c_valid.eq(0)
            products = [(s1c_hi[p] << k) + s1c_lo[p] for p in range(P)]
        else:
            products = [s1b_mant[p] * s1b_beat[p] for p in range(P)]
        with m.If(pre_adv):
            m.d.sync += [s2_valid.eq(1), s2_first.eq(pre_first), s2_last.eq(pre_last),
                         s2_v.eq(pre_v)]
            for p in range(P):
                m.d.sync += s2_prod[p].eq(products[p])
        with m.Elif(s2_adv):
            m.d.sync += s2_valid.eq(0)

        # Stage 2: accumulate; a row block's last group goes to the output register.
        total = Signal(data.ArrayLayout(signed(W), P))
        if self._max_vectors == 1:
            # One vector: the running sums are a register that the row block's last beat
            # clears, so a first group adds zero without a select in front of the adders, and
            # the sums go straight back into the register (the clearing is its flip-flops'
            # reset input). An abort, or a reset, clears it a cycle later (`clear` is set by
            # either), before any beat of the next job can reach stage 2.
            run = Signal(data.ArrayLayout(signed(W), P), reset_less=True)
            clear = Signal(init=1)
            m.d.sync += clear.eq(self.abort)
            for p in range(P):
                m.d.comb += total[p].eq(run[p] + s2_prod[p])
            with m.If(s2_adv & s2_last | clear):
                m.d.sync += run.eq(0)
            with m.Elif(s2_adv):
                m.d.sync += run.eq(total)
        else:
            # The vector's running sums are read as its beat moves to stage 2. Stage 2's sums
            # go into a register, `w_sum`, and from there into the memory a cycle later, so
            # neither the memory's write data nor its read register waits for the adders. The
            # read port is transparent to that write (a register's), and the write stage 2
            # makes as the read happens is taken from `w_sum` in the next cycle (`fwd`), where
            # it stays while the reading beat is in stage 2: only that beat writes next.
            m.submodules.sums = sums = Memory(shape=data.ArrayLayout(signed(W), P),
                                              depth=self._max_vectors, init=[])
            a_w = sums.write_port()
            a_r = sums.read_port(transparent_for=(a_w,))
            w_sum = Signal.like(total, reset_less=True)
            w_v = Signal.like(s2_v, reset_less=True)
            w_pend = Signal()
            fwd = Signal()
            s2_write = s2_valid & ~s2_last
            m.d.comb += [a_r.addr.eq(pre_v), a_r.en.eq(pre_adv),
                         a_w.addr.eq(w_v), a_w.data.eq(w_sum), a_w.en.eq(w_pend)]
            m.d.sync += w_pend.eq(s2_write)
            with m.If(s2_write):
                m.d.sync += [w_sum.eq(total), w_v.eq(s2_v)]
            with m.If(pre_adv):
                m.d.sync += fwd.eq(s2_write & (s2_v == pre_v))
            for p in range(P):
                m.d.comb += total[p].eq(Mux(s2_first, 0, Mux(fwd, w_sum[p], a_r.data[p])) +
                                        s2_prod[p])
        with m.If(self.o_stream.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(s2_adv & s2_last):
            m.d.sync += [self.o_stream.payload.eq(total), o_valid.eq(1)]

        with m.If(self.abort):
            m.d.sync += [o_valid.eq(0), s1_valid.eq(0), s1b_valid.eq(0), s1m_valid.eq(0),
                         s1c_valid.eq(0), s2_valid.eq(0)]
        return m
