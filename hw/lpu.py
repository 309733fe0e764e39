"""The LPU top: the weight streamer and its PE array behind a byte-stream command interface.

The protocol is defined in :mod:`lpu.hw.protocol`. The device is half duplex: it receives a
whole request into its frame buffer, checks the CRC, executes the command and sends one reply.
Device memory sits outside this component (``mem_req``/``mem_resp`` burst reads for the
streamer, ``mem_wr`` word writes for ``WRITE_MEM``), so a board can put on-chip RAM, flash or
SDRAM behind it and a simulation a memory model.
"""

import struct

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import Processor
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .bram import RegisteredRAM
from .formats import WeightFormat
from .params import check_positive
from .protocol import CRC, MAX_PAYLOAD, REPLY_SYNC, REQUEST_SYNC, Command, Status, read_out_entries
from .scale import JOB_LAYOUT, SCALE_BITS, ScaleUnit
from .streamer import DESCRIPTOR_LAYOUT, PERF_LAYOUT, StreamError, WeightStreamer

__all__ = ["LPU", "config_bytes", "PROTOCOL_VERSION", "STATUS_REPLY_LAYOUT"]

PROTOCOL_VERSION = 3
_CONFIG_FORMAT = "<BHHBBBBHBIHBHIB"
CONFIG_FIELDS = ("version", "lanes", "pes", "act_bits", "binary", "formats", "word_bits",
                 "max_k", "max_vectors", "mem_words", "out_depth", "acc_width", "max_burst",
                 "scale_depth", "result_bytes")


def config_bytes(lpu):
    """The ``PING`` reply payload: what the host needs to know about the hardware."""
    fmt_mask = sum(1 << list(WeightFormat).index(f) for f in lpu.streamer.formats)
    st = lpu.streamer
    return struct.pack(_CONFIG_FORMAT, PROTOCOL_VERSION, st.lanes, st.pes, st.act_bits,
                       int(st.mode.value == "binary"), fmt_mask, st.word_bits, st.max_k,
                       st.max_vectors, st.mem_words, lpu.out_depth, st.array.acc_width,
                       st.max_burst, lpu.scale.scale_depth, lpu.result_bytes)


#: The STATUS reply's payload, little endian: ``busy`` (streamer or scale unit),
#: ``writes_dropped`` (the memory dropped a WRITE_MEM word: ``mem_wr_dropped``), the job
#: ``error`` and the streamer's performance counters.
STATUS_REPLY_LAYOUT = data.StructLayout({
    "busy": 1, "writes_dropped": 1, "_reserved0": 6,
    "error": StreamError, "_reserved1": 8 - StreamError.as_shape().width,
    "perf": PERF_LAYOUT,
})


def parse_config(payload):
    values = struct.unpack(_CONFIG_FORMAT, bytes(payload))
    cfg = dict(zip(CONFIG_FIELDS, values, strict=True))
    cfg["formats"] = [f for i, f in enumerate(WeightFormat) if cfg["formats"] >> i & 1]
    return cfg


