"""Memory models for simulation: a burst read port with configurable latency and bandwidth.

One gateware component, :class:`MemoryModel`, serves every model so that it runs in any
simulator (Amaranth, cocotb on Verilog, the compiled whole-system simulator). Its timing comes
from a :class:`MemoryTiming`; the presets in :data:`MEMORIES`:

``bram``
    On-chip RAM: the first word one cycle after the request, then one word per cycle; a
    request queued behind a burst starts without a gap.
``qspi``
    SPI flash in quad I/O fast read (0xEB): per burst 8 command clocks, 6 address clocks
    (24 bits on 4 lines), 4 dummy clocks, then 4 bits per clock, so a word takes
    ``word_bits / 4`` cycles.
``sdram``
    SDR SDRAM-like: a burst to the open row costs CAS latency (3) before its first word, a burst
    or word crossing into another row costs precharge + activate (tRP + tRCD = 6) more; one word
    per cycle inside a row (rows of 512 words); every 780 cycles a refresh blocks the port for 8
    cycles.

Random stalls: with ``stall_prob`` > 0 a 16-bit LFSR (seeded by ``seed``) withholds the next
word on about that fraction of cycles; a word once offered stays offered until taken, as the
stream rules require.
"""

from dataclasses import dataclass, replace

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from lpu.boards.memory import (
    FLASH_COMMANDS,
    FLASH_OFFSET,
    SPI_SIGNATURE,
    SPIFlashReader,
    flash_command_clocks,
    memory_ports,
)

__all__ = ["MemoryTiming", "MEMORIES", "MemoryModel", "memory_timing", "SPIFlashModel",
           "SimulatedFlash"]


@dataclass(frozen=True)
class MemoryTiming:
    """Cycle costs of a burst read memory."""

    #: Cycles from accepting a request to its first word, beyond the one-cycle minimum.
    burst_overhead: int = 0
    #: Cycles per word inside a burst (>= 1).
    cycles_per_word: int = 1
    #: Words per row; 0 for memories without rows.
    row_words: int = 0
    #: Extra cycles when a burst starts in, or crosses into, a row that is not open.
    row_miss: int = 0
    #: A refresh every this many cycles (0: never) ...
    refresh_interval: int = 0
    #: ... blocking the port for this many cycles.
    refresh_cycles: int = 0
    #: Probability of withholding the next word on a cycle (random stalls).
    stall_prob: float = 0.0
    #: LFSR seed for the random stalls (non-zero).
    seed: int = 0xACE1


