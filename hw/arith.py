"""Small sequential arithmetic for set-up work that runs once per matrix, not per cycle."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SequentialDivider", "SequentialMultiplier", "up_down", "nonzero_after"]


def up_down(value, up, down):
    """``value + up - down`` for a count whose ``up`` and ``down`` are handshakes known late:
    ``value + 1``, ``value - 1`` and ``value`` are formed beforehand, and the handshakes only
    select one (no carry chain behind them)."""
    return Mux(up, Mux(down, value, value + 1), Mux(down, value - 1, value))


def nonzero_after(nonzero, value, up, down):
    """``value + up - down != 0`` for the count of :func:`up_down`, from ``nonzero``, a
    flip-flop kept beside it as ``value != 0``: the flag's next value waits for no comparison
    behind the handshakes."""
    return up | Mux(down, value != 1, nonzero)


class SequentialDivider(wiring.Component):
    """Unsigned restoring division, one quotient bit per cycle (``width`` cycles).

    Pulse ``start`` with ``num`` and ``den`` set (both are taken in that cycle); ``busy`` is
    high until ``quot`` and ``rem`` are valid. Division by zero gives an all-ones quotient;
    callers check ``den`` first.

    ``den_width`` (default ``width``) is the divisor's width. The partial remainder is always
    below the divisor, so it is kept in ``den_width`` bits: a division by a small constant
    subtracts a few bits per cycle, not ``width``. Each cycle's trial subtraction gives the
    comparison too (its borrow), one carry chain rather than a comparison and a subtraction
    in series; the divisor is kept inverted, so the chain's operands are flip-flops.

    ``quot`` and ``rem`` hold from ``busy`` low until the next ``start`` (a reset leaves them).
    """

    def __init__(self, width, den_width=None):
        den_width = width if den_width is None else den_width
        self._width = width
        self._den_width = den_width
        super().__init__({
            "start": In(1), "num": In(width), "den": In(den_width),
            "busy": Out(1), "quot": Out(width), "rem": Out(den_width),
        })

    def elaborate(self, platform):
        m = Module()
        w, dw = self._width, self._den_width
        # The working registers need no reset (``start`` sets them; ``busy`` keeps its own), so
        # an iCE40 flip-flop's enable is ``start | busy`` alone and its reset input is free for
        # ``start`` clearing the remainder.
        count = Signal(range(w + 1), reset_less=True)
        nden = Signal(dw, reset_less=True)      # the divisor inverted: the subtraction's operand
        rem = Signal(dw, reset_less=True)
        # The numerator shifts out of the top of `quot` while quotient bits shift in at the
        # bottom, each a cycle late: `fit` holds the latest, beside the carry chain it comes
        # from (not routed through a multiplexer at `quot`'s bottom bit).
        quot = Signal(w, reset_less=True)
        fit = Signal(reset_less=True)
        m.d.comb += [self.rem.eq(rem), self.quot.eq(Cat(fit, quot[:-1]))]
        # trial - den = trial + ~den + 1: with ~den a register and the +1 a carry in (the low
        # bit of both operands set), the carry chain takes flip-flops only, and its carry out
        # (no borrow) says the divisor fits.
        trial = Cat(quot[w - 1], rem)           # dw + 1 bits
        total = Signal(dw + 3)
        m.d.comb += total.eq(Cat(Const(1, 1), trial) + Cat(Const(1, 1), nden, Const(1, 1)))
        diff = total[1:dw + 1]
        fits = total[dw + 2]
        with m.If(self.start):
            m.d.sync += [rem.eq(0), quot.eq(self.num), nden.eq(~self.den), self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += [
                rem.eq(Mux(fits, diff, trial[:dw])),
                quot.eq(Cat(fit, quot[:-1])),
            ]
            with m.If(count == 1):
                m.d.sync += self.busy.eq(0)
        # `fit` as it is at a start is shifted into `quot` as a don't-care (the bit dropped at
        # the end), so it follows `busy` alone, not `start`; `count` only matters while busy,
        # so it counts down every cycle (no enable).
        with m.If(self.busy):
            m.d.sync += fit.eq(fits)
        m.d.sync += count.eq(Mux(self.start, w, count - 1))
        return m


class SequentialMultiplier(wiring.Component):
    """Unsigned shift-and-add multiplication, one bit of ``b`` per cycle (``width`` cycles).

    Pulse ``start`` with ``a`` and ``b`` set; ``product`` is valid when ``busy`` is low again
    and holds until the next ``start`` (a reset leaves it).
    """

    def __init__(self, width):
        self._width = width
        super().__init__({
            "start": In(1), "a": In(width), "b": In(width),
            "busy": Out(1), "product": Out(2 * width),
        })

    def elaborate(self, platform):
        m = Module()
        w = self._width
        # Right-shifting form: ``acc`` (the product's high half) adds ``a`` or nothing and
        # shifts its low bit into ``low``, which starts as ``b`` and ends as the product's low
        # half, so the adder is ``w + 1`` bits, not ``2 * w``. No resets: ``start`` sets all.
        count = Signal(range(w + 1), reset_less=True)
        a = Signal(w, reset_less=True)
        acc = Signal(w, reset_less=True)
        low = Signal(w, reset_less=True)
        m.d.comb += self.product.eq(Cat(low, acc))
        total = Signal(w + 1)
        m.d.comb += total.eq(acc + Mux(low[0], a, 0))
        with m.If(self.start):
            m.d.sync += [a.eq(self.a), acc.eq(0), low.eq(self.b), self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += [
                acc.eq(total[1:]),
                low.eq(Cat(low[1:], total[0])),
            ]
            with m.If(count == 1):
                m.d.sync += self.busy.eq(0)
        m.d.sync += count.eq(Mux(self.start, w, count - 1))    # only read while busy
        return m