class LPU(wiring.Component):
    """Weight streamer + PE array + scale unit + output buffer + command interface.

    A ``RUN`` job first goes to the :class:`~lpu.hw.scale.ScaleUnit`, which checks its scale
    range (``SCALES`` error), then to the streamer; the array's sums pass through the scale unit
    into the output buffer, so every result is a scaled row sum
    ``sum_g m[row, g] * P[row, g, v]`` of ``result_bytes`` bytes.

    Parameters
    ----------
    out_depth : int
        Output-buffer entries (each P sums); results of a job beyond it are dropped and the
        ``RUN`` reply reports the count the job produced.
    scale_depth : int
        Scale-memory words (each P signed 16-bit mantissas, :func:`lpu.hw.scale.scale_address`),
        1 to 65536.
    timeout : int
        Idle cycles after which a request that stopped arriving is dropped (``TRUNCATED``).
    **streamer_args
        Passed to :class:`WeightStreamer` (``lanes``, ``pes``, ``act_bits`` up to 8, ...).
        With its ``registered_ram`` the LPU's own buffers also feed registers before any
        logic: the output buffer's read data passes a register (an entry is read at least two
        cycles before it is loaded) and the byte buffer is distributed RAM, its read register
        a flip-flop of the fabric; the scale unit splits its products
        (:class:`~lpu.hw.scale.ScaleUnit` ``split_product``).

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes.
    tx : Out(stream.Signature(8))
        Reply bytes.
    mem_req, mem_resp
        The streamer's memory read port.
    mem_wr : Out(stream.Signature(StructLayout({"addr", "data"})))
        Memory word writes.
    mem_wr_dropped : In(1)
        The memory has dropped a write (a read-only flash); ``STATUS`` reports it (bit 1 of
        its first byte). Unconnected, 0.
    """

    def __init__(self, *, out_depth=1024, scale_depth=1024, timeout=100_000, **streamer_args):
        self._streamer = WeightStreamer(**streamer_args)
        if self._streamer.act_bits > 8:
            raise ValueError(f"Activation width must be at most 8 for the byte protocol, not "
                             f"{self._streamer.act_bits}")
        check_positive("Output buffer depth", out_depth)
        check_positive("Timeout", timeout)
        self._out_depth = out_depth
        self._timeout = timeout
        self._scale = ScaleUnit(pes=self._streamer.pes, acc_width=self._streamer.array.acc_width,
                                scale_depth=scale_depth, max_vectors=self._streamer.max_vectors,
                                split_product=self._streamer.registered_ram)
        s = self._streamer.signature.members
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "mem_req": s["mem_req"],
            "mem_resp": s["mem_resp"],
            "mem_wr": Out(stream.Signature(data.StructLayout({
                "addr": self._streamer.addr_width, "data": self._streamer.word_bits}))),
            "mem_wr_dropped": In(1),
        })

    streamer = property(lambda self: self._streamer)
    scale = property(lambda self: self._scale)

    @property
    def result_bytes(self):
        """Bytes of one result in a ``READ_OUT`` reply: the scaled sum's width, rounded up."""
        return (self._scale.out_width + 7) // 8
    out_depth = property(lambda self: self._out_depth)
    timeout = property(lambda self: self._timeout)

    def elaborate(self, platform):
        m = Module()
        st = self._streamer
        N, P = st.lanes, st.pes
        sc = self._scale
        out_w = sc.out_width
        rb = self.result_bytes
        word_bytes = st.word_bits // 8
        m.submodules.streamer = st
        m.submodules.scale = sc
        # The scale unit takes a sum in every cycle from the end of its set-up (RUN_SCALE waits
        # for it before the streamer starts) until the job's last sum: whenever the streamer
        # offers a sum, the scale unit is ready. The streamer's output is therefore always
        # ready, so the PE array never stalls (on an iCE40 the stall was the root of the
        # longest paths, through the streamer's walk and weight FIFO).
        # tests/test_lpu.py::test_scale_unit_is_ready_for_every_sum watches this.
        m.d.comb += [sc.i_stream.valid.eq(st.o_stream.valid),
                     sc.i_stream.payload.eq(st.o_stream.payload),
                     st.o_stream.ready.eq(1)]
        wiring.connect(m, st.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), st.mem_resp)

        # One byte buffer holds the request's payload and then the reply's: the device is half
        # duplex, and every command has consumed the payload bytes it reads before it writes
        # reply bytes over them. Reads are synchronous (block RAM): the read address is the
        # byte index of the next cycle, so the byte at ``idx`` is on ``buf_r.data`` in each cycle.
        registered = st.registered_ram
        if registered:
            # Two banks of distributed RAM, the even bytes and the odd ones: the bytes at idx
            # and idx + 1, both read in every cycle (below), are one from each, so each bank
            # has one read port of half the depth (an 8-way multiplexer behind the LUT RAMs
            # instead of two copies of the whole buffer, each behind a 16-way one).
            banks = [Memory(shape=8, depth=MAX_PAYLOAD // 2, init=[],
                            attrs={"ram_style": "distributed"}) for _ in range(2)]
            m.submodules.buf_even, m.submodules.buf_odd = banks
        else:
            m.submodules.buf = buf = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        # The output buffer's entry at `out_start_next` is on `out_data` the cycle after (with
        # registered RAM, three cycles after: see `or_addr` below).
        out_layout = data.ArrayLayout(signed(out_w), P)
        if registered:
            m.submodules.outbuf = outbuf = RegisteredRAM(shape=out_layout,
                                                         depth=self._out_depth)
            m.d.comb += [outbuf.r_en.eq(1), outbuf.r_oe.eq(1)]
            ow_addr, ow_data, ow_en, or_addr, out_data = (
                outbuf.w_addr, outbuf.w_data, outbuf.w_en, outbuf.r_addr, outbuf.r_data)
        else:
            m.submodules.outbuf = outbuf = Memory(shape=out_layout, depth=self._out_depth,
                                                  init=[])
            ow, orp = outbuf.write_port(), outbuf.read_port()
            ow_addr, ow_data, ow_en, or_addr, out_data = (
                ow.addr, ow.data, ow.en, orp.addr, orp.data)
        if registered:
            # The write port as the states drive it, registered (the write enable, a decode of
            # the states, reaches every LUT RAM), then to the bank of the byte's parity. A byte
            # lands a cycle late: no state reads a byte within a cycle of writing it (the
            # request's bytes are read after its CRC, the reply's after its header is sent).
            layout = data.StructLayout({"addr": 8, "data": 8, "en": 1})
            buf_w = Signal(layout, name="buf_w")
            buf_wq = Signal(layout, name="buf_wq")
            m.d.sync += buf_wq.eq(buf_w)
            for parity, bank in enumerate(banks):
                port = bank.write_port()
                m.d.comb += [port.addr.eq(buf_wq.addr[1:]), port.data.eq(buf_wq.data),
                             port.en.eq(buf_wq.en & (buf_wq.addr[0] == parity))]
        else:
            buf_w, buf_r = buf.write_port(), buf.read_port()
        buf_data = Signal(8)      # the byte read (see `read_inc` below)
        m.submodules.rx_crc = rx_crc = Processor(CRC)
        m.submodules.tx_crc = tx_crc = Processor(CRC)

        # Registers that every path writes before it reads them have no reset (a reset is one
        # more input to their enable logic): only the state machine and the flags that follow
        # it (`rx_ready`, `tx_valid`), `out_count` and `job_error` (read by READ_OUT and STATUS
        # before any RUN) need one.
        def reg(shape, name):
            return Signal(shape, name=name, reset_less=True)

        # Payloads are at most MAX_PAYLOAD (256) bytes: RX_LEN1 refuses longer ones before any
        # state that reads `length`, so it is 9 bits wide. The byte index is the buffer's address,
        # 8 bits, and is compared with lengths modulo 256: a state that counts bytes up to
        # `length` starts below it and meets it (256 as 0) before it meets it again.
        assert MAX_PAYLOAD == 256
        cmd = reg(8, "cmd")
        length = reg(range(MAX_PAYLOAD + 1), "length")
        idx = reg(8, "idx")          # byte index into the buffer
        idx_step = Signal()          # idx + 1 in a state whatever its conditions, or on a
        idx_take = Signal()          # handshake; else idx, or 0: the states set these
        idx_zero = Signal()
        status = reg(8, "status")
        reply_len = reg(range(MAX_PAYLOAD + 1), "reply_len")
        reply_empty = reg(1, "reply_empty")
        # the index of the last payload byte of the request (length - 1) and of the reply
        # (reply_len - 1), registered with the lengths: RX_PAYLOAD and TX_PAYLOAD compare
        # `idx` with a register, not with a sum formed in the same cycle
        rx_last = reg(len(idx), "rx_last")
        len_lo_zero = reg(1, "len_lo_zero")   # the length's low byte is 0, and above MAX_PAYLOAD's
        len_lo_over = reg(1, "len_lo_over")
        tx_last = reg(len(idx), "tx_last")
        # `idx == length`, registered from the index the state machine moves to: the states
        # that count bytes up to the length read a flip-flop
        at_len = reg(1, "at_len")
        idle = reg(range(self._timeout + 1), "idle")
        timed_out = reg(1, "timed_out")       # idle == timeout - 1, registered the same way
        desc_bytes = (JOB_LAYOUT.size + 7) // 8
        # With registered RAM `acc`'s enable is a flip-flop, `hold_r`, set with the transitions
        # into the states that hold it: a state that finds its field's end (`at_len`) then
        # shifts in one more byte, so `acc` has a byte more, above the fields (`acc_top`).
        acc_top = max(128, 8 * N, 8 * desc_bytes, SCALE_BITS * P)
        AW = acc_top + 8 * registered
        acc = reg(AW, "acc")         # little-endian field assembly: newest byte on top
        acc_hold = Signal()          # the states that read `acc` after the bytes it assembles
        hold_r = Signal()
        field_addr = reg(32, "field_addr")
        # WRITE_MEM: the last word address that leaves room for the payload's words (negative
        # when none does), from the length alone; a start address above it is refused
        wmem_limit = reg(signed(max(st.mem_words.bit_length(), len(length)) + 2), "wmem_limit")
        # ... in two halves: an address bit above the limit's, the address's low bits above it
        wmem_hi = reg(1, "wmem_hi")
        wmem_lo = reg(1, "wmem_lo")
        wmem_refuse = reg(1, "wmem_refuse")
        out_count = Signal(16)
        # out_count < out_depth, a flip-flop set with the count: the buffer's write enable
        # waits for no comparison
        out_room = Signal(init=1)
        out_start = reg(16, "out_start")
        out_start_next = Signal(16)  # likewise the output buffer's read address
        room_count = reg(signed(18), "room_count")  # READ_OUT: results present, and entries,
        room_depth = reg(signed(18), "room_depth")  # from `start`
        read_over = [reg(1, f"read_over{i}") for i in range(3)]  # READ_OUT's range checks
        read_none = reg(1, "read_none")  # READ_OUT: count 0, and count 1 left (registered flags)
        read_last = reg(1, "read_last")
        # READ_OUT: the bytes of the entry being sent, in order (each PE's value sign-extended to
        # `result_bytes` bytes, PE 0 first), shifted out from the bottom
        entry = reg(8 * rb * P, "entry")
        entry_end = reg(1, "entry_end")  # READ_COPY: the entry's last byte (sub at the end)
        entry_load = Signal()            # `entry` takes the output buffer's read data
        out_n = reg(16, "out_n")
        sub = reg(range(max(rb * P, word_bytes, N, 13, 2 * P) + 1), "sub")
        sub_next = Signal.like(sub)
        # WRITE_SCALE: bytes not yet counted into whole words less one word (2P bytes), so the
        # loop's test is a sign bit; whether the bytes left are not 0, and whether the word
        # address past the last word is past the memory, registered from the values the
        # registers take
        scale_rem = reg(range(-4 * P, MAX_PAYLOAD), "scale_rem")
        scale_rem_nz = reg(1, "scale_rem_nz")
        scale_end = reg(17, "scale_end")     # WRITE_SCALE: word address past the last word
        scale_over = reg(1, "scale_over")
        job_error = Signal(StreamError)
        job_error_next = Signal(StreamError)
        reply_status = Signal(8)       # the status of the reply a state sends, if it sends one
        reply_payload = Signal()       # the reply has a payload: bytes 0 to idx of the buffer
        replying = Signal()            # the state moves to TX_SYNC
        # `tx.valid` is a register: 1 in the transmit states (TX_SYNC to TX_CRC1), set and
        # cleared with the transitions into and out of them; `tx_head` holds the header byte
        # the transmit state sends (status, length), set a cycle ahead
        tx_valid = Signal()
        tx_head = reg(8, "tx_head")
        ostream = sc.o_stream

        # Results flow into the output buffer whenever the streamer has them.
        m.d.comb += [
            ow_addr.eq(out_count),
            ow_data.eq(ostream.payload),
            ow_en.eq(ostream.valid & out_room),
            ostream.ready.eq(1),
        ]
        with m.If(ostream.valid):
            m.d.sync += [out_count.eq(out_count + 1),
                         out_room.eq(out_count < self._out_depth - 1)]

        # Each state zeroes, steps or holds the index whatever its conditions where the index
        # it leaves is of no use otherwise (before a reply, which starts from 0, or past the
        # bytes a state reads), so that only RX_PAYLOAD and TX_PAYLOAD step it on a handshake.
        # The buffer's read address is the index of the next cycle where the next state reads
        # the byte there (see `read_step` below), whatever it is elsewhere.
        m.d.comb += out_start_next.eq(out_start)
        m.d.sync += [idx.eq(Mux(idx_zero, 0, Mux(idx_step | idx_take, idx + 1, idx))),
                     out_start.eq(out_start_next)]
        # (with registered RAM the address is `out_start`, the same a cycle later, so that the
        # path into the block RAMs starts at flip-flops; READ_WAIT waits for it)
        m.d.comb += [buf_w.addr.eq(idx),
                     or_addr.eq(out_start if registered else out_start_next)]
        m.d.sync += at_len.eq(Mux(idx_step, idx == rx_last, idx == length[:8]))

        rx_byte = self.rx.payload
        # `rx.ready` is a register: 1 in the receive states (RX_SYNC to RX_CRC1), set and
        # cleared with the transitions into and out of them (below)
        rx_ready = Signal(init=1)
        m.d.comb += self.rx.ready.eq(rx_ready)
        rx_take = self.rx.valid & rx_ready
        # length > MAX_PAYLOAD, byte by byte (in RX_LEN1)
        len_bad = ((rx_byte > MAX_PAYLOAD // 256) |
                   ((rx_byte == MAX_PAYLOAD // 256) & len_lo_over))
        m.d.comb += rx_crc.data.eq(rx_byte)

        config = config_bytes(self)

        def idx_at(k, top=None):
            """``idx == k`` in a state whose index counts up from 0 to ``top`` (default ``k``):
            only the bits that count that far are compared (one LUT rather than a comparison of
            the whole index)."""
            return idx[:max(1, (k if top is None else top).bit_length())] == k

        def step_idx():
            m.d.comb += idx_step.eq(1)

        # Replies. The status, length and last byte index of the reply are registered in every
        # cycle outside the transmit states from the values the current state would reply with
        # (`reply_status`, `reply_payload`: set by the state whatever its conditions), so that
        # a reply's decision only moves the state machine. A state that sends a payload has
        # written bytes 0 to `idx` of the buffer when it replies.
        def reply():
            m.d.comb += replying.eq(1)
            m.next = "TX_SYNC"

        def replies(code):
            m.d.comb += reply_status.eq(code)

        # `acc` assembles bytes in every state but those that read what it assembled.
        shift_in = Cat(acc[8:], buf_data)
        m.d.sync += acc.eq(Mux(hold_r if registered else acc_hold, acc, shift_in))

        def hold_next(value):
            """With registered RAM: whether `acc` holds in the next cycle (0 unless a state
            says otherwise)."""
            if registered:
                m.d.sync += hold_r.eq(value)
        hold_next(0)

        # `sub` counts bytes in the word-gathering states and in READ_COPY and is 0
        # elsewhere (the ones after a state's last byte are for no use).
        m.d.comb += sub_next.eq(0)
        m.d.sync += [sub.eq(sub_next), entry_end.eq(sub_next == rb * P - 1)]

        def word_writes(name, port, nbytes, word):
            """States ``{name}_WORD`` (gather ``nbytes`` payload bytes into ``acc``) and
            ``{name}_WRITE`` (``word``, a slice of ``acc``, to ``port`` at ``field_addr``)."""
            with m.State(f"{name}_WORD"):
                # (idx, acc and sub also advance in the cycle that finds the payload's end)
                step_idx()
                m.d.comb += sub_next.eq(sub + 1)
                with m.If(at_len):
                    reply()
                with m.Elif(sub == nbytes - 1):
                    hold_next(1)
                    m.next = f"{name}_WRITE"
            with m.State(f"{name}_WRITE"):
                m.d.comb += [port.valid.eq(1), port.payload.addr.eq(field_addr),
                             port.payload.data.eq(word), acc_hold.eq(1)]
                hold_next(~port.ready)
                with m.If(port.ready):
                    m.d.sync += field_addr.eq(field_addr + 1)
                    m.next = f"{name}_WORD"

        # EXEC's dispatch, decided a cycle ahead: `cmd` and `length` hold still from RX_LEN1
        # until the frame's CRC has arrived (at least three cycles before EXEC), so the
        # command's decode and its length check are registered every cycle and EXEC only
        # reads flip-flops (a byte compare and a length compare in one cycle with the state
        # machine's next-state logic limited the clock).
        exec_targets = {
            Command.PING: ("PING", length != 0),
            Command.WRITE_MEM: ("WMEM_ADDR", (length < 4) | ((length - 4) % word_bytes != 0)),
            Command.WRITE_ACT: ("WACT_ADDR", length != 2 + N),
            Command.RUN: ("RUN_DESC", length != desc_bytes),
            Command.READ_OUT: ("READ_ARGS", length != 4),
            Command.STATUS: ("STATUS", length != 0),
            Command.WRITE_SCALE: ("WSCALE_ADDR", length < 2),
        }
        exec_go = {state: reg(1, f"exec_{state.lower()}") for state, _ in exec_targets.values()}
        exec_bad_len = reg(1, "exec_bad_len")
        exec_bad_cmd = reg(1, "exec_bad_cmd")
        if registered:
            # (with registered RAM, the length checks are registered a cycle before the
            # command's decode uses them: `length` holds still long enough for both)
            for code, (state, bad) in exec_targets.items():
                bad_r = reg(1, f"len_bad_{state.lower()}")
                m.d.sync += bad_r.eq(bad)
                exec_targets[code] = (state, bad_r)
        m.d.sync += [exec_bad_cmd.eq(1), exec_bad_len.eq(0)]
        for state in exec_go.values():
            m.d.sync += state.eq(0)
        with m.Switch(cmd):
            for code, (state, bad) in exec_targets.items():
                with m.Case(code):
                    m.d.sync += [exec_bad_cmd.eq(0), exec_bad_len.eq(bad),
                                 exec_go[state].eq(~bad)]
        # The same for the range checks, from the length alone (see `wmem_limit`), and the
        # verdicts from registers in every cycle: each is read a cycle after the state that
        # set its inputs.
        max_count = read_out_entries(P, rb)
        cbits = max(max_count, self._out_depth).bit_length()
        n_words = (length - 4) >> (word_bytes.bit_length() - 1)
        limit_bits = st.mem_words.bit_length()   # the limit is below 2 ** limit_bits
        m.d.sync += [wmem_limit.eq(Const(st.mem_words, wmem_limit.shape()) - n_words),
                     wmem_hi.eq(field_addr[limit_bits:].any())]
        if registered:
            # `field_addr[:limit_bits] > wmem_limit` in two halves, each a short carry chain
            # (the upper one signed, as the limit is), combined in the step after
            lw = len(wmem_limit)
            half = lw // 2
            x = Cat(field_addr[:limit_bits], Const(0, lw - limit_bits))
            lo_gt_hi, lo_eq_hi, lo_gt_lo = (Signal(name=n) for n in
                                           ("wmem_gt_hi", "wmem_eq_hi", "wmem_gt_lo"))
            m.d.sync += [lo_gt_hi.eq(x[half:].as_signed() > wmem_limit[half:].as_signed()),
                         lo_eq_hi.eq(x[half:] == wmem_limit[half:]),
                         lo_gt_lo.eq(x[:half] > wmem_limit[:half])]
            m.d.comb += wmem_lo.eq(lo_gt_hi | (lo_eq_hi & lo_gt_lo))
        else:
            m.d.sync += wmem_lo.eq(field_addr[:limit_bits] > wmem_limit)
        m.d.sync += [wmem_refuse.eq(wmem_hi | wmem_lo),
                     read_over[0].eq(out_n > max_count),
                     # (a count of 2 ** cbits or more is refused by read_over[0]: the room
                     # behind `start` is compared in cbits bits, a short carry chain, once
                     # its sign says it is not negative)
                     read_over[1].eq(room_count[-1] | (out_n[:cbits] > room_count[:cbits])),
                     read_over[2].eq(room_depth[-1] | (out_n[:cbits] > room_depth[:cbits]))]

        reply_data = Signal(STATUS_REPLY_LAYOUT)
        m.d.comb += [reply_data.busy.eq(st.status.busy | sc.status.busy),
                     reply_data.writes_dropped.eq(self.mem_wr_dropped),
                     reply_data.error.eq(job_error), reply_data.perf.eq(st.perf)]
        nbytes = STATUS_REPLY_LAYOUT.size // 8
        status_bytes = [Value.cast(reply_data).word_select(i, 8) for i in range(nbytes)]
        # The reply byte a state writes to the buffer (see below)
        reply_byte = reg(8, "reply_byte")
        status_byte = Signal(8, name="status_byte") if registered else reg(8, "status_byte")
        m.d.comb += job_error_next.eq(job_error)
        m.d.sync += job_error.eq(job_error_next)

        # The receive states after RX_SYNC, each with the next (RX_PAYLOAD's depends on the
        # length); each times out while waiting for its byte.
        rx_states = (("RX_CMD", "RX_LEN0"), ("RX_LEN0", "RX_LEN1"), ("RX_LEN1", "RX_PAYLOAD"),
                     ("RX_PAYLOAD", None), ("RX_CRC0", "RX_CRC1"), ("RX_CRC1", "RX_CHECK"))

        if registered:
            # The CRC check registered as the CRC's two bytes arrive: they must be the CRC of
            # the bytes before them, high byte first (with no final XOR, that is what leaves
            # a zero residue), compared a byte at a time in RX_CRC0 and RX_CRC1 rather than
            # as the residue's 16 bits behind the last byte's update, in RX_CHECK
            # (set in those states, below the state machine)
            crc_good = Signal()
        else:
            crc_good = rx_crc.match_detected

        with m.FSM() as fsm:
            # ---- receive
            with m.State("RX_SYNC"):
                with m.If(rx_take & (rx_byte == REQUEST_SYNC)):
                    m.d.comb += rx_crc.start.eq(1)
                    m.next = "RX_CMD"
            for name, nxt in rx_states:
                with m.State(name):
                    if name == "RX_PAYLOAD":
                        m.d.comb += idx_take.eq(self.rx.valid)
                    if name == "RX_LEN1":
                        replies(Mux(self.rx.valid, Status.BAD_LENGTH, Status.TRUNCATED))
                    else:
                        replies(Status.TRUNCATED)
                    if name == "RX_LEN1":
                        m.d.comb += idx_zero.eq(1)
                    with m.If(rx_take):
                        m.d.comb += rx_crc.valid.eq(1)
                        if name == "RX_CMD":
                            m.d.sync += cmd.eq(rx_byte)
                            m.next = nxt
                        elif name == "RX_LEN0":
                            # the low byte's part of the length checks, registered
                            m.d.sync += [length[:8].eq(rx_byte), len_lo_zero.eq(rx_byte == 0),
                                         len_lo_over.eq(rx_byte > MAX_PAYLOAD % 256)]
                            m.next = nxt
                        elif name == "RX_LEN1":
                            m.d.sync += [length[8:].eq(rx_byte),
                                         rx_last.eq(Cat(length[:8], rx_byte) - 1)]
                            m.next = nxt
                            with m.If((rx_byte == 0) & len_lo_zero):
                                m.next = "RX_CRC0"
                            with m.If(len_bad):
                                reply()
                        elif name == "RX_PAYLOAD":
                            m.d.comb += buf_w.en.eq(1)
                            with m.If(idx == rx_last):
                                m.next = "RX_CRC0"
                        else:
                            m.next = nxt
                    with m.Elif(timed_out):
                        reply()
            with m.State("RX_CHECK"):
                replies(Status.BAD_CRC)
                m.d.comb += idx_zero.eq(1)
                with m.If(~crc_good):
                    reply()
                with m.Else():
                    m.next = "EXEC"

            # ---- dispatch
            with m.State("EXEC"):
                # every verdict a register (see `exec_go` above): no byte is decoded here
                replies(Mux(exec_bad_cmd, Status.BAD_COMMAND, Status.BAD_LENGTH))
                with m.If(exec_bad_cmd | exec_bad_len):
                    reply()
                for state, go in exec_go.items():
                    with m.If(go):
                        m.next = state

            with m.State("PING"):
                m.d.comb += [buf_w.en.eq(1), reply_payload.eq(1)]
                step_idx()
                with m.If(idx_at(len(config) - 1)):
                    reply()

            with m.State("WMEM_ADDR"):
                step_idx()
                m.d.sync += field_addr.eq(shift_in[-32:])   # in every cycle: the last one's
                with m.If(idx_at(3)):
                    m.next = "WMEM_CHECK"
            with m.State("WMEM_CHECK"):
                # Words past the memory would wrap around its address port: refuse them all
                # before writing any, as WRITE_SCALE does (`wmem_refuse`, registered in two
                # steps, here and in WMEM_END, from the address now in `field_addr`).
                m.next = "WMEM_END"
            with m.State("WMEM_END"):
                m.next = "WMEM_RANGE"
            with m.State("WMEM_RANGE"):
                replies(Status.BAD_LENGTH)
                with m.If(wmem_refuse):
                    reply()
                with m.Else():
                    m.next = "WMEM_WORD"
            word_writes("WMEM", self.mem_wr, word_bytes, acc[-st.word_bits:])

            act_w = st.act_wr
            with m.State("WACT_ADDR"):
                step_idx()
                m.d.sync += field_addr.eq(shift_in[-16:])
                with m.If(idx_at(1)):
                    m.next = "WACT_DATA"
            with m.State("WACT_DATA"):
                step_idx()
                with m.If(at_len):
                    m.d.comb += acc_hold.eq(1)
                    hold_next(1)
                    m.next = "WACT_WRITE"
            with m.State("WACT_WRITE"):
                m.d.comb += [act_w.valid.eq(1), act_w.payload.addr.eq(field_addr),
                             acc_hold.eq(1)]
                hold_next(~act_w.ready)
                for i in range(N):
                    lo = acc_top - 8 * N + 8 * i
                    m.d.comb += act_w.payload.data[i].eq(acc[lo:lo + 8].as_signed())
                with m.If(act_w.ready):
                    reply()

            scale_w = sc.scale_wr
            with m.State("WSCALE_ADDR"):
                step_idx()
                m.d.sync += field_addr.eq(shift_in[-16:])
                with m.If(idx_at(1)):
                    m.next = "WSCALE_CHECK"
            # Count the payload's whole words (2P bytes each) by repeated subtraction, one per
            # cycle, rather than divide by a P that need not be a power of two; refuse a partial
            # word or words past the memory before writing any. The counters are set in every
            # cycle of WSCALE_ADDR (its last one holds the address) and count on in every cycle
            # of WSCALE_CHECK (the last count is for no use).
            in_wscale_addr = fsm.ongoing("WSCALE_ADDR")
            in_wscale_check = fsm.ongoing("WSCALE_CHECK")
            m.d.sync += [
                scale_rem.eq(Mux(in_wscale_check, scale_rem - 2 * P,
                                 length - Const(2 + 2 * P, signed(16)))),
                scale_rem_nz.eq(Mux(in_wscale_check, scale_rem != 0, length != 2)),
                scale_end.eq(Mux(in_wscale_addr, shift_in[-16:], scale_end + 1)),
                scale_over.eq(Mux(in_wscale_addr, shift_in[-16:] > sc.scale_depth,
                                  scale_end >= sc.scale_depth)),
            ]
            with m.State("WSCALE_CHECK"):
                replies(Status.BAD_LENGTH)
                with m.If(scale_rem < 0):
                    with m.If(scale_rem_nz | scale_over):
                        reply()
                    with m.Else():
                        m.next = "WSCALE_WORD"
            # lane 0 came first, so it is the lowest of the word
            word_writes("WSCALE", scale_w, 2 * P, acc[-SCALE_BITS * P:])

            with m.State("RUN_DESC"):
                step_idx()
                with m.If(at_len):
                    m.d.comb += acc_hold.eq(1)
                    hold_next(1)
                    m.next = "RUN_START"
            job = acc[acc_top - 8 * desc_bytes:acc_top]
            with m.State("RUN_START"):
                # The scale unit checks the job's scale range before the streamer starts.
                # (`idx` is 0 from here on, ready for RUN_REPLY: zeroed here, then held.)
                m.d.comb += [sc.desc.valid.eq(1), acc_hold.eq(1), idx_zero.eq(1)]
                if not registered:
                    m.d.comb += sc.desc.payload.as_value().eq(job)
                hold_next(1)
                with m.If(sc.desc.ready):
                    m.d.sync += [out_count.eq(0), out_room.eq(1)]
                    m.next = "RUN_SCALE"
            with m.State("RUN_SCALE"):
                m.d.comb += acc_hold.eq(1)
                hold_next(sc.status.setup | ~sc.status.error)
                with m.If(~sc.status.setup):
                    with m.If(sc.status.error):
                        m.d.comb += job_error_next.eq(StreamError.SCALES)
                        m.next = "RUN_REPLY"
                    with m.Else():
                        m.next = "RUN_STREAM"
            with m.State("RUN_STREAM"):
                m.d.comb += [st.desc.valid.eq(1), acc_hold.eq(1)]
                if not registered:
                    m.d.comb += st.desc.payload.as_value().eq(job[:DESCRIPTOR_LAYOUT.size])
                hold_next(~st.desc.ready)
                with m.If(st.desc.ready):
                    m.next = "RUN_WAIT"
            with m.State("RUN_WAIT"):
                # The streamer is busy from the cycle after it took the descriptor; the scale
                # unit from before and until its last result has left. A job the streamer
                # refuses never sends sums: the scale unit drops it.
                with m.If(~st.status.busy):
                    m.d.comb += job_error_next.eq(st.status.error)
                    with m.If(st.status.error != StreamError.NONE):
                        m.d.comb += sc.abort.eq(1)
                        m.next = "RUN_REPLY"
                    with m.Elif(~sc.status.busy):
                        m.next = "RUN_REPLY"
            with m.State("RUN_REPLY"):
                replies(Mux(job_error == StreamError.NONE, Status.OK, Status.RUN_ERROR))
                # job_error, then out_count, low byte first
                m.d.comb += [buf_w.en.eq(1), reply_payload.eq(1)]
                step_idx()
                with m.If(idx_at(2)):
                    reply()

            with m.State("READ_ARGS"):
                step_idx()
                # `start` and `count` are set in every cycle; the last one has them in `acc`
                # (bytes 0 to 2) and on the buffer's read port (byte 3)
                m.d.sync += out_n.eq(shift_in[-16:])
                m.d.comb += out_start_next.eq(acc[-24:-8])
                with m.If(idx_at(2)):
                    # `start` is in `acc` (bytes 0 and 1): the room behind it, from registers
                    m.d.sync += [room_count.eq(out_count - acc[-16:]),
                                 room_depth.eq(self._out_depth - acc[-16:])]
                with m.If(idx_at(3)):
                    m.next = "READ_CHECK"
            with m.State("READ_CHECK"):
                # the range check, `start + count` against the results present and the
                # buffer's depth, as comparisons of registers (`count` against the room behind
                # `start`): `read_over`, registered here
                m.d.comb += idx_zero.eq(1)
                m.d.sync += [read_none.eq(out_n == 0), read_last.eq(out_n == 1)]
                m.next = "READ_WAIT" if registered else "READ_RANGE"
            if registered:
                with m.State("READ_WAIT"):
                    # the output buffer's address is `out_start` (see above): its first entry
                    # comes a cycle later
                    m.d.comb += idx_zero.eq(1)
                    m.next = "READ_RANGE"
            with m.State("READ_RANGE"):
                replies(Status.BAD_LENGTH)
                # the first entry into a register, the next one's read started: the byte
                # multiplexers below start from flip-flops, not from the block RAM
                m.d.comb += [entry_load.eq(1), out_start_next.eq(out_start + 1)]
                with m.If(Cat(read_over).any()):
                    reply()
                with m.Else():
                    m.next = "READ_COPY"
            with m.State("READ_COPY"):
                # byte sub of the entry in `entry`; the output buffer's read port already holds
                # the next entry
                m.d.comb += [buf_w.en.eq(1), reply_payload.eq(~read_none)]
                step_idx()
                m.d.comb += sub_next.eq(Mux(entry_end, 0, sub + 1))
                with m.If(entry_end):
                    m.d.sync += [out_n.eq(out_n - 1), read_last.eq(out_n == 2)]
                    m.d.comb += [entry_load.eq(1), out_start_next.eq(out_start + 1)]
                with m.If(read_none | (entry_end & read_last)):
                    reply()

            with m.State("STATUS"):
                m.d.comb += [buf_w.en.eq(1), reply_payload.eq(1)]
                step_idx()
                with m.If(idx_at(nbytes - 1)):
                    reply()

            # ---- transmit
            if registered:
                # `tx_valid` is set from TX_SYNC's own flip-flop, a cycle late, and TX_SYNC's
                # first cycle is offered by the state itself: the decisions to reply (the
                # index comparisons of the reply states) do not reach `tx.valid`
                tx_out = tx_valid | fsm.ongoing("TX_SYNC")
                tx_set = fsm.ongoing("TX_SYNC")
            else:
                tx_out, tx_set = tx_valid, replying
            m.d.comb += [self.tx.valid.eq(tx_out),
                         tx_crc.data.eq(Mux(fsm.ongoing("TX_PAYLOAD"), buf_data, tx_head))]
            tx_fire = tx_out & self.tx.ready
            for name, value, nxt in (("TX_SYNC", REPLY_SYNC, "TX_STATUS"),
                                     ("TX_STATUS", tx_head, "TX_LEN0"),
                                     ("TX_LEN0", tx_head, "TX_LEN1"),
                                     ("TX_LEN1", tx_head, "TX_PAYLOAD"),
                                     ("TX_PAYLOAD", buf_data, "TX_CRC0"),
                                     ("TX_CRC0", tx_crc.crc[8:], "TX_CRC1"),
                                     ("TX_CRC1", tx_crc.crc[:8], "RX_SYNC")):
                with m.State(name):
                    m.d.comb += self.tx.payload.eq(value)
                    if name == "TX_SYNC":
                        # the payload's first byte is on the frame buffer's read port from
                        # TX_STATUS on (three or more cycles before TX_PAYLOAD)
                        m.d.comb += [tx_crc.start.eq(tx_fire), idx_zero.eq(1)]
                    elif name in ("TX_STATUS", "TX_LEN0", "TX_LEN1", "TX_PAYLOAD"):
                        m.d.comb += tx_crc.valid.eq(tx_fire)
                    if name == "TX_PAYLOAD":
                        m.d.comb += idx_take.eq(self.tx.ready)
                    with m.If(tx_fire):
                        if name == "TX_LEN1":
                            m.next = "TX_PAYLOAD"
                            with m.If(reply_empty):
                                m.next = "TX_CRC0"
                        elif name == "TX_PAYLOAD":
                            with m.If(idx == tx_last):
                                m.next = "TX_CRC0"
                        else:
                            m.next = nxt

        if registered:
            crc_hi_ok = Signal()
            crc_lo = Signal(8, reset_less=True)
            with m.If(fsm.ongoing("RX_CRC0")):
                m.d.sync += [crc_hi_ok.eq(rx_byte == rx_crc.crc[8:]), crc_lo.eq(rx_crc.crc[:8])]
            with m.If(fsm.ongoing("RX_CRC1")):
                m.d.sync += crc_good.eq(crc_hi_ok & (rx_byte == crc_lo))
            # The job's descriptors, straight from `acc`'s flip-flops in every state (they are
            # taken only with their valid, in RUN_START and RUN_STREAM, while `acc` holds the
            # job)
            m.d.comb += [sc.desc.payload.as_value().eq(job),
                         st.desc.payload.as_value().eq(job[:DESCRIPTOR_LAYOUT.size])]

        # The read address: idx + 1 in the states that read the next byte in the next cycle,
        # and in TX_PAYLOAD when its byte is taken; idx in those that hold the index for a state
        # that reads (EXEC, the states before WMEM_WORD and WSCALE_WORD, and the transmit states
        # before TX_PAYLOAD); in the other states no byte read is of use.
        read_step = ("WMEM_ADDR", "WMEM_WORD", "WACT_ADDR", "WACT_DATA", "WSCALE_ADDR",
                     "WSCALE_WORD", "RUN_DESC", "READ_ARGS")
        read_inc = (Cat(fsm.ongoing(name) for name in read_step).any() |
                    (fsm.ongoing("TX_PAYLOAD") & self.tx.ready))
        if registered:
            # Both bytes read, from the index's flip-flops, and the choice made after the
            # read: the address no longer waits for the state's decode. The byte at idx + 1
            # is the even bank's at (idx + 1) / 2 when idx is odd, the odd bank's at idx / 2
            # when it is even; the byte at idx the other one. The byte wanted, at idx or
            # idx + 1 as `read_inc` says, is in the bank of parity idx[0] ^ read_inc.
            # idx + 1, kept beside idx: the even bank's address comes from flip-flops
            idx1 = Signal(8, name="idx1", init=1, reset_less=True)
            odd_q = Signal()
            m.d.sync += [odd_q.eq(idx[0] ^ read_inc),
                         idx1.eq(Mux(idx_zero, 1, Mux(idx_step | idx_take, idx1 + 1, idx1)))]
            reads = [bank.read_port() for bank in banks]
            m.d.comb += [reads[0].addr.eq(idx1[1:]), reads[1].addr.eq(idx[1:]),
                         buf_data.eq(Mux(odd_q, reads[1].data, reads[0].data))]
        else:
            m.d.comb += [buf_r.addr.eq(Mux(read_inc, idx + 1, idx)), buf_data.eq(buf_r.data)]

        # The frame buffer's write data: the request's bytes, or the reply's from `reply_byte`,
        # which holds the byte the state writes: it is selected a cycle ahead, by the command
        # (`cmd` holds still while it executes), from the state and index of the next cycle (a
        # reply state is entered with idx 0 and steps it in every cycle), so that the write data
        # comes from flip-flops rather than from wide byte multiplexers. (Nothing in the STATUS
        # and RUN replies changes while a command executes: the streamer and the scale unit
        # work only within RUN, which replies after both are done.)
        if registered:
            # RUN's first byte, the job's error, is `job_error` itself (the write data goes
            # into a register, `buf_wq`), not a byte selected a cycle ahead from the value it
            # takes, which the scale unit's and streamer's status decide late
            was_reply = Signal()
            m.d.sync += was_reply.eq(fsm.ongoing("RUN_REPLY"))
            run_first = fsm.ongoing("RUN_REPLY") & ~was_reply
            reply_byte_now = Mux(run_first, Value.cast(job_error), reply_byte)
        else:
            reply_byte_now = reply_byte
        m.d.comb += buf_w.data.eq(Mux(fsm.ongoing("RX_PAYLOAD"), rx_byte,
                                      Mux(fsm.ongoing("STATUS"), status_byte, reply_byte_now)))
        sel = idx[:max(len(config), nbytes).bit_length()]
        # PING, STATUS (a register of its own): byte 0 in the state before, then byte idx + 1
        ping_next = Mux(fsm.ongoing("PING"), Array(Const(b, 8) for b in config[1:] + bytes(1))[sel],
                        config[0])
        if registered:
            # the reply's bytes loaded into a shift register in the state before, then shifted
            # out a byte a cycle: no byte multiplexer in front of the register
            status_sr = Signal(8 * nbytes, name="status_sr", reset_less=True)
            m.d.sync += status_sr.eq(Mux(fsm.ongoing("STATUS"), status_sr[8:],
                                         Value.cast(reply_data)))
            m.d.comb += status_byte.eq(status_sr[:8])
        else:
            m.d.sync += status_byte.eq(Mux(fsm.ongoing("STATUS"),
                                           Array(status_bytes[1:] + [0])[sel], status_bytes[0]))
        # RUN: the job's error (the value it takes on entering RUN_REPLY; with registered RAM
        # written from `job_error` itself, above), then the count
        run_next = Mux(fsm.ongoing("RUN_REPLY"), Mux(idx[0], out_count[8:16], out_count[:8]),
                       0 if registered else Value.cast(job_error_next))
        # READ_OUT: the first byte of the entry being loaded, or the entry's next byte

        def sign_extended(value):
            ext = Signal(signed(8 * rb))
            m.d.comb += ext.eq(Value.cast(value).as_signed())
            return ext
        # `out_data` holds an entry from the cycle after `out_start_next` is set (three with
        # registered RAM) until the next address, at least `rb * P` >= 4 cycles (an entry is
        # loaded in READ_RANGE from the address set in READ_ARGS' last cycle, then every
        # `rb * P` cycles; READ_WAIT lies between them with registered RAM): the registered
        # RAM's copy two cycles later is loaded just the same.
        entry_bytes = Cat(sign_extended(out_data[p]) for p in range(P))
        m.d.sync += entry.eq(Mux(entry_load, entry_bytes, entry[8:]))
        copy_next = Mux(entry_load, entry_bytes[:8], entry[8:16])
        m.d.sync += reply_byte.eq(Mux(exec_go["READ_ARGS"], copy_next, 0) |
                                  Mux(exec_go["RUN_DESC"], run_next, 0) |
                                  Mux(exec_go["PING"], ping_next, 0))

        m.d.sync += tx_valid.eq(Mux(tx_valid, ~(fsm.ongoing("TX_CRC1") & self.tx.ready),
                                    tx_set))
        head_len_lo = ((fsm.ongoing("TX_STATUS") & self.tx.ready) |
                       (fsm.ongoing("TX_LEN0") & ~self.tx.ready))
        head_len_hi = (fsm.ongoing("TX_LEN0") & self.tx.ready) | fsm.ongoing("TX_LEN1")
        m.d.sync += tx_head.eq(Mux(head_len_lo, reply_len[:8],
                                   Mux(head_len_hi, reply_len[8:], status)))

        with m.If(~tx_out):
            m.d.sync += [status.eq(reply_status), reply_len.eq(Mux(reply_payload, idx + 1, 0)),
                         reply_empty.eq(~reply_payload), tx_last.eq(idx)]

        rx_timing = Cat(fsm.ongoing(name) for name, _ in rx_states).any()
        rx_leave = ((fsm.ongoing("RX_CRC1") & self.rx.valid) |
                    (fsm.ongoing("RX_LEN1") & self.rx.valid & len_bad) |
                    (rx_timing & ~self.rx.valid & timed_out))
        m.d.sync += rx_ready.eq(Mux(rx_ready, ~rx_leave, fsm.ongoing("TX_CRC1") & self.tx.ready))

        # The idle counter counts in every cycle and restarts with every byte offered, and in
        # RX_SYNC (the other states never read it); `timed_out` is registered from the value
        # it takes.
        restart = self.rx.valid | fsm.ongoing("RX_SYNC")
        m.d.sync += [idle.eq(Mux(restart, 0, idle + 1)),
                     timed_out.eq(Mux(restart, int(self._timeout == 1),
                                      (idle == self._timeout - 2) if self._timeout >= 2 else 0))]
        return m

