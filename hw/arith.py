"""Small sequential arithmetic for set-up work that runs once per matrix, not per cycle."""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SequentialDivider", "SequentialMultiplier"]


class SequentialDivider(wiring.Component):
    """Unsigned restoring division, one quotient bit per cycle (``width`` cycles).

    Pulse ``start`` with ``num`` and ``den`` set (both are taken in that cycle); ``busy`` is
    high until ``quot`` and ``rem`` are valid. Division by zero gives an all-ones quotient;
    callers check ``den`` first.

    ``den_width`` (default ``width``) is the divisor's width. The partial remainder is always
    below the divisor, so it is kept in ``den_width`` bits: a division by a small constant
    subtracts a few bits per cycle, not ``width``. Each cycle's trial subtraction gives the
    comparison too (its borrow), one carry chain rather than a comparison and a subtraction
    in series.
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
        count = Signal(range(w + 1))
        den = Signal(dw)
        trial = Signal(dw + 1)
        diff = Signal(signed(dw + 2))       # trial - den; negative: the divisor does not fit
        m.d.comb += [trial.eq(Cat(self.quot[w - 1], self.rem)), diff.eq(trial - den)]
        with m.If(self.start):
            m.d.sync += [self.rem.eq(0), self.quot.eq(self.num), den.eq(self.den), count.eq(w),
                         self.busy.eq(1)]
        with m.Elif(self.busy):
            fits = ~diff[-1]
            m.d.sync += [
                self.rem.eq(Mux(fits, diff[:dw], trial[:dw])),
                self.quot.eq(Cat(fits, self.quot[:-1])),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += self.busy.eq(0)
        return m


class SequentialMultiplier(wiring.Component):
    """Unsigned shift-and-add multiplication, one bit of ``b`` per cycle (``width`` cycles)."""

    def __init__(self, width):
        self._width = width
        super().__init__({
            "start": In(1), "a": In(width), "b": In(width),
            "busy": Out(1), "product": Out(2 * width),
        })

    def elaborate(self, platform):
        m = Module()
        w = self._width
        count = Signal(range(w + 1))
        a = Signal(2 * w)
        b = Signal(w)
        with m.If(self.start):
            m.d.sync += [a.eq(self.a), b.eq(self.b), self.product.eq(0), count.eq(w),
                         self.busy.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += [
                self.product.eq(self.product + Mux(b[0], a, 0)),
                a.eq(a << 1),
                b.eq(b >> 1),
                count.eq(count - 1),
            ]
            with m.If(count == 1):
                m.d.sync += self.busy.eq(0)
        return m
