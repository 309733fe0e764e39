"""Golden model: vectorized NumPy integer reference for the PE, the PE array and the scale unit.

These functions define a correct result. Integer results of the hardware must equal them bit
for bit.

Group scales (fixed point)
--------------------------
For per-group scales (Bonsai's groups of 128, GGUF blocks of 256) the backend returns one exact
integer sum ``P[o, g, v]`` per output row ``o``, group ``g`` and activation vector ``v``. The
group scales ``S[o, g]`` are applied in fixed point, defined once by :func:`group_scales`:

- every row ``o`` has one exponent ``e[o]`` and each group a signed mantissa ``m[o, g]`` of
  :data:`SCALE_BITS` (16) bits, ``|m| <= 2**15 - 1``, with ``S ~= m * 2**e[o]``;
- ``e[o]`` is the smallest exponent for which the row's largest ``|S|`` still fits, and
  ``m = rint(S / 2**e)``;
- the fabric (the LPU's scale unit, :mod:`lpu.hw.scale`) forms
  ``acc[o, v] = sum_g m[o, g] * P[o, g, v]`` exactly (an integer multiply-accumulate:
  ``|acc| <= 2**15 * 128 * in_features``, since the groups partition the row), and
  ``y = acc * 2**e[o] / s[v]`` is the only inexact step, as for a per-tensor scale.

Error bound. Rounding the mantissa costs at most half a step, ``|S - m 2**e| <= 2**(e-1)``, and
the smallest exponent gives ``2**(e-1) <= peak[o] * 2**-15 / (1 - 2**-16)`` with
``peak[o] = max_g |S[o, g]|``. Hence, against the float result with exact scales,

    ``|y_fixed[o, v] - y_float[o, v]| <= 2**(e[o]-1) * sum_g |P[o, g, v]| / s[v]``
    ``                               <= 3.06e-5 * peak[o] * sum_g |P[o, g, v]| / s[v]``

(:func:`group_scale_error_bound`), i.e. a relative error of at most 2**-15 of the row's largest
scale per unit of ``sum |P| / s``, which is at most ``||x||_1 + in_features / (2 s)``. For fp16
scales (GGUF, Bonsai) the bound is rarely reached: an fp16 scale of at least 1/16 of its row's
peak (11 significant bits) is represented exactly.

A per-tensor scale is the special case of one group spanning the row: a ``(out, 1)`` scale matrix
(:func:`tensor_scales`), so every row still gets its own exponent and a mantissa in
``[2**14, 2**15)``, and the bound above holds with ``sum_g |P| = |P|``.
"""

from dataclasses import dataclass

import numpy as np

from lpu.hw.formats import WeightMode, check_weights

__all__ = ["pe_dot", "matvec", "group_matvec", "tile_matvec", "array_outputs", "act_range",
           "SCALE_BITS", "GroupScales", "group_scales", "tensor_scales", "apply_group_scales",
           "group_scale_error_bound", "scaled_matvec"]

#: Width of a signed scale mantissa (the scale unit's multiplier input).
SCALE_BITS = 16


def act_range(act_bits):
    """Smallest and largest signed activation of ``act_bits`` bits."""
    return -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1


def _check_acts(acts, act_bits):
    a = np.asarray(acts)
    if a.dtype.kind not in "iu":
        raise TypeError(f"Activations must be an integer array, not {a.dtype}")
    lo, hi = act_range(act_bits)
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"Activations must be in [{lo}, {hi}] for {act_bits}-bit activations")
    return a.astype(np.int64)


def pe_dot(acts, weights, *, act_bits=8, mode="ternary"):
    """Dot products along the last axis: what a PE emits for each input."""
    a = _check_acts(acts, act_bits)
    w = check_weights(weights, mode).astype(np.int64)
    return (a * w).sum(axis=-1)


def matvec(weights, acts, *, act_bits=8, mode="ternary"):
    """``W @ x`` for an M x K integer weight matrix and K (or K x V) activations."""
    a = _check_acts(acts, act_bits)
    w = check_weights(weights, mode).astype(np.int64)
    return w @ a


