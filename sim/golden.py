"""Golden model: vectorized NumPy integer reference for the PE and the PE array.

These functions define a correct result. Integer results of the hardware must equal them bit
for bit.
"""

import numpy as np
from lpu.hw.formats import WeightMode, check_weights

__all__ = ["pe_dot", "matvec", "tile_matvec", "array_outputs", "act_range"]


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


def tile_matvec(weights, acts, *, lanes, pes, mode="ternary"):
    """Cut ``W @ x`` into the tiles a :class:`PEArray` consumes.

    Rows are grouped in blocks of ``pes`` and columns in tiles of ``lanes``; the last block and
    tile are padded with the format's pad weight (0 ternary, +1 binary) and zero activations, so
    padding never changes a sum. Row blocks follow each other; within a block the tiles go from
    column 0 upward.

    Returns
    -------
    dict
        ``act`` (T, N), ``weight`` (T, P, N), ``first`` (T,), ``last`` (T,), ``rows`` (M).
    """
    mode = WeightMode(mode)
    w = check_weights(weights, mode)
    a = np.asarray(acts, dtype=np.int64)
    m, k = w.shape
    if a.shape != (k,):
        raise ValueError(f"Activation vector must have {k} elements, not shape {a.shape}")
    pad_w = 0 if mode is WeightMode.TERNARY else 1
    mb = -(-m // pes)
    kt = -(-k // lanes)
    wp = np.full((mb * pes, kt * lanes), pad_w, dtype=np.int8)
    wp[:m, :k] = w
    ap = np.zeros(kt * lanes, dtype=np.int64)
    ap[:k] = a
    weight = wp.reshape(mb, pes, kt, lanes).transpose(0, 2, 1, 3).reshape(mb * kt, pes, lanes)
    act = np.tile(ap.reshape(kt, lanes), (mb, 1))
    first = np.tile(np.arange(kt) == 0, mb)
    last = np.tile(np.arange(kt) == kt - 1, mb)
    return {"act": act, "weight": weight, "first": first, "last": last, "rows": m}


def array_outputs(act, weight, first, last, *, act_bits=8, mode="ternary"):
    """What a :class:`PEArray` emits for a tile sequence: one row of P sums per ``last`` tile.

    Tiles after the final ``last`` are still being accumulated and produce nothing. A tile
    without ``first`` adds to the running sums; the sums start from the first tile of the
    sequence even when it lacks ``first`` (the accumulators reset to zero).
    """
    act = _check_acts(act, act_bits)
    w = check_weights(weight, mode).astype(np.int64)
    first = np.asarray(first, dtype=bool)
    last = np.asarray(last, dtype=bool)
    dots = np.einsum("tn,tpn->tp", act, w)
    # Segment sums: a segment starts at every first tile and at the tile after each last.
    start = first.copy()
    if len(start):
        start[0] = True
    start[1:] |= last[:-1]
    seg = np.cumsum(start) - 1
    sums = np.zeros((seg[-1] + 1 if len(seg) else 0, dots.shape[1]), dtype=np.int64)
    np.add.at(sums, seg, dots)
    return sums[seg[last]]