def memory_timing(kind, word_bits, *, stall_prob=0.0, seed=0xACE1):
    """The timing preset ``kind`` (``"bram"``, ``"qspi"``, ``"sdram"``) for ``word_bits``."""
    if kind not in MEMORIES:
        raise ValueError(f"Memory kind must be 'bram', 'qspi' or 'sdram', not {kind!r}")
    t = MEMORIES[kind]
    if kind == "qspi":
        t = replace(t, cycles_per_word=max(1, word_bits // 4))
    return replace(t, stall_prob=stall_prob, seed=seed)


MEMORIES = {
    "bram": MemoryTiming(),
    "qspi": MemoryTiming(burst_overhead=8 + 6 + 4),
    "sdram": MemoryTiming(burst_overhead=3, row_words=512, row_miss=6, refresh_interval=780,
                          refresh_cycles=8),
}


class MemoryModel(wiring.Component):
    """A word-addressed burst read memory with the timing of ``timing``.

    Attributes
    ----------
    req : In(stream.Signature(StructLayout({"addr", "len"})))
    resp : Out(stream.Signature(word_bits))
    wr : In(stream.Signature(StructLayout({"addr", "data"})))
        Word writes (how the host loads the memory); always ready.
    """

    def __init__(self, *, words, word_bits, request_layout, timing=None, init=()):
        self._timing = MemoryTiming() if timing is None else timing
        self._mem = Memory(shape=word_bits, depth=words, init=list(init))
        super().__init__(memory_ports(request_layout, word_bits))

    memory = property(lambda self: self._mem)

    def elaborate(self, platform):
        m = Module()
        t = self._timing
        m.submodules.mem = mem = self._mem
        wp = mem.write_port()
        rd = mem.read_port(domain="comb")
        m.d.comb += [wp.addr.eq(self.wr.payload.addr), wp.data.eq(self.wr.payload.data),
                     wp.en.eq(self.wr.valid), self.wr.ready.eq(1)]

        addr = Signal.like(self.req.payload.addr)
        left = Signal.like(self.req.payload.len)
        wait = Signal(16)
        offered = Signal()          # a word is on the port and must stay there until taken

        stall = Const(0)
        if t.stall_prob > 0:
            lfsr = Signal(16, init=t.seed or 1)
            m.d.sync += lfsr.eq((lfsr << 1) | (lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]))
            stall = lfsr < int(t.stall_prob * (1 << 16))

        blocked = Const(0)
        if t.refresh_interval:
            tick = Signal(range(t.refresh_interval))
            busy = Signal(range(t.refresh_cycles + 1))
            m.d.sync += tick.eq(tick + 1)
            with m.If(tick == t.refresh_interval - 1):
                m.d.sync += [tick.eq(0), busy.eq(t.refresh_cycles)]
            with m.Elif(busy != 0):
                m.d.sync += busy.eq(busy - 1)
            blocked = busy != 0

        open_row = Signal(32, init=(1 << 32) - 1)
        row_bits = (t.row_words - 1).bit_length() if t.row_words else 0

        can_offer = (left != 0) & (wait == 0) & ~stall & ~blocked
        m.d.comb += [
            rd.addr.eq(addr),
            self.resp.payload.eq(rd.data),
            self.resp.valid.eq(offered | can_offer),
        ]
        taken = self.resp.valid & self.resp.ready
        m.d.sync += offered.eq(self.resp.valid & ~self.resp.ready)
        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)

        last_word = taken & (left == 1)
        m.d.comb += self.req.ready.eq((left == 0) | last_word)
        with m.If(self.req.valid & self.req.ready):
            new_row = self.req.payload.addr >> row_bits
            miss = t.row_words and (new_row != open_row)
            extra = t.burst_overhead + (t.row_miss if t.row_words else 0) * miss
            m.d.sync += [addr.eq(self.req.payload.addr), left.eq(self.req.payload.len),
                         wait.eq(extra + t.cycles_per_word - 1)]
            if t.row_words:
                m.d.sync += open_row.eq(new_row)
        with m.Elif(taken):
            nxt = addr + 1
            m.d.sync += [addr.eq(nxt), left.eq(left - 1), wait.eq(t.cycles_per_word - 1)]
            if t.row_words:
                crosses = (nxt & (t.row_words - 1)) == 0
                with m.If(crosses & (left != 1)):
                    m.d.sync += [wait.eq(t.row_miss + t.cycles_per_word - 1),
                                 open_row.eq(nxt >> row_bits)]
        return m