def group_matvec(weights, acts, group, *, act_bits=8, mode="ternary"):
    """One sum per group of ``group`` columns: ``(M, ceil(K / group), V)`` int64.

    ``acts`` is K or K x V (a 1-D ``acts`` gives ``(M, groups)``). ``group`` 0 is one group
    spanning the row. The last group may be partial; the missing columns count as zero.
    """
    a = _check_acts(acts, act_bits)
    w = check_weights(weights, mode).astype(np.int64)
    single = a.ndim == 1
    a = a[:, None] if single else a
    m, k = w.shape
    g = group or max(k, 1)
    groups = -(-k // g)
    wp = np.zeros((m, groups * g), dtype=np.int64)
    wp[:, :k] = w
    ap = np.zeros((groups * g, a.shape[1]), dtype=np.int64)
    ap[:k] = a
    out = np.einsum("mgk,gkv->mgv", wp.reshape(m, groups, g), ap.reshape(groups, g, -1))
    return out[..., 0] if single else out


def tile_matvec(weights, acts, *, lanes, pes, mode="ternary", group=None):
    """Cut ``W @ X`` into the tiles a :class:`PEArray` consumes.

    Rows are grouped in blocks of ``pes`` and columns in tiles of ``lanes``; the last block and
    tile are padded with the format's pad weight (0 ternary, +1 binary) and zero activations, so
    padding never changes a sum. Row blocks follow each other; within a block the tiles go from
    column 0 upward, and each tile is repeated for every activation vector (columns of ``X``,
    which is K or K x V). With ``group`` (a multiple of ``lanes``) every group of columns is
    framed on its own, so the array emits one sum per group.

    Returns
    -------
    dict
        ``act`` (T, N), ``weight`` (T, P, N), ``first`` (T,), ``last`` (T,), ``rows`` (M),
        and ``vector`` (T,) when V > 1.
    """
    mode = WeightMode(mode)
    w = check_weights(weights, mode)
    a = np.asarray(acts, dtype=np.int64)
    m, k = w.shape
    if a.ndim == 1:
        a = a[:, None]
        single = True
    else:
        single = a.shape[1] == 1
    if a.ndim != 2 or a.shape[0] != k:
        raise ValueError(f"Activations must have {k} rows, not shape {np.shape(acts)}")
    v = a.shape[1]
    pad_w = 0 if mode is WeightMode.TERNARY else 1
    mb = -(-m // pes)
    kt = -(-k // lanes)
    gt = kt if group is None else group // lanes
    wp = np.full((mb * pes, kt * lanes), pad_w, dtype=np.int8)
    wp[:m, :k] = w
    ap = np.zeros((kt * lanes, v), dtype=np.int64)
    ap[:k] = a
    weight = wp.reshape(mb, pes, kt, lanes).transpose(0, 2, 1, 3)      # (mb, kt, P, N)
    weight = np.repeat(weight[:, :, None], v, axis=2).reshape(mb * kt * v, pes, lanes)
    act = ap.reshape(kt, lanes, v).transpose(0, 2, 1)                   # (kt, v, N)
    act = np.tile(act.reshape(kt * v, lanes), (mb, 1))
    t = np.repeat(np.arange(kt), v)
    first = np.tile(t % gt == 0, mb)
    last = np.tile(((t + 1) % gt == 0) | (t == kt - 1), mb)
    tiles = {"act": act, "weight": weight, "first": first, "last": last, "rows": m}
    if not single:
        tiles["vector"] = np.tile(np.arange(v), mb * kt)
    return tiles


def array_outputs(act, weight, first, last, vector=None, *, act_bits=8, mode="ternary"):
    """What a :class:`PEArray` emits for a tile sequence: one row of P sums per ``last`` tile.

    Each vector index (``vector``; all 0 when None) accumulates on its own. Tiles after a
    vector's final ``last`` are still being accumulated and produce nothing. A tile without
    ``first`` adds to the running sums; the sums restart at every ``first`` tile and at the tile
    after a ``last`` one (and from zero at the start of the sequence).
    """
    act = _check_acts(act, act_bits)
    w = check_weights(weight, mode).astype(np.int64)
    first = np.asarray(first, dtype=bool)
    last = np.asarray(last, dtype=bool)
    vector = np.zeros(len(first), dtype=np.int64) if vector is None else np.asarray(vector)
    dots = np.einsum("tn,tpn->tp", act, w)
    out = np.zeros((int(np.count_nonzero(last)), dots.shape[1]), dtype=np.int64)
    order = np.cumsum(last) - 1          # output slot of each last tile
    for v in np.unique(vector):
        idx = np.flatnonzero(vector == v)
        f, la, d = first[idx], last[idx], dots[idx]
        # Segment sums: a segment starts at every first tile and at the tile after each last.
        start = f.copy()
        start[0] = True
        start[1:] |= la[:-1]
        seg = np.cumsum(start) - 1
        sums = np.zeros((seg[-1] + 1, d.shape[1]), dtype=np.int64)
        np.add.at(sums, seg, d)
        out[order[idx[la]]] = sums[seg[la]]
    return out


@dataclass(frozen=True)
class GroupScales:
    """Fixed-point group scales: ``S[o, g] ~= mantissa[o, g] * 2**exponent[o]``.

    Attributes
    ----------
    mantissa : np.ndarray
        int32, ``(out, groups)``, ``|mantissa| <= 2**(bits-1) - 1``.
    exponent : np.ndarray
        int32, ``(out,)``: one exponent per output row.
    bits : int
        Mantissa width (signed).
    """

    mantissa: np.ndarray
    exponent: np.ndarray
    bits: int = SCALE_BITS

    def value(self):
        """The scales the fixed-point numbers stand for, float64 ``(out, groups)``."""
        return np.ldexp(self.mantissa.astype(np.float64), self.exponent[:, None])


def group_scales(scale, *, bits=SCALE_BITS):
    """Convert float group scales to the fabric's fixed point (see the module docstring).

    Parameters
    ----------
    scale : array_like
        float, ``(out, groups)``.
    bits : int
        Signed mantissa width, 2..32.

    Returns
    -------
    GroupScales

    Raises
    ------
    ValueError
        If ``scale`` is not 2-D or not finite, or ``bits`` is out of range.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ValueError(f"Scale mantissa width must be an integer in 2..32, not {bits!r}")
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"Group scales must be 2-D (out x groups), not shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("Group scales must be finite")
    top = (1 << (bits - 1)) - 1
    peak = np.abs(s).max(axis=1) if s.shape[1] else np.zeros(s.shape[0])
    # peak = f * 2**p with f in [0.5, 1): with e = p - (bits - 1) the peak's mantissa lies in
    # [2**(bits-2), 2**(bits-1)), the largest range that fits; one exponent less would not. Only
    # when it rounds up to 2**(bits-1) does it need one exponent more. frexp and ldexp are exact.
    _, p = np.frexp(peak)
    e = np.where(peak > 0, p - (bits - 1), 0)
    e = e + (np.rint(np.ldexp(peak, -e)) > top)
    m = np.rint(np.ldexp(s, -e[:, None]))
    return GroupScales(m.astype(np.int32), e.astype(np.int32), bits)


def tensor_scales(scale, rows, *, bits=SCALE_BITS):
    """A per-tensor scale in the same fixed point: :func:`group_scales` of an ``(rows, 1)``
    matrix holding ``scale`` (one group spanning each row)."""
    s = np.asarray(scale, dtype=np.float64)
    if s.shape != ():
        raise ValueError(f"A per-tensor scale must be a scalar, not shape {s.shape}")
    return group_scales(np.full((rows, 1), s), bits=bits)


def apply_group_scales(sums, gs):
    """The fabric's fixed-point scale step: ``acc[o, v] = sum_g m[o, g] * P[o, g, v]``, exact.

    Parameters
    ----------
    sums : np.ndarray
        Integer group sums ``P``, ``(out, groups, V)``.
    gs : GroupScales

    Returns
    -------
    np.ndarray
        int64 ``(out, V)``; the output is ``acc * 2**gs.exponent[:, None] / s``.
    """
    p = np.asarray(sums, dtype=np.int64)
    return np.einsum("og,ogv->ov", gs.mantissa.astype(np.int64), p)


def group_scale_error_bound(sums, s, gs):
    """Bound on ``|y_fixed - y_float|`` of a group-scaled BitLinear (module docstring).

    Parameters
    ----------
    sums : np.ndarray
        Integer group sums ``(out, groups, V)``.
    s : array_like
        Activation factors ``(V,)``.
    gs : GroupScales

    Returns
    -------
    np.ndarray
        float64 ``(out, V)``: ``2**(e[o]-1) * sum_g |P[o, g, v]| / s[v]``.
    """
    total = np.abs(np.asarray(sums, dtype=np.int64)).sum(axis=1).astype(np.float64)
    return np.ldexp(total, gs.exponent[:, None] - 1) / np.asarray(s, dtype=np.float64)


def scaled_matvec(weights, acts, mantissa, *, group=0, act_bits=8, mode="ternary"):
    """What the LPU's scale unit emits: ``acc[o, v] = sum_g mantissa[o, g] * P[o, g, v]``.

    ``P`` is :func:`group_matvec` (``group`` 0: one group per row); ``mantissa`` is any integer
    ``(M, groups)`` array (the hardware takes signed 16-bit values). Returns int64 ``(M, V)``
    (``(M,)`` for 1-D ``acts``).
    """
    sums = group_matvec(weights, acts, group, act_bits=act_bits, mode=mode)
    m = np.asarray(mantissa, dtype=np.int64)
    if sums.ndim == 2:
        return np.einsum("og,og->o", m, sums)
    return np.einsum("og,ogv->ov", m, sums)
