"""Line-rate decoders from packed memory words to per-lane weight codes.

A word of ``word_bits`` holds ``word_bits / 8`` bytes; each byte decodes to 4 (t2), 5 (t5) or 8
(b1) weights, byte 0 (the low bits) first. The output codes are those the PE consumes: t2 codes
for ternary formats (so a t2 word is only rewired) and sign bits for b1.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .formats import FormatCode, WeightFormat, weight_shape

__all__ = ["WeightDecoder", "weights_per_word", "check_word_bits", "WORD_BITS"]

WORD_BITS = (8, 16, 32, 64, 128)


def check_word_bits(word_bits):
    msg = f"Memory word width must be one of 8, 16, 32, 64, 128, not {word_bits!r}"
    if not isinstance(word_bits, int) or isinstance(word_bits, bool):
        raise TypeError(msg)
    if word_bits not in WORD_BITS:
        raise ValueError(msg)
    return word_bits


def weights_per_word(fmt, word_bits):
    return WeightFormat(fmt).weights_per_byte * word_bits // 8


def _t5_decode(m, byte, name):
    """The five t2 codes of a t5 byte (see :mod:`lpu.hw.formats`): per trit one 10-bit adder,
    ``s = q + 2q``; the trit is ``s >> 8`` and the next ``q`` is ``s mod 256``."""
    q = byte
    codes = []
    for i in range(5):
        s = Signal(10, name=f"{name}_s{i}")
        m.d.comb += s.eq(q + (q << 1))
        trit = s[8:10]      # 0, 1, 2 for weight -1, 0, +1
        codes.append(Cat(trit[1], ~trit[1] & ~trit[0]))   # (+1 flag, -1 flag)
        q = s[:8]
    return Cat(*codes)


class WeightDecoder(wiring.Component):
    """Combinational decoder of one memory word in one of the supported formats.

    Parameters
    ----------
    word_bits : int
        Memory word width: 8, 16, 32, 64 or 128.
    formats : sequence of str or WeightFormat
        Formats to decode; all ternary (t2, t5) or all binary (b1).

    Attributes
    ----------
    word : In(word_bits)
    fmt : In(FormatCode)
    codes : Out(ArrayLayout(code, max_weights))
        Decoded weight codes, weight 0 lowest; only the first ``count`` are meaningful.
    count : Out(range(max_weights + 1))
        Weights in this word for ``fmt``.
    """

    def __init__(self, *, word_bits, formats):
        check_word_bits(word_bits)
        self._word_bits = word_bits
        self._formats = tuple(WeightFormat(f) for f in formats)
        self._mode = self._formats[0].mode
        self._max = max(weights_per_word(f, word_bits) for f in self._formats)
        super().__init__({
            "word": In(word_bits),
            "fmt": In(FormatCode),
            "codes": Out(data.ArrayLayout(weight_shape(self._mode), self._max)),
            "count": Out(range(self._max + 1)),
        })

    max_weights = property(lambda self: self._max)
    formats = property(lambda self: self._formats)

    def elaborate(self, platform):
        m = Module()
        nbytes = self._word_bits // 8
        flat = self.codes.as_value()
        with m.Switch(self.fmt):
            for n, fmt in enumerate(self._formats):
                # the last format takes every other code too: a format the streamer was not
                # built for never gets this far, and a lone format then costs no logic
                last = n == len(self._formats) - 1
                with (m.Default() if last else m.Case(FormatCode.of(fmt))):
                    m.d.comb += self.count.eq(weights_per_word(fmt, self._word_bits))
                    if fmt is WeightFormat.T5:
                        for i in range(nbytes):
                            m.d.comb += flat[10 * i:10 * i + 10].eq(
                                _t5_decode(m, self.word[8 * i:8 * i + 8], f"t5_byte{i}"))
                    else:
                        # t2 words hold PE codes as they are; b1 words hold PE sign bits.
                        m.d.comb += flat[:self._word_bits].eq(self.word)
        return m
