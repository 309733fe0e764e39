"""Scale unit: applies per-tensor and per-group scales to the PE array's sums on the fabric.

The fixed point is defined once in the golden model (:mod:`lpu.sim.golden`): every output row
``o`` has an exponent ``e[o]`` and one signed 16-bit mantissa ``m[o, g]`` per group ``g`` (a
per-tensor scale is one group spanning the row). The :class:`ScaleUnit` forms, exactly,

    ``acc[o, v] = sum_g m[o, g] * P[o, g, v]``

from the array's group sums ``P`` and emits one ``acc`` per row and vector; the host finishes
``y = acc * 2**e[o] / s[v]`` (:func:`lpu.host.quant.bitlinear`). The host never receives
per-group partial sums.

Scale memory layout (:func:`scale_address`, used by the gateware, the driver and the tests):
the mantissas of a job are row-major from the job's ``scale_base``, mantissa ``m[row, g]`` at
``scale_base + row * groups + g``, where ``groups = ceil(cols / group)`` (1 when ``group`` is
0). A job whose mantissas run past the scale memory (``scale_base + rows * groups >
scale_depth``) is refused in set-up with :attr:`~lpu.hw.streamer.StreamError.SCALES`.

Input order (from the streamer and array): row block, then group, then vector, each beat P sums
(PE 0 lowest). The unit keeps ``max_vectors x P`` running sums in a small memory and emits one
beat of P results per (row block, vector) when the row block's last group arrives, so the output
order is row block, then vector, as for a per-tensor job without the unit.

Widths: a row sum of ``max_k`` columns fits ``acc_width`` bits (``|P| <= B = max_k *
2**(act_bits-1)``, :func:`lpu.hw.array.accumulator_range`). The groups partition the row, so
``sum_g |P[o, g, v]| <= B`` as well, and ``|acc| <= 2**15 * B < 2**(acc_width + 15)``: the
products and the running sums are ``acc_width + 16`` bits (:attr:`ScaleUnit.out_width`) and no
legal input overflows, whatever the number of groups.

Throughput: one shared ``16 x acc_width`` multiplier (a plain ``*``, so yosys maps it to a DSP
where the device has one) serves the P lanes of a beat one per cycle, in a three-stage pipeline
(read mantissa and running sum, multiply, accumulate), so a beat takes ``P + 3`` cycles
(:attr:`ScaleUnit.cycles_per_beat`) from being accepted to the next beat being accepted. The
array delivers a beat every ``group / lanes`` cycles (whole rows: ``cols / lanes``), so the
unit keeps up when a group spans at least ``P + 3`` tiles and otherwise holds the array back
(the streamer's ``out_stall`` counter shows it). Output backpressure stalls the unit only when
a finished beat is still waiting to leave.
"""

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import SequentialDivider, SequentialMultiplier
from .params import check_positive, check_range
from .streamer import DESCRIPTOR_LAYOUT

__all__ = ["ScaleUnit", "JOB_LAYOUT", "SCALE_BITS", "SCALE_STATUS_LAYOUT", "scale_address",
           "scale_groups", "scale_image"]

#: Width of a signed scale mantissa (as :data:`lpu.sim.golden.SCALE_BITS`).
SCALE_BITS = 16

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

#: Width of the set-up division ``ceil(cols / group)``: cols + group - 1 < 2**17.
_GROUP_DIV_WIDTH = 17


