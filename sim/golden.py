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
