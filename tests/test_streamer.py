import numpy as np
import pytest
from amaranth.sim import Simulator
from conftest import env_int

from lpu.host import image
from lpu.host.cycle_model import fill_cycles, predict_cycles
from lpu.hw.decoder import WeightDecoder
from lpu.hw.formats import FormatCode, WeightFormat, pack
from lpu.hw.gearbox import TileGearbox
from lpu.hw.streamer import SETUP_CYCLES, StreamError, WeightStreamer
from lpu.sim import golden, pysim
from lpu.sim.memory_models import memory_timing
from lpu.sim.system import StreamerSystem


def _job(rng, st, *, rows, cols, fmt, vectors=1, group=0, mem="bram", stall=0.0,
         ready_prob=1.0, base=0):
    fmt = WeightFormat(fmt)
    w = rng.choice(fmt.mode.values, size=(rows, cols)).astype(np.int8)
    lo, hi = golden.act_range(st.act_bits)
    x = rng.integers(lo, hi + 1, size=(cols, vectors))
    x[0, 0] = lo
    img = image.weight_image(w, fmt, lanes=st.lanes, pes=st.pes, word_bits=st.word_bits)
    words = [0] * base + image.image_words(img, st.word_bits)
    system = StreamerSystem(st, timing=memory_timing(mem, st.word_bits, stall_prob=stall,
                                                     seed=int(rng.integers(1, 1 << 16))),
                            init=words)
    desc = image.descriptor(st, base=base, rows=rows, cols=cols, fmt=fmt, group=group,
                            vectors=vectors)
    res = pysim.run_streamer(system, desc, image.activation_entries(
        x, lanes=st.lanes, act_tiles=st.act_tiles), seed=int(rng.integers(1 << 31)),
        ready_prob=ready_prob)
    # the golden model computes from the same image
    w_img = image.read_image(img, fmt, rows, cols, lanes=st.lanes, pes=st.pes)
    assert np.array_equal(w_img, w)
    tiles = golden.tile_matvec(w_img, x, lanes=st.lanes, pes=st.pes, mode=fmt.mode,
                               group=group or None)
    ref = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"], tiles["last"],
                               tiles.get("vector"), act_bits=st.act_bits, mode=fmt.mode)
    return res, ref, w, x