def scale_groups(cols, group):
    """Mantissas per row of a job: ``ceil(cols / group)``, 1 for whole rows (``group`` 0)."""
    return -(-cols // group) if group else 1


def scale_address(scale_base, row, g, groups):
    """Scale-memory address of mantissa ``m[row, g]`` of a job with ``groups`` per row."""
    return scale_base + row * groups + g


def scale_image(mantissa):
    """The scale-memory words of a job's ``(rows, groups)`` mantissas, in address order.

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
    flat = np.zeros(rows * groups, dtype=np.int64)
    r, g = np.meshgrid(np.arange(rows), np.arange(groups), indexing="ij")
    flat[scale_address(0, r, g, groups).reshape(-1)] = m.reshape(-1)
    return flat


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
        Mantissas the scale memory holds, 1 to 65536.
    max_vectors : int
        Most activation vectors per job, 1 to 255.

    Attributes
    ----------
    desc : In(stream.Signature(JOB_LAYOUT))
        A job; the unit checks its scale range and then waits for its sums.
    i_stream : In(stream.Signature(ArrayLayout(signed(acc_width), pes)))
        Group sums in the array's order.
    o_stream : Out(stream.Signature(ArrayLayout(signed(out_width), pes)))
        One beat per row block and vector.
    scale_wr : In(stream.Signature({"addr", "data"}))
        Scale-memory writes (signed 16-bit mantissas); ``ready`` is always high.
    abort : In(1)
        Drop the current job (the streamer refused it); the unit returns to idle.
    status : Out(SCALE_STATUS_LAYOUT)

    Raises
    ------
    TypeError, ValueError
        For parameters of the wrong type or value.
    """

    def __init__(self, *, pes, acc_width, scale_depth=1024, max_vectors=1):
        check_positive("PE count", pes)
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
                "addr": range(scale_depth), "data": signed(SCALE_BITS)}))),
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
        """Cycles of a job's set-up: the descriptor cycle, the group division, the
        ``rows * groups`` multiplication (each with a start cycle) and the range check."""
        return 1 + 1 + (_GROUP_DIV_WIDTH + 1) + 1 + (16 + 1) + 1

    @property
    def cycles_per_beat(self):
        """Cycles from accepting one input beat to accepting the next, without stalls."""
        return self._pes + 3

    def elaborate(self, platform):
        m = Module()
        P, W = self._pes, self.out_width
        m.submodules.div = div = SequentialDivider(_GROUP_DIV_WIDTH)
        m.submodules.mul = mul = SequentialMultiplier(16)
        m.submodules.scales = scales = Memory(shape=signed(SCALE_BITS), depth=self._scale_depth,
                                              init=[])
        m.submodules.sums = sums = Memory(shape=signed(W), depth=self._max_vectors * P, init=[])
        s_w, s_r = scales.write_port(), scales.read_port()
        a_w, a_r = sums.write_port(), sums.read_port()
        m.d.comb += [
            s_w.addr.eq(self.scale_wr.payload.addr),
            s_w.data.eq(self.scale_wr.payload.data),
            s_w.en.eq(self.scale_wr.valid),
            self.scale_wr.ready.eq(1),
        ]

        job = Signal(JOB_LAYOUT)
        groups = Signal(16)
        error = Signal()
        m.d.comb += self.status.error.eq(error)

        # Position of the next input beat: vector v of group g of the row block from `row`.
        v = Signal(8)
        vbase = Signal(range(self._max_vectors * P + 1))      # v * P
        g = Signal(16)
        row = Signal(17)
        row_addr = Signal(34)                                 # scale_base + row * groups
        block_step = Signal(34)                               # P * groups

        # The beat in flight.
        beat = Signal(self.i_stream.payload.shape())
        b_first = Signal()        # first group: the running sums start from zero
        b_last = Signal()         # last group: the lanes go to the output register
        b_final = Signal()        # the job's last beat
        lane = Signal(range(max(P, 2)))
        maddr = Signal(34)        # mantissa address of the lane being issued
        aaddr = Signal(range(self._max_vectors * P + 1))
        lrow = Signal(17)         # row of the lane being issued
        s1_valid, s1_ok, s1_lane = Signal(), Signal(), Signal(range(max(P, 2)))
        s1_aaddr = Signal.like(aaddr)
        s2_valid, s2_lane = Signal(), Signal(range(max(P, 2)))
        s2_aaddr = Signal.like(aaddr)
        prod = Signal(signed(W))
        old = Signal(signed(W))

        o_valid = self.o_stream.valid
        with m.If(self.o_stream.ready):
            m.d.sync += o_valid.eq(0)

        m.d.comb += self.status.busy.eq(o_valid)
        m.d.sync += s1_valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                with m.If(self.desc.valid):
                    m.d.sync += [job.eq(self.desc.payload), error.eq(0)]
                    m.next = "GROUPS"
            with m.State("GROUPS"):
                m.d.comb += [self.status.busy.eq(1), self.status.setup.eq(1),
                             div.start.eq(1), div.num.eq(job.cols + job.group - 1),
                             div.den.eq(job.group)]
                m.next = "DIV"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("DIV"):
                m.d.comb += [self.status.busy.eq(1), self.status.setup.eq(1)]
                with m.If(~div.busy):
                    m.d.sync += groups.eq(Mux(job.group == 0, 1, div.quot))
                    m.next = "SIZE"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("SIZE"):
                m.d.comb += [self.status.busy.eq(1), self.status.setup.eq(1),
                             mul.start.eq(1), mul.a.eq(job.rows), mul.b.eq(groups)]
                m.next = "MUL"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("MUL"):
                m.d.comb += [self.status.busy.eq(1), self.status.setup.eq(1)]
                with m.If(~mul.busy):
                    m.next = "CHECK"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("CHECK"):
                m.d.comb += [self.status.busy.eq(1), self.status.setup.eq(1)]
                with m.If(job.scale_base + mul.product > self._scale_depth):
                    m.d.sync += error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [v.eq(0), vbase.eq(0), g.eq(0), row.eq(0),
                                 row_addr.eq(job.scale_base), block_step.eq(groups * P)]
                    m.next = "WAIT"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("WAIT"):
                m.d.comb += self.status.busy.eq(1)
                g_last = g == groups - 1
                # a beat that finishes rows needs the output register
                m.d.comb += self.i_stream.ready.eq(~o_valid | ~g_last)
                with m.If(self.i_stream.valid & self.i_stream.ready):
                    v_last = v == job.vectors - 1
                    m.d.sync += [
                        beat.eq(self.i_stream.payload),
                        b_first.eq(g == 0),
                        b_last.eq(g_last),
                        b_final.eq(v_last & g_last & (row + P >= job.rows)),
                        lane.eq(0),
                        maddr.eq(row_addr + g),
                        aaddr.eq(vbase),
                        lrow.eq(row),
                        v.eq(Mux(v_last, 0, v + 1)),
                        vbase.eq(Mux(v_last, 0, vbase + P)),
                    ]
                    with m.If(v_last):
                        m.d.sync += g.eq(Mux(g_last, 0, g + 1))
                        with m.If(g_last):
                            m.d.sync += [row.eq(row + P), row_addr.eq(row_addr + block_step)]
                    m.next = "LANES"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("LANES"):
                # Issue one lane per cycle: read its mantissa and running sum.
                m.d.comb += [self.status.busy.eq(1), s_r.addr.eq(maddr), a_r.addr.eq(aaddr)]
                m.d.sync += [s1_valid.eq(1), s1_lane.eq(lane), s1_aaddr.eq(aaddr),
                             s1_ok.eq(lrow < job.rows),
                             lane.eq(lane + 1), maddr.eq(maddr + groups), aaddr.eq(aaddr + 1),
                             lrow.eq(lrow + 1)]
                with m.If(lane == P - 1):
                    m.next = "DRAIN"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("DRAIN"):
                m.d.comb += self.status.busy.eq(1)
                with m.If(s2_valid & (s2_lane == P - 1)):
                    m.next = "WAIT"
                    with m.If(b_final):
                        m.next = "IDLE"
                with m.If(self.abort):
                    m.next = "IDLE"

        # Stage 1: the mantissa (zero for the padding rows of the last block) times the sum.
        with m.If(s1_valid):
            m.d.sync += [prod.eq(Mux(s1_ok, s_r.data, 0) * beat[s1_lane]), old.eq(a_r.data)]
        m.d.sync += [s2_valid.eq(s1_valid), s2_lane.eq(s1_lane), s2_aaddr.eq(s1_aaddr)]
        # Stage 2: accumulate; a row's last group goes to the output register.
        total = Signal(signed(W))
        m.d.comb += total.eq(Mux(b_first, 0, old) + prod)
        with m.If(s2_valid):
            with m.If(b_last):
                m.d.sync += self.o_stream.payload[s2_lane].eq(total)
                with m.If(s2_lane == P - 1):
                    m.d.sync += o_valid.eq(1)
            with m.Else():
                m.d.comb += [a_w.addr.eq(s2_aaddr), a_w.data.eq(total), a_w.en.eq(1)]
        with m.If(self.abort):
            m.d.sync += [o_valid.eq(0), s1_valid.eq(0), s2_valid.eq(0)]
        return m
