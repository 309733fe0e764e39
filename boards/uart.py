"""An 8N1 UART: serial line to byte stream and back.

The link between a board's LPU and the host's :class:`~lpu.host.serial_link.SerialTransport`.
One start bit (0), eight data bits least significant first, one stop bit (1), no parity. Each
bit lasts ``divisor`` clock cycles exactly (:func:`baud_divisor` picks it from the clock and the
baud rate and refuses a pair whose rate error exceeds what 8N1 tolerates).

The receiver samples the middle of each bit: it waits half a bit after the falling edge of the
start bit, checks the line is still low (a shorter pulse is a glitch and ignored), then samples
every ``divisor`` cycles. A byte whose stop bit reads 0 is a framing error: it is dropped, the
``frame_error`` strobe pulses and the receiver waits for the line to return high before it hunts
for the next start bit (a break holds the line low). A byte that completes while the previous one
is still waiting to be taken is dropped and ``overrun`` pulses; the LPU's protocol is half
duplex, so a host that waits for each reply never causes one.

No library on PyPI provides a UART for Amaranth 0.5 (``amaranth-stdio`` there is an empty
placeholder), hence this module.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from lpu.hw.params import check_positive, check_range

__all__ = ["UARTRx", "UARTTx", "baud_divisor", "MAX_BAUD_ERROR"]

#: Largest relative baud-rate error accepted by :func:`baud_divisor`. Sampling mid-bit leaves
#: half a bit of slack over the 9.5 bits from the start edge to the stop bit's middle, shared by
#: both ends of the link: 5% in total, so 2% each keeps a margin.
MAX_BAUD_ERROR = 0.02

#: Smallest divisor: the receiver waits half a bit (divisor // 2 cycles, at least 1) and needs a
#: cycle to act on a sample.
MIN_DIVISOR = 4


def baud_divisor(clk_hz, baud):
    """Clock cycles per bit for ``baud`` at ``clk_hz``, rounded to the nearest integer.

    Raises
    ------
    ValueError
        If the rounded divisor misses the baud rate by more than :data:`MAX_BAUD_ERROR`, or is
        below :data:`MIN_DIVISOR`.
    """
    check_positive("Clock frequency", clk_hz)
    check_positive("Baud rate", baud)
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"Baud rate {baud} is too fast for a {clk_hz / 1e6:g} MHz clock "
                         f"(at most {clk_hz // MIN_DIVISOR})")
    error = abs(clk_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"Baud rate {baud} is off by {error:.1%} at {clk_hz / 1e6:g} MHz "
                         f"(divisor {divisor}); at most {MAX_BAUD_ERROR:.0%} is allowed")
    return divisor


class UARTTx(wiring.Component):
    """Byte stream to 8N1 serial line.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least :data:`MIN_DIVISOR`.

    Attributes
    ----------
    i_stream : In(stream.Signature(8))
        Bytes to send; a byte is taken when the transmitter is idle.
    tx : Out(1)
        The serial line (idle high).
    busy : Out(1)
        A byte is being sent.
    """

    i_stream: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, *, divisor):
        self._divisor = check_range("Baud divisor", divisor, MIN_DIVISOR)
        super().__init__()

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        # A byte is taken into `hold` and `take` is set; the next cycle starts its frame. The
        # stream's valid and payload (formed by the sender's logic) thus only reach the inputs
        # of plain flip-flops, not the enables of the shift register and the timer. `line`
        # goes low for the start bit in that next cycle, as the shifter loads, so the frame
        # starts the cycle after the byte is taken and every bit still lasts `divisor` cycles.
        # Only `take`, `line` and `idle` need a reset: `take` loads the others.
        hold = Signal(8, reset_less=True)
        take = Signal()
        line = Signal(init=1)                     # the serial line, a flip-flop
        timer = Signal(range(self._divisor), reset_less=True)
        expired = Signal(reset_less=True)         # timer == 0, registered with it
        shift = Signal(9, reset_less=True)        # stop, data[7:0]; sent from bit 0
        bits = Signal(range(10), reset_less=True)  # bits still to send after the current one
        idle = Signal(init=1)                     # no frame: the last stop bit is done
        taken = self.i_stream.valid & self.i_stream.ready
        m.d.comb += [self.busy.eq(~idle | take), self.i_stream.ready.eq(idle & ~take),
                     self.tx.eq(line)]
        m.d.sync += [hold.eq(self.i_stream.payload), take.eq(taken)]
        with m.If(taken):
            m.d.sync += line.eq(0)                # the start bit
        with m.If(take):
            m.d.sync += [shift.eq((1 << 8) | hold), bits.eq(9), idle.eq(0),
                         timer.eq(self._divisor - 2), expired.eq(self._divisor == 2)]
        with m.Elif(~idle):
            with m.If(expired):
                m.d.sync += [line.eq(shift[0]), shift.eq((1 << 8) | (shift >> 1)),
                             timer.eq(self._divisor - 1), expired.eq(self._divisor == 1)]
                with m.If(bits == 0):
                    m.d.sync += idle.eq(1)
                with m.Else():
                    m.d.sync += bits.eq(bits - 1)
            with m.Else():
                m.d.sync += [timer.eq(timer - 1), expired.eq(timer == 1)]
        return m


class UARTRx(wiring.Component):
    """8N1 serial line to byte stream.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least :data:`MIN_DIVISOR`.

    Attributes
    ----------
    rx : In(1)
        The serial line (idle high); synchronized inside.
    o_stream : Out(stream.Signature(8))
        Received bytes.
    frame_error : Out(1)
        Pulses for one cycle when a byte is dropped because its stop bit was 0.
    overrun : Out(1)
        Pulses for one cycle when a byte is dropped because the previous one was not taken.
    """

    rx: In(1, init=1)
    o_stream: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, divisor):
        self._divisor = check_range("Baud divisor", divisor, MIN_DIVISOR)
        super().__init__()

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        # The state machine and `valid` keep their reset; the rest is loaded before use (the
        # received byte, `payload`, is only read while `valid`).
        timer = Signal(range(self._divisor), reset_less=True)
        # `timer == 0`, registered with the timer (a flip-flop in the state machine's
        # conditions rather than a comparison)
        expired = Signal(reset_less=True)
        shift = Signal(8, reset_less=True)
        bits = Signal(range(9), reset_less=True)
        payload = Signal(8, reset_less=True)
        m.d.comb += self.o_stream.payload.eq(payload)

        def load(value):
            m.d.sync += [timer.eq(value), expired.eq(value == 0)]

        def count_down():
            m.d.sync += [timer.eq(timer - 1), expired.eq(timer == 1)]

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    load(self._divisor // 2 - 1)
                    m.next = "START"
            # Half a bit after the falling edge: the middle of the start bit.
            with m.State("START"):
                with m.If(~expired):
                    count_down()
                with m.Elif(line):
                    m.next = "IDLE"                          # a glitch, not a start bit
                with m.Else():
                    m.d.sync += bits.eq(8)
                    load(self._divisor - 1)
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(~expired):
                    count_down()
                with m.Else():
                    m.d.sync += [shift.eq((line << 7) | (shift >> 1)), bits.eq(bits - 1)]
                    load(self._divisor - 1)
                    with m.If(bits == 1):
                        m.next = "STOP"
            # The middle of the stop bit; the next start edge may follow half a bit later.
            with m.State("STOP"):
                with m.If(~expired):
                    count_down()
                with m.Elif(~line):
                    m.d.comb += self.frame_error.eq(1)
                    m.next = "BREAK"
                with m.Else():
                    with m.If(self.o_stream.valid & ~self.o_stream.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [payload.eq(shift), self.o_stream.valid.eq(1)]
                    m.next = "IDLE"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m
