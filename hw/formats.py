"""Weight formats: the one definition used by the hardware, the golden model, loaders and tests.

Three packings of weights into bytes are defined here, each with pure, vectorized NumPy
``pack_*``/``unpack_*`` functions and the Amaranth shapes the hardware uses for one weight.

``t2`` -- 2-bit ternary codes, 4 weights per byte, 2.0 bit/weight.
    Code bit 0 flags +1, code bit 1 flags -1: ``0b00`` = 0, ``0b01`` = +1, ``0b10`` = -1.
    ``0b11`` is reserved: packers never emit it, :func:`unpack_t2` rejects it, and the PE
    datapath decodes it as -1 (the negative flag wins). With this encoding the PE forms
    ``w * x`` as ``nonzero & (x ^ negative)`` plus a carry-in of ``negative`` without any
    decoding logic: both flags feed the lane's single LUT directly. Weight ``i`` of a byte sits
    at bits ``2*i+1 .. 2*i`` (little-endian within the byte).
``t5`` -- base-3, 5 trits per byte (3**5 = 243 <= 256), 1.6 bit/weight.
    The trits ``t[i] = w[i] + 1`` form ``v = sum(t[i] * 3**(4 - i))`` (weight 0 most
    significant), stored scaled to a fraction of 256: ``byte = ceil(v * 256 / 243)``, as GGUF's
    TQ1_0 does. Trit ``i`` is then the top two bits of ``3 * ((byte * 3**i) mod 256)``, so a
    decoder needs one 10-bit adder per trit (``q + 2q``), chained, instead of a lookup table.
    The 13 byte values that are no encoding are invalid.
``b1`` -- binary sign bits, 8 weights per byte, 1.0 bit/weight.
    Bit set means -1, bit clear means +1 (a sign bit). Weight ``i`` of a byte is bit ``i``.

Packing works along the last axis; a row whose length is not a multiple of the weights per byte
is padded at its end with the format's pad weight (0 for ternary, +1 for binary). The hardware
zeroes the activations of padded lanes, so pad weights never contribute to a sum.
"""

import enum as py_enum

import numpy as np
from amaranth.hdl import unsigned
from amaranth.lib import data, enum

__all__ = [
    "WeightFormat", "WeightMode", "FormatCode",
    "T2_ZERO", "T2_POS", "T2_NEG", "T2_RESERVED",
    "pack", "unpack", "pack_t2", "unpack_t2", "pack_t5", "unpack_t5", "pack_b1", "unpack_b1",
    "t2_encode", "t2_decode", "weight_codes", "weight_shape", "weight_vector_layout",
    "check_weights",
]


class WeightMode(py_enum.Enum):
    """Which weight values the datapath multiplies by."""

    #: Weights in {-1, 0, +1} (BitNet b1.58).
    TERNARY = "ternary"
    #: Weights in {-1, +1} (1-bit models with group scales).
    BINARY = "binary"

    @property
    def values(self):
        """The legal weight values, ascending."""
        return (-1, 0, 1) if self is WeightMode.TERNARY else (-1, 1)


