"""Gearbox from decoded memory words (a variable number of weights) to whole PE-array tiles."""

from math import gcd

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TileGearbox"]


class TileGearbox(wiring.Component):
    """Collects chunks of weight codes into tiles of ``tile`` codes.

    A buffer of ``tiles * tile + max_chunk`` slots holds ``level`` codes, oldest in slot 0. A
    chunk is written behind the codes present (after a tile leaves, if one leaves in the same
    cycle); a tile leaves from slots ``0 .. tile-1`` and the rest move down by ``tile``. The
    fill level only ever changes by a chunk size or by ``tile``, so it stays a multiple of
    ``g``, the greatest common divisor of those, and each slot chooses among at most
    ``max_chunk / g`` chunk positions; with the common power-of-two sizes that is a single
    position.

    The gearbox takes a chunk every cycle while a tile leaves every cycle or the buffer has room,
    so it never holds up a memory that streams at line rate. When the head tile stays for
    several cycles (several activation vectors use it), ``tiles=2`` gives room for the whole
    next tile meanwhile.

    Attributes
    ----------
    i_stream : In(stream.Signature(StructLayout({"codes", "count"})))
        ``count`` of the ``max_chunk`` codes are valid; ``count`` must be one of ``chunks``.
    o_stream : Out(stream.Signature(ArrayLayout(code, tile)))
    clear : In(1)
        Drop every buffered code (start of a new matrix).
    """

    def __init__(self, *, tile, chunks, code_shape, tiles=1):
        self._tile = tile
        self._tiles = tiles
        self._chunks = tuple(sorted(set(chunks)))
        self._max = max(self._chunks)
        self._code = code_shape
        self._g = gcd(tile, *self._chunks)
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "codes": data.ArrayLayout(code_shape, self._max),
                "count": range(self._max + 1),
            }))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(code_shape, tile))),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        T, g = self._tile, self._g
        room = self._tiles * T          # fill level up to which a chunk is still taken
        C = room + self._max
        slots = [Signal(self._code, name=f"slot{i}") for i in range(C)]
        level = Signal(range(C + 1))

        emit = Signal()
        m.d.comb += [
            self.o_stream.valid.eq(level >= T),
            emit.eq(self.o_stream.valid & self.o_stream.ready),
        ]
        for i in range(T):
            m.d.comb += self.o_stream.payload[i].eq(slots[i])

        after = Signal(range(C + 1))        # level once the leaving tile is gone
        m.d.comb += [
            after.eq(level - Mux(emit, T, 0)),
            self.i_stream.ready.eq(after <= room),
        ]
        accept = self.i_stream.valid & self.i_stream.ready
        count = self.i_stream.payload.count
        codes = self.i_stream.payload.codes

        # One-hot decode of the write position, shared by all slots.
        at = {pos: Signal(name=f"at{pos}") for pos in range(0, room + 1, g)}
        for pos, sig in at.items():
            m.d.comb += sig.eq(accept & (after == pos))

        for i in range(C):
            kept = Mux(emit, slots[i + T], slots[i]) if i + T < C else slots[i]
            nxt = kept
            for d in range(self._max):
                pos = i - d
                if pos < 0 or pos > room or pos % g:
                    continue
                hit = at[pos] if d < min(self._chunks) else at[pos] & (count > d)
                nxt = Mux(hit, codes[d], nxt)
            m.d.sync += slots[i].eq(nxt)

        with m.If(self.clear):
            m.d.sync += level.eq(0)
        with m.Else():
            m.d.sync += level.eq(after + Mux(accept, count, 0))
        return m
