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

from .formats import WeightFormat
from .params import check_positive
from .protocol import CRC, MAX_PAYLOAD, REPLY_SYNC, REQUEST_SYNC, Command, Status
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
                                scale_depth=scale_depth, max_vectors=self._streamer.max_vectors)
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
        m.submodules.buf = buf = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        m.submodules.outbuf = outbuf = Memory(shape=data.ArrayLayout(signed(out_w), P),
                                              depth=self._out_depth, init=[])
        buf_w, buf_r = buf.write_port(), buf.read_port()
        ow, orp = outbuf.write_port(), outbuf.read_port()
        m.submodules.rx_crc = rx_crc = Processor(CRC)
        m.submodules.tx_crc = tx_crc = Processor(CRC)

        cmd = Signal(8)
        length = Signal(16)
        idx = Signal(16)             # byte index into the buffer
        idx_next = Signal(16)        # what idx becomes at the clock edge: the states set this
        status = Signal(8)
        refuse = Signal()            # a range check's verdict, registered before it is acted on
        reply_len = Signal(16)
        # the index of the last payload byte of the request (length - 1) and of the reply
        # (reply_len - 1), registered with the lengths: RX_PAYLOAD and TX_PAYLOAD compare
        # `idx` with a register, not with a sum formed in the same cycle
        rx_last = Signal(16)
        len_lo_zero = Signal()       # the length's low byte is 0, and above MAX_PAYLOAD's
        len_lo_over = Signal()
        tx_last = Signal(16)
        idle = Signal(range(self._timeout + 1))
        desc_bytes = (JOB_LAYOUT.size + 7) // 8
        AW = max(128, 8 * N, 8 * desc_bytes, SCALE_BITS * P)
        acc = Signal(AW)             # little-endian field assembly: newest byte on top
        field_addr = Signal(32)
        end_addr = Signal(33)        # WRITE_MEM: the word address past the last word
        out_count = Signal(16)
        out_start = Signal(16)
        out_start_next = Signal(16)  # likewise the output buffer's read address
        room_count = Signal(signed(18))  # READ_OUT: results present, and entries, from `start`
        room_depth = Signal(signed(18))
        read_none = Signal()         # READ_OUT: count 0, and count 1 left (registered flags)
        read_last = Signal()
        entry = Signal(data.ArrayLayout(signed(out_w), P))   # READ_OUT: the entry being sent
        out_n = Signal(16)
        sub = Signal(range(max(rb, word_bytes, N, 13, 2 * P) + 1))
        scale_rem = Signal(16)       # WRITE_SCALE bytes not yet counted into whole words
        scale_end = Signal(17)       # WRITE_SCALE: word address past the last word
        pe_sel = Signal(range(P + 1))
        job_error = Signal(StreamError)
        ostream = sc.o_stream

        # Results flow into the output buffer whenever the streamer has them.
        m.d.comb += [
            ow.addr.eq(out_count),
            ow.data.eq(ostream.payload),
            ow.en.eq(ostream.valid & (out_count < self._out_depth)),
            ostream.ready.eq(1),
        ]
        with m.If(ostream.valid):
            m.d.sync += out_count.eq(out_count + 1)

        m.d.comb += [idx_next.eq(idx), out_start_next.eq(out_start)]
        m.d.sync += [idx.eq(idx_next), out_start.eq(out_start_next)]
        m.d.comb += [buf_w.addr.eq(idx), buf_r.addr.eq(idx_next), orp.addr.eq(out_start_next)]

        rx_byte = self.rx.payload
        rx_take = self.rx.valid & self.rx.ready
        m.d.comb += rx_crc.data.eq(rx_byte)

        config = config_bytes(self)
        config_rom = Array(Const(b, 8) for b in config)

        def idx_at(k, top=None):
            """``idx == k`` in a state whose index counts up from 0 to ``top`` (default ``k``):
            only the bits that count that far are compared (one LUT rather than a 16-bit
            comparison)."""
            return idx[:max(1, (k if top is None else top).bit_length())] == k

        def reply_with(code, n, last=None):
            # (TX_SYNC sets the byte index to 0 for the payload: not here, where the many
            # states' late decisions would drive it and the frame buffer's read address)
            m.d.sync += [status.eq(code), reply_len.eq(n),
                         tx_last.eq(n - 1 if last is None else last)]
            m.next = "TX_SYNC"

        def word_writes(name, port, nbytes, word):
            """States ``{name}_WORD`` (gather ``nbytes`` payload bytes into ``acc``) and
            ``{name}_WRITE`` (``word``, a slice of ``acc``, to ``port`` at ``field_addr``)."""
            with m.State(f"{name}_WORD"):
                with m.If(idx == length):
                    reply_with(Status.OK, 0)
                with m.Else():
                    m.d.sync += [acc.eq(shift_in), sub.eq(sub + 1)]
                    m.d.comb += idx_next.eq(idx + 1)
                    with m.If(sub == nbytes - 1):
                        m.next = f"{name}_WRITE"
            with m.State(f"{name}_WRITE"):
                m.d.comb += [port.valid.eq(1), port.payload.addr.eq(field_addr),
                             port.payload.data.eq(word)]
                with m.If(port.ready):
                    m.d.sync += [field_addr.eq(field_addr + 1), sub.eq(0)]
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
        exec_go = {state: Signal(name=f"exec_{state.lower()}")
                   for state, _ in exec_targets.values()}
        exec_bad_len = Signal()
        exec_bad_cmd = Signal()
        m.d.sync += [exec_bad_cmd.eq(1), exec_bad_len.eq(0)]
        for state in exec_go.values():
            m.d.sync += state.eq(0)
        with m.Switch(cmd):
            for code, (state, bad) in exec_targets.items():
                with m.Case(code):
                    m.d.sync += [exec_bad_cmd.eq(0), exec_bad_len.eq(bad),
                                 exec_go[state].eq(~bad)]

        with m.FSM():
            # ---- receive
            with m.State("RX_SYNC"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(rx_take & (rx_byte == REQUEST_SYNC)):
                    m.d.comb += rx_crc.start.eq(1)
                    m.d.sync += idle.eq(0)
                    m.next = "RX_CMD"
            for name, nxt in (("RX_CMD", "RX_LEN0"), ("RX_LEN0", "RX_LEN1"),
                              ("RX_LEN1", "RX_PAYLOAD"), ("RX_PAYLOAD", None),
                              ("RX_CRC0", "RX_CRC1"), ("RX_CRC1", "RX_CHECK")):
                with m.State(name):
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(rx_take):
                        m.d.comb += rx_crc.valid.eq(1)
                        m.d.sync += idle.eq(0)
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
                            m.d.comb += idx_next.eq(0)
                            m.next = nxt
                            with m.If((rx_byte == 0) & len_lo_zero):
                                m.next = "RX_CRC0"
                            # length > MAX_PAYLOAD, byte by byte
                            with m.If((rx_byte > MAX_PAYLOAD // 256) |
                                      ((rx_byte == MAX_PAYLOAD // 256) & len_lo_over)):
                                reply_with(Status.BAD_LENGTH, 0)
                        elif name == "RX_PAYLOAD":
                            m.d.comb += [buf_w.en.eq(1), buf_w.data.eq(rx_byte),
                                         idx_next.eq(idx + 1)]
                            with m.If(idx == rx_last):
                                m.next = "RX_CRC0"
                        else:
                            m.next = nxt
                    with m.Else():
                        m.d.sync += idle.eq(idle + 1)
                        with m.If(idle == self._timeout - 1):
                            reply_with(Status.TRUNCATED, 0)
            with m.State("RX_CHECK"):
                with m.If(~rx_crc.match_detected):
                    reply_with(Status.BAD_CRC, 0)
                with m.Else():
                    m.d.sync += [sub.eq(0), acc.eq(0)]
                    m.d.comb += idx_next.eq(0)
                    m.next = "EXEC"

            # ---- dispatch
            with m.State("EXEC"):
                # every verdict a register (see `exec_go` above): no byte is decoded here
                with m.If(exec_bad_cmd):
                    reply_with(Status.BAD_COMMAND, 0)
                with m.Elif(exec_bad_len):
                    reply_with(Status.BAD_LENGTH, 0)
                for state, go in exec_go.items():
                    with m.If(go):
                        m.next = state

            # Assemble little-endian fields from the frame buffer one byte per cycle.
            shift_in = Cat(acc[8:], buf_r.data)

            with m.State("PING"):
                m.d.comb += [buf_w.data.eq(config_rom[idx]), buf_w.en.eq(1),
                             idx_next.eq(idx + 1)]
                with m.If(idx_at(len(config) - 1)):
                    reply_with(Status.OK, len(config))

            with m.State("WMEM_ADDR"):
                m.d.sync += acc.eq(shift_in)
                m.d.comb += idx_next.eq(idx + 1)
                with m.If(idx_at(3)):
                    m.d.sync += [field_addr.eq(shift_in[-32:]), sub.eq(0)]
                    m.next = "WMEM_CHECK"
            with m.State("WMEM_CHECK"):
                # Words past the memory would wrap around its address port: refuse them all
                # before writing any, as WRITE_SCALE does.
                n_words = (length - 4) >> (word_bytes.bit_length() - 1)
                m.d.sync += end_addr.eq(field_addr + n_words)
                m.next = "WMEM_END"
            with m.State("WMEM_END"):
                m.d.sync += refuse.eq(end_addr > st.mem_words)
                m.next = "WMEM_RANGE"
            with m.State("WMEM_RANGE"):
                with m.If(refuse):
                    reply_with(Status.BAD_LENGTH, 0)
                with m.Else():
                    m.next = "WMEM_WORD"
            word_writes("WMEM", self.mem_wr, word_bytes, acc[-st.word_bits:])

            act_w = st.act_wr
            with m.State("WACT_ADDR"):
                m.d.sync += acc.eq(shift_in)
                m.d.comb += idx_next.eq(idx + 1)
                with m.If(idx_at(1)):
                    m.d.sync += [field_addr.eq(shift_in[-16:]), sub.eq(0)]
                    m.next = "WACT_DATA"
            with m.State("WACT_DATA"):
                with m.If(idx == length):
                    m.next = "WACT_WRITE"
                with m.Else():
                    m.d.sync += acc.eq(shift_in)
                    m.d.comb += idx_next.eq(idx + 1)
            with m.State("WACT_WRITE"):
                m.d.comb += [act_w.valid.eq(1), act_w.payload.addr.eq(field_addr)]
                for i in range(N):
                    lo = AW - 8 * N + 8 * i
                    m.d.comb += act_w.payload.data[i].eq(acc[lo:lo + 8].as_signed())
                with m.If(act_w.ready):
                    reply_with(Status.OK, 0)

            scale_w = sc.scale_wr
            with m.State("WSCALE_ADDR"):
                m.d.sync += acc.eq(shift_in)
                m.d.comb += idx_next.eq(idx + 1)
                with m.If(idx_at(1)):
                    m.d.sync += [field_addr.eq(shift_in[-16:]), scale_end.eq(shift_in[-16:]),
                                 scale_rem.eq(length - 2), sub.eq(0)]
                    m.next = "WSCALE_CHECK"
            with m.State("WSCALE_CHECK"):
                # Count the payload's whole words (2P bytes each) by repeated subtraction, one
                # per cycle, rather than divide by a P that need not be a power of two; refuse a
                # partial word or words past the memory before writing any.
                with m.If(scale_rem >= 2 * P):
                    m.d.sync += [scale_rem.eq(scale_rem - 2 * P), scale_end.eq(scale_end + 1)]
                with m.Elif((scale_rem != 0) | (scale_end > sc.scale_depth)):
                    reply_with(Status.BAD_LENGTH, 0)
                with m.Else():
                    m.next = "WSCALE_WORD"
            # lane 0 came first, so it is the lowest of the word
            word_writes("WSCALE", scale_w, 2 * P, acc[-SCALE_BITS * P:])

            with m.State("RUN_DESC"):
                with m.If(idx == length):
                    # the reply's byte index, set now rather than in RUN_WAIT's late decisions
                    m.d.comb += idx_next.eq(0)
                    m.next = "RUN_START"
                with m.Else():
                    m.d.sync += acc.eq(shift_in)
                    m.d.comb += idx_next.eq(idx + 1)
            job = acc[AW - 8 * desc_bytes:]
            with m.State("RUN_START"):
                # The scale unit checks the job's scale range before the streamer starts.
                m.d.comb += [sc.desc.valid.eq(1), sc.desc.payload.as_value().eq(job)]
                with m.If(sc.desc.ready):
                    m.d.sync += out_count.eq(0)
                    m.next = "RUN_SCALE"
            with m.State("RUN_SCALE"):
                with m.If(~sc.status.setup):
                    with m.If(sc.status.error):
                        m.d.sync += job_error.eq(StreamError.SCALES)
                        m.next = "RUN_REPLY"
                    with m.Else():
                        m.next = "RUN_STREAM"
            with m.State("RUN_STREAM"):
                m.d.comb += [st.desc.valid.eq(1),
                             st.desc.payload.as_value().eq(job[:DESCRIPTOR_LAYOUT.size])]
                with m.If(st.desc.ready):
                    m.next = "RUN_WAIT"
            with m.State("RUN_WAIT"):
                # The streamer is busy from the cycle after it took the descriptor; the scale
                # unit from before and until its last result has left. A job the streamer
                # refuses never sends sums: the scale unit drops it.
                # (`idx` is 0 from RUN_DESC on, ready for RUN_REPLY.)
                with m.If(~st.status.busy):
                    m.d.sync += job_error.eq(st.status.error)
                    with m.If(st.status.error != StreamError.NONE):
                        m.d.comb += sc.abort.eq(1)
                        m.next = "RUN_REPLY"
                    with m.Elif(~sc.status.busy):
                        m.next = "RUN_REPLY"
            with m.State("RUN_REPLY"):
                m.d.comb += [buf_w.en.eq(1), idx_next.eq(idx + 1),
                             buf_w.data.eq(Mux(idx_at(0, top=2), job_error,
                                               out_count.word_select(idx[0] ^ 1, 8)))]
                with m.If(idx_at(2)):
                    reply_with(Mux(job_error == StreamError.NONE, Status.OK,
                                   Status.RUN_ERROR), 3)

            with m.State("READ_ARGS"):
                m.d.sync += acc.eq(shift_in)
                m.d.comb += idx_next.eq(idx + 1)
                with m.If(idx_at(2)):
                    # `start` is in `acc` (bytes 0 and 1): the room behind it, from registers
                    m.d.sync += [room_count.eq(out_count - acc[-16:]),
                                 room_depth.eq(self._out_depth - acc[-16:])]
                with m.If(idx_at(3)):
                    m.d.sync += [out_n.eq(shift_in[-16:]), sub.eq(0), pe_sel.eq(0)]
                    m.d.comb += [out_start_next.eq(shift_in[-32:-16]), idx_next.eq(0)]
                    m.next = "READ_CHECK"
            with m.State("READ_CHECK"):
                # the range check, `start + count` against the results present and the
                # buffer's depth, as comparisons of registers (`count` against the room behind
                # `start`); its verdict registered too
                m.d.sync += [refuse.eq((out_n > MAX_PAYLOAD // (P * rb)) | (out_n > room_count) |
                                       (out_n > room_depth)),
                             read_none.eq(out_n == 0), read_last.eq(out_n == 1)]
                m.next = "READ_RANGE"
            with m.State("READ_RANGE"):
                with m.If(refuse):
                    reply_with(Status.BAD_LENGTH, 0)
                with m.Else():
                    # the first entry into a register, the next one's read started: the byte
                    # multiplexers below start from flip-flops, not from the block RAM
                    m.d.sync += entry.eq(orp.data)
                    m.d.comb += out_start_next.eq(out_start + 1)
                    m.next = "READ_COPY"
            with m.State("READ_COPY"):
                # the entry in `entry`, PE pe_sel, byte sub of its sign-extended value; the
                # output buffer's read port already holds the next entry
                value = Signal(signed(8 * rb))
                m.d.comb += value.eq(Array(Value.cast(entry[p]).as_signed()
                                           for p in range(P))[pe_sel])
                m.d.comb += [buf_w.en.eq(1),
                             buf_w.data.eq(Array(value.word_select(b, 8) for b in range(rb))[sub])]
                with m.If(read_none):
                    reply_with(Status.OK, 0)
                with m.Else():
                    m.d.sync += sub.eq(sub + 1)
                    m.d.comb += idx_next.eq(idx + 1)
                    with m.If(sub == rb - 1):
                        m.d.sync += [sub.eq(0), pe_sel.eq(pe_sel + 1)]
                        with m.If(pe_sel == P - 1):
                            m.d.sync += [pe_sel.eq(0), out_n.eq(out_n - 1), entry.eq(orp.data),
                                         read_last.eq(out_n == 2)]
                            m.d.comb += out_start_next.eq(out_start + 1)
                            with m.If(read_last):
                                reply_with(Status.OK, idx + 1, last=idx)

            with m.State("STATUS"):
                reply = Signal(STATUS_REPLY_LAYOUT)
                m.d.comb += [reply.busy.eq(st.status.busy | sc.status.busy),
                             reply.writes_dropped.eq(self.mem_wr_dropped),
                             reply.error.eq(job_error), reply.perf.eq(st.perf)]
                words = Value.cast(reply)
                nbytes = STATUS_REPLY_LAYOUT.size // 8
                m.d.comb += [buf_w.en.eq(1), buf_w.data.eq(words.word_select(idx, 8)),
                             idx_next.eq(idx + 1)]
                with m.If(idx_at(nbytes - 1)):
                    reply_with(Status.OK, nbytes)

            # ---- transmit
            m.d.comb += tx_crc.data.eq(self.tx.payload)
            tx_fire = self.tx.valid & self.tx.ready
            for name, value, nxt in (("TX_SYNC", REPLY_SYNC, "TX_STATUS"),
                                     ("TX_STATUS", status, "TX_LEN0"),
                                     ("TX_LEN0", reply_len[:8], "TX_LEN1"),
                                     ("TX_LEN1", reply_len[8:], "TX_PAYLOAD"),
                                     ("TX_PAYLOAD", buf_r.data, "TX_CRC0"),
                                     ("TX_CRC0", tx_crc.crc[8:], "TX_CRC1"),
                                     ("TX_CRC1", tx_crc.crc[:8], "RX_SYNC")):
                with m.State(name):
                    m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]
                    if name == "TX_SYNC":
                        # the payload's first byte is on the frame buffer's read port from
                        # TX_STATUS on (three or more cycles before TX_PAYLOAD)
                        m.d.comb += [tx_crc.start.eq(tx_fire), idx_next.eq(0)]
                    elif name in ("TX_STATUS", "TX_LEN0", "TX_LEN1", "TX_PAYLOAD"):
                        m.d.comb += tx_crc.valid.eq(tx_fire)
                    with m.If(tx_fire):
                        if name == "TX_LEN1":
                            m.next = "TX_PAYLOAD"
                            with m.If(reply_len == 0):
                                m.next = "TX_CRC0"
                        elif name == "TX_PAYLOAD":
                            m.d.comb += idx_next.eq(idx + 1)
                            with m.If(idx == tx_last):
                                m.next = "TX_CRC0"
                        else:
                            m.next = nxt
        return m

