import json

import numpy as np
import pytest
from amaranth.sim import Simulator
from conftest import env_int

from lpu.boards.density import _RING_STEP, DensityHarness, build_density, run_density_bench
from lpu.boards.sweep import DENSITY_TARGETS, NAIVE_DENSITY
from lpu.hw.array import PEArray


def _array():
    return PEArray(lanes=4, pes=2, max_k=64)


def _tiles(harness, cycles):
    """The tiles the harness presents, in order: block RAM words by address, or the ring's
    low bits rotated by the step per tile."""
    layout = harness.array.input_layout
    words = harness.tile_words()
    if harness._source == "bram":
        return [layout.from_bits(words[i % len(words)]) for i in range(cycles)]
    bits = layout.size * len(words)
    ring = sum(w << (i * layout.size) for i, w in enumerate(words))
    out = []
    for _ in range(cycles):
        out.append(layout.from_bits(ring & ((1 << layout.size) - 1)))
        ring = ((ring << _RING_STEP) | (ring >> (bits - _RING_STEP))) & ((1 << bits) - 1)
    return out


def _expected(harness, tiles):
    """Row-block sums of the tiles, the first row block starting at reset as the array's does.
    t2 codes: bit 0 is +1, bit 1 is -1; the ring's rotation also makes the reserved 0b11,
    which the datapath decodes as -1 (hw/formats.py)."""
    a = harness.array
    sums, acc = [], None
    for t in tiles:
        act = np.array([t.act[i] for i in range(a.lanes)])
        w = np.array([[t.weight[p][i] for i in range(a.lanes)] for p in range(a.pes)])
        dot = np.where(w >> 1, -1, w & 1) @ act
        acc = dot if acc is None or t.first else acc + dot
        if t.last:
            sums.append([int(x) for x in acc])
            acc = None
    return sums


@pytest.mark.parametrize("source", ["bram", "ring"])
def test_harness_feeds_the_array_its_tiles_exactly(rng, source):
    harness = DensityHarness(array=_array(), depth=8, tiles=4, source=source,
                             seed=env_int("LPU_SEED", 1))
    cycles = env_int("LPU_DENSITY_CYCLES", 120)
    stalls = rng.random(cycles) < 0.3
    got = []

    async def bench(ctx):
        o = harness.array.o_stream
        for stall in stalls:
            ctx.set(harness.stall, int(stall))
            await ctx.delay(1e-9)
            if ctx.get(o.valid) and not stall:
                got.append([int(v) for v in ctx.get(o.payload)])
            await ctx.tick()

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # Every tile the array took is in a sum, in order: its input advances only when it takes one.
    tiles = _tiles(harness, cycles)
    want = _expected(harness, tiles)
    assert len(got) >= cycles // 16
    assert got == want[:len(got)]


def test_tile_words_hold_legal_codes_and_framing():
    harness = DensityHarness(array=_array(), depth=16, tiles=4)
    layout = harness.array.input_layout
    words = harness.tile_words()
    assert len(words) == 16 and words == DensityHarness(array=_array(), depth=16,
                                                        tiles=4).tile_words()
    for a, w in enumerate(words):
        t = layout.from_bits(w)
        assert (t.first, t.last) == (int(a % 4 == 0), int(a % 4 == 3))
        codes = {t.weight[p][i] for p in range(2) for i in range(4)}
        assert codes <= {0, 1, 2}
        assert all(-128 <= t.act[i] < 128 for i in range(4))


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(array="x"), TypeError, r"^Array must be a PEArray, not 'x'$"),
    (dict(depth=10, tiles=4), ValueError,
     r"^Tile memory depth \(10\) must be a multiple of the tiles per row block \(4\)$"),
    (dict(source="rom"), ValueError, r"^Tile source must be 'bram' or 'ring', not 'rom'$"),
    (dict(tiles=0), ValueError, r"^Tiles per row block must be a positive integer, not 0$"),
])
def test_harness_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        DensityHarness(**{"array": _array(), **kwargs})


def test_density_is_refused_for_a_board_without_a_target(tmp_path):
    msg = r"^Density is measured on iCE40 and ECP5 boards, not tang-nano-9k \(gowin\)$"
    with pytest.raises(ValueError, match=msg):
        build_density("tang-nano-9k", lanes=4, pes=1, freq=50, out_dir=tmp_path)
    with pytest.raises(ValueError, match=msg):
        run_density_bench([dict(board="tang-nano-9k", lanes=4, pes=1, freq=50)])
    assert not any(tmp_path.iterdir())


def test_cli_density_options_go_together(capsys):
    from lpu.cli import main
    assert main(["bench", "density", "--board", "icebreaker", "--lanes", "4"]) == 2
    assert capsys.readouterr().err.strip() == (
        "lpu: error: --board, --lanes, --pes and --freq go together; missing --freq, --pes")


@pytest.mark.slow
def test_density_of_a_small_ice40_array(capsys, tmp_path):
    from lpu.cli import main
    assert main(["bench", "density", "--board", "icebreaker", "--lanes", "4", "--pes", "2",
                 "--freq", "40", "--json", "-o", str(tmp_path)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row == json.loads((tmp_path / "icebreaker-4x2" / "density_report.json").read_text())
    assert row["macs_per_cycle"] == 8 and row["cell"] == "logic cell"
    assert 0 < row["cells"] < 5280 and row["bram"] >= 1
    assert row["fmax_mhz"] > 0 and abs(row["target_mhz"] - 40) < 0.3
    # cells and fmax are nextpnr's: every logic cell it placed, its slowest clock
    report = json.loads((tmp_path / "icebreaker-4x2" / "report.json").read_text())
    assert row["cells"] == report["utilization"]["ICESTORM_LC"]["used"]
    assert row["fmax_mhz"] == round(min(c["achieved"] for c in report["fmax"].values()), 2)
    assert row["mac_per_s"] == 8 * row["fmax_mhz"] * 1e6
    assert row["density"] == row["mac_per_s"] / row["cells"]
    assert (row["target_density"], row["naive_density"]) == (DENSITY_TARGETS["ice40"],
                                                             NAIVE_DENSITY["ice40"])
    assert row["met"] == (row["density"] >= 3e6)


def test_cli_records_the_command_that_reproduces_its_rows(capsys, tmp_path, monkeypatch):
    # The builds are stood in for: only what --record writes is checked here.
    from lpu.boards import density
    from lpu.cli import main
    calls = []

    def fake_bench(configs, *, root, jobs):
        calls.append(configs)
        return [{"row": i} for i in range(len(configs))]

    monkeypatch.setattr(density, "run_density_bench", fake_bench)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "docs" / "results" / "density.json"
    assert main(["bench", "density", "--board", "icebreaker", "--lanes", "32", "--pes", "3",
                 "--freq", "60", "--seed", "2", "--json", "--record"]) == 0
    assert calls[-1] == [dict(board="icebreaker", lanes=32, pes=3, freq=60.0, seed=2)]
    assert json.loads(results.read_text())["meta"]["command"] == (
        "lpu bench density --board icebreaker --lanes 32 --pes 3 --freq 60.0 --seed 2 --record")
    assert main(["bench", "density", "--json", "--record"]) == 0
    assert len(calls[-1]) == len(density.DENSITY_SUITE)
    assert json.loads(results.read_text())["meta"]["command"] == "lpu bench density --record"
    capsys.readouterr()
