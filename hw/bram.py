"""Block RAM whose read data leaves through an output register.

An ECP5 block RAM (DP16KD) read without its output register puts its word on the fabric 5.8 ns
after the clock (speed grade 6): at 150 MHz that leaves under a nanosecond to route it
anywhere. With the output register (``REGMODE_B = "OUTREG"``) the word leaves a flip-flop
inside the block RAM, under a nanosecond after the clock. yosys never uses that register when it
infers block RAM, so :class:`RegisteredRAM` instantiates the DP16KDs itself on an ECP5
platform; elsewhere (simulation, other families) it is an
:class:`~amaranth.lib.memory.Memory` read port followed by a register, with the same cycle
behaviour:

- a read: ``r_en`` high with ``r_addr``; the word is in the read stage after the clock edge
  (the stage holds it while ``r_en`` is low);
- the output register ``r_data`` takes the read stage's word at each edge with ``r_oe`` high;
  with ``clearable``, zero instead if ``r_rst`` is high too (the DP16KD's synchronous output
  reset, ``RSTB``): a RAM whose word is not wanted reads as zero, so several RAMs' words can
  be combined by an OR instead of a multiplexer.

So with ``r_en`` and ``r_oe`` both high, a word addressed in one cycle is on ``r_data`` two
cycles later. A write (``w_en``) lands at the edge; a read of the address being written in the
same cycle is not defined (block RAM on two ports), and no user here does it.
"""

from amaranth.hdl import ClockSignal, Instance, Module, Mux, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import nonzero_after, up_down
from .params import check_bool, check_positive, check_range
from .pe import cell_family

__all__ = ["RegisteredRAM", "RegisteredFIFO", "CreditQueue", "DP16KD_MODES", "dp16kd_mode"]

#: The DP16KD's single-port-width configurations used here: (depth, data width, the address
#: bits below the word address). The 36-bit mode (512 words) is not used: its read word spans
#: both ports' outputs.
DP16KD_MODES = ((1024, 18, 4), (2048, 9, 3), (4096, 4, 2), (8192, 2, 1), (16384, 1, 0))


def dp16kd_mode(depth):
    """The widest DP16KD mode holding ``depth`` words (one block RAM deep), or None when no
    mode is deep enough."""
    for mode in DP16KD_MODES:
        if depth <= mode[0]:
            return mode
    return None