class SPIFlashModel(wiring.Component):
    """An SPI NOR flash for simulation: answers fast read (``0x0B``) and quad I/O fast read
    (``0xEB``, mode byte, 4 dummy clocks) with bytes of ``image`` placed at byte address
    ``base``; bytes outside it read as erased (0xFF). Other commands are ignored.

    It samples its inputs on SCK's rising edge and changes its outputs on the falling edge,
    as a flash in SPI mode 0 does, seeing the bus through the ``sync`` domain: an edge is a
    change of ``sck`` between two cycles, and an output changes one cycle after the falling
    edge (later than a real flash's few nanoseconds).

    Attributes
    ----------
    spi : In(lpu.boards.memory.SPI_SIGNATURE)
    """

    def __init__(self, *, image, base=0):
        image = bytes(image)
        if not image:
            raise ValueError("Flash image must hold at least one byte")
        self._size = len(image)
        self._base = base
        self._mem = Memory(shape=8, depth=len(image), init=list(image))
        super().__init__({"spi": In(SPI_SIGNATURE)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self._mem
        rd = mem.read_port(domain="comb")
        spi = self.spi
        prev = Signal()
        m.d.sync += prev.eq(spi.sck)
        rise = spi.cs & spi.sck & ~prev
        fall = spi.cs & ~spi.sck & prev

        edges = Signal(32)          # rising edges since the flash was selected
        cmd = Signal(8)
        shift = Signal(32)          # address bits (and the mode byte of 0xEB)
        out = Signal(4)
        m.d.comb += spi.i.eq(out)

        fast, quad = FLASH_COMMANDS[1], FLASH_COMMANDS[4]
        fast_data, quad_data = flash_command_clocks(1), flash_command_clocks(4)
        is_fast = cmd == fast[0]
        is_quad = cmd == quad[0]
        start = Signal(24)
        m.d.comb += start.eq(Mux(is_quad, shift[8:], shift[:24]))
        k = Signal(32)              # index of the data bit (0x0B) or nibble (0xEB) to output
        m.d.comb += k.eq(edges - Mux(is_quad, quad_data, fast_data))
        byte = Signal(32)
        m.d.comb += byte.eq(start + Mux(is_quad, k >> 1, k >> 3))
        inside = (byte >= self._base) & (byte < self._base + self._size)
        m.d.comb += rd.addr.eq(byte - self._base)
        value = Signal(8)
        m.d.comb += value.eq(Mux(inside, rd.data, 0xFF))

        with m.If(~spi.cs):
            m.d.sync += [edges.eq(0), out.eq(0)]
        with m.Elif(rise):
            m.d.sync += edges.eq(edges + 1)
            with m.If(edges < 8):
                m.d.sync += cmd.eq(Cat(spi.o[0], cmd[:-1]))
            with m.Elif(is_fast & (edges < 8 + fast[1])):
                m.d.sync += shift.eq(Cat(spi.o[0], shift[:-1]))
            with m.Elif(is_quad & (edges < 8 + quad[1] + quad[2])):
                m.d.sync += shift.eq(Cat(spi.o, shift[:-4]))
        with m.Elif(fall):
            with m.If(is_fast & (edges >= fast_data)):
                m.d.sync += out[1].eq(value.bit_select(~k[:3], 1))
            with m.Elif(is_quad & (edges >= quad_data)):
                m.d.sync += out.eq(Mux(k[0], value[:4], value[4:]))
        return m


class SimulatedFlash(wiring.Component):
    """A :class:`~lpu.boards.memory.SPIFlashReader` on an :class:`SPIFlashModel` holding
    ``image`` at the reader's offset: a memory with the ports of :class:`MemoryModel` (and
    ``wr_dropped``) for the simulated systems."""

    def __init__(self, *, words, word_bits, request_layout, image, offset=None, width=1):
        offset = FLASH_OFFSET if offset is None else offset
        self._reader = SPIFlashReader(words=words, word_bits=word_bits,
                                      request_layout=request_layout, offset=offset, width=width)
        self._flash = SPIFlashModel(image=image, base=offset)
        s = self._reader.signature.members
        super().__init__({n: s[n] for n in ("req", "resp", "wr", "wr_dropped")})

    reader = property(lambda self: self._reader)

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = reader = self._reader
        m.submodules.flash = flash = self._flash
        wiring.connect(m, reader.spi, flash.spi)
        wiring.connect(m, wiring.flipped(self.req), reader.req)
        wiring.connect(m, reader.resp, wiring.flipped(self.resp))
        wiring.connect(m, wiring.flipped(self.wr), reader.wr)
        m.d.comb += self.wr_dropped.eq(reader.wr_dropped)
        return m