@pytest.mark.parametrize("fmt, word_bits, lanes, pes, rows, cols, mem", [
    ("t2", 8, 4, 2, 5, 13, "bram"),
    ("t5", 8, 4, 2, 7, 11, "qspi"),
    ("t5", 32, 3, 3, 4, 2, "sdram"),          # K smaller than N, odd N and P
    ("t2", 64, 5, 1, 3, 17, "bram"),
    ("b1", 16, 8, 2, 3, 20, "sdram"),
    ("b1", 8, 3, 4, 9, 7, "qspi"),
])
@pytest.mark.parametrize("registered_ram", [False, True])
def test_streamer_matvec(rng, fmt, word_bits, lanes, pes, rows, cols, mem, registered_ram):
    fmts = ["b1"] if fmt == "b1" else ["t2", "t5"]
    st = WeightStreamer(lanes=lanes, pes=pes, weights=WeightFormat(fmt).mode.value,
                        formats=fmts, word_bits=word_bits, addr_width=10, max_k=32,
                        max_burst=4, registered_ram=registered_ram)
    res, ref, w, x = _job(rng, st, rows=rows, cols=cols, fmt=fmt, mem=mem, stall=0.3,
                          ready_prob=0.6)
    assert res["error"] == StreamError.NONE
    assert np.array_equal(res["outputs"], ref)
    y = res["outputs"].reshape(-1)[:rows]
    assert np.array_equal(y, golden.matvec(w, x[:, 0], mode=WeightFormat(fmt).mode))
    assert res["perf"]["tiles"] == len(ref) * -(-cols // lanes)


@pytest.mark.parametrize("vectors, group, registered_ram", [
    (3, 0, False), (2, 8, False), (1, 4, False), (3, 8, True), (1, 0, True)])
def test_streamer_vectors_and_groups(rng, vectors, group, registered_ram):
    st = WeightStreamer(lanes=4, pes=2, word_bits=16, addr_width=10, max_k=32, max_vectors=4,
                        max_burst=8, pipeline=2, registered_ram=registered_ram)
    res, ref, _, _ = _job(rng, st, rows=5, cols=14, fmt="t5", vectors=vectors, group=group,
                          mem="sdram", stall=0.2, ready_prob=0.7, base=3)
    assert res["error"] == StreamError.NONE
    assert np.array_equal(res["outputs"], ref)


@pytest.mark.parametrize("rows, cols", [(2, 4), (6, 4), (4, 8), (6, 12), (8, 16)])
@pytest.mark.parametrize("vectors", [1, 2, 3, 4])
def test_streamer_walk_counts(rng, rows, cols, vectors):
    # one to four row blocks, tiles and vectors: the registered walk's flags for the value
    # before the last of each counter, and for a first value that is the last or the one
    # before it
    st = WeightStreamer(lanes=4, pes=2, word_bits=16, addr_width=10, max_k=32, max_vectors=4,
                        max_burst=8, registered_ram=True)
    res, ref, _, _ = _job(rng, st, rows=rows, cols=cols, fmt="t2", vectors=vectors,
                          ready_prob=0.7)
    assert res["error"] == StreamError.NONE
    assert np.array_equal(res["outputs"], ref)


def test_streamer_long_run(rng):
    st = WeightStreamer(lanes=8, pes=4, word_bits=32, addr_width=12, max_k=256, max_burst=8)
    res, ref, _, _ = _job(rng, st, rows=env_int("LPU_LONG_ROWS", 24), cols=200, fmt="t5",
                          mem="bram", stall=0.1, ready_prob=0.8)
    assert np.array_equal(res["outputs"], ref)


@pytest.mark.parametrize("registered_ram", [False, True])
def test_streamer_requests_whole_bursts_then_the_rest(rng, registered_ram):
    # one word per row (a 4-weight tile of t2 in a byte): bursts of 4 words, then what is left
    st = WeightStreamer(lanes=4, pes=1, word_bits=8, addr_width=10, max_k=16, max_burst=4,
                        registered_ram=registered_ram)
    for rows in (1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 16, 18):
        res, ref, _, _ = _job(rng, st, rows=rows, cols=4, fmt="t2", base=5)
        assert np.array_equal(res["outputs"], ref)
        assert res["requests"] == [(5 + a, min(4, rows - a)) for a in range(0, rows, 4)]
    # a FIFO of 1.5 bursts, stalls on both sides: a credit too many overflows it and loses a
    # word (a credit too few only slows the job, which these outputs do not see)
    st = WeightStreamer(lanes=4, pes=1, word_bits=8, addr_width=10, max_k=16, max_burst=4,
                        fifo_depth=6, registered_ram=registered_ram)
    for rows in (38, 41):
        res, ref, _, _ = _job(rng, st, rows=rows, cols=4, fmt="t2", mem="sdram", stall=0.3,
                              ready_prob=0.4)
        assert np.array_equal(res["outputs"], ref)


def test_streamer_back_to_back_jobs_share_no_state(rng):
    # a second descriptor after the first (t5 residue in the gearbox must not leak)
    st = WeightStreamer(lanes=3, pes=2, word_bits=8, addr_width=10, max_k=16, max_burst=4)
    for _ in range(2):
        res, ref, _, _ = _job(rng, st, rows=3, cols=7, fmt="t5")
        assert np.array_equal(res["outputs"], ref)


def test_registered_streamer_takes_a_last_tile_every_cycle(rng):
    """With registered RAM each tile marked last takes a credit of the results queue: with
    every tile last (one tile per row) and the consumer always ready, the array still takes a
    tile every cycle, as the cycle model counts (a shallower queue would hold stage B)."""
    st = WeightStreamer(lanes=8, pes=2, word_bits=32, addr_width=12, max_k=64, max_vectors=4,
                        max_burst=16, registered_ram=True)
    res, ref, _, _ = _job(rng, st, rows=64, cols=8, fmt="t2", vectors=4)
    assert np.array_equal(res["outputs"], ref)
    pred = predict_cycles(st, memory_timing("bram", 32), rows=64, cols=8, fmt="t2", vectors=4)
    assert pred.bound == "compute" and res["perf"]["tiles"] == 32 * 4
    assert res["cycles"] == pred.cycles


@pytest.mark.parametrize("fmt, word_bits, mem, vectors, exact, registered_ram", [
    ("t2", 32, "bram", 1, True, False),     # a word carries a whole tile: compute-bound
    ("t2", 32, "bram", 3, True, False),
    ("t2", 8, "bram", 4, False, False),     # memory and compute balanced: the next tile streams in
    ("t5", 8, "bram", 1, True, False),      # a byte per cycle: memory-bound
    ("t5", 8, "qspi", 1, True, False),
    ("t2", 32, "bram", 3, True, True),
    ("t5", 8, "bram", 1, True, True),
])
def test_streamer_cycles_match_model(rng, fmt, word_bits, mem, vectors, exact, registered_ram):
    st = WeightStreamer(lanes=8, pes=2, word_bits=word_bits, addr_width=12, max_k=64,
                        max_vectors=4, max_burst=16, registered_ram=registered_ram)
    res, ref, _, _ = _job(rng, st, rows=16, cols=64, fmt=fmt, mem=mem, vectors=vectors)
    assert np.array_equal(res["outputs"], ref)
    assert res["perf"]["tiles"] == 64 * vectors
    pred = predict_cycles(st, memory_timing(mem, word_bits), rows=16, cols=64, fmt=fmt,
                          vectors=vectors)
    if exact:
        assert res["cycles"] == pred.cycles
    else:
        # where both bounds are equal, start-up costs a few cycles the model does not count
        assert abs(res["cycles"] - pred.cycles) <= 0.01 * pred.cycles
    # once running, the array waits on memory only for the fill, unless memory is the bound
    if pred.bound == "compute" and pred.memory_cycles < pred.compute_cycles:
        assert res["perf"]["mem_stall"] <= fill_cycles(st)


@pytest.mark.parametrize("kwargs, msg", [
    ({"rows": 0}, r"^Descriptor rows must be positive, not 0$"),
    ({"cols": 0}, r"^Descriptor cols must be positive, not 0$"),
    ({"vectors": 0}, r"^Descriptor vectors must be positive, not 0$"),
    ({"fmt": "b1"}, r"^Weight format 'b1' is not one this streamer was built for \(t2\)$"),
    ({"cols": 40}, r"^Descriptor cols \(40\) exceed the maximum row length \(32\)$"),
    ({"vectors": 3}, r"^Descriptor vectors \(3\) exceed the maximum vector count \(2\)$"),
    ({"group": 6}, r"^Group size \(6\) must be a multiple of the lane count \(4\)$"),
    ({"base": 60}, r"^Weight image at word 60 of 8 words runs past the end of memory "
                   r"\(64 words\)$"),
])
def test_descriptor_errors_host_side(kwargs, msg):
    st = WeightStreamer(lanes=4, pes=2, formats=["t2"], word_bits=8, addr_width=6, max_k=32,
                        max_vectors=2)
    args = {"base": 0, "rows": 4, "cols": 8, "fmt": "t2", "group": 0, "vectors": 1, **kwargs}
    with pytest.raises(ValueError, match=msg):
        image.descriptor(st, **args)


@pytest.mark.parametrize("kwargs, error", [
    ({"rows": 0}, StreamError.ZERO_SIZE),
    ({"vectors": 0}, StreamError.ZERO_SIZE),
    ({"fmt": FormatCode.B1}, StreamError.FORMAT),
    ({"cols": 40}, StreamError.TOO_LONG),
    ({"vectors": 3}, StreamError.VECTORS),
    ({"group": 6}, StreamError.GROUP),
    ({"base": 60}, StreamError.ADDRESS),
    # 36 x 8 is 72 words at base 0, of 64: past the memory by its length alone; 66 x 8 is 132
    # words, whose low 7 bits (4) would fit: the length itself is compared with the memory
    ({"rows": 36}, StreamError.ADDRESS),
    ({"rows": 66}, StreamError.ADDRESS),
    # a base whose low 7 bits (0) would fit: the base itself is compared with the memory
    ({"base": 0x80}, StreamError.ADDRESS),
])
@pytest.mark.parametrize("registered", [False, True])
def test_descriptor_errors_hardware_status(kwargs, error, registered):
    # the same descriptors, sent unchecked: the hardware reports and goes idle, no hang
    st = WeightStreamer(lanes=4, pes=2, formats=["t2"], word_bits=8, addr_width=6, max_k=32,
                        max_vectors=2, registered_ram=registered)
    system = StreamerSystem(st, init=[0] * 64)
    desc = {"base": 0, "rows": 4, "cols": 8, "fmt": FormatCode.T2, "group": 0, "vectors": 1,
            **kwargs}
    res = pysim.run_streamer(system, desc, [], max_cycles=500)
    assert res["error"] == error
    assert len(res["outputs"]) == 0
    assert res["perf"]["words_read"] == 0


@pytest.mark.parametrize("fmt", [FormatCode.T5, FormatCode.T2])
def test_largest_image_is_sized_without_wrapping(fmt):
    # 65535 x 65535 pads to 2**32 weights: the t5 byte count must not wrap to 0 (which left the
    # streamer busy with nothing to fetch); the image does not fit, so ADDRESS
    st = WeightStreamer(lanes=2, pes=2, word_bits=32, addr_width=6, max_k=65535, max_burst=4)
    desc = {"base": 0, "rows": 65535, "cols": 65535, "group": 0, "vectors": 1, "fmt": fmt}
    res = pysim.run_streamer(StreamerSystem(st, init=[0] * 64), desc, [], max_cycles=1000)
    assert res["error"] == StreamError.ADDRESS
    assert res["cycles"] == SETUP_CYCLES


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"pes": 70000}, ValueError, r"^PE count must be an integer from 1 to 65536, not 70000$"),
    ({"word_bits": 12}, ValueError,
     r"^Memory word width must be one of 8, 16, 32, 64, 128, not 12$"),
    ({"formats": ["b1"]}, ValueError,
     r"^Weight format 'b1' holds binary weights, but the streamer is built for ternary "
     r"weights$"),
    ({"max_burst": 8, "fifo_depth": 4}, ValueError,
     r"^FIFO depth \(4\) must be at least the maximum burst \(8\)$"),
    ({"addr_width": 4, "mem_words": 32}, ValueError,
     r"^Memory size \(32 words\) exceeds the address width \(4 bits\)$"),
    ({"max_vectors": 0}, ValueError,
     r"^Maximum vector count must be an integer from 1 to 255, not 0$"),
    ({"registered_ram": "yes"}, TypeError, r"^Registered RAM must be a bool, not 'yes'$"),
])
def test_streamer_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        WeightStreamer(**{"lanes": 4, "pes": 2, **kwargs})


