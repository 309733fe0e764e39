"""Board-level simulation: a board's top with the host's end of the serial cable.

:class:`BoardLinkSystem` is what a board runs -- :class:`~lpu.boards.top.BoardTop` (its UART,
its LPU with the board's configuration from :data:`~lpu.boards.top.BOARDS`, its block-RAM
weight memory) -- wired to a host-side UART through two serial lines. Its ``rx``/``tx`` byte
streams are the host's: a request byte goes through the host's transmitter onto the line into
``BoardTop.uart_rx`` bit by bit, and ``BoardTop.uart_tx`` is decoded bit by bit back into reply
bytes. It has the ``rx``/``tx`` streams of :class:`~lpu.sim.system.LPUSystem`, so the fast
simulator (:class:`~lpu.sim.fast.FastTop` and its C++ harness) runs it unchanged and
:class:`BoardTransport` carries the real driver's frames over the simulated line.

Both ends of the line are :class:`~lpu.boards.uart.UARTTx`/:class:`~lpu.boards.uart.UARTRx`
(tests/test_boards.py checks them against a bit-level model of 8N1 written in the test) on the
one simulated clock, so their bit periods are equal: the link runs at the baud rate the board's
clock makes (``baud_divisor``), not at a host's slightly different rate.

The clock is the board's (its amaranth-boards platform's default clock); the baud rate is the
board's (115200) unless another is given -- a fast rate (at most a quarter of the clock, the
UART's smallest divisor, :func:`fastest_baud`) makes long simulations short, and the figures at
the board's rate follow from the bytes and exchanges counted (:func:`link_cycles`,
:func:`tokens_per_second`).

The host sends a request only after the previous reply, as over a real serial port: the board
has no flow control and no receive FIFO (:meth:`BoardTransport.exchange_many`).

:class:`LineFault` inverts one bit on a line, for tests of the protocol's CRC and the driver's
retries.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from lpu.boards.build import board_config, board_pll
from lpu.boards.top import BoardTop, board_spec, lpu_for
from lpu.boards.uart import MIN_DIVISOR, UARTRx, UARTTx, baud_divisor
from lpu.host.driver import Transport
from lpu.hw.params import check_range

from .fast import VerilatorTransport

__all__ = ["BoardLinkSystem", "BoardTransport", "LineFault", "board_clock_hz", "fastest_baud",
           "link_cycles", "tokens_per_second", "BITS_PER_BYTE"]

#: Bit periods of one 8N1 byte on the line (start, eight data bits, stop).
BITS_PER_BYTE = 10


def board_clock_hz(spec):
    """Frequency of ``spec``'s LPU clock: its PLL's output at the board's default frequency
    (:func:`lpu.boards.build.board_pll`), rounded to the hertz as :class:`BoardTop` does."""
    return round(board_pll(spec).out_hz)


def fastest_baud(board):
    """The fastest baud rate ``board``'s clock makes: a bit of
    :data:`~lpu.boards.uart.MIN_DIVISOR` cycles."""
    return board_clock_hz(board_spec(board)) // MIN_DIVISOR


def link_cycles(nbytes, exchanges, divisor):
    """Cycles a serial link at ``divisor`` cycles per bit adds to ``exchanges`` request/reply
    exchanges carrying ``nbytes`` bytes in all.

    Each byte holds the line for :data:`BITS_PER_BYTE` bit periods, but a receiver hands on a
    byte when it samples the stop bit, ``divisor - divisor // 2`` cycles before the stop bit
    ends (:class:`~lpu.boards.uart.UARTRx` samples mid-bit): the board starts on a request,
    and the host on a reply, that much earlier, once per direction and exchange. What is left
    of a simulation's cycles -- the device executing and turning a request into a reply, the
    synchronizers -- does not depend on the divisor (tests/test_board_sim.py checks this at two
    divisors).
    """
    return nbytes * BITS_PER_BYTE * divisor - exchanges * 2 * (divisor - divisor // 2)


def tokens_per_second(*, bytes_per_token, exchanges_per_token, device_cycles_per_token, baud,
                      clk_hz):
    """Tokens per second of a board at ``clk_hz`` whose link runs at ``baud``.

    A token costs the link's cycles for its bytes and exchanges (:func:`link_cycles` at the
    divisor the board's UART uses for ``baud``) plus ``device_cycles_per_token``, the cycles
    outside the link, which a simulation at any baud rate measures (its cycles less its
    :func:`link_cycles`).
    """
    divisor = baud_divisor(clk_hz, baud)
    cycles = link_cycles(bytes_per_token, exchanges_per_token, divisor) + device_cycles_per_token
    return clk_hz / cycles


class LineFault(wiring.Component):
    """Passes a serial line through, inverting one data bit of one byte.

    The ``byte``-th byte on the line (counted from 0 after reset) has its data bit ``bit``
    (0 = least significant, the first sent) inverted. Bytes are found as a receiver finds them:
    a falling edge on the idle line starts a byte of :data:`BITS_PER_BYTE` bits of ``divisor``
    cycles each, so the fault is exact only for a transmitter on the same clock and divisor.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit.
    byte : int
        Index of the byte to garble.
    bit : int
        Data bit to invert, 0 to 7.

    Attributes
    ----------
    i : In(1)
        The line from the transmitter.
    o : Out(1)
        The line to the receiver.
    """

    i: In(1, init=1)
    o: Out(1, init=1)

    def __init__(self, *, divisor, byte, bit):
        self._divisor = check_range("Baud divisor", divisor, 1)
        self._byte = check_range("Garbled byte index", byte, 0)
        self._bit = check_range("Garbled bit", bit, 0, 7)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        frame_cycles = BITS_PER_BYTE * self._divisor
        t = Signal(range(frame_cycles + 1))           # cycles into the current byte; 0: idle
        count = Signal(range(self._byte + 2))           # bytes started, saturating past `byte`
        target = Signal()                               # the current byte is the one to garble
        with m.If(t != 0):
            m.d.sync += t.eq(Mux(t == frame_cycles - 1, 0, t + 1))
        with m.Elif(~self.i):
            m.d.sync += [t.eq(1), target.eq(count == self._byte)]
            with m.If(count <= self._byte):
                m.d.sync += count.eq(count + 1)
        # data bit b lies from (1 + b) * divisor to (2 + b) * divisor cycles after the edge
        lo, hi = (1 + self._bit) * self._divisor, (2 + self._bit) * self._divisor
        flip = target & (t >= lo) & (t < hi)
        m.d.comb += self.o.eq(self.i ^ flip)
        return m


class BoardLinkSystem(wiring.Component):
    """A board's :class:`~lpu.boards.top.BoardTop` behind the host's end of a serial cable.

    Parameters
    ----------
    board : str
        A name in :data:`~lpu.boards.top.BOARDS`.
    baud : int, optional
        Baud rate of the link (default: the board's). It must be one the board's clock makes
        within the UART's tolerance (:func:`~lpu.boards.uart.baud_divisor`).
    clk_hz : int, optional
        Clock frequency (default: the board's PLL clock, :func:`board_clock_hz`).
    garble_request, garble_reply : (int, int), optional
        ``(byte, bit)``: a :class:`LineFault` on the host-to-board or board-to-host line.
    **overrides
        LPU parameters replacing the board's (``lanes``, ``mem_words``, ...), as ``lpu build``.

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes from the host.
    tx : Out(stream.Signature(8))
        Reply bytes to the host.
    """

    def __init__(self, board, *, baud=None, clk_hz=None, garble_request=None,
                 garble_reply=None, **overrides):
        spec, cfg, baud = board_config(board, baud=baud, **overrides)
        self._spec = spec
        self._clk_hz = board_clock_hz(spec) if clk_hz is None else clk_hz
        self._top = BoardTop(lpu=lpu_for(**cfg), clk_hz=self._clk_hz, baud=baud,
                             memory=spec.memory)
        self._faults = {}
        for name, fault in (("request", garble_request), ("reply", garble_reply)):
            if fault is not None:
                if not (isinstance(fault, tuple) and len(fault) == 2):
                    raise TypeError(f"Garbled {name} position must be a (byte, bit) pair, not "
                                    f"{fault!r}")
                byte, bit = fault
                self._faults[name] = LineFault(divisor=self._top.divisor, byte=byte, bit=bit)
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    board = property(lambda self: self._spec.name)
    top = property(lambda self: self._top)
    lpu = property(lambda self: self._top.lpu)
    clk_hz = property(lambda self: self._clk_hz)
    baud = property(lambda self: self._top.baud)
    divisor = property(lambda self: self._top.divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.board = top = self._top
        m.submodules.host_tx = htx = UARTTx(divisor=self._top.divisor)
        m.submodules.host_rx = hrx = UARTRx(divisor=self._top.divisor)
        wiring.connect(m, wiring.flipped(self.rx), htx.i_stream)
        wiring.connect(m, hrx.o_stream, wiring.flipped(self.tx))
        to_board, to_host = htx.tx, top.uart_tx
        if "request" in self._faults:
            m.submodules.request_fault = f = self._faults["request"]
            m.d.comb += f.i.eq(to_board)
            to_board = f.o
        if "reply" in self._faults:
            m.submodules.reply_fault = f = self._faults["reply"]
            m.d.comb += f.i.eq(to_host)
            to_host = f.o
        m.d.comb += [top.uart_rx.eq(to_board), hrx.rx.eq(to_host)]
        return m


class BoardTransport(VerilatorTransport):
    """A :class:`BoardLinkSystem` in the fast simulator, counting what crosses the line.

    Attributes
    ----------
    exchanges : int
        Request frames sent so far (retries included).
    request_bytes, reply_bytes : int
        Bytes sent to and received from the board so far.
    link_cycles : int
        The cycles the serial link accounts for (:func:`link_cycles`); the rest of
        :attr:`cycles` does not depend on the baud rate.
    """

    def __init__(self, system, **kwargs):
        if not isinstance(system, BoardLinkSystem):
            raise TypeError(f"System must be a BoardLinkSystem, not {system!r}")
        self.system = system
        self.exchanges = 0
        self.request_bytes = 0
        self.reply_bytes = 0
        super().__init__(system, **kwargs)

    @property
    def link_bytes(self):
        return self.request_bytes + self.reply_bytes

    @property
    def link_cycles(self):
        return link_cycles(self.link_bytes, self.exchanges, self.system.divisor)

    def exchange_many(self, frames):
        """One frame at a time, each after the previous reply, as the host does over a real
        serial port (:class:`~lpu.host.serial_link.SerialTransport`): the board's UART holds
        one byte and the LPU takes none while it executes and replies, so a request sent back
        to back behind another would lose the bytes arriving meanwhile."""
        return Transport.exchange_many(self, frames)

    def _send(self, frames):
        got = super()._send(frames)
        self.exchanges += len(frames)
        self.request_bytes += sum(len(f) for f in frames)
        self.reply_bytes += len(got)
        return got
