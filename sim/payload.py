"""Bit packing of stream payloads for benches that drive the flat Verilog ports.

An exported component has one flat port per stream payload (``i_stream__payload``,
``o_stream__payload``). The bit positions inside it are those of the payload's
:mod:`amaranth.lib.data` layout: the members of a ``StructLayout`` follow each other from bit 0 in
declaration order, and element 0 of an ``ArrayLayout`` occupies the lowest bits. Nothing here
recomputes those offsets: a :class:`PayloadCodec` reads them from the layout itself (or from
the JSON form of a codec made that way), so a change of the layout cannot leave the bench
packing bits the old way.

Packing and unpacking work on whole batches with NumPy; only the final conversion between bit
rows and Python integers is per item.
"""

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

from lpu.hw.formats import weight_codes

__all__ = ["PayloadField", "PayloadCodec", "pack_tiles", "unpack_sums", "tile_payloads"]

# Elements are converted through int64.
_MAX_ELEM_WIDTH = 63


@dataclass(frozen=True)
class PayloadField:
    """One member of a payload: ``prod(dims)`` elements of ``width`` bits from ``offset``.

    ``dims`` are the lengths of nested ``ArrayLayout`` levels, outermost first (empty for a
    scalar); elements are stored in row-major order of those dimensions, which is the order
    nested array layouts place them in.
    """

    name: str
    offset: int
    width: int
    signed: bool
    dims: tuple

    @property
    def count(self):
        return int(np.prod(self.dims, dtype=np.int64))

    @property
    def size(self):
        return self.count * self.width


def _field(name, offset, shape):
    dims = []
    while isinstance(shape, data.ArrayLayout):
        dims.append(shape.length)
        shape = shape.elem_shape
    if isinstance(shape, data.Layout):
        raise TypeError(f"Payload member {name!r} has a nested {type(shape).__name__}; only "
                        f"arrays of plain shapes are supported")
    leaf = Shape.cast(shape)
    if leaf.width > _MAX_ELEM_WIDTH:
        raise ValueError(f"Payload member {name!r} has {leaf.width}-bit elements; at most "
                         f"{_MAX_ELEM_WIDTH} are supported")
    return PayloadField(name, offset, leaf.width, leaf.signed, tuple(dims))


