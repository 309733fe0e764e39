"""Weight-streaming controller: packed weights from a memory read port to the PE array.

Given a matrix descriptor, the :class:`WeightStreamer` runs a whole matrix-vector (or
matrix-matrix) product on its own:

1. **Set-up** (a fixed number of cycles, :data:`SETUP_CYCLES`): checks the descriptor against
   what the hardware was built for and derives the row blocks, tiles per row, tiles per group
   and the image length in words with a small sequential divider and multiplier. An invalid
   descriptor sets ``status.error`` and returns to idle instead of hanging.
2. **Fetch**: burst read requests (address, length) to the memory port, issued as long as the
   prefetch FIFO has room for the whole burst (credits), so responses are never refused and the
   memory's latency is covered by the FIFO's depth.
3. **Decode**: each word leaving the FIFO decodes at line rate (t2 and b1 are wiring; t5 a
   byte-wise lookup) into a gearbox that assembles tiles of P x N weight codes.
4. **Sequence**: each tile is sent to the array once per activation vector, with the vector's
   activations read from the on-chip activation buffer and first/last framing per row (or per
   group of ``group`` columns).

Device-memory image (see :func:`lpu.host.image.weight_image`): the weights of the padded matrix
in tile order -- row block, then tile along the row, then PE, then lane -- packed continuously in
the descriptor's format (no padding between tiles), then padded to a whole word. Byte 0 is in
the low bits of word 0. Rows beyond M are padded with the format's pad weight, columns beyond K
likewise; the host writes zero activations into the padded lanes of the activation buffer.

Activation buffer: ``act_tiles`` entries of N activations per vector; tile ``t`` of vector
``v`` lives at address ``v * act_tiles + t`` (:func:`act_address`).
"""

from amaranth.hdl import Module, Mux, Shape, Signal, Value, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .arith import SequentialDivider, SequentialMultiplier, up_down
from .array import PEArray
from .bram import CreditQueue, RegisteredFIFO, RegisteredRAM
from .decoder import WeightDecoder, check_word_bits, weights_per_word
from .formats import FormatCode, WeightFormat
from .gearbox import TileGearbox
from .params import check_bool, check_mode, check_positive, check_range

__all__ = ["WeightStreamer", "StreamError", "DESCRIPTOR_LAYOUT", "SETUP_CYCLES",
           "act_address", "mem_request_layout", "PERF_LAYOUT", "STATUS_LAYOUT"]

#: One matrix job. ``base`` is a word address; ``group`` 0 means whole rows.
DESCRIPTOR_LAYOUT = data.StructLayout({
    "base": 32,
    "rows": 16,
    "cols": 16,
    "group": 16,
    "vectors": 8,
    "fmt": FormatCode,
})

#: Width of the set-up divisions of sizes: rows + P - 1 and cols + N - 1 stay below 2**18 for
#: 16-bit rows and columns and lanes, PEs up to 2**16.
SIZE_DIV_WIDTH = 18
#: Width of the t5 byte count division: a padded image holds fewer than 2**35 weights.
BYTE_DIV_WIDTH = 35
#: Cycles from accepting a descriptor to the first burst request: the descriptor cycle, the
#: checks, three size divisions (row blocks, tiles per row, tiles per group; the tile count
#: multiplies alongside the third), the t5 byte division and a cycle to start it, the word
#: count and the address check (three cycles).
SETUP_CYCLES = 1 + 1 + 3 * (SIZE_DIV_WIDTH + 1) + 1 + (BYTE_DIV_WIDTH + 1) + 1 + 3
#: With registered RAM, the registers between a tile leaving stage B and the array (stages C
#: and D).
TILE_STAGES = 2


class StreamError(enum.Enum, shape=3):
    """Why the streamer refused a descriptor."""

    NONE = 0
    ZERO_SIZE = 1       # rows, cols or vectors is 0
    FORMAT = 2          # a weight format this streamer was not built for
    TOO_LONG = 3        # cols above max_k
    VECTORS = 4         # vectors above max_vectors
    GROUP = 5           # group not a multiple of the lane count
    ADDRESS = 6         # image runs past the end of memory
    SCALES = 7          # mantissas run past the scale memory (set by the LPU's scale unit)


PERF_LAYOUT = data.StructLayout({
    "busy_cycles": 32,      # cycles not idle
    "mem_stall": 32,        # cycles the array had activations but no weight tile
    "out_stall": 32,        # cycles the array held a result the consumer did not take
    "words_read": 32,       # memory words received
    "tiles": 32,            # tiles the array accepted
})

STATUS_LAYOUT = data.StructLayout({
    "busy": 1,
    "error": StreamError,
})


def mem_request_layout(addr_width, max_burst):
    return data.StructLayout({"addr": addr_width, "len": range(max_burst + 1)})


