"""``lpu bench stream``: one matrix through the streamer and a memory model, natively simulated,
against the cycle model."""

import numpy as np

from lpu.host import image
from lpu.host.cycle_model import predict_cycles
from lpu.hw.formats import WeightFormat
from lpu.hw.streamer import StreamError, WeightStreamer

from . import golden
from .memory_models import memory_timing
from .native import NativeStreamerSim
from .system import StreamerSystem

__all__ = ["run_stream_bench", "memory_bits_per_cycle", "STREAM_SUITE"]

#: The recorded runs (``lpu bench stream --suite --record``): the two targets first.
STREAM_SUITE = [
    # memory-bound: an 8-bit port feeding a 64 x 4 array, base-3 weights
    dict(fmt="t5", rows=1024, cols=1024, mem="bram", lanes=64, pes=4, word_bits=8),
    # compute-bound: a 128-bit on-chip RAM feeding a 16 x 4 array (one tile per word)
    dict(fmt="t2", rows=1024, cols=1024, mem="bram", lanes=16, pes=4, word_bits=128),
    dict(fmt="t5", rows=1024, cols=1024, mem="bram", lanes=16, pes=4, word_bits=128),
    dict(fmt="t5", rows=1024, cols=1024, mem="qspi", lanes=16, pes=4, word_bits=8,
         max_burst=256),
    dict(fmt="t5", rows=1024, cols=1024, mem="sdram", lanes=16, pes=4, word_bits=32),
    dict(fmt="b1", rows=1024, cols=1024, mem="sdram", lanes=16, pes=4, word_bits=32,
         stall=0.1),
    dict(fmt="t2", rows=512, cols=1024, mem="bram", lanes=16, pes=4, word_bits=32, vectors=4),
]


def memory_bits_per_cycle(mem, word_bits):
    """Peak bits per cycle the memory can deliver: a word per cycle, QSPI 4 bits per clock."""
    return 4 if mem == "qspi" else word_bits


def run_stream_bench(*, fmt, rows, cols, mem, lanes=64, pes=4, word_bits=32, max_burst=32,
                     vectors=1, stall=0.0, seed=1, pipeline=1):
    fmt = WeightFormat(fmt)
    rng = np.random.default_rng(seed)
    words_needed = image.image_word_count(rows, cols, fmt, lanes=lanes, pes=pes,
                                          word_bits=word_bits)
    addr_width = max(1, (words_needed - 1).bit_length())
    st = WeightStreamer(lanes=lanes, pes=pes, weights=fmt.mode.value, formats=[fmt],
                        word_bits=word_bits, addr_width=addr_width, max_k=max(cols, lanes),
                        max_vectors=vectors, max_burst=max_burst, pipeline=pipeline)
    timing = memory_timing(mem, word_bits, stall_prob=stall, seed=int(seed) & 0xFFFF or 1)
    w = rng.choice(fmt.mode.values, size=(rows, cols)).astype(np.int8)
    lo, hi = golden.act_range(st.act_bits)
    x = rng.integers(lo, hi + 1, size=(cols, vectors))
    img = image.weight_image(w, fmt, lanes=lanes, pes=pes, word_bits=word_bits)
    sim = NativeStreamerSim(StreamerSystem(st, timing=timing))
    sim.load(image.image_words(img, word_bits))
    sim.write_acts(image.activation_entries(x, lanes=lanes, act_tiles=st.act_tiles))
    desc = image.descriptor(st, base=0, rows=rows, cols=cols, fmt=fmt, vectors=vectors)
    res = sim.run(desc)
    if res["error"] != StreamError.NONE:
        raise RuntimeError(f"Streamer reported {res['error'].name}")
    y = res["outputs"].reshape(-1, vectors, pes).transpose(0, 2, 1).reshape(-1, vectors)[:rows]
    exact = bool(np.array_equal(y, golden.matvec(w, x, act_bits=st.act_bits, mode=fmt.mode)))
    pred = predict_cycles(st, timing, rows=rows, cols=cols, fmt=fmt, vectors=vectors)
    cycles = res["cycles"]
    weight_bits = rows * cols * fmt.bits_per_weight
    return {
        "format": fmt.value, "rows": rows, "cols": cols, "mem": mem, "lanes": lanes,
        "pes": pes, "word_bits": word_bits, "max_burst": max_burst, "vectors": vectors,
        "stall": stall,
        "cycles": cycles,
        "model_cycles": pred.cycles,
        "model_error": round((cycles - pred.cycles) / pred.cycles, 5),
        "bound": pred.bound,
        "bandwidth_utilization": round(weight_bits /
                                       (cycles * memory_bits_per_cycle(mem, word_bits)), 5),
        "array_utilization": round(res["perf"]["tiles"] / cycles, 5),
        "words_read": res["perf"]["words_read"],
        "mem_stall_cycles": res["perf"]["mem_stall"],
        "exact": exact,
        "sim_cycles_per_second": round(cycles / res["seconds"]) if res["seconds"] else None,
        "build_seconds": round(sim.build_seconds, 1),
    }