class RegisteredRAM(wiring.Component):
    """A simple dual-port RAM (one write port, one read port, one clock) with a registered
    read output; see the module docstring for the timing.

    Parameters
    ----------
    shape : shape-castable
        Of a word (a plain width or a layout).
    depth : int
        Words.
    clearable : bool
        Whether the output register has ``r_rst``.

    Attributes
    ----------
    w_addr, w_data, w_en : In
    r_addr, r_en, r_oe : In
    r_rst : In
        With ``clearable`` only.
    r_data : Out(shape)
    """

    def __init__(self, *, shape, depth, clearable=False):
        check_positive("RAM depth", depth)
        self._shape = shape
        self._depth = depth
        self._clearable = check_bool("Clearable", clearable)
        abits = max(1, (depth - 1).bit_length())
        super().__init__({
            "w_addr": In(abits), "w_data": In(shape), "w_en": In(1),
            "r_addr": In(abits), "r_en": In(1), "r_oe": In(1),
            **({"r_rst": In(1)} if clearable else {}),
            "r_data": Out(shape),
        })

    depth = property(lambda self: self._depth)

    @property
    def width(self):
        return Shape.cast(self._shape).width

    def dp16kd_count(self, platform):
        """DP16KDs this RAM instantiates on ``platform`` (0 if it is left to inference)."""
        mode = dp16kd_mode(self._depth) if cell_family(platform) == "ecp5" else None
        return 0 if mode is None else -(-self.width // mode[1])

    def elaborate(self, platform):
        m = Module()
        if self.dp16kd_count(platform):
            self._elaborate_dp16kd(m)
            return m
        m.submodules.mem = mem = Memory(shape=self.width, depth=self._depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     rp.addr.eq(self.r_addr), rp.en.eq(self.r_en)]
        # (no reset: a DP16KD's output register is left alone by the fabric's reset)
        data_r = Signal(self.width, reset_less=True)
        with m.If(self.r_oe):
            m.d.sync += data_r.eq(Mux(self.r_rst, 0, rp.data) if self._clearable else rp.data)
        m.d.comb += self.r_data.eq(data_r)
        return m

    def _elaborate_dp16kd(self, m):
        depth, width, low = dp16kd_mode(self._depth)
        wbits = self.width
        w_data = Signal(wbits)
        r_data = Signal(wbits)
        m.d.comb += [w_data.eq(self.w_data), self.r_data.eq(r_data)]
        abits = (depth - 1).bit_length()

        def addr(a):
            # the word address above `low` bits; in the 18-bit mode the two bits below are the
            # port's byte enables (both set), the others zero
            full = Signal(14)
            m.d.comb += full[low:low + abits].eq(a)
            if width == 18:
                m.d.comb += full[:2].eq(0b11)
            return full

        wa, ra = addr(self.w_addr), addr(self.r_addr)
        for t in range(-(-wbits // width)):
            lo, hi = t * width, min(wbits, (t + 1) * width)
            di = Signal(18, name=f"di{t}")
            do = Signal(18, name=f"do{t}")
            m.d.comb += di[:hi - lo].eq(w_data[lo:hi])
            m.d.comb += r_data[lo:hi].eq(do[:hi - lo])
            ports = {}
            for b in range(14):
                ports[f"i_ADA{b}"] = wa[b]
                ports[f"i_ADB{b}"] = ra[b]
            for b in range(18):
                ports[f"i_DIA{b}"] = di[b]
                ports[f"i_DIB{b}"] = 0
                ports[f"o_DOB{b}"] = do[b]
            m.submodules[f"bram{t}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=width, p_DATA_WIDTH_B=width,
                p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC",
                p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED",
                i_CLKA=ClockSignal("sync"), i_CEA=1, i_OCEA=0, i_WEA=self.w_en, i_RSTA=0,
                i_CSA0=0, i_CSA1=0, i_CSA2=0,
                i_CLKB=ClockSignal("sync"), i_CEB=self.r_en, i_OCEB=self.r_oe, i_WEB=0,
                i_RSTB=self.r_rst if self._clearable else 0, i_CSB0=0, i_CSB1=0, i_CSB2=0,
                **ports)


class CreditQueue(wiring.Component):
    """A small queue behind a read pipeline of fixed latency, which issues a read only with a
    credit: so the pipeline (block RAMs read in every cycle, their registers always enabled)
    never stalls, and no enable formed from the reader's handshake has to reach it.

    A credit is a read issued and not yet taken from the queue (in the pipeline or the queue).
    ``room`` (a flip-flop) says one is free, and a read may be issued (``issue``) only then;
    ``busy`` (a flip-flop) says one is out. A word is written (``w_en``) when it leaves the
    pipeline, ``latency`` cycles after its issue; the head is ``r_data`` while ``r_valid`` (a
    flip-flop), and leaves with ``r_en``. A credit comes back a cycle after its word is taken,
    so the queue has ``latency + 2`` credits or more (``depth``, rounded up to a power of two)
    and keeps a read a cycle.
    The storage is a :class:`~amaranth.lib.memory.Memory` with an asynchronous read port (LUT
    RAM on an FPGA): not a :class:`~amaranth.lib.fifo.SyncFIFO`, whose enables wait for
    comparisons of its level, as the credits leave the queue room for every word.

    Parameters
    ----------
    shape : shape-castable
    latency : int
        Registers between a read's issue and its word's write (``w_en``).

    Attributes
    ----------
    room : Out(1)
    busy : Out(1)
    issue : In(1)
    w_data : In(shape)
    w_en : In(1)
    r_data : Out(shape)
    r_valid : Out(1)
    r_en : In(1)
    """

    def __init__(self, *, shape, latency):
        check_range("Pipeline latency", latency, 0)
        self._shape = shape
        self._latency = latency
        self._depth = 1 << (latency + 1).bit_length()
        super().__init__({
            "room": Out(1, init=1), "busy": Out(1), "issue": In(1),
            "w_data": In(shape), "w_en": In(1),
            "r_data": Out(shape), "r_valid": Out(1), "r_en": In(1),
        })

    latency = property(lambda self: self._latency)
    depth = property(lambda self: self._depth)

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        m.submodules.mem = mem = Memory(shape=self._shape, depth=depth, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        take = self.r_valid & self.r_en
        credits = Signal(range(depth + 1))
        level = Signal(range(depth + 1))
        m.d.comb += [wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     self.r_data.eq(rp.data)]
        # (the positions wrap by themselves: the depth is a power of two)
        with m.If(self.w_en):
            m.d.sync += wp.addr.eq(wp.addr + 1)
        with m.If(take):
            m.d.sync += rp.addr.eq(rp.addr + 1)
        m.d.sync += [
            credits.eq(up_down(credits, self.issue, take)),
            self.room.eq(Mux(self.issue & ~take, credits != depth - 1,
                             (take & ~self.issue) | self.room)),
            self.busy.eq(nonzero_after(self.busy, credits, self.issue, take)),
            level.eq(up_down(level, self.w_en, take)),
            self.r_valid.eq(nonzero_after(self.r_valid, level, self.w_en, take)),
        ]
        return m


class RegisteredFIFO(wiring.Component):
    """A FIFO of ``depth`` words in a :class:`RegisteredRAM` (on an ECP5 a block RAM, read
    through its own output register), whose words leave through a :class:`CreditQueue`: the
    block RAM is read in every cycle, and a word leaves its storage (``pop``) when the queue
    has a credit for it, whatever the reader's ready (``o_ready``). The reader sees the
    queue's head (``o_data``, ``o_valid``). ``depth`` counts the block RAM's words; up to
    ``queue_depth`` more are on their way to the queue or in it. ``w_rdy`` is low while
    the block RAM is full. A word written reaches ``o_valid`` four cycles later.

    Parameters
    ----------
    width : int
    depth : int
        At least 2.
    """

    def __init__(self, *, width, depth):
        check_positive("FIFO width", width)
        check_range("FIFO depth", depth, 2)
        self._depth = depth
        self._ram = RegisteredRAM(shape=width, depth=depth)
        # (its read pipeline: the block RAM's read stage and output register)
        self._queue = CreditQueue(shape=width, latency=2)
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
            "o_data": Out(width), "o_valid": Out(1), "o_ready": In(1), "pop": Out(1),
        })

    depth = property(lambda self: self._depth)
    queue_depth = property(lambda self: self._queue.depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = self._ram
        m.submodules.queue = queue = self._queue
        depth = self._depth
        level = Signal(range(depth + 1))
        # `level != 0` and `level != depth` as flip-flops, set with the level, so that the
        # read's issue and the write's acceptance wait for no comparison
        nonempty = Signal()
        w_rdy = Signal(init=1)
        produce = Signal(range(depth))
        consume = Signal(range(depth))
        do_write = self.w_en & w_rdy
        do_read = nonempty & queue.room
        read_1, read_2 = Signal(), Signal()     # the read in the read stage, the register

        def step(ptr):
            return Mux(ptr == depth - 1, 0, ptr + 1)

        m.d.comb += [
            self.w_rdy.eq(w_rdy),
            self.pop.eq(do_read),
            ram.w_addr.eq(produce), ram.w_data.eq(self.w_data), ram.w_en.eq(do_write),
            ram.r_addr.eq(consume), ram.r_en.eq(1), ram.r_oe.eq(1),
            queue.issue.eq(do_read), queue.w_data.eq(ram.r_data), queue.w_en.eq(read_2),
            self.o_data.eq(queue.r_data), self.o_valid.eq(queue.r_valid),
            queue.r_en.eq(self.o_ready),
        ]
        m.d.sync += [read_1.eq(do_read), read_2.eq(read_1)]
        with m.If(do_write):
            m.d.sync += produce.eq(step(produce))
        with m.If(do_read):
            m.d.sync += consume.eq(step(consume))
        m.d.sync += [level.eq(up_down(level, do_write, do_read)),
                     nonempty.eq(nonzero_after(nonempty, level, do_write, do_read)),
                     w_rdy.eq(Mux(do_write & ~do_read, level != depth - 1,
                                  do_read & ~do_write | w_rdy))]
        return m