def act_tiles_for(max_k, lanes):
    """Activation-buffer entries per vector: ``ceil(max_k / lanes)`` rounded up to a power of
    two, so that an address is the vector and the tile side by side."""
    return 1 << (-(-max_k // lanes) - 1).bit_length()


def act_address(tile, vector, act_tiles):
    """Activation-buffer address of tile ``tile`` of vector ``vector``."""
    return vector * act_tiles + tile


class WeightStreamer(wiring.Component):
    """Reads a packed weight matrix from memory and runs it through a :class:`PEArray`.

    Parameters
    ----------
    lanes, pes, act_bits, pipeline, negation
        As for :class:`PEArray`.
    weights : str
        ``"ternary"`` or ``"binary"``.
    formats : sequence of str, optional
        Weight formats to decode (default: all of the weight mode's: t2 and t5, or b1).
    word_bits : int
        Memory word width, 8 to 128 (a power of two).
    addr_width : int
        Word-address width of the memory port.
    mem_words : int, optional
        Words of memory behind the port (default ``2**addr_width``); descriptors whose image
        runs past it are refused.
    max_k : int
        Longest row (columns).
    max_vectors : int
        Most activation vectors per weight pass.
    max_burst : int
        Longest burst request in words.
    fifo_depth : int, optional
        Prefetch FIFO depth in words (default ``4 * max_burst``); at least ``max_burst``.
    registered_ram : bool
        The block RAMs of the data path feed registers before any logic (an ECP5 block RAM's
        output alone takes 5.6 ns), and are read in every cycle, whatever the handshakes: the
        prefetch FIFO's words pass the block RAM's output register and a queue
        (:class:`~lpu.hw.bram.RegisteredFIFO`) before the decoder, and the activation
        buffer's vectors the block RAMs' output registers and a queue before stage B, which
        TILE_STAGES register stages (C and D) follow before the array; the array never
        stalls, its results leaving through a queue; the gearbox is a ring of tiles
        (:class:`TileGearbox` ``ring``), the activation buffer's address and writes are
        registers, and the bursts after the next are formed ahead. Five cycles more to the
        first result.

    Attributes
    ----------
    desc : In(stream.Signature(DESCRIPTOR_LAYOUT))
    mem_req : Out(stream.Signature(mem_request_layout))
    mem_resp : In(stream.Signature(word_bits))
    act_wr : In(stream.Signature({"addr", "data"}))
        Activation-buffer writes; ``ready`` is always high.
    o_stream : Out(stream.Signature(ArrayLayout(signed(acc_width), pes)))
        One output per row block (per group, per vector).
    status : Out(STATUS_LAYOUT)
    perf : Out(PERF_LAYOUT)
    """

    def __init__(self, *, lanes, pes, act_bits=8, weights="ternary", formats=None, word_bits=32,
                 addr_width=24, mem_words=None, max_k=4096, max_vectors=1, max_burst=32,
                 fifo_depth=None, pipeline=1, negation="carry", registered_ram=False):
        mode = check_mode(weights)
        if formats is None:
            formats = [f for f in WeightFormat if f.mode is mode]
        formats = tuple(WeightFormat(f) for f in formats)
        if not formats:
            raise ValueError("Weight formats must name at least one format")
        for f in formats:
            if f.mode is not mode:
                raise ValueError(f"Weight format '{f.value}' holds {f.mode.value} weights, "
                                 f"but the streamer is built for {mode.value} weights")
        check_word_bits(word_bits)
        # the set-up arithmetic is sized for 16-bit shapes (SIZE_DIV_WIDTH)
        check_range("Lane count", lanes, 1, 65536)
        check_range("PE count", pes, 1, 65536)
        check_range("Address width", addr_width, 1, 32)
        mem_words = 1 << addr_width if mem_words is None else mem_words
        check_positive("Memory size", mem_words)
        if mem_words > 1 << addr_width:
            raise ValueError(f"Memory size ({mem_words} words) exceeds the address width "
                             f"({addr_width} bits)")
        check_range("Maximum vector count", max_vectors, 1, 255)
        check_range("Maximum row length", max_k, 1, 65535)
        check_positive("Maximum burst", max_burst)
        fifo_depth = 4 * max_burst if fifo_depth is None else fifo_depth
        check_positive("FIFO depth", fifo_depth)
        if fifo_depth < max_burst:
            raise ValueError(f"FIFO depth ({fifo_depth}) must be at least the maximum burst "
                             f"({max_burst})")
        check_bool("Registered RAM", registered_ram)
        self._array = PEArray(lanes=lanes, pes=pes, act_bits=act_bits, weights=mode,
                              pipeline=pipeline, max_k=max_k, negation=negation,
                              vectors=max_vectors)
        self._registered_ram = registered_ram
        self._mode = mode
        self._formats = formats
        self._word_bits = word_bits
        self._addr_width = addr_width
        self._mem_words = mem_words
        self._max_burst = max_burst
        self._fifo_depth = fifo_depth
        self._act_tiles = act_tiles_for(max_k, lanes)
        self._act_depth = self._act_tiles * max_vectors
        super().__init__({
            "desc": In(stream.Signature(DESCRIPTOR_LAYOUT)),
            "mem_req": Out(stream.Signature(mem_request_layout(addr_width, max_burst))),
            "mem_resp": In(stream.Signature(word_bits)),
            "act_wr": In(stream.Signature(data.StructLayout({
                "addr": range(self._act_depth),
                "data": data.ArrayLayout(signed(act_bits), lanes),
            }))),
            "o_stream": Out(stream.Signature(self._array.output_layout)),
            "status": Out(STATUS_LAYOUT),
            "perf": Out(PERF_LAYOUT),
        })

    array = property(lambda self: self._array)
    lanes = property(lambda self: self._array.lanes)
    pes = property(lambda self: self._array.pes)
    act_bits = property(lambda self: self._array.act_bits)
    mode = property(lambda self: self._mode)
    formats = property(lambda self: self._formats)
    word_bits = property(lambda self: self._word_bits)
    addr_width = property(lambda self: self._addr_width)
    mem_words = property(lambda self: self._mem_words)
    max_k = property(lambda self: self._array.max_k)
    max_vectors = property(lambda self: self._array.vectors)
    max_burst = property(lambda self: self._max_burst)
    registered_ram = property(lambda self: self._registered_ram)
    fifo_depth = property(lambda self: self._fifo_depth)
    act_tiles = property(lambda self: self._act_tiles)
    act_depth = property(lambda self: self._act_depth)

    @property
    def tile_weights(self):
        return self._array.lanes * self._array.pes

    def elaborate(self, platform):
        m = Module()
        N, P, T = self.lanes, self.pes, self.tile_weights
        m.submodules.array = array = self._array
        if self._registered_ram:
            # (its words pass a register before the decoder: the RAM's output register)
            m.submodules.fifo = fifo = RegisteredFIFO(width=self._word_bits,
                                                      depth=self._fifo_depth)
        else:
            m.submodules.fifo = fifo = SyncFIFOBuffered(width=self._word_bits,
                                                        depth=self._fifo_depth)
        m.submodules.decoder = dec = WeightDecoder(word_bits=self._word_bits,
                                                   formats=self._formats)
        chunks = [weights_per_word(f, self._word_bits) for f in self._formats]
        # With several vectors per tile the head tile is held for V cycles: room for the next.
        # With registered RAM stage C registers the tile, so the gearbox's output may be a
        # multiplexer: its ring of tiles, whose cells wait for no output handshake.
        m.submodules.gearbox = gear = TileGearbox(tile=T, chunks=chunks,
                                                  code_shape=array.input_layout["weight"]
                                                  .shape.elem_shape.elem_shape,
                                                  tiles=2 if self.max_vectors > 1 else 1,
                                                  ring=self._registered_ram)
        m.submodules.div = div = SequentialDivider(SIZE_DIV_WIDTH)
        m.submodules.div5 = div5 = SequentialDivider(BYTE_DIV_WIDTH, den_width=3)  # by 5
        m.submodules.mul = mul = SequentialMultiplier(SIZE_DIV_WIDTH - 1)
        act_layout = data.ArrayLayout(signed(self.act_bits), N)
        if self._registered_ram:
            # (stage C below: the activations' register is the RAM's output register)
            m.submodules.acts = acts = RegisteredRAM(shape=act_layout, depth=self._act_depth)
            act_w_addr, act_w_data, act_w_en = acts.w_addr, acts.w_data, acts.w_en
            act_r_addr, act_r_en, act_r_data = acts.r_addr, acts.r_en, acts.r_data
        else:
            m.submodules.acts = acts = Memory(shape=act_layout, depth=self._act_depth, init=[])
            act_w, act_r = acts.write_port(), acts.read_port()
            act_w_addr, act_w_data, act_w_en = act_w.addr, act_w.data, act_w.en
            act_r_addr, act_r_en, act_r_data = act_r.addr, act_r.en, act_r.data

        # --- activation buffer writes (with registered RAM through a register: the address
        # and data fan out to dozens of block RAMs; a job's first read comes many cycles after)
        act_writes = [
            act_w_addr.eq(self.act_wr.payload.addr),
            act_w_data.eq(self.act_wr.payload.data),
            act_w_en.eq(self.act_wr.valid),
        ]
        if self._registered_ram:
            m.d.sync += act_writes
        else:
            m.d.comb += act_writes
        m.d.comb += self.act_wr.ready.eq(1)

        # --- descriptor and derived sizes
        desc = Signal(DESCRIPTOR_LAYOUT)
        mb = Signal(16)          # row blocks
        kt = Signal(16)          # tiles per row
        gt = Signal(16)          # tiles per group
        # mb - 1, kt - 1, gt - 1 and vectors - 1: the sequencer compares its counters with
        # registers, not with differences formed every cycle
        mb_last = Signal(16)
        kt_last = Signal(16)
        gt_last = Signal(16)
        v_last = Signal(8)
        # and the values before those (mod 2**16, 2**8): `x + 1 == x_last` is `x == x_pen`,
        # as a counter never reaches the all-ones value (with registered RAM, gt_pen only)
        mb_pen = Signal(16)
        kt_pen = Signal(16)
        gt_pen = Signal(16)
        v_pen = Signal(8)
        # With registered RAM, the values before those: the walk keeps `x == x_pen` as a flag,
        # and `x + 1 == x_pen` is `x == x_pen2`
        mb_pen2 = Signal(16)
        kt_pen2 = Signal(16)
        v_pen2 = Signal(8)
        words = Signal(32)       # image length in words
        # The word address past the image, from the low bits of base and words: a job whose
        # base or length alone exceeds the memory is refused by `beyond`, and below that the
        # sum fits one bit more than the memory's size (a short carry chain).
        end = Signal(range(2 * self._mem_words + 1))
        beyond = Signal()
        base_over = Signal()
        past_end = Signal()
        error = Signal(StreamError)
        running = Signal()       # sequencer and fetcher active
        m.d.comb += [self.status.error.eq(error)]

        n_tiles = Signal(2 * (SIZE_DIV_WIDTH - 1))
        weights_total = Signal(40)
        m.d.comb += weights_total.eq(n_tiles * T)

        # The descriptor's checks, made on the descriptor offered and registered with it, so
        # that CHECK acts on flip-flops (its verdict starts the divider).
        offered = self.desc.payload
        fmt_ok = Signal()
        m.d.comb += fmt_ok.eq(0)
        with m.Switch(offered.fmt):
            for f in self._formats:
                with m.Case(FormatCode.of(f)):
                    m.d.comb += fmt_ok.eq(1)
        bad_zero, bad_fmt, bad_long, bad_vectors = (
            Signal(name=n) for n in ("bad_zero", "bad_fmt", "bad_long", "bad_vectors"))

        # Bytes of the image: weights / weights-per-byte, rounded up. t5 needs the divider; t2
        # and b1 a shift, registered in BYTES. Only the weight count's low `wbits` bits are
        # used: a count of 2**wbits or more cannot fit the memory (a byte holds at most 8
        # weights), and `w_over` has the address check refuse it. (The sums stay short carry
        # chains.)
        wbits = (self._word_bits * self._mem_words).bit_length()
        w_low = weights_total[:wbits]
        w_over = Signal()
        bytes_pow2 = Signal(wbits)
        word_shift = (self._word_bits // 8).bit_length() - 1
        n_bytes = Signal(wbits)

        # A job's words lie inside the memory (the ADDRESS check), so the fetch position and
        # the words left fit the memory's size; the next burst's length is a register, so the
        # memory sees a registered request.
        fetch_addr = Signal(range(self._mem_words + 1))
        fetch_after = Signal(range(self._mem_words + 1))  # words left after the burst at hand
        blen = Signal(range(self._max_burst + 1))
        # Registered with the burst length: whether words are left to request; and the words
        # left after this burst, so the next burst is formed from a register without first
        # subtracting this one. (Whether the burst fits in the FIFO is `slack`, below.)
        fetch_more = Signal()
        nxt = Signal.like(blen)  # the length of the burst after this one: burst_of(fetch_after)
        nxt_m1 = Signal(signed(len(blen) + 1))  # nxt - 1, for `slack` (below)
        # With registered RAM, the words left after the next burst, y = fetch_after - nxt,
        # also less max_burst (z) and less 1: a request's new values are then each a register,
        # or one of two values (by z's sign) of a register less a constant, rather than
        # comparisons and a subtraction in series. (Elsewhere they are formed from
        # fetch_after when a request is taken: fewer registers, for the iCE40.)
        after_y = Signal.like(fetch_after)
        after_z = Signal(signed(len(fetch_after) + 1))
        after_y_m1 = Signal(signed(len(fetch_after) + 1))
        words_ge1 = Signal()
        words_ge2 = Signal()
        # the first burst's values, formed during the address check: its room_for (below)
        first_blen = Signal.like(blen)
        first_after = Signal.like(fetch_after)
        first_room = Signal(range(self._fifo_depth + 1))
        seq_done = Signal()
        # In ADDRESS_OK, as a flip-flop (ADDRESS_CMP always leads there): `slack` is loaded
        # for the first burst and the gearbox cleared, whether or not the check lets the job
        # run (a job that does not run requests nothing, and the next one does both again).
        at_address_ok = Signal()
        m.d.comb += gear.clear.eq(at_address_ok)
        pending = Signal(16)     # results the array owes: tiles marked last taken, not output
        no_pending = Signal(init=1)  # pending == 0, as a flip-flop set with pending
        b_valid = Signal()

        mb_ = self._max_burst

        def burst_of(left):
            return Mux(left < mb_, left, mb_)

        # Busy in every state but IDLE: with one-hot state coding that is one flip-flop, where
        # an OR over the states' conditions took two levels of logic into the LPU's RUN_WAIT.
        low = Shape.cast(range(self._mem_words + 1)).width
        # With registered RAM, W - k for the k the first bursts' formulas subtract (below),
        # registered with the comparisons of W
        w_less = {k: Signal(signed(low + 1), name=f"w_less{k}")
                  for k in (mb_, mb_ + 1, 2 * mb_, 2 * mb_ + 1, 3 * mb_)}
        # ceil(rows / P) and ceil(cols / N)'s numerators: with registered RAM, registers (set
        # in IDLE); a group that is not a multiple of N, for N a power of two, from its low
        # bits (registered likewise), not from the division's remainder
        if self._registered_ram:
            rows_up, cols_up = Signal(18, name="rows_up"), Signal(18, name="cols_up")
        else:
            rows_up, cols_up = desc.rows + P - 1, desc.cols + N - 1
        pow2_lanes = self._registered_ram and N & (N - 1) == 0
        group_part = Signal()
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.desc.ready.eq(1)
                checks = [
                    bad_zero.eq((offered.rows == 0) | (offered.cols == 0) |
                                (offered.vectors == 0)),
                    bad_fmt.eq(~fmt_ok),
                    bad_long.eq(offered.cols > self.max_k),
                    bad_vectors.eq(offered.vectors > self.max_vectors),
                ]
                if self._registered_ram:
                    # (the checks of whatever is offered, in every cycle: they wait for no
                    # valid; so are the divisions' numerators, and the group's remainder when
                    # the lane count is a power of two)
                    m.d.sync += checks
                    m.d.sync += [rows_up.eq(offered.rows + P - 1),
                                 cols_up.eq(offered.cols + N - 1)]
                    if pow2_lanes:
                        m.d.sync += group_part.eq(offered.group[:N.bit_length() - 1] != 0)
                with m.If(self.desc.valid):
                    m.d.sync += [desc.eq(offered), error.eq(StreamError.NONE)]
                    if not self._registered_ram:
                        m.d.sync += checks
                    m.next = "CHECK"
            with m.State("CHECK"):
                # row blocks = ceil(rows / P); with registered RAM started whatever the checks
                # say (so that the divider's start is the state alone; a job refused leaves it
                # running, and the next job's start restarts it)
                start_rows = [div.start.eq(1), div.num.eq(rows_up), div.den.eq(P)]
                if self._registered_ram:
                    m.d.comb += start_rows
                with m.If(bad_zero):
                    m.d.sync += error.eq(StreamError.ZERO_SIZE)
                    m.next = "IDLE"
                with m.Elif(bad_fmt):
                    m.d.sync += error.eq(StreamError.FORMAT)
                    m.next = "IDLE"
                with m.Elif(bad_long):
                    m.d.sync += error.eq(StreamError.TOO_LONG)
                    m.next = "IDLE"
                with m.Elif(bad_vectors):
                    m.d.sync += error.eq(StreamError.VECTORS)
                    m.next = "IDLE"
                with m.Else():
                    if not self._registered_ram:
                        m.d.comb += start_rows
                    m.next = "DIV_ROWS"
            with m.State("DIV_ROWS"):
                with m.If(~div.busy):
                    m.d.sync += mb.eq(div.quot)
                    m.d.comb += [div.start.eq(1), div.num.eq(cols_up), div.den.eq(N)]
                    m.next = "DIV_COLS"
            with m.State("DIV_COLS"):
                with m.If(~div.busy):
                    m.d.sync += kt.eq(div.quot)
                    m.d.comb += [div.start.eq(1), div.num.eq(desc.group), div.den.eq(N),
                                 mul.start.eq(1), mul.a.eq(mb), mul.b.eq(div.quot)]
                    m.next = "DIV_GROUP"
            with m.State("DIV_GROUP"):
                with m.If(~div.busy & ~mul.busy):
                    m.d.sync += [gt.eq(Mux(desc.group == 0, kt, div.quot)),
                                 n_tiles.eq(mul.product)]
                    with m.If(group_part if pow2_lanes else (desc.group != 0) & (div.rem != 0)):
                        m.d.sync += error.eq(StreamError.GROUP)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BYTES"
            with m.State("BYTES"):
                if self._registered_ram:
                    # (the base's comparison states ahead of ADDRESS, where the length's is)
                    m.d.sync += base_over.eq(desc.base > self._mem_words)
                m.d.comb += [div5.start.eq(1), div5.num.eq(w_low + 4), div5.den.eq(5)]
                m.d.sync += [bytes_pow2.eq(Mux(desc.fmt == FormatCode.B1,
                                               (w_low + 7) >> 3, (w_low + 3) >> 2)),
                             w_over.eq(weights_total[wbits:] != 0)]
                m.next = "DIV_T5"
            with m.State("DIV_T5"):
                with m.If(~div5.busy):
                    m.d.sync += n_bytes.eq(Mux(desc.fmt == FormatCode.T5, div5.quot, bytes_pow2))
                    m.next = "WORDS"
            with m.State("WORDS"):
                nwords = (n_bytes + (1 << word_shift) - 1) >> word_shift
                m.d.sync += [words.eq(nwords),
                             mb_last.eq(mb - 1), kt_last.eq(kt - 1), gt_last.eq(gt - 1),
                             v_last.eq(desc.vectors - 1)]
                if self._registered_ram:
                    m.d.sync += [gt_pen.eq(gt - 2), mb_pen2.eq(mb - 3), kt_pen2.eq(kt - 3),
                                 v_pen2.eq(desc.vectors - 3)]
                else:
                    m.d.sync += [mb_pen.eq(mb - 2), kt_pen.eq(kt - 2), gt_pen.eq(gt - 2),
                                 v_pen.eq(desc.vectors - 2)]
                m.next = "ADDRESS"
            with m.State("ADDRESS"):
                # the address check in three steps (sum, comparison, verdict), each a short path
                m.d.sync += [end.eq(desc.base[:low] + words[:low]),
                             beyond.eq((base_over if self._registered_ram
                                        else desc.base > self._mem_words) |
                                       (words > self._mem_words) | w_over),
                             first_blen.eq(burst_of(words))]
                if self._registered_ram:
                    m.d.sync += [words_ge1.eq(words[:low] >= mb_),
                                 words_ge2.eq(words[:low] >= 2 * mb_)]
                    m.d.sync += [w_less[k].eq(words[:low] - k) for k in w_less]
                m.next = "ADDRESS_CMP"
            with m.State("ADDRESS_CMP"):
                m.d.sync += [past_end.eq(beyond | (end > self._mem_words)),
                             first_room.eq(self._fifo_depth - first_blen)]
                if self._registered_ram:
                    # the bursts after the first, from the image's length W (the values
                    # matter only for a job that passes the check, whose W fits in `low`
                    # bits; no request is made before): fetch_after = W - burst_of(W), nxt =
                    # burst_of(fetch_after), y = fetch_after - nxt, each by comparisons of W
                    # with multiples of max_burst (registered in ADDRESS)
                    # (the differences W - k registered in ADDRESS too)
                    ge1, ge2 = words_ge1, words_ge2
                    m.d.sync += [
                        fetch_after.eq(Mux(ge1, w_less[mb_], 0)),
                        nxt.eq(Mux(ge2, mb_, Mux(ge1, w_less[mb_], 0))),
                        nxt_m1.eq(Mux(ge2, mb_ - 1, Mux(ge1, w_less[mb_ + 1], -1))),
                        after_y.eq(Mux(ge2, w_less[2 * mb_], 0)),
                        after_z.eq(Mux(ge2, w_less[3 * mb_], -mb_)),
                        after_y_m1.eq(Mux(ge2, w_less[2 * mb_ + 1], -1))]
                else:
                    m.d.sync += first_after.eq(words - first_blen)
                m.next = "ADDRESS_OK"
            with m.State("ADDRESS_OK"):
                with m.If(past_end):
                    m.d.sync += error.eq(StreamError.ADDRESS)
                    m.next = "IDLE"
                with m.Else():
                    # (a job has at least one word: rows and columns are not zero)
                    m.d.sync += [fetch_addr.eq(desc.base), blen.eq(first_blen),
                                 running.eq(1), fetch_more.eq(1)]
                    if not self._registered_ram:
                        m.d.sync += [fetch_after.eq(first_after),
                                     nxt.eq(burst_of(first_after)),
                                     nxt_m1.eq(burst_of(first_after) - 1)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(seq_done & ~b_valid & no_pending):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"

        m.d.comb += self.status.busy.eq(~fsm.ongoing("IDLE"))

        # --- fetch: burst requests while the FIFO has room for the whole burst
        # The FIFO's entries present or requested must not exceed room_for = fifo_depth - blen
        # for the burst at hand to be requested. Their difference is kept as a register,
        # `slack`, whose sign is the verdict: the request's valid is then a gate of two
        # flip-flops, and the memory's read enable follows it closely. (A job starts with
        # nothing present or requested: the last job's every word was requested and taken.)
        # `running` is left out: fetch_more is set with it and cleared by the job's last burst,
        # which every job requests before its last tile, so before it stops running.
        slack = Signal(signed(len(first_room) + 2))
        m.d.comb += [
            self.mem_req.valid.eq(fetch_more & ~slack[-1]),
            self.mem_req.payload.addr.eq(fetch_addr),
            self.mem_req.payload.len.eq(blen),
        ]
        req_fire = self.mem_req.valid & self.mem_req.ready
        pop = fifo.pop if self._registered_ram else fifo.r_rdy & fifo.r_en
        # The FIFO's pop (it follows the array's handshake through the gearbox) and the
        # request's acceptance (the memory's ready) are known late: the sums are formed
        # beforehand and the two handshakes only select one. A request adds blen entries and
        # makes room_for the next burst's, fifo_depth - nxt, where it was fifo_depth - blen:
        # slack loses nxt. A pop gives one back. (Each outcome is one adder: slack - nxt + 1 is
        # slack - nxt_m1.)
        m.d.sync += slack.eq(Mux(req_fire, Mux(pop, slack - nxt_m1, slack - nxt),
                                 Mux(pop, slack + 1, Mux(at_address_ok, first_room, slack))))
        m.d.sync += at_address_ok.eq(fsm.ongoing("ADDRESS_CMP"))
        with m.If(req_fire):
            m.d.sync += [fetch_addr.eq(fetch_addr + blen), blen.eq(nxt),
                         fetch_more.eq(fetch_after != 0)]
            if self._registered_ram:
                # the burst after the next: burst_of(y), and y less it, by whether y >=
                # max_burst
                full = ~after_z[-1]
                m.d.sync += [fetch_after.eq(after_y),
                             nxt.eq(Mux(full, mb_, after_y)),
                             nxt_m1.eq(Mux(full, mb_ - 1, after_y_m1)),
                             after_y.eq(Mux(full, after_z, 0)),
                             after_z.eq(Mux(full, after_z - mb_, -mb_)),
                             after_y_m1.eq(Mux(full, after_z - 1, -1))]
            else:
                # burst_of(fetch_after - nxt) - d, given nxt = burst_of(fetch_after): two
                # comparisons with constants rather than a subtraction and a comparison
                def after_nxt(d):
                    return Mux(fetch_after >= 2 * mb_, mb_ - d,
                               Mux(fetch_after >= mb_, fetch_after - (mb_ + d), -d))
                m.d.sync += [fetch_after.eq(fetch_after - nxt),
                             nxt.eq(after_nxt(0)), nxt_m1.eq(after_nxt(1))]
        # A word is requested only with room reserved for it, so the FIFO always has room
        # for the word the memory offers: the response is always ready (the memory's read
        # enable then waits for no FIFO level).
        m.d.comb += [
            fifo.w_data.eq(self.mem_resp.payload),
            fifo.w_en.eq(self.mem_resp.valid),
            self.mem_resp.ready.eq(1),
        ]

        # --- decode into the gearbox
        if self._registered_ram:
            # (no word is left in the output register at a job's end: the job's tiles take
            # all its words)
            word, word_valid = fifo.o_data, fifo.o_valid
            m.d.comb += fifo.o_ready.eq(gear.i_stream.ready)
        else:
            word, word_valid = fifo.r_data, fifo.r_rdy
            m.d.comb += fifo.r_en.eq(gear.i_stream.ready)
        m.d.comb += [
            dec.word.eq(word),
            dec.fmt.eq(desc.fmt),
            gear.i_stream.payload.codes.eq(dec.codes),
            gear.i_stream.payload.count.eq(dec.count),
            gear.i_stream.valid.eq(word_valid),
        ]

        # --- sequence: stage A walks (row block, tile, vector) and reads the activation buffer;
        # stage B presents the activations with the gearbox's head tile to the array.
        # The walk's counters and flags, and stage B's framing, are set while not running
        # (below) and mean nothing until then: they need no reset of their own, which would
        # widen their enables (`advance`, already late, or a reset).
        rb = Signal(16, reset_less=True)
        t = Signal(16, reset_less=True)
        tg = Signal(16, reset_less=True)
        v = Signal(8, reset_less=True)
        # the activation buffer's address of (v, t), v * act_tiles + t, kept with them (with
        # registered RAM: it feeds dozens of block RAMs)
        act_addr = Signal(range(self._act_depth), reset_less=True)
        b_first = Signal(reset_less=True)
        b_last = Signal(reset_less=True)
        b_vec = Signal(8, reset_less=True)
        # Stage B holds the last use of its tile (its last vector): then the array's taking it
        # takes the gearbox's head tile too. One flip-flop with b_valid folded in, so the
        # gearbox's ready waits only for the array's (with registered RAM, the step's flag,
        # which travels with its activations through the queue).
        b_tile_done = Signal()
        a_valid = running & ~seq_done
        # Stage B's tile: `b_out` (framing, weights and activations) goes to the array, or with
        # registered RAM first to stage C, a register stage (below).
        b_out = stream.Signature(array.input_layout).create(path=("b_out",))
        fire_b = b_out.valid & b_out.ready
        if self._registered_ram:
            # The activation buffer's block RAMs stand across the device, and an enable formed
            # from the array's handshake reached them late. So they read every cycle (their
            # read and output registers always enabled), and the walk steps whenever it holds
            # a credit of a queue (:class:`CreditQueue`, four entries): each step's
            # activations, two cycles later on the block RAMs' outputs, and its framing,
            # delayed alike, are written to the queue, whose head stage B joins with the
            # gearbox's head tile.
            frame_layout = data.StructLayout({
                "first": 1, "last": 1, "tile_done": 1,
                **({"vector": b_vec.shape()} if self.max_vectors > 1 else {})})
            queue_layout = data.StructLayout({"act": act_layout, "frame": frame_layout})
            # (the step's pipeline: the block RAMs' read stage and output register)
            m.submodules.act_queue = queue = CreditQueue(shape=queue_layout, latency=2)
            advance = queue.room
            l_valid, o_valid = Signal(), Signal()
            l_frame = Signal(frame_layout, reset_less=True)
            o_frame = Signal(frame_layout, reset_less=True)
            m.d.comb += [l_frame.first.eq(b_first), l_frame.last.eq(b_last),
                         l_frame.tile_done.eq(b_tile_done)]
            if self.max_vectors > 1:
                m.d.comb += l_frame.vector.eq(b_vec)
            issue = advance & a_valid
            m.d.sync += [l_valid.eq(issue), o_valid.eq(l_valid), o_frame.eq(l_frame)]
            head = queue.r_data
            m.d.comb += [
                act_r_en.eq(1), acts.r_oe.eq(1), act_r_addr.eq(act_addr),
                Value.cast(b_out.payload.weight).eq(Value.cast(gear.o_stream.payload)),
                queue.issue.eq(issue),
                queue.w_data.act.eq(act_r_data), queue.w_data.frame.eq(o_frame),
                queue.w_en.eq(o_valid),
                queue.r_en.eq(fire_b),
                b_out.valid.eq(queue.r_valid & gear.o_stream.valid),
                b_out.payload.act.eq(head.act),
                b_out.payload.first.eq(head.frame.first),
                b_out.payload.last.eq(head.frame.last),
                gear.o_stream.ready.eq(queue.r_valid & head.frame.tile_done & b_out.ready),
            ]
            if self.max_vectors > 1:
                m.d.comb += b_out.payload.vector.eq(head.frame.vector)
            # b_valid: a step issued and not yet taken (RUN ends with none)
            m.d.comb += b_valid.eq(queue.busy)
            stalled = queue.r_valid & ~gear.o_stream.valid
        else:
            advance = ~b_valid | fire_b
            m.d.comb += act_r_en.eq(advance)
            m.d.comb += [
                act_r_addr.eq(act_address(t, v, self._act_tiles)),
                b_out.valid.eq(b_valid & gear.o_stream.valid),
                Value.cast(b_out.payload.weight).eq(Value.cast(gear.o_stream.payload)),
                b_out.payload.first.eq(b_first),
                b_out.payload.last.eq(b_last),
                gear.o_stream.ready.eq(b_tile_done & b_out.ready),
            ]
            if self.max_vectors > 1:
                m.d.comb += b_out.payload.vector.eq(b_vec)
            stalled = b_valid & ~gear.o_stream.valid
        arr_in = array.i_stream
        if self._registered_ram:
            # The array never stalls: its results go to a queue (:class:`CreditQueue`) whose
            # credits the tiles marked last take as they leave stage B, so the queue has room
            # for every result and the array's ready is always high. Stages C and D, and the
            # array, then advance in every cycle, and stage B's handshake waits for flip-flops
            # and the queues' heads, not for the consumer's ready through the array. Stages C
            # and D are two registers from the gearbox and the activation queue.
            # (a result's pipeline: stages C and D, and the array; 16 entries at latency 7)
            m.submodules.out_queue = out_queue = CreditQueue(
                shape=array.output_layout, latency=TILE_STAGES + array.latency)
            c_valid = Signal()
            # (in simulation, as the array's stages, stages C and D take a value only with a
            # tile)
            c_take = fire_b if platform is None else 1
            d_take = c_valid if platform is None else 1
            c_pay = Signal(array.input_layout, name="c_pay", reset_less=True)
            d_pay = Signal(array.input_layout, name="d_pay", reset_less=True)
            m.d.sync += [c_valid.eq(fire_b), arr_in.valid.eq(c_valid)]
            with m.If(c_take):
                m.d.sync += c_pay.eq(b_out.payload)
            with m.If(d_take):
                m.d.sync += d_pay.eq(c_pay)
            m.d.comb += [b_out.ready.eq(~b_out.payload.last | out_queue.room),
                         arr_in.payload.eq(d_pay),
                         out_queue.issue.eq(fire_b & b_out.payload.last),
                         out_queue.w_data.eq(array.o_stream.payload),
                         out_queue.w_en.eq(array.o_stream.valid),
                         array.o_stream.ready.eq(1),
                         self.o_stream.payload.eq(out_queue.r_data),
                         self.o_stream.valid.eq(out_queue.r_valid),
                         out_queue.r_en.eq(self.o_stream.ready)]
        else:
            m.d.comb += [arr_in.valid.eq(b_out.valid), b_out.ready.eq(arr_in.ready),
                         arr_in.payload.eq(b_out.payload), arr_in.payload.act.eq(act_r_data)]
        # Whether each counter is at its last value (and tg at 0): flags registered with the
        # counters, so that the walk's decisions wait for no comparison behind the handshake.
        v_at_last, t_at_last, g_at_last, rb_at_last, tg_at_0 = (
            Signal(reset_less=True, name=n)
            for n in ("v_at_last", "t_at_last", "g_at_last", "rb_at_last", "tg_at_0"))
        # Which counters the next step moves past their last value, with a_valid folded in:
        # step_v = a_valid & v_at_last, step_t = step_v & t_at_last, step_rb = step_t &
        # rb_at_last. Registered with the flags, so that a counter's enable is the handshake
        # and one flip-flop, not a chain of ANDs behind it.
        step_v, step_t, step_rb = (Signal(reset_less=True, name=n)
                                   for n in ("step_v", "step_t", "step_rb"))
        if self._registered_ram:
            # Whether each counter is at its value before the last (`x == x_pen`), and whether
            # the first value is the last or the one before it: flags, so that the next step's
            # flags are multiplexers of flags, not comparisons of the counters.
            v_at_pen, t_at_pen, rb_at_pen, v_one, t_one, v_two, t_two = (
                Signal(reset_less=True, name=n)
                for n in ("v_at_pen", "t_at_pen", "rb_at_pen", "v_one", "t_one", "v_two",
                          "t_two"))
            v_at_last_next = Mux(v_at_last, v_one, v_at_pen)
            t_at_last_next = Mux(t_at_last, t_one, t_at_pen)
            rb_at_last_next = rb_at_pen
            with m.If(advance & a_valid):
                m.d.sync += v_at_pen.eq(Mux(v_at_last, v_two, v == v_pen2))
            with m.If(advance & step_v):
                m.d.sync += t_at_pen.eq(Mux(t_at_last, t_two, t == kt_pen2))
            with m.If(advance & step_t):
                m.d.sync += rb_at_pen.eq(rb == mb_pen2)
            with m.If(~running):
                m.d.sync += [v_one.eq(v_last == 0), t_one.eq(kt_last == 0),
                             v_two.eq(v_last == 1), t_two.eq(kt_last == 1),
                             v_at_pen.eq(v_last == 1), t_at_pen.eq(kt_last == 1),
                             rb_at_pen.eq(mb_last == 1)]
        else:
            v_at_last_next = Mux(v_at_last, v_last == 0, v == v_pen)
            t_at_last_next = Mux(t_at_last, kt_last == 0, t == kt_pen)
            rb_at_last_next = rb == mb_pen
        if self._registered_ram:
            with m.If(advance & a_valid):
                m.d.sync += b_tile_done.eq(step_v)
        else:
            with m.If(advance):
                m.d.sync += [b_valid.eq(a_valid), b_tile_done.eq(step_v)]
        with m.If(advance & a_valid):
            if self._registered_ram:
                # the next step's activations: v + 1 with this t, else vector 0 of the next t
                m.d.sync += act_addr.eq(Mux(v_at_last, Mux(t_at_last, 0, t + 1),
                                            act_addr + self._act_tiles))
            next_t = Mux(step_v, t_at_last_next, t_at_last)
            next_rb = Mux(step_t, rb_at_last_next, rb_at_last)
            m.d.sync += [
                b_first.eq(tg_at_0),
                b_last.eq(g_at_last | t_at_last),
                b_vec.eq(v),
                v.eq(Mux(v_at_last, 0, v + 1)),
                v_at_last.eq(v_at_last_next),
                seq_done.eq(step_rb),
                step_v.eq(~step_rb & v_at_last_next),
                step_t.eq(~step_rb & v_at_last_next & next_t),
                step_rb.eq(~step_rb & v_at_last_next & next_t & next_rb),
            ]
        with m.If(advance & step_v):
            g_wrap = t_at_last | g_at_last
            m.d.sync += [t.eq(Mux(t_at_last, 0, t + 1)),
                         t_at_last.eq(t_at_last_next),
                         tg.eq(Mux(g_wrap, 0, tg + 1)),
                         g_at_last.eq(Mux(g_wrap, gt_last == 0, tg == gt_pen)),
                         tg_at_0.eq(g_wrap)]     # tg + 1 < gt: never 0
        with m.If(advance & step_t):
            m.d.sync += [rb.eq(rb + 1), rb_at_last.eq(rb_at_last_next)]
        with m.If(~running):
            # (the *_last registers are set in set-up, before `running`)
            first_v, first_t, first_rb = v_last == 0, kt_last == 0, mb_last == 0
            m.d.sync += [rb.eq(0), t.eq(0), tg.eq(0), v.eq(0), act_addr.eq(0), seq_done.eq(0)]
            if not self._registered_ram:
                m.d.sync += [b_valid.eq(0), b_tile_done.eq(0)]
            m.d.sync += [v_at_last.eq(first_v), t_at_last.eq(first_t),
                         g_at_last.eq(gt_last == 0), rb_at_last.eq(first_rb),
                         tg_at_0.eq(1), step_v.eq(first_v), step_t.eq(first_v & first_t),
                         step_rb.eq(first_v & first_t & first_rb)]

        # --- results, and knowing when the last one has left
        if not self._registered_ram:
            wiring.connect(m, array=array.o_stream, out=wiring.flipped(self.o_stream))
        out_fire = self.o_stream.valid & self.o_stream.ready
        owed, paid = fire_b & b_out.payload.last, out_fire
        # (with registered RAM, the sums are formed before the handshakes select one)
        m.d.sync += [pending.eq(up_down(pending, owed, paid) if self._registered_ram
                                else pending + owed - paid),
                     no_pending.eq(Mux(owed & ~paid, 0,
                                       Mux(paid & ~owed, pending == 1, no_pending)))]

        # --- performance counters (cleared by each accepted descriptor)
        # The events of the handshakes are registered before they are counted: a 32-bit carry
        # chain behind the array's or the memory's handshake was a critical path. The counts
        # lag by a cycle; each job's last such event comes at least two cycles before the
        # streamer leaves RUN, so the counts are complete when `busy` falls. An event in the
        # cycle of a clear belongs to the job before, as without the register.
        perf = self.perf
        clear = self.desc.valid & self.desc.ready
        events = {
            "mem_stall": stalled,
            "out_stall": self.o_stream.valid & ~self.o_stream.ready,
            "words_read": self.mem_resp.valid & self.mem_resp.ready,
            "tiles": fire_b,
        }
        counted = {}
        for name, event in events.items():
            counted[name] = Signal(name=f"{name}_event")
            m.d.sync += counted[name].eq(event & ~clear)
        with m.If(clear):
            m.d.sync += [perf.busy_cycles.eq(0), perf.mem_stall.eq(0), perf.out_stall.eq(0),
                         perf.words_read.eq(0), perf.tiles.eq(0)]
        with m.Else():
            m.d.sync += perf.busy_cycles.eq(perf.busy_cycles + self.status.busy)
            for name, event in counted.items():
                counter = getattr(perf, name)
                m.d.sync += counter.eq(counter + event)
        return m
