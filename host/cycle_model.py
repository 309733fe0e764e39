"""Analytical cycle model of the weight streamer: what the host plans with and benchmarks check.

A matrix job takes

    cycles = SETUP + FILL + max(compute, memory) + DRAIN

``compute``: the array takes one tile per cycle, each tile once per activation vector:
``row_blocks * tiles_per_row * vectors``.

``memory``: cycles for the memory to deliver the image's words in bursts of at most
``max_burst`` words, each burst costing the memory's per-burst overhead plus ``cycles_per_word``
per word, plus a row miss for every memory row the image touches, stretched by the share of
time refresh takes. The prefetch FIFO holds several bursts, so while it has room the memory
never waits on the array and the array waits on memory only when memory is the bound.

``FILL``: cycles from the first request to the first tile at the array when memory is idle
(request, memory read, FIFO, gearbox); ``DRAIN``: from the last tile to the last result (the
array's latency plus the output register). ``SETUP``: the streamer's descriptor checks and sizes.
"""

from dataclasses import dataclass

from lpu.hw.formats import WeightFormat
from lpu.hw.streamer import SETUP_CYCLES, TILE_STAGES

from .image import image_word_count

__all__ = ["CyclePrediction", "predict_cycles", "fill_cycles", "FILL_CYCLES"]

#: request -> memory word -> FIFO (write, then its output register) -> gearbox -> tile valid.
FILL_CYCLES = 4


def fill_cycles(streamer):
    """FILL for ``streamer``: a streamer with registered RAM outputs has its prefetch FIFO's
    output queue (:class:`~lpu.hw.bram.RegisteredFIFO`) between the FIFO and the decoder, two
    cycles more."""
    return FILL_CYCLES + 2 * streamer.registered_ram


@dataclass(frozen=True)
class CyclePrediction:
    cycles: int
    compute_cycles: int
    memory_cycles: int
    words: int
    tiles: int
    bound: str


def memory_cycles(words, *, timing, max_burst, base=0):
    """Cycles a memory of ``timing`` needs to deliver ``words`` words from ``base``."""
    bursts = -(-words // max_burst)
    cycles = bursts * timing.burst_overhead + words * timing.cycles_per_word
    if timing.row_words:
        first = base // timing.row_words
        last = (base + words - 1) // timing.row_words
        cycles += (last - first + 1) * timing.row_miss
    if timing.refresh_interval:
        cycles = cycles * timing.refresh_interval / (timing.refresh_interval -
                                                     timing.refresh_cycles)
    if timing.stall_prob:
        cycles = cycles / (1 - timing.stall_prob)
    return int(round(cycles))


def predict_cycles(streamer, timing, *, rows, cols, fmt, vectors=1, base=0):
    """Predicted cycles for one job on ``streamer`` with memory ``timing``."""
    fmt = WeightFormat(fmt)
    mb, kt = -(-rows // streamer.pes), -(-cols // streamer.lanes)
    tiles = mb * kt
    compute = tiles * vectors
    words = image_word_count(rows, cols, fmt, lanes=streamer.lanes, pes=streamer.pes,
                             word_bits=streamer.word_bits)
    memory = memory_cycles(words, timing=timing, max_burst=streamer.max_burst, base=base)
    # (a streamer with registered RAM outputs has TILE_STAGES registers in front of the array,
    # and a queue of results behind it)
    drain = streamer.array.latency + 1 + (TILE_STAGES + 1) * streamer.registered_ram
    fill = fill_cycles(streamer)
    total = SETUP_CYCLES + fill + max(compute, memory) + drain
    return CyclePrediction(cycles=total, compute_cycles=compute, memory_cycles=memory,
                           words=words, tiles=tiles,
                           bound="memory" if memory > compute else "compute")