@pytest.mark.parametrize("fmt, word_bits", [("t2", 16), ("t5", 32), ("b1", 8)])
def test_decoder_matches_format(rng, fmt, word_bits):
    fmt = WeightFormat(fmt)
    dec = WeightDecoder(word_bits=word_bits, formats=[fmt])
    per_word = fmt.weights_per_byte * word_bits // 8
    w = rng.choice(fmt.mode.values, size=(20, per_word))
    words = [int.from_bytes(pack(row, fmt).tobytes(), "little") for row in w]

    async def tb(ctx):
        ctx.set(dec.fmt, FormatCode.of(fmt))
        for word, row in zip(words, w, strict=True):
            ctx.set(dec.word, word)
            assert ctx.get(dec.count) == per_word
            codes = [int(c) for c in ctx.get(dec.codes)][:per_word]
            from lpu.hw.formats import weight_codes
            assert codes == weight_codes(row, fmt.mode).tolist()

    sim = Simulator(dec)
    sim.add_testbench(tb)
    sim.run()


def test_gearbox_ring_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^Ring must be a bool, not 1$"):
        TileGearbox(tile=4, chunks=[4], code_shape=2, ring=1)


@pytest.mark.parametrize("ring", [False, True])
@pytest.mark.parametrize("tile, chunks, tiles", [(12, [5], 1), (8, [4, 5], 1), (4, [10], 1),
                                                 (7, [3, 8], 1), (16, [4, 8], 2), (8, [8], 2)])
def test_gearbox_keeps_order(rng, tile, chunks, tiles, ring):
    gb = TileGearbox(tile=tile, chunks=chunks, code_shape=2, tiles=tiles, ring=ring)
    data = rng.integers(0, 4, size=tile * 30)
    out = []
    n_tiles = len(data) // tile

    async def producer(ctx):
        i = 0
        while i < len(data):
            c = int(rng.choice(chunks))
            chunk = [int(v) for v in data[i:i + c]]
            chunk += [0] * (max(chunks) - len(chunk))
            while rng.random() > 0.8:
                await ctx.tick()
            ctx.set(gb.i_stream.payload, {"codes": chunk, "count": c})
            ctx.set(gb.i_stream.valid, 1)
            await ctx.tick().until(gb.i_stream.ready)
            ctx.set(gb.i_stream.valid, 0)
            i += c

    async def consumer(ctx):
        while len(out) < n_tiles:
            ready = int(rng.random() < 0.7)
            ctx.set(gb.o_stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(gb.o_stream.valid,
                                                          gb.o_stream.payload)
            if valid and ready:
                out.append([int(v) for v in payload])

    sim = Simulator(gb)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    got = np.array(out).reshape(-1)
    assert np.array_equal(got, data[:len(got)])
