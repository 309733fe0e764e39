"""``lpu demo``: a random matrix-vector product through a simulated PE array."""

import time

import numpy as np

from lpu.hw.generate import build_array

from . import golden, pysim

__all__ = ["run_demo"]


def run_demo(*, lanes, pes, act_bits, weights, pipeline, max_k, negation, rows, cols, seed):
    """Generate the array, run ``W @ x`` through it in the Amaranth simulator, check it against
    the golden model, print the outcome and the cycle count. Returns the exit status."""
    array = build_array(lanes=lanes, pes=pes, act_bits=act_bits, weights=weights,
                        pipeline=pipeline, max_k=max_k, negation=negation)
    if cols > max_k:
        raise ValueError(f"Matrix columns ({cols}) exceed the array's maximum row length "
                         f"({max_k})")
    rng = np.random.default_rng(seed)
    lo, hi = golden.act_range(act_bits)
    w = rng.choice(array.mode.values, size=(rows, cols)).astype(np.int8)
    x = rng.integers(lo, hi + 1, size=cols)
    tiles = golden.tile_matvec(w, x, lanes=lanes, pes=pes, mode=array.mode)
    print(f"PE array: {pes} PEs x {lanes} lanes, int{act_bits} activations, "
          f"{array.mode.value} weights, pipeline {pipeline}, negation {negation}; "
          f"accumulators {array.acc_width} bits, latency {array.latency} cycles")
    print(f"matrix {rows} x {cols}: {len(tiles['act'])} tiles "
          f"({-(-rows // pes)} row blocks x {-(-cols // lanes)} tiles)")
    start = time.monotonic()
    out, cycles = pysim.run_array(array, tiles)
    seconds = time.monotonic() - start
    y = out.reshape(-1)[:rows]
    ref = golden.matvec(w, x, act_bits=act_bits, mode=array.mode)
    ok = np.array_equal(y, ref)
    print(f"check against golden model: {'PASS' if ok else 'FAIL'} "
          f"({rows} outputs, {'bit-exact' if ok else f'{np.count_nonzero(y != ref)} differ'})")
    print(f"cycles: {cycles} for {len(tiles['act'])} tiles "
          f"({len(tiles['act']) / cycles:.3f} tiles/cycle); "
          f"Amaranth simulator {cycles / seconds:,.0f} cycles/s")
    return 0 if ok else 1
