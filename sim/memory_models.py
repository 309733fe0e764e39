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

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["MemoryTiming", "MEMORIES", "MemoryModel", "memory_timing"]


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
        super().__init__({
            "req": In(stream.Signature(request_layout)),
            "resp": Out(stream.Signature(word_bits)),
            "wr": In(stream.Signature(data.StructLayout({
                "addr": request_layout["addr"].shape, "data": word_bits}))),
        })

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