class WeightFormat(py_enum.Enum):
    """A packing of weights into bytes in device memory."""

    #: 2-bit ternary codes, 4 per byte.
    T2 = "t2"
    #: Base-3 ternary, 5 trits per byte.
    T5 = "t5"
    #: Binary sign bits, 8 per byte.
    B1 = "b1"

    @property
    def mode(self):
        """The :class:`WeightMode` this format stores."""
        return WeightMode.BINARY if self is WeightFormat.B1 else WeightMode.TERNARY

    @property
    def weights_per_byte(self):
        """How many weights one byte holds."""
        return {WeightFormat.T2: 4, WeightFormat.T5: 5, WeightFormat.B1: 8}[self]

    @property
    def bits_per_weight(self):
        """Storage cost in bits per weight (8 / weights per byte)."""
        return 8 / self.weights_per_byte

    @property
    def pad_weight(self):
        """The weight value used to fill a partial last byte."""
        return 1 if self is WeightFormat.B1 else 0

    def packed_size(self, count):
        """Bytes needed for ``count`` weights in this format."""
        return -(-count // self.weights_per_byte)


class FormatCode(enum.Enum, shape=2):
    """How a :class:`WeightFormat` is named in hardware descriptors."""

    T2 = 0
    T5 = 1
    B1 = 2

    @classmethod
    def of(cls, fmt):
        return cls[WeightFormat(fmt).name]


# 2-bit code points (see module docstring).
T2_ZERO = 0b00
T2_POS = 0b01
T2_NEG = 0b10
T2_RESERVED = 0b11

_T5_POW = 3 ** np.arange(5, dtype=np.int64)


def _t5_trits(byte):
    """The five trits of t5 bytes, shape (..., 5): the decoder's arithmetic."""
    q = np.asarray(byte, dtype=np.int64)
    out = []
    for _ in range(5):
        s = 3 * q
        out.append(s >> 8)
        q = s & 0xFF
    return np.stack(out, axis=-1)


# Encoding of every v in 0..242 and the trits every byte decodes to.
_T5_ENCODE = (np.arange(243) * 256 + 242) // 243
_T5_VALID = np.zeros(256, dtype=bool)
_T5_VALID[_T5_ENCODE] = True
_T5_TRITS = _t5_trits(np.arange(256))


def check_weights(weights, mode, *, what="weights"):
    """Return ``weights`` as an int8 array, or raise if a value is outside ``mode``.

    Raises
    ------
    TypeError
        If ``weights`` is not an integer (or boolean) array.
    ValueError
        If any value is not a legal weight of ``mode``.
    """
    mode = WeightMode(mode)
    arr = np.asarray(weights)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{what.capitalize()} must be an integer array, not {arr.dtype}")
    if mode is WeightMode.TERNARY:
        bad = (arr < -1) | (arr > 1)
    else:
        bad = (arr != -1) & (arr != 1)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what.capitalize()} must be in {set(mode.values)} for {mode.value} mode, "
            f"not {int(arr[idx])} at index {idx}")
    return arr.astype(np.int8)


