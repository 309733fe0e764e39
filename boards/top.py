"""Board tops: an LPU with on-chip weight memory behind a UART, for amaranth-boards platforms.

:data:`BOARDS` is the one table of supported boards and their default LPU configurations.
:class:`BoardTop` puts together the platform's default clock, an 8N1 UART
(:mod:`lpu.boards.uart`), the :class:`~lpu.hw.lpu.LPU` and a :class:`BurstRAM` holding the
weights. The host reaches it with ``lpu run --backend serial --port ... --baud ...``.
"""

from dataclasses import dataclass, field

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from lpu.hw.lpu import LPU
from lpu.hw.params import check_positive
from lpu.hw.streamer import mem_request_layout

from .uart import UARTRx, UARTTx, baud_divisor

__all__ = ["BoardSpec", "BOARDS", "board_spec", "BurstRAM", "BoardTop", "lpu_for"]


@dataclass(frozen=True)
class BoardSpec:
    """A supported board: its platform, its FPGA's resources and its default LPU."""

    name: str
    #: ``module:class`` of the amaranth-boards platform.
    platform: str
    #: ``ice40`` or ``ecp5``: picks the synthesis script.
    family: str
    #: Resources available on the FPGA (nextpnr's count), for the fit check and the report.
    resources: dict
    #: Keyword arguments of :func:`lpu_for` (LPU parameters and memory size).
    lpu: dict = field(default_factory=dict)
    #: Baud rate of the UART.
    baud: int = 115_200


#: The supported boards. Default LPU sizes: the iCEBreaker's UP5K has 5280 LUTs and 30 block
#: RAMs of 512 bytes, so it gets a small array and 4 KiB of weights; the ULX3S-85F's LFE5U-85F
#: has 83640 LUTs and 208 block RAMs of 2 KiB, so it gets the 64-lane, 4-PE array of
#: :func:`lpu.host.run.device_for` and 160 KiB of weights (80 block RAMs): the shipped model's
#: t2 image is 36864 words.
BOARDS = {
    "icebreaker": BoardSpec(
        name="icebreaker", platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
        family="ice40",
        resources={"lut": 5280, "ff": 5280, "bram": 30, "spram": 4, "dsp": 8},
        lpu=dict(lanes=16, pes=2, mem_words=1024, max_k=256, max_vectors=1, max_burst=8,
                 out_depth=32, scale_depth=64)),
    "ulx3s-85f": BoardSpec(
        name="ulx3s-85f", platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        family="ecp5",
        resources={"lut": 83640, "ff": 83640, "bram": 208, "spram": 0, "dsp": 156},
        lpu=dict(lanes=64, pes=4, mem_words=40960, max_k=1024, max_vectors=16, max_burst=32,
                 out_depth=256, scale_depth=1024)),
}


def board_spec(name):
    """The :class:`BoardSpec` called ``name``."""
    if name not in BOARDS:
        raise ValueError(f"Board must be one of {', '.join(BOARDS)}, not {name!r}")
    return BOARDS[name]


def lpu_for(*, lanes, pes, mem_words, max_k, max_vectors, max_burst, out_depth, scale_depth,
            word_bits=32, formats=("t2",)):
    """An LPU whose memory port addresses ``mem_words`` words of on-chip RAM."""
    check_positive("Memory size in words", mem_words)
    addr_width = max(1, (mem_words - 1).bit_length())
    return LPU(lanes=lanes, pes=pes, word_bits=word_bits, addr_width=addr_width,
               mem_words=mem_words, max_k=max_k, max_vectors=max_vectors, max_burst=max_burst,
               formats=list(formats), out_depth=out_depth, scale_depth=scale_depth)


