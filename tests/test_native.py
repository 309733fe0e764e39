import shutil

import numpy as np
import pytest

from lpu.host import image
from lpu.host.cycle_model import predict_cycles
from lpu.hw.streamer import StreamError, WeightStreamer
from lpu.sim import golden, pysim
from lpu.sim.memory_models import memory_timing
from lpu.sim.system import StreamerSystem

pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                reason="no C++ compiler: the compiled simulator needs g++")


@pytest.fixture(scope="module")
def streamer():
    return WeightStreamer(lanes=4, pes=2, word_bits=16, addr_width=10, max_k=64,
                          max_vectors=2, max_burst=8)


@pytest.mark.parametrize("fmt, mem, vectors, ready", [
    ("t5", "sdram", 2, 0.6), ("t2", "qspi", 1, 1.0), ("t5", "bram", 1, 1.0)])
def test_native_matches_pysim_and_golden(rng, streamer, fmt, mem, vectors, ready):
    from lpu.sim.native import NativeStreamerSim
    rows, cols = 9, 37
    timing = memory_timing(mem, 16, stall_prob=0.2 if mem == "sdram" else 0.0)
    w = rng.integers(-1, 2, size=(rows, cols))
    x = rng.integers(-128, 128, size=(cols, vectors))
    img = image.weight_image(w, fmt, lanes=4, pes=2, word_bits=16)
    words = image.image_words(img, 16)
    acts = image.activation_entries(x, lanes=4, act_tiles=streamer.act_tiles)
    desc = image.descriptor(streamer, base=0, rows=rows, cols=cols, fmt=fmt, vectors=vectors)
    native = NativeStreamerSim(StreamerSystem(streamer, timing=timing))
    native.load(words)
    native.write_acts(acts)
    got = native.run(desc, ready_prob=ready, seed=int(rng.integers(1, 1 << 31)))
    assert got["error"] == StreamError.NONE
    tiles = golden.tile_matvec(w, x, lanes=4, pes=2)
    ref = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"], tiles["last"],
                               tiles.get("vector"))
    assert np.array_equal(got["outputs"], ref)
    # the Amaranth simulator of the same system agrees cycle for cycle without backpressure
    if ready == 1.0 and mem != "sdram":
        ref_run = pysim.run_streamer(StreamerSystem(streamer, timing=timing, init=words),
                                     desc, acts)
        assert got["cycles"] == ref_run["cycles"]
        assert got["perf"] == ref_run["perf"]
        assert got["cycles"] == predict_cycles(streamer, timing, rows=rows, cols=cols,
                                               fmt=fmt, vectors=vectors).cycles


def test_native_reports_hardware_error(streamer):
    from lpu.sim.native import NativeStreamerSim
    native = NativeStreamerSim(StreamerSystem(streamer))
    desc = image.descriptor(streamer, base=1020, rows=9, cols=37, fmt="t2", check=False)
    got = native.run(desc, max_cycles=1000)
    assert got["error"] == StreamError.ADDRESS
    assert len(got["outputs"]) == 0


def test_native_load_past_memory(streamer):
    from lpu.sim.native import NativeStreamerSim
    native = NativeStreamerSim(StreamerSystem(streamer))
    with pytest.raises(ValueError, match=r"^3 words at 1022 do not fit the simulated memory$"):
        native.load([1, 2, 3], at=1022)