def _pad_last(arr, per_byte, fill):
    n = arr.shape[-1]
    pad = (-n) % per_byte
    if pad:
        widths = [(0, 0)] * (arr.ndim - 1) + [(0, pad)]
        arr = np.pad(arr, widths, constant_values=fill)
    return arr.reshape(*arr.shape[:-1], (n + pad) // per_byte, per_byte)


def _check_packed(packed, fmt, count):
    arr = np.asarray(packed)
    if arr.dtype != np.uint8:
        raise TypeError(f"Packed {fmt.value} weights must be a uint8 array, not {arr.dtype}")
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
        raise ValueError(f"Weight count must be a non-negative integer, not {count!r}")
    need = fmt.packed_size(int(count))
    have = arr.shape[-1] if arr.ndim else 0
    if have != need:
        raise ValueError(
            f"Packed {fmt.value} rows must hold {need} bytes for {count} weights, not {have}")
    return arr


def t2_encode(weights):
    """Map ternary weights to 2-bit codes (no range check; use :func:`check_weights`)."""
    w = np.asarray(weights, dtype=np.int8)
    return np.where(w > 0, T2_POS, np.where(w < 0, T2_NEG, T2_ZERO)).astype(np.uint8)


def t2_decode(codes, *, strict=True):
    """Map 2-bit codes to weights.

    With ``strict`` the reserved code raises ValueError; without, it decodes as -1 the way the
    PE datapath does.
    """
    c = np.asarray(codes, dtype=np.uint8)
    if strict and (c == T2_RESERVED).any():
        raise ValueError(f"Reserved 2-bit weight code 0b11 at index "
                         f"{tuple(int(i) for i in np.argwhere(c == T2_RESERVED)[0])}")
    return np.where(c & T2_NEG, -1, np.where(c & T2_POS, 1, 0)).astype(np.int8)


def pack_t2(weights):
    """Pack ternary weights along the last axis, 4 two-bit codes per byte."""
    w = check_weights(weights, WeightMode.TERNARY)
    codes = _pad_last(t2_encode(w), 4, T2_ZERO).astype(np.uint8)
    return (codes << (2 * np.arange(4, dtype=np.uint8))).sum(axis=-1, dtype=np.uint8)


def unpack_t2(packed, count):
    """Unpack ``count`` ternary weights per row from 2-bit codes."""
    arr = _check_packed(packed, WeightFormat.T2, count)
    codes = (arr[..., None] >> (2 * np.arange(4, dtype=np.uint8))) & 3
    codes = codes.reshape(*arr.shape[:-1], arr.shape[-1] * 4)[..., :count]
    return t2_decode(codes)


def pack_t5(weights):
    """Pack ternary weights along the last axis, 5 base-3 digits per byte."""
    w = check_weights(weights, WeightMode.TERNARY)
    trits = _pad_last(w.astype(np.int64) + 1, 5, 1)
    return _T5_ENCODE[(trits * _T5_POW[::-1]).sum(axis=-1)].astype(np.uint8)


def unpack_t5(packed, count):
    """Unpack ``count`` ternary weights per row from base-3 bytes."""
    arr = _check_packed(packed, WeightFormat.T5, count)
    bad = ~_T5_VALID[arr]
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"Byte {int(arr[idx])} at index {idx} is not a base-3 weight byte")
    w = _T5_TRITS[arr].reshape(*arr.shape[:-1], arr.shape[-1] * 5)[..., :count] - 1
    return w.astype(np.int8)


def pack_b1(weights):
    """Pack binary weights along the last axis, 8 sign bits per byte (bit set = -1)."""
    w = check_weights(weights, WeightMode.BINARY)
    bits = _pad_last((w < 0).astype(np.uint8), 8, 0)
    return np.packbits(bits, axis=-1, bitorder="little").reshape(bits.shape[:-1])


def unpack_b1(packed, count):
    """Unpack ``count`` binary weights per row from sign bits."""
    arr = _check_packed(packed, WeightFormat.B1, count)
    bits = np.unpackbits(arr[..., None], axis=-1, bitorder="little")
    bits = bits.reshape(*arr.shape[:-1], arr.shape[-1] * 8)[..., :count]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


_PACKERS = {WeightFormat.T2: (pack_t2, unpack_t2),
            WeightFormat.T5: (pack_t5, unpack_t5),
            WeightFormat.B1: (pack_b1, unpack_b1)}


def pack(weights, fmt):
    """Pack ``weights`` along the last axis in format ``fmt`` (a :class:`WeightFormat` or name)."""
    return _PACKERS[WeightFormat(fmt)][0](weights)


def unpack(packed, fmt, count):
    """Unpack ``count`` weights per row in format ``fmt``."""
    return _PACKERS[WeightFormat(fmt)][1](packed, count)


def weight_shape(mode):
    """Amaranth shape of one weight as the PE consumes it: a t2 code or a sign bit."""
    return unsigned(2) if WeightMode(mode) is WeightMode.TERNARY else unsigned(1)


def weight_vector_layout(mode, lanes):
    """Layout of one PE's weight vector: ``lanes`` weights, lane 0 in the low bits."""
    return data.ArrayLayout(weight_shape(mode), lanes)


def weight_codes(weights, mode):
    """The per-lane codes the PE consumes for integer ``weights`` (t2 code or sign bit)."""
    w = check_weights(weights, mode)
    if WeightMode(mode) is WeightMode.TERNARY:
        return t2_encode(w)
    return (w < 0).astype(np.uint8)