class BurstRAM(wiring.Component):
    """On-chip RAM behind the LPU's burst read port and word write port.

    The timing of :class:`~lpu.sim.memory_models.MemoryModel`'s ``bram`` preset -- the first
    word one cycle after the request, then one word per cycle, a request queued behind a burst
    starting without a gap -- but with a synchronous read port, so it maps to block RAM. A word
    is read only when the output register is free or being emptied, so a word once offered stays
    offered until taken.

    Parameters
    ----------
    words, word_bits : int
    request_layout : StructLayout
        ``{"addr", "len"}``, as :func:`lpu.hw.streamer.mem_request_layout`.

    Attributes
    ----------
    req : In(stream.Signature(request_layout))
    resp : Out(stream.Signature(word_bits))
    wr : In(stream.Signature(StructLayout({"addr", "data"})))
        Always ready; a write to an address beyond ``words`` is ignored.
    """

    def __init__(self, *, words, word_bits, request_layout):
        check_positive("Memory size in words", words)
        check_positive("Word width", word_bits)
        self._words = words
        self._mem = Memory(shape=word_bits, depth=words, init=[])
        super().__init__({
            "req": In(stream.Signature(request_layout)),
            "resp": Out(stream.Signature(word_bits)),
            "wr": In(stream.Signature(data.StructLayout({
                "addr": request_layout["addr"].shape, "data": word_bits}))),
        })

    words = property(lambda self: self._words)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self._mem
        wp = mem.write_port()
        rd = mem.read_port()
        m.d.comb += [wp.addr.eq(self.wr.payload.addr), wp.data.eq(self.wr.payload.data),
                     wp.en.eq(self.wr.valid & (self.wr.payload.addr < self._words)),
                     self.wr.ready.eq(1)]

        addr = Signal.like(self.req.payload.addr)
        left = Signal.like(self.req.payload.len)
        have = Signal()              # rd.data holds a word not yet taken
        taken = self.resp.valid & self.resp.ready
        free = ~have | self.resp.ready
        m.d.comb += [self.resp.valid.eq(have), self.resp.payload.eq(rd.data)]

        accept = self.req.valid & self.req.ready
        # A new burst's first word is read in the cycle its request is accepted.
        start = accept & (left == 0) & free & (self.req.payload.len != 0)
        cont = (left != 0) & free
        m.d.comb += [
            self.req.ready.eq((left == 0) | ((left == 1) & cont)),
            rd.en.eq(start | cont),
            rd.addr.eq(addr),
        ]
        with m.If(start):
            m.d.comb += rd.addr.eq(self.req.payload.addr)

        with m.If(start | cont):
            m.d.sync += have.eq(1)
        with m.Elif(taken):
            m.d.sync += have.eq(0)

        with m.If(accept & (left == 0)):
            with m.If(start):
                m.d.sync += [addr.eq(self.req.payload.addr + 1),
                             left.eq(self.req.payload.len - 1)]
            with m.Else():
                m.d.sync += [addr.eq(self.req.payload.addr), left.eq(self.req.payload.len)]
        with m.Elif(accept):
            # the last word of the current burst is read now; the new burst follows next cycle
            m.d.sync += [addr.eq(self.req.payload.addr), left.eq(self.req.payload.len)]
        with m.Elif(cont):
            m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
        return m


class BoardTop(wiring.Component):
    """UART + LPU + on-chip weight memory, clocked by the platform's default clock.

    Parameters
    ----------
    lpu : LPU
        Its memory port must address exactly ``mem_words`` words (see :func:`lpu_for`).
    clk_hz : int
        Frequency of the ``sync`` domain (the board's default clock).
    baud : int
        UART baud rate.

    Attributes
    ----------
    uart_rx : In(1), uart_tx : Out(1)
        The serial lines; on a platform they are connected to the board's ``uart`` resource
        instead.
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)

    def __init__(self, *, lpu, clk_hz, baud):
        if not isinstance(lpu, LPU):
            raise TypeError(f"LPU must be an LPU, not {lpu!r}")
        self._lpu = lpu
        self._clk_hz = check_positive("Clock frequency", clk_hz)
        self._baud = baud
        self._divisor = baud_divisor(clk_hz, baud)
        st = lpu.streamer
        self._ram = BurstRAM(words=st.mem_words, word_bits=st.word_bits,
                             request_layout=mem_request_layout(st.addr_width, st.max_burst))
        super().__init__()

    lpu = property(lambda self: self._lpu)
    clk_hz = property(lambda self: self._clk_hz)
    baud = property(lambda self: self._baud)
    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lpu = lpu = self._lpu
        m.submodules.ram = ram = self._ram
        m.submodules.uart_rx = urx = UARTRx(divisor=self._divisor)
        m.submodules.uart_tx = utx = UARTTx(divisor=self._divisor)
        wiring.connect(m, lpu.mem_req, ram.req)
        wiring.connect(m, ram.resp, lpu.mem_resp)
        wiring.connect(m, lpu.mem_wr, ram.wr)
        wiring.connect(m, urx.o_stream, lpu.rx)
        wiring.connect(m, lpu.tx, utx.i_stream)
        if platform is None:
            m.d.comb += [urx.rx.eq(self.uart_rx), self.uart_tx.eq(utx.tx)]
        else:
            uart = platform.request("uart", 0)
            m.d.comb += [urx.rx.eq(uart.rx.i), uart.tx.o.eq(utx.tx)]
        return m
