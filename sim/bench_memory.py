"""``lpu bench memory``: words per cycle of the boards' weight memories, measured in the Amaranth
simulator.

Two read patterns through each memory (:mod:`lpu.boards.memory`; the flash through
:class:`~lpu.sim.memory_models.SPIFlashModel`), the words taken as soon as offered:

``sequential``
    bursts of ``max_burst`` words one after another, as the streamer reads a job's weights;
``scattered``
    bursts of ``max_burst`` words at random addresses (every flash burst sends a new command).

and one streamer job (a ``rows x cols`` t2 matrix on a 16 x 2 array) with its weights in the
memory: the words it read and the streamer's busy cycles.
"""

import numpy as np
from amaranth.sim import Simulator

from lpu.boards.memory import BurstRAM, SPRAMBurstRAM
from lpu.host import image
from lpu.hw.streamer import StreamError, WeightStreamer, mem_request_layout

from . import golden, pysim
from .memory_models import SimulatedFlash
from .system import StreamerSystem

__all__ = ["MEMORY_SUITE", "run_memory_bench"]

#: The recorded rows (``lpu bench memory --record``).
MEMORY_SUITE = [dict(memory="bram"), dict(memory="spram"), dict(memory="flash", width=1),
                dict(memory="flash", width=4)]


def _memory(memory, width, *, words, word_bits, request_layout, init=b""):
    if memory == "flash":
        return SimulatedFlash(words=words, word_bits=word_bits, request_layout=request_layout,
                              image=init or bytes(word_bits // 8), width=width)
    cls = {"bram": BurstRAM, "spram": SPRAMBurstRAM}.get(memory)
    if cls is None:
        raise ValueError(f"Memory must be bram, spram or flash, not {memory!r}")
    return cls(words=words, word_bits=word_bits, request_layout=request_layout)


async def _write_words(ctx, wr, words):
    """Words 0, 1, ... of a memory through its write port ``wr``."""
    for a, w in enumerate(words):
        ctx.set(wr.payload, {"addr": a, "data": w})
        ctx.set(wr.valid, 1)
        await ctx.tick().until(wr.ready)
    ctx.set(wr.valid, 0)


def _bursts_cycles(dut, bursts, init_words):
    """Cycles from the first request to the last word taken, and the words read."""
    out = {"words": []}

    async def writer(ctx):
        await _write_words(ctx, dut.wr, init_words)
        out["start"] = True
        for addr, n in bursts:
            ctx.set(dut.req.payload, {"addr": addr, "len": n})
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
        ctx.set(dut.req.valid, 0)

    async def sink(ctx):
        total = sum(n for _, n in bursts)
        ctx.set(dut.resp.ready, 1)
        cycles = 0
        while len(out["words"]) < total:
            _, _, valid, payload = await ctx.tick().sample(dut.resp.valid, dut.resp.payload)
            if out.get("start"):
                cycles += 1
            if valid:
                out["words"].append(int(payload))
        out["cycles"] = cycles

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(writer, background=True)
    sim.add_testbench(sink)
    sim.run()
    return out["cycles"], out["words"]


def run_memory_bench(*, memory, width=1, words=256, max_burst=8, rows=64, cols=64, seed=1):
    """Measure ``memory`` (``bram``, ``spram``, ``flash`` with ``width`` data lines): a dict
    of words per cycle for each read pattern and the streamer job's figures; ``exact`` says
    every word read and every job output was right."""
    rng = np.random.default_rng(seed)
    word_bits = 32
    layout = mem_request_layout(max(1, (words - 1).bit_length()), max_burst)
    data = rng.integers(0, 256, size=4 * words, dtype=np.uint8)
    ref = image.image_words(data, word_bits)
    init = data.tobytes() if memory == "flash" else b""
    row = {"memory": memory, "width": width if memory == "flash" else None,
           "word_bits": word_bits, "max_burst": max_burst}
    exact = True
    patterns = {
        "sequential": [(a, max_burst) for a in range(0, words, max_burst)],
        "scattered": [(int(a), max_burst) for a in
                      rng.integers(0, words - max_burst + 1, size=words // max_burst)],
    }
    for name, bursts in patterns.items():
        dut = _memory(memory, width, words=words, word_bits=word_bits, request_layout=layout,
                      init=init)
        cycles, got = _bursts_cycles(dut, bursts, [] if memory == "flash" else ref)
        exact &= got == [ref[a] for addr, n in bursts for a in range(addr, addr + n)]
        n = sum(n for _, n in bursts)
        row[name] = {"words": n, "cycles": cycles, "words_per_cycle": round(n / cycles, 4)}

    # one job with its weights in the memory
    st = WeightStreamer(lanes=16, pes=2, word_bits=word_bits, addr_width=12, max_k=cols,
                        max_burst=max_burst)
    w = rng.integers(-1, 2, size=(rows, cols)).astype(np.int8)
    x = rng.integers(-128, 128, size=(cols, 1))
    img = image.weight_image(w, "t2", lanes=st.lanes, pes=st.pes, word_bits=word_bits)
    res = _job(memory, width, st, img, rows, cols, x)
    exact &= res["error"] == StreamError.NONE and np.array_equal(
        res["outputs"].reshape(-1)[:rows], golden.matvec(w, x[:, 0]))
    row["job"] = {"rows": rows, "cols": cols, "format": "t2", "lanes": st.lanes, "pes": st.pes,
                  "words_read": res["perf"]["words_read"], "cycles": res["cycles"],
                  "mem_stall": res["perf"]["mem_stall"],
                  "words_per_cycle": round(res["perf"]["words_read"] / res["cycles"], 4)}
    row["exact"] = bool(exact)
    return row


def _job(memory, width, st, img, rows, cols, x):
    """The job with its weight image ``img`` in ``memory``: programmed into the flash model,
    or written into a RAM through its write port before the descriptor is sent."""
    flash = memory == "flash"
    mem = _memory(memory, width, words=st.mem_words, word_bits=st.word_bits,
                  request_layout=mem_request_layout(st.addr_width, st.max_burst),
                  init=img.tobytes() if flash else b"")

    async def load(ctx):
        await _write_words(ctx, mem.wr, image.image_words(img, st.word_bits))

    return pysim.run_streamer(StreamerSystem(st, memory=mem),
                              image.descriptor(st, base=0, rows=rows, cols=cols, fmt="t2"),
                              image.activation_entries(x, lanes=st.lanes, act_tiles=st.act_tiles),
                              setup=None if flash else load)
