"""Weight memories for boards: the LPU's burst read port on block RAM, UP5K SPRAM or SPI flash.

Every memory here is a component with the ports of
:class:`~lpu.sim.memory_models.MemoryModel`: ``req`` (burst requests ``{addr, len}``,
:func:`lpu.hw.streamer.mem_request_layout`), ``resp`` (words) and ``wr`` (word writes, how
``WRITE_MEM`` loads the memory). :func:`weight_memory` picks one by name
(:data:`MEMORY_KINDS`), as a board's :class:`~lpu.boards.top.BoardSpec` says:

``bram``
    :class:`BurstRAM`: block RAM (any FPGA), first word one cycle after the request, then one
    word per cycle.
``spram``
    :class:`SPRAMBurstRAM`: the iCE40 UP5K's four SB_SPRAM256KA (16K x 16 bits each), up to
    32768 words of 32 bits (128 KiB); the same timing as ``bram`` except that a write waits
    until no burst is in progress (the SPRAM has one port).
``flash``, ``qspi``
    :class:`SPIFlashReader`: the board's SPI flash (the configuration flash of the iCE40 and
    ECP5 boards; the Tang Nano 9K's, on the GW1NR-9's MSPI pins, holds no bitstream), read
    with fast read (``0x0B``, one data line; ``flash``) or quad I/O fast read (``0xEB``;
    ``qspi``), the weights at a byte offset (past the bitstream where it shares the flash).
    Flash is not writable from the fabric: ``wr`` takes and drops every word and raises the
    sticky ``wr_dropped`` flag. The image (:func:`lpu.host.image.flash_image`) is programmed
    with the bitstream tools (:data:`lpu.boards.program.WEIGHTS_COMMANDS`).
"""

import operator
from functools import reduce

from amaranth.hdl import Array, Cat, ClockSignal, Const, Instance, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from lpu.hw.arith import nonzero_after, up_down
from lpu.hw.bram import RegisteredRAM
from lpu.hw.params import check_bool, check_positive, check_range
from lpu.hw.streamer import mem_request_layout

__all__ = ["MEMORY_KINDS", "BurstRAM", "SPRAMBurstRAM", "SPIFlashReader", "SPI_SIGNATURE",
           "FLASH_COMMANDS", "FLASH_LINES", "FLASH_OFFSET", "flash_resource",
           "flash_command_clocks", "flash_cycles_per_word", "memory_ports", "connect_memory",
           "weight_memory",
           "BANK_WORDS", "BANK_GROUP", "READ_AHEAD"]

#: Memory kinds of :func:`weight_memory` (and of ``BoardSpec.memory``).
MEMORY_KINDS = ("bram", "spram", "flash", "qspi")
#: The flash kinds, and the data lines each reads on.
FLASH_LINES = {"flash": 1, "qspi": 4}

#: Words of one SB_SPRAM256KA (16 bits wide), and how many a UP5K has.
SPRAM_DEPTH = 16384
SPRAM_COUNT = 4

#: Default byte offset of the weight image in the configuration flash: past the bitstream
#: (UP5K: 104,090 bytes; ULX3S-85F builds here: 0.34-0.46 MB; ``lpu build`` checks it), at a
#: 64 KiB erase-block boundary.
FLASH_OFFSET = 1 << 20

#: SPI flash read commands by data-line count: (code, address clocks, mode clocks, dummy
#: clocks). Fast read 0x0B: address on one line (24 clocks), 8 dummy clocks. Quad I/O fast
#: read 0xEB (Winbond W25Q, ISSI IS25LP, ...): address on four lines (6 clocks), a mode byte
#: (2 clocks, 0x00: no continuous-read mode), 4 dummy clocks.
FLASH_COMMANDS = {1: (0x0B, 24, 0, 8), 4: (0xEB, 6, 2, 4)}

#: The SPI bus between :class:`SPIFlashReader` and a flash (or its simulation model): chip
#: select (active high here; the pin is active low), clock (mode 0: idle low), and four data
#: lines with output enables. With one data line, ``o[0]`` is COPI (the flash's DI/IO0) and
#: ``i[1]`` is CIPO (DO/IO1).
SPI_SIGNATURE = wiring.Signature({
    "cs": Out(1), "sck": Out(1), "o": Out(4), "oe": Out(4), "i": In(4),
})


def _check_layout(request_layout):
    if not isinstance(request_layout, data.StructLayout) or \
            set(request_layout.members) != {"addr", "len"}:
        raise TypeError(f"Request layout must be a StructLayout with addr and len, not "
                        f"{request_layout!r}")


