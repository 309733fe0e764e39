"""Gearbox from decoded memory words (a variable number of weights) to whole PE-array tiles."""

from math import gcd

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import check_bool

__all__ = ["TileGearbox"]


class TileGearbox(wiring.Component):
    """Collects chunks of weight codes into tiles of ``tile`` codes.

    A buffer of ``(tiles + 1) * tile + max_chunk`` slots holds ``level`` codes, oldest in slot
    0. A chunk is taken while ``level <= (tiles + 1) * tile`` and written behind the codes
    present (after a tile leaves, if one leaves in the same cycle); a tile leaves from slots
    ``0 .. tile-1`` and the rest move down by ``tile``. Whether a chunk is taken does not depend
    on whether a tile leaves in the same cycle: the input's ready is a flip-flop, and the extra
    tile of slots holds the chunk when none leaves. The
    fill level only ever changes by a chunk size or by ``tile``, so it stays a multiple of
    ``g``, the greatest common divisor of those, and each slot chooses among at most
    ``max_chunk / g`` chunk positions; with the common power-of-two sizes that is a single
    position.

    The gearbox takes a chunk every cycle while a tile leaves every cycle or the buffer has room,
    so it never holds up a memory that streams at line rate. When the head tile stays for
    several cycles (several activation vectors use it), ``tiles=2`` gives room for the whole
    next tile meanwhile.

    With ``ring=True`` no code moves once written: the buffer is a ring of whole tiles (at least
    ``(tiles + 1) * tile + 2 * max_chunk`` slots), written at a one-hot write position that
    moves only with the chunks taken, and the head tile is one of the ring's tiles, chosen by a
    read position (a tile number) that moves with the tiles leaving. The slots at the write position
    take the input in every cycle, whether or not a chunk is offered or taken: they are free
    (the level is at most ``room + max_chunk``), and the position moves on only past a chunk
    taken. So a slot's enable is one bit of the write position (per chunk position), a
    flip-flop, and waits for neither handshake; the output is a multiplexer of the ring's
    tiles, for a register behind it. Which chunks are taken, and when tiles leave, is as
    without it.

    Attributes
    ----------
    i_stream : In(stream.Signature(StructLayout({"codes", "count"})))
        ``count`` of the ``max_chunk`` codes are valid; ``count`` must be one of ``chunks``.
    o_stream : Out(stream.Signature(ArrayLayout(code, tile)))
    clear : In(1)
        Drop every buffered code (start of a new matrix).
    """

    def __init__(self, *, tile, chunks, code_shape, tiles=1, ring=False):
        self._tile = tile
        self._tiles = tiles
        self._ring = check_bool("Ring", ring)
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
        room = (self._tiles + 1) * T    # fill level up to which a chunk is still taken
        C = room + self._max            # slots: the most a chunk taken can leave
        if self._ring:
            C = -(-(C + self._max) // T) * T    # whole tiles, with room to write one more
        # The slots are kept ``g`` at a time: the level and every chunk size are multiples of
        # ``g``, so the slots of one cell always move and are written together. One signal per
        # cell describes the same logic as one per slot, in ``g`` times fewer statements for a
        # simulator to evaluate.
        cell = data.ArrayLayout(self._code, g)
        bits = cell.size // g           # bits per code
        # (no reset: the level says which hold codes, and a reset would widen their enables)
        cells = [Signal(cell.size, name=f"cell{j}", reset_less=True) for j in range(C // g)]
        level = Signal(range(C + 1))

        # The level's two comparisons are flip-flops, registered with the level: a tile is
        # present (``level >= T``) and a chunk fits (``level <= room``). The input's ready is
        # the second, so the memory side's read waits for nothing behind the array's handshake.
        has_tile = Signal()
        fits = Signal(init=1)
        emit = Signal()
        m.d.comb += [
            self.o_stream.valid.eq(has_tile),
            emit.eq(self.o_stream.valid & self.o_stream.ready),
            self.i_stream.ready.eq(fits),
        ]
        accept = self.i_stream.valid & self.i_stream.ready
        count = self.i_stream.payload.count
        codes = self.i_stream.payload.codes.as_value()

        K = C // g

        def chunk_step(at, k):
            """Bit ``k`` of a one-hot position (``at(i)``: its bit i) after a chunk taken
            moves it up the chunk's size / g."""
            if len(self._chunks) == 1:
                return at(k - self._chunks[0] // g)
            return Cat(*[(count == n) & at(k - n // g) for n in self._chunks]).any()

        if self._ring:
            # The write position, one-hot in cells, moves up a chunk's size for each chunk
            # taken (around the ring); the read position, a tile number (a multiplexer of a
            # few tiles by two or three select bits is one LUT and the PFU's multiplexers,
            # where a one-hot AND-OR took three LUTs), one tile for each tile leaving. The
            # input at write position p puts its codes d * g .. in cell p + d, all
            # max_chunk / g cells of them, in every cycle: they are free (the level is at most
            # room + max_chunk, and the ring holds another max_chunk), and only a chunk taken
            # moves p past them.
            R = C // T
            wp = Signal(K, init=1)
            rp = Signal(range(R))
            tiles = [Cat(*cells[r * (T // g):(r + 1) * (T // g)]) for r in range(R)]
            m.d.comb += self.o_stream.payload.eq(Array(tiles)[rp])
            for j, c in enumerate(cells):
                for d in range(0, self._max // g):
                    with m.If(wp[(j - d) % K]):
                        m.d.sync += c.eq(codes[d * g * bits:(d + 1) * g * bits])

            def wp_at(i):
                return wp[i % K]
            with m.If(self.clear):
                m.d.sync += [wp.eq(1), rp.eq(0)]
            with m.Else():
                with m.If(accept):
                    m.d.sync += wp.eq(Cat(*[chunk_step(wp_at, k) for k in range(K)]))
                with m.If(emit):
                    m.d.sync += rp.eq(Mux(rp == R - 1, 0, rp + 1))
        else:
            # The head tile is in cells 0 .. T/g - 1; when it leaves, the rest move down T.
            m.d.comb += self.o_stream.payload.eq(Cat(*cells[:T // g]))
            # The level also as a one-hot register, `oh[k]` for level == k * g, kept beside
            # the binary level (below): the write position (the level once a leaving tile is
            # gone), shared by all cells, is then one gate of two of its bits and the
            # handshakes.
            oh = Signal(K + 1, init=1)

            def oh_at(k):
                return oh[k] if 0 <= k <= K else Const(0)

            at = {pos: Signal(name=f"at{pos}") for pos in range(0, room + 1, g)}
            for pos, sig in at.items():
                m.d.comb += sig.eq(accept & Mux(emit, oh_at((pos + T) // g), oh_at(pos // g)))

            for j, c in enumerate(cells):
                i = j * g                   # first slot of the cell
                kept = Mux(emit, cells[j + T // g], c) if i + T < C else c
                nxt = kept
                for d in range(0, self._max, g):
                    pos = i - d             # a chunk written at pos puts its codes d.. here
                    if pos < 0 or pos > room:
                        continue
                    # Chunk sizes are multiples of g: count > d means the whole cell is
                    # present.
                    hit = at[pos] if d < min(self._chunks) else at[pos] & (count > d)
                    nxt = Mux(hit, codes[d * bits:(d + g) * bits], nxt)
                m.d.sync += c.eq(nxt)

            # the one-hot level moves by the level's amounts: down T / g for a leaving tile,
            # up a chunk's size / g for a chunk taken
            with m.If(self.clear):
                m.d.sync += oh.eq(1)
            with m.Else():
                for k in range(K + 1):
                    m.d.sync += oh[k].eq(pick(accept, emit, [
                        oh_at(k), oh_at(k + T // g), chunk_step(oh_at, k),
                        chunk_step(oh_at, k + T // g)]))

        # The next level for each outcome of the two late handshakes, formed beforehand (the
        # chunk size does not depend on them), so that they only select one.
        # The flags are formed likewise from each outcome's level.
        taken = Signal(range(C + self._max + 1))    # (wide enough for the comparisons)
        m.d.comb += taken.eq(level + count)
        # (A leaving tile's T is moved into the comparisons' constants rather than subtracted
        # first: level and taken are at least T when a tile leaves.)
        bases = [(level, 0), (level, T), (taken, 0), (taken, T)]    # by (accept, emit)
        flags = [(has_tile, lambda x, d: x >= T + d), (fits, lambda x, d: x <= room + d)]
        with m.If(self.clear):
            m.d.sync += [level.eq(0)] + [flag.eq(test(0, 0)) for flag, test in flags]
        with m.Else():
            m.d.sync += level.eq(pick(accept, emit, [x - d for x, d in bases]))
            for flag, test in flags:
                m.d.sync += flag.eq(pick(accept, emit, [test(x, d) for x, d in bases]))
        return m


def pick(accept, emit, values):
    """One of four values, by the outcomes of the two handshakes (no, emit, accept, both)."""
    return Mux(accept, Mux(emit, values[3], values[2]), Mux(emit, values[1], values[0]))