class PayloadCodec:
    """Packs named arrays into payload integers and back, following one layout.

    Parameters
    ----------
    fields : iterable of PayloadField
    width : int
        Total payload width in bits.

    Use :meth:`from_layout` to make one from an Amaranth shape: a ``StructLayout`` gives one
    field per member; any other shape (an ``ArrayLayout``, ``signed(n)``) gives a single field
    named ``"value"``.
    """

    def __init__(self, fields, width):
        self._fields = {f.name: f for f in fields}
        self._width = width
        for f in self._fields.values():
            if f.offset < 0 or f.offset + f.size > width:
                raise ValueError(f"Payload field {f.name!r} (bits {f.offset}..."
                                 f"{f.offset + f.size - 1}) does not fit in {width} bits")

    @classmethod
    def from_layout(cls, shape):
        if isinstance(shape, data.StructLayout):
            fields = [_field(name, fld.offset, fld.shape) for name, fld in shape]
            return cls(fields, shape.size)
        width = shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width
        return cls([_field("value", 0, shape)], width)

    @property
    def width(self):
        return self._width

    @property
    def fields(self):
        return dict(self._fields)

    def __getitem__(self, name):
        return self._fields[name]

    def __contains__(self, name):
        return name in self._fields

    def to_dict(self):
        """JSON-able form, read back by :meth:`from_dict` (e.g. inside a simulator process)."""
        return {"width": self._width,
                "fields": [{"name": f.name, "offset": f.offset, "width": f.width,
                            "signed": f.signed, "dims": list(f.dims)}
                           for f in self._fields.values()]}

    @classmethod
    def from_dict(cls, d):
        return cls([PayloadField(f["name"], f["offset"], f["width"], f["signed"],
                                 tuple(f["dims"])) for f in d["fields"]], d["width"])

    def pack(self, **values):
        """Payload integers for a batch: every field as an array of shape ``(T, *dims)``.

        Raises
        ------
        ValueError
            If a field is missing or unknown, the batch sizes differ, or a value does not fit
            its field.
        """
        missing = [n for n in self._fields if n not in values]
        unknown = [n for n in values if n not in self._fields]
        if missing or unknown:
            raise ValueError(f"Payload fields must be exactly {sorted(self._fields)}, not "
                             f"{sorted(values)}")
        batch = None
        bits = None
        for name, f in self._fields.items():
            v = np.asarray(values[name])
            if v.dtype.kind not in "iub":
                raise TypeError(f"Payload field {name!r} must be an integer array, not {v.dtype}")
            v = v.astype(np.int64)
            if v.ndim != len(f.dims) + 1 or v.shape[1:] != f.dims:
                raise ValueError(f"Payload field {name!r} must have shape (T, *{f.dims}), not "
                                 f"{v.shape}")
            if batch is None:
                batch = v.shape[0]
                bits = np.zeros((batch, self._width), dtype=np.uint8)
            elif v.shape[0] != batch:
                raise ValueError(f"Payload field {name!r} has {v.shape[0]} items, not {batch}")
            lo, hi = ((-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if f.signed
                      else (0, (1 << f.width) - 1))
            if v.size and (v.min() < lo or v.max() > hi):
                raise ValueError(f"Payload field {name!r} must be in [{lo}, {hi}]")
            # Two's complement: masking a negative int64 keeps its low bits.
            u = v.reshape(batch, f.count) & ((1 << f.width) - 1)
            b = (u[..., None] >> np.arange(f.width, dtype=np.int64)) & 1
            bits[:, f.offset:f.offset + f.size] = b.reshape(batch, f.size)
        if batch is None:
            return []
        packed = np.packbits(bits, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def unpack(self, payloads):
        """Fields of a batch of payload integers, each an int64 array ``(T, *dims)``."""
        nbytes = (self._width + 7) // 8
        ints = [int(p) for p in payloads]
        for p in ints:
            if p < 0 or p >> self._width:
                raise ValueError(f"Payload {p:#x} does not fit in {self._width} bits")
        raw = np.frombuffer(b"".join(p.to_bytes(nbytes, "little") for p in ints),
                            dtype=np.uint8).reshape(len(ints), nbytes)
        bits = np.unpackbits(raw, axis=1, bitorder="little")
        out = {}
        for name, f in self._fields.items():
            b = bits[:, f.offset:f.offset + f.size].reshape(len(ints), f.count, f.width)
            v = (b.astype(np.int64) << np.arange(f.width, dtype=np.int64)).sum(axis=-1)
            if f.signed:
                v = np.where(v >> (f.width - 1), v - (1 << f.width), v)
            out[name] = v.reshape(len(ints), *f.dims)
        return out


def pack_tiles(codec, act, weight, first=None, last=None, *, mode):
    """``i_stream__payload`` integers for a tile sequence.

    ``act`` is ``(T, N)`` signed activations and ``weight`` the integer weights, ``(T, P, N)``
    for a :class:`~lpu.hw.array.PEArray` or ``(T, N)`` for a :class:`~lpu.hw.pe.TernaryPE`;
    they become t2 codes or sign bits with :func:`lpu.hw.formats.weight_codes`. ``first`` and
    ``last`` (``(T,)`` booleans) are required exactly when the layout has them.
    """
    values = {"act": act, "weight": weight_codes(weight, mode)}
    for name, v in (("first", first), ("last", last)):
        if v is not None:
            values[name] = np.asarray(v, dtype=np.int64)
    return codec.pack(**values)


def tile_payloads(codec, tiles, *, mode):
    """:func:`pack_tiles` for the dict :func:`lpu.sim.golden.tile_matvec` returns."""
    if "vector" in tiles or "vector" in codec:
        raise ValueError("Tiles with a vector index are not supported")
    return pack_tiles(codec, tiles["act"], tiles["weight"], tiles["first"], tiles["last"],
                      mode=mode)


def unpack_sums(codec, payloads):
    """``o_stream__payload`` integers as an int64 array: ``(R, P)`` sums of an array, ``(R,)``
    sums of a PE."""
    return codec.unpack(payloads)["value"]