def memory_ports(request_layout, word_bits):
    """The members of a weight memory's signature: ``req`` bursts, ``resp`` words and ``wr``
    word writes (the LPU's memory port, flipped)."""
    return {
        "req": In(stream.Signature(request_layout)),
        "resp": Out(stream.Signature(word_bits)),
        "wr": In(stream.Signature(data.StructLayout({
            "addr": request_layout["addr"].shape, "data": word_bits}))),
    }


def connect_memory(m, lpu, memory):
    """Connect an :class:`~lpu.hw.lpu.LPU`'s memory port to ``memory`` in module ``m``: burst
    requests, words, ``WRITE_MEM`` writes, and the memory's ``wr_dropped`` flag (a flash
    reader's) to the LPU's ``mem_wr_dropped`` when it has one."""
    wiring.connect(m, lpu.mem_req, memory.req)
    wiring.connect(m, memory.resp, lpu.mem_resp)
    wiring.connect(m, lpu.mem_wr, memory.wr)
    if "wr_dropped" in memory.signature.members:
        m.d.comb += lpu.mem_wr_dropped.eq(memory.wr_dropped)


def _burst_reads(m, req, resp, *, rd_en, rd_addr, rd_data, port_free=1):
    """The burst read control of :class:`BurstRAM` and :class:`SPRAMBurstRAM` (one definition,
    so their timing is the same): a synchronous read port (``rd_en``, ``rd_addr``; ``rd_data``
    holds the word read until the next read) feeds ``resp``; the first word of a burst is read
    in the cycle its request is accepted; a word is read only when the output is free or being
    emptied, so a word once offered stays offered until taken. ``port_free`` low holds off a
    new burst (the port is being written). Returns ``busy``: a burst is in progress or a word
    is offered."""
    have = Signal()              # rd_data holds a word not yet taken
    taken = resp.valid & resp.ready
    m.d.comb += [resp.valid.eq(have), resp.payload.eq(rd_data)]
    read, active = _burst_walk(m, req, free=~have | resp.ready, rd_addr=rd_addr,
                               port_free=port_free)
    m.d.comb += rd_en.eq(read)
    with m.If(read):
        m.d.sync += have.eq(1)
    with m.Elif(taken):
        m.d.sync += have.eq(0)
    return active | have


def _burst_walk(m, req, *, free, rd_addr, port_free=1):
    """The word addresses of the bursts ``req`` asks for: ``rd_addr`` is read in each cycle
    the returned ``read`` is high, which is when ``free`` is (the word has somewhere to go);
    the first word of a burst in the cycle its request is accepted. Returns ``(read,
    active)``: ``active`` while a burst has words left."""
    addr = Signal.like(req.payload.addr)
    left = Signal.like(req.payload.len)
    # left == 0 and left == 1 as flip-flops, set with `left`: the read enable and the request's
    # ready are then gates of flip-flops and the handshakes.
    left_0 = Signal(init=1)
    left_1 = Signal()

    accept = req.valid & req.ready
    # a request taken now is read now (start) if no burst runs and its word has somewhere to go
    begin = left_0 & free & (req.payload.len != 0)
    start = accept & begin
    cont = ~left_0 & free
    # The read address does not wait for the handshakes: while no burst runs it is the
    # request's (read only if the request is accepted), otherwise the burst's next word. Only
    # the read enable follows the handshakes into the RAMs.
    m.d.comb += [
        req.ready.eq((left_0 & port_free) | (left_1 & cont)),
        rd_addr.eq(Mux(left_0, req.payload.addr, addr)),
    ]

    def set_left(value, is_0, is_1):
        m.d.sync += [left.eq(value), left_0.eq(is_0), left_1.eq(is_1)]

    # (the values are formed from registers and `free`; the request's handshake, known late,
    # selects last)
    n = req.payload.len
    with m.If(accept):
        with m.If(begin):
            m.d.sync += addr.eq(req.payload.addr + 1)
            set_left(n - 1, n == 1, n == 2)
        with m.Else():
            # not read yet (the output is taken, or the burst at hand reads its last word
            # now): the new burst starts next cycle
            m.d.sync += addr.eq(req.payload.addr)
            set_left(n, n == 0, n == 1)
    with m.Elif(cont):
        m.d.sync += addr.eq(addr + 1)
        set_left(left - 1, left_1, left == 2)
    return start | cont, ~left_0


#: Words in one bank of a pipelined :class:`BurstRAM`: an ECP5 DP16KD holds 1024 words of 18
#: bits (a 32-bit word takes two side by side), a Gowin BSRAM 1024 of 16.
BANK_WORDS = 1024
#: Banks whose words the first multiplexer stage of a pipelined :class:`BurstRAM` selects among.
BANK_GROUP = 4
#: Words read ahead by a pipelined :class:`BurstRAM`: its output FIFO's depth.
READ_AHEAD = 8


class BurstRAM(wiring.Component):
    """On-chip RAM behind the LPU's burst read port and word write port.

    The timing of :class:`~lpu.sim.memory_models.MemoryModel`'s ``bram`` preset -- the first
    word one cycle after the request, then one word per cycle, a request queued behind a burst
    starting without a gap -- but with a synchronous read port, so it maps to block RAM.

    Pipelined (``pipelined=True``), for a large RAM at a high clock: the RAM is banks of
    :data:`BANK_WORDS` words, every path between the request and the words is a register
    stage, and the words wait in a FIFO of :data:`READ_AHEAD`:

    1. the word address (and the decision to read it) is registered;
    2. every bank reads that address, every cycle (no read enable reaches the block RAMs);
    3. each bank's word into a register of its own (cleared in every bank but the one read);
    4. an OR per :data:`BANK_GROUP` banks into a register;
    5. an OR of the groups into a register;
    6. the FIFO.

    A word is read only in a cycle after one with fewer than ``READ_AHEAD - 1`` words read and
    not taken (at most one more is read a cycle), so the FIFO never overflows and the stages
    never stall. The first word of a burst is offered
    six cycles after its request (one without pipelining); then one word per cycle while they
    are taken. Writes pass two register stages (the bank's write enable is a flip-flop).

    Parameters
    ----------
    words, word_bits : int
    request_layout : StructLayout
        ``{"addr", "len"}``, as :func:`lpu.hw.streamer.mem_request_layout`.
    pipelined : bool

    Attributes
    ----------
    req : In(stream.Signature(request_layout))
    resp : Out(stream.Signature(word_bits))
    wr : In(stream.Signature(StructLayout({"addr", "data"})))
        Always ready; a write to an address beyond ``words`` is ignored.
    """

    def __init__(self, *, words, word_bits, request_layout, pipelined=False):
        check_positive("Memory size in words", words)
        check_positive("Word width", word_bits)
        _check_layout(request_layout)
        check_bool("Pipelined", pipelined)
        self._words = words
        self._word_bits = word_bits
        self._pipelined = pipelined
        if pipelined:
            self._banks = [RegisteredRAM(shape=word_bits, depth=min(BANK_WORDS, words - b),
                                         clearable=True)
                           for b in range(0, words, BANK_WORDS)]
        else:
            self._mem = Memory(shape=word_bits, depth=words, init=[])
        super().__init__(memory_ports(request_layout, word_bits))

    words = property(lambda self: self._words)
    pipelined = property(lambda self: self._pipelined)

    def elaborate(self, platform):
        m = Module()
        if self._pipelined:
            self._elaborate_pipelined(m)
            return m
        m.submodules.mem = mem = self._mem
        wp = mem.write_port()
        rd = mem.read_port()
        m.d.comb += [wp.addr.eq(self.wr.payload.addr), wp.data.eq(self.wr.payload.data),
                     wp.en.eq(self.wr.valid & (self.wr.payload.addr < self._words)),
                     self.wr.ready.eq(1)]
        _burst_reads(m, self.req, self.resp, rd_en=rd.en, rd_addr=rd.addr, rd_data=rd.data)
        return m

    def _elaborate_pipelined(self, m):
        banks = self._banks
        low = (BANK_WORDS - 1).bit_length()
        addr_w = len(self.req.payload.addr)

        def bank_of(addr):
            return addr[low:] if addr_w > low else Const(0, 1)

        # Writes: registered twice (the writer's word comes from across the device, and goes
        # to every bank), each bank's write enable decoded into a flip-flop in the second. The
        # second register is one per group of BANK_GROUP banks, loaded only by a write to the
        # group (so that synthesis keeps the copies apart): each stands by its group's block
        # RAMs, not at the middle of all of them.
        wr = Signal.like(self.wr.payload, reset_less=True)
        wr_valid = Signal()
        w_en = Signal(len(banks))
        m.d.comb += self.wr.ready.eq(1)
        m.d.sync += [wr.eq(self.wr.payload), wr_valid.eq(self.wr.valid)]
        m.d.sync += w_en.eq(0)
        with m.If(wr_valid & (wr.addr < self._words)):
            m.d.sync += w_en.bit_select(bank_of(wr.addr), 1).eq(1)
        w_addr, w_data = [], []
        for g in range(0, len(banks), BANK_GROUP):
            addr_g = Signal(low, name=f"w_addr{g // BANK_GROUP}", reset_less=True)
            data_g = Signal(self._word_bits, name=f"w_data{g // BANK_GROUP}", reset_less=True)
            with m.If(wr_valid & (bank_of(wr.addr) // BANK_GROUP == g // BANK_GROUP)):
                m.d.sync += [addr_g.eq(wr.addr[:low]), data_g.eq(wr.data)]
            w_addr += [addr_g] * min(BANK_GROUP, len(banks) - g)
            w_data += [data_g] * min(BANK_GROUP, len(banks) - g)

        # Read credits: `pending` words read and not yet taken, at most READ_AHEAD. `room`
        # (a word may be read) is registered from `pending` alone: it rises at most one a
        # cycle, so `pending < READ_AHEAD - 1` leaves room for the read of the cycle after.
        m.submodules.fifo = fifo = SyncFIFO(width=self._word_bits, depth=READ_AHEAD)
        pending = Signal(range(READ_AHEAD + 1))
        room = Signal(init=1)
        rd_addr = Signal(addr_w)
        read, _ = _burst_walk(m, self.req, free=room, rd_addr=rd_addr)
        # The FIFO holds a word (its r_rdy, `level != 0`) as a flip-flop set with the level:
        # the word's valid reaches the reader's FIFO, across the device, from a flip-flop.
        avail = Signal()
        taken = self.resp.ready & avail
        # (the read enable is known late)
        m.d.sync += [pending.eq(up_down(pending, read, taken)),
                     room.eq(pending < READ_AHEAD - 1),
                     avail.eq(nonzero_after(avail, fifo.level, fifo.w_en, taken))]
        m.d.comb += [self.resp.valid.eq(avail), self.resp.payload.eq(fifo.r_data),
                     fifo.r_en.eq(taken)]

        # 1: the address; 2: the banks' read registers; 3: a register behind each bank (a
        # block RAM's output is slow: an ECP5's takes 5.6 ns); 4: a word per group; 5: the
        # word (the groups' words and the FIFO's write data are far apart); 6: the FIFO.
        # Stage 3 clears every bank's register but the one read (the block RAMs' synchronous
        # output reset, from a one-hot register of stage 2), so stages 4 and 5 are ORs: no
        # select reaches them, and each is one or two LUTs.
        a_valid, b_valid, c_valid, d_valid, e_valid = (Signal() for _ in range(5))
        a_addr = Signal(addr_w, reset_less=True)
        b_clear = Signal(len(banks), init=(1 << len(banks)) - 1)   # banks not read in stage 2
        m.d.sync += [a_valid.eq(read), a_addr.eq(rd_addr),
                     b_valid.eq(a_valid), c_valid.eq(b_valid), d_valid.eq(c_valid)]
        m.d.sync += [b_clear[b].eq(~a_valid | (bank_of(a_addr) != b)) for b in range(len(banks))]
        outs = []
        for b, ram in enumerate(banks):
            # (on an ECP5 the register behind the bank is the block RAM's output register)
            m.submodules[f"bank{b}"] = ram
            m.d.comb += [ram.w_addr.eq(w_addr[b]), ram.w_data.eq(w_data[b]), ram.w_en.eq(w_en[b]),
                         ram.r_addr.eq(a_addr[:low]), ram.r_en.eq(1), ram.r_oe.eq(1),
                         ram.r_rst.eq(b_clear[b])]
            outs.append(ram.r_data)
        groups = []
        for g in range(0, len(banks), BANK_GROUP):
            word = Signal(self._word_bits, name=f"group{g // BANK_GROUP}", reset_less=True)
            m.d.sync += word.eq(reduce(operator.or_, outs[g:g + BANK_GROUP]))
            groups.append(word)
        e_word = Signal(self._word_bits, reset_less=True)
        m.d.sync += [e_valid.eq(d_valid), e_word.eq(reduce(operator.or_, groups))]
        m.d.comb += [fifo.w_en.eq(e_valid), fifo.w_data.eq(e_word)]


class SPRAMBurstRAM(wiring.Component):
    """:class:`BurstRAM` on the iCE40 UP5K's single-port SPRAM (SB_SPRAM256KA).

    A word of ``word_bits`` takes ``word_bits / 16`` SPRAMs side by side, and every 16384
    words another such row of them: 32-bit words use two SPRAMs per 16384 words, so the UP5K's
    four hold up to 32768 words (128 KiB). On an iCE40 platform the SPRAMs are instantiated;
    without a platform (simulation) an :class:`~amaranth.lib.memory.Memory` of the same size
    stands in, behind the same control, so the cycle timing is identical.

    Reads have :class:`BurstRAM`'s timing. The SPRAM has one port and its output register
    is undefined after a write, so ``wr`` is ready only while no burst is in progress and no
    word is offered, and a request waits while a write is offered. (The LPU never overlaps
    them: ``WRITE_MEM`` and ``RUN`` are separate commands.)

    Parameters
    ----------
    words : int
        1 to ``4 * 16384 * 16 / word_bits``.
    word_bits : int
        A multiple of 16.
    request_layout : StructLayout

    Attributes
    ----------
    req, resp, wr
        As :class:`BurstRAM`; a write beyond ``words`` is ignored.

    Raises
    ------
    ValueError
        A word width that is not a multiple of 16, or more words than the UP5K's SPRAMs hold;
        on elaboration, a platform that is not an iCE40.
    """

    def __init__(self, *, words, word_bits, request_layout):
        check_positive("Memory size in words", words)
        check_positive("Word width", word_bits)
        _check_layout(request_layout)
        if word_bits % 16:
            raise ValueError(f"SPRAM word width must be a multiple of 16, not {word_bits}")
        side = word_bits // 16
        banks = -(-words // SPRAM_DEPTH)
        if side * banks > SPRAM_COUNT:
            most = SPRAM_COUNT // side * SPRAM_DEPTH
            raise ValueError(f"SPRAM of {words} words of {word_bits} bits needs "
                             f"{side * banks} SB_SPRAM256KA, the iCE40 UP5K has {SPRAM_COUNT} "
                             f"(at most {most} words)")
        self._words = words
        self._word_bits = word_bits
        self._banks = banks
        super().__init__(memory_ports(request_layout, word_bits))

    words = property(lambda self: self._words)
    word_bits = property(lambda self: self._word_bits)

    @property
    def sprams(self):
        """SB_SPRAM256KA used."""
        return self._banks * self._word_bits // 16

    def elaborate(self, platform):
        m = Module()
        wb = self._word_bits
        addr_w = len(self.req.payload.addr)
        rd_en, wr_en = Signal(), Signal()
        rd_addr = Signal(addr_w)
        rd_data = Signal(wb)
        busy = Signal()
        wr_ok = self.wr.payload.addr < self._words
        # A write takes the port only when no burst uses it; a new burst waits for the write.
        m.d.comb += [self.wr.ready.eq(~busy), wr_en.eq(self.wr.valid & ~busy & wr_ok)]
        m.d.comb += busy.eq(_burst_reads(m, self.req, self.resp, rd_en=rd_en, rd_addr=rd_addr,
                                         rd_data=rd_data, port_free=~self.wr.valid))
        addr = Signal(max(addr_w, 15))
        m.d.comb += addr.eq(rd_addr)
        with m.If(wr_en):
            m.d.comb += addr.eq(self.wr.payload.addr)

        if platform is None:
            m.submodules.mem = mem = Memory(shape=wb, depth=self._words, init=[])
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(self.wr.payload.data), wp.en.eq(wr_en),
                         rp.addr.eq(addr), rp.en.eq(rd_en), rd_data.eq(rp.data)]
            return m

        from amaranth.vendor import SiliconBluePlatform
        if not isinstance(platform, SiliconBluePlatform):
            raise ValueError(f"SPRAM (SB_SPRAM256KA) exists only on iCE40 UP devices, not on "
                             f"platform {type(platform).__name__}")
        bank = addr[14:] if self._banks > 1 else Const(0, 1)
        rbank = Signal(range(max(2, self._banks)))   # bank of the word on the outputs
        with m.If(rd_en):
            m.d.sync += rbank.eq(bank)
        outs = []
        for b in range(self._banks):
            sel = (rd_en | wr_en) & (bank == b)
            out = Signal(wb, name=f"spram_out{b}")
            outs.append(out)
            for s in range(wb // 16):
                # The output register holds its word while CHIPSELECT is low.
                m.submodules[f"spram{b}_{s}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=self.wr.payload.data[16 * s:16 * s + 16],
                    i_MASKWREN=Const(0xF, 4), i_WREN=wr_en, i_CHIPSELECT=sel,
                    i_CLOCK=ClockSignal("sync"), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=out[16 * s:16 * s + 16])
        m.d.comb += rd_data.eq(Array(outs)[rbank])
        return m


def flash_command_clocks(width):
    """Flash clocks from selecting the flash to its first data bit with ``width`` data lines:
    the command byte on one line, then address, mode and dummy clocks
    (:data:`FLASH_COMMANDS`)."""
    _, addr, mode, dummy = FLASH_COMMANDS[width]
    return 8 + addr + mode + dummy


def flash_cycles_per_word(word_bits, width):
    """Clock cycles :class:`SPIFlashReader` takes per word inside a burst (SCK is half the
    clock)."""
    return 2 * word_bits // width


def flash_resource(platform, width):
    """The name of ``platform``'s resource for a flash on ``width`` data lines (1 or 4).

    Raises
    ------
    ValueError
        The platform has none.
    """
    names = {1: ("spi_flash_1x", "spi_flash"), 4: ("spi_flash_4x",)}[width]
    have = {name for name, _ in platform.resources}
    name = next((n for n in names if n in have), None)
    if name is None:
        raise ValueError(f"Platform {type(platform).__name__} has no "
                         f"{' or '.join(names)} resource for a {width}-line flash")
    return name


class SPIFlashReader(wiring.Component):
    """The burst read port served from SPI NOR flash (the board's configuration flash).

    Word ``a`` of the LPU's memory is the ``word_bits / 8`` bytes at flash byte address
    ``offset + a * word_bits / 8``, little-endian (byte 0 lowest), as
    :func:`lpu.host.image.image_words` makes words of an image: the image written to flash at
    ``offset`` is the memory.

    SCK runs at half the clock (SPI mode 0). A burst starting anywhere sends the read command
    and address (fast read ``0x0B`` on one line, or quad I/O fast read ``0xEB``;
    :data:`FLASH_COMMANDS`) and clocks in words; at the end of a burst the flash stays selected
    with the clock stopped, so a request for the next address -- the streamer reads a job's
    weights in order -- continues without a new command. Any other address deselects the flash
    and sends a new command. A word's last bit is clocked in only when the output register is
    free (the clock stretches), so nothing is lost under backpressure.

    Costs, in clock cycles: ``2 * word_bits / width`` per word (:func:`flash_cycles_per_word`:
    64 for 32-bit words on one line, 16 on four); a burst that does not continue the last one
    about ``2 * (8 + address + mode + dummy clocks)`` more for the command (80 for 0x0B, 40
    for 0xEB; ``lpu bench memory`` measures them).

    Flash is read-only here: ``wr`` is always ready, drops every word and sets ``wr_dropped``
    (sticky), so ``WRITE_MEM`` completes but changes nothing. The weights are programmed with
    the bitstream (:func:`lpu.host.image.flash_image`) and the host uses them in place
    (``FabricBackend(preloaded=...)``).

    Parameters
    ----------
    words : int
        Memory words addressable (``offset + words * word_bits / 8`` must fit 24-bit flash
        addresses, 16 MiB).
    word_bits : int
        A multiple of 8 (and of ``width``).
    request_layout : StructLayout
    offset : int
        Byte address of word 0 in the flash.
    width : int
        Data lines: 1 (0x0B, resource ``spi_flash_1x`` or ``spi_flash``) or 4 (0xEB,
        ``spi_flash_4x``; the flash's quad-enable bit must be set).

    Attributes
    ----------
    req, resp
        As :class:`BurstRAM`.
    wr : In(stream.Signature(StructLayout({"addr", "data"})))
        Always ready; words are dropped.
    wr_dropped : Out(1)
        A write has been dropped since reset.
    spi : Out(SPI_SIGNATURE)
        The SPI bus, for a simulation model (:class:`lpu.sim.memory_models.SPIFlashModel`).
        On a platform the reader drives the platform's flash pins instead (on ECP5 the clock
        through ``USRMCLK``).
    """

    def __init__(self, *, words, word_bits, request_layout, offset=FLASH_OFFSET, width=1):
        check_positive("Memory size in words", words)
        check_positive("Word width", word_bits)
        _check_layout(request_layout)
        if word_bits % 8:
            raise ValueError(f"Flash word width must be a multiple of 8, not {word_bits}")
        if width not in FLASH_COMMANDS:
            raise ValueError(f"Flash data lines must be 1 or 4, not {width!r}")
        check_range("Flash offset", offset, 0)
        end = offset + words * word_bits // 8
        if end > 1 << 24:
            raise ValueError(f"Flash image at byte {offset} of {words} words of {word_bits} bits "
                             f"ends at byte {end}, past 24-bit addresses (16 MiB)")
        self._words = words
        self._word_bits = word_bits
        self._offset = offset
        self._width = width
        super().__init__({**memory_ports(request_layout, word_bits),
                          "wr_dropped": Out(1), "spi": Out(SPI_SIGNATURE)})

    words = property(lambda self: self._words)
    word_bits = property(lambda self: self._word_bits)
    offset = property(lambda self: self._offset)
    width = property(lambda self: self._width)

    def _pins(self, m, platform):
        spi = self.spi
        from amaranth.vendor import LatticeECP5Platform
        pins = platform.request(flash_resource(platform, self._width), 0)
        m.d.comb += pins.cs.o.eq(spi.cs)
        if isinstance(platform, LatticeECP5Platform):
            # The ECP5's configuration-flash clock pin is reached only through USRMCLK.
            m.submodules.usrmclk = Instance("USRMCLK", i_USRMCLKI=spi.sck, i_USRMCLKTS=0,
                                            a_keep=1)
        else:
            m.d.comb += pins.clk.o.eq(spi.sck)
        if self._width == 4:
            m.d.comb += [pins.dq.o.eq(spi.o), pins.dq.oe.eq(spi.oe), spi.i.eq(pins.dq.i)]
        else:
            # WP# and HOLD# stay high (the resource inverts them): HOLD# low would pause the
            # flash.
            m.d.comb += [pins.copi.o.eq(spi.o[0]), spi.i[1].eq(pins.cipo.i)]
            for extra in ("wp", "hold"):
                if hasattr(pins, extra):
                    m.d.comb += getattr(pins, extra).o.eq(0)

    def elaborate(self, platform):
        m = Module()
        w = self._width
        wb = self._word_bits
        wbytes = wb // 8
        code, addr_clocks, mode_clocks, dummy_clocks = FLASH_COMMANDS[w]
        spi = self.spi

        m.d.comb += self.wr.ready.eq(1)
        with m.If(self.wr.valid):
            m.d.sync += self.wr_dropped.eq(1)

        addr = Signal.like(self.req.payload.addr)      # word address of the next word
        left = Signal.like(self.req.payload.len)       # words left in the burst
        clocks = Signal(range(max(32, wb // w) + 1))   # SCK clocks left in this phase
        out_sr = Signal(32)                            # command/address bits, MSB first
        raw = Signal(wb)                               # data bits as they arrive, MSB first
        have = Signal()
        word = Signal(wb)
        sck = Signal()
        m.d.comb += [spi.sck.eq(sck), self.resp.valid.eq(have), self.resp.payload.eq(word)]
        with m.If(self.resp.valid & self.resp.ready):
            m.d.sync += have.eq(0)

        byte_addr = Signal(24)
        m.d.comb += byte_addr.eq(self._offset + addr * wbytes)
        bits = Signal(w)
        m.d.comb += bits.eq(spi.i[1] if w == 1 else spi.i)
        shifted = Cat(bits, raw[:-w])
        # Bytes arrive in address order, each MSB first: byte k of the word is raw's k-th byte
        # from the top, and goes to bits 8k.. of the little-endian word.
        le_word = Cat(*(shifted[8 * (wbytes - 1 - k):8 * (wbytes - k)] for k in range(wbytes)))

        def clock(n_bits, then):
            """One SCK clock per two cycles while ``clocks`` lasts: low (output set up), then
            high (the flash samples; the reader samples at the end of the cycle)."""
            with m.If(~sck):
                m.d.sync += sck.eq(1)
            with m.Else():
                m.d.sync += [sck.eq(0), clocks.eq(clocks - 1),
                             out_sr.eq(out_sr << n_bits), raw.eq(shifted)]
                with m.If(clocks == 1):
                    then()

        def load_command():
            m.d.sync += [out_sr.eq(Cat(Const(0, 24), Const(code, 8)) if w == 4
                                   else Cat(byte_addr, Const(code, 8))),
                         clocks.eq(8 if w == 4 else 32)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid & (self.req.payload.len != 0)):
                    m.d.sync += [addr.eq(self.req.payload.addr), left.eq(self.req.payload.len)]
                    m.next = "SELECT"
            with m.State("DESELECT"):
                # with SELECT, two cycles deselected between commands (tSHSL: 10 ns for reads
                # on the W25Q128JV, under two cycles up to 200 MHz)
                m.next = "SELECT"
            with m.State("SELECT"):
                load_command()
                m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [spi.cs.eq(1), spi.o[0].eq(out_sr[31])]
                if w == 4:
                    # IO2/IO3 held high: WP# and HOLD# when the quad-enable bit is clear
                    m.d.comb += [spi.o[2:].eq(0b11), spi.oe.eq(0b1101)]

                    def to_addr():
                        m.d.sync += [out_sr.eq(Cat(Const(0, 8), byte_addr)),
                                     clocks.eq(addr_clocks + mode_clocks)]
                        m.next = "ADDR"
                    clock(1, to_addr)
                else:
                    m.d.comb += spi.oe.eq(0b0001)

                    def to_dummy():
                        m.d.sync += clocks.eq(dummy_clocks)
                        m.next = "DUMMY"
                    clock(1, to_dummy)
            if w == 4:
                with m.State("ADDR"):
                    m.d.comb += [spi.cs.eq(1), spi.o.eq(out_sr[28:]), spi.oe.eq(0b1111)]

                    def to_dummy4():
                        m.d.sync += clocks.eq(dummy_clocks)
                        m.next = "DUMMY"
                    clock(4, to_dummy4)
            with m.State("DUMMY"):
                m.d.comb += spi.cs.eq(1)

                def to_data():
                    m.d.sync += clocks.eq(wb // w)
                    m.next = "DATA"
                clock(w, to_data)
            with m.State("DATA"):
                m.d.comb += spi.cs.eq(1)
                free = ~have | self.resp.ready
                last_bit = clocks == 1
                # The last bit of a word is taken only into a free output register: SCK stays
                # high until then (the flash changes its output on the falling edge only).
                with m.If(~sck | ~last_bit | free):
                    def word_done():
                        m.d.sync += [word.eq(le_word), have.eq(1), addr.eq(addr + 1),
                                     left.eq(left - 1), clocks.eq(wb // w)]
                        with m.If(left == 1):
                            m.next = "PAUSE"
                    clock(w, word_done)
            with m.State("PAUSE"):
                # Selected, clock stopped low: the next word is the one at ``addr``.
                m.d.comb += [spi.cs.eq(1), self.req.ready.eq(1)]
                with m.If(self.req.valid & (self.req.payload.len != 0)):
                    m.d.sync += [addr.eq(self.req.payload.addr), left.eq(self.req.payload.len)]
                    with m.If(self.req.payload.addr == addr):
                        m.next = "DATA"
                    with m.Else():
                        m.next = "DESELECT"

        if platform is not None:
            self._pins(m, platform)
        return m


def weight_memory(kind, streamer, *, pipelined=False, **kwargs):
    """The weight memory ``kind`` (one of :data:`MEMORY_KINDS`) shaped for ``streamer``'s
    memory port (its ``mem_words``, ``word_bits``, ``addr_width`` and ``max_burst``);
    ``pipelined`` goes to :class:`BurstRAM`, ``kwargs`` to :class:`SPIFlashReader`
    (``offset``)."""
    classes = {"bram": BurstRAM, "spram": SPRAMBurstRAM, "flash": SPIFlashReader,
               "qspi": SPIFlashReader}
    if kind not in classes:
        raise ValueError(f"Weight memory must be one of {', '.join(MEMORY_KINDS)}, not {kind!r}")
    if kwargs and classes[kind] is not SPIFlashReader:
        raise ValueError(f"Options {', '.join(sorted(kwargs))} apply only to flash, not to "
                         f"{kind!r}")
    if pipelined:
        if kind != "bram":
            raise ValueError(f"Only block RAM ('bram') is pipelined, not {kind!r}")
        kwargs["pipelined"] = True
    if kind in FLASH_LINES:
        kwargs["width"] = FLASH_LINES[kind]
    return classes[kind](words=streamer.mem_words, word_bits=streamer.word_bits,
                         request_layout=mem_request_layout(streamer.addr_width,
                                                           streamer.max_burst), **kwargs)
