import json
import re
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator
from conftest import env_int

from lpu.boards.uart import UARTRx, UARTTx, baud_divisor

# ---------------------------------------------------------------- UART


def _run(dut, *testbenches, vcd=None):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for tb in testbenches:
        sim.add_testbench(tb)
    sim.run()


def _loopback(divisor):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=divisor)
    m.submodules.rx = rx = UARTRx(divisor=divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    return m, tx, rx


@pytest.mark.parametrize("divisor", [4, 7, 13])
def test_uart_loopback_random_bytes(rng, divisor):
    m, tx, rx = _loopback(divisor)
    data = [int(b) for b in rng.integers(0, 256, env_int("LPU_UART_BYTES", 40))]
    gaps = [int(g) for g in rng.integers(0, 3 * divisor, len(data))]
    got, errors = [], []

    async def producer(ctx):
        for byte, gap in zip(data, gaps, strict=True):
            if gap:
                await ctx.tick().repeat(gap)
            ctx.set(tx.i_stream.payload, byte)
            ctx.set(tx.i_stream.valid, 1)
            await ctx.tick().until(tx.i_stream.ready)
            ctx.set(tx.i_stream.valid, 0)

    async def consumer(ctx):
        ctx.set(rx.o_stream.ready, 1)
        cycles = 0
        while len(got) < len(data) and cycles < 20 * divisor * (len(data) + 2) + 100 * divisor:
            _, _, payload, valid, ferr, ovr = await ctx.tick().sample(
                rx.o_stream.payload, rx.o_stream.valid, rx.frame_error, rx.overrun)
            cycles += 1
            if valid:
                got.append(payload)
            if ferr or ovr:
                errors.append((cycles, ferr, ovr))

    _run(m, producer, consumer)
    assert got == data
    assert errors == []


@pytest.mark.parametrize("divisor", [4, 10, 104])
def test_uart_tx_bit_period_is_the_divisor(divisor):
    dut = UARTTx(divisor=divisor)
    byte = 0b1011_0010
    line = []

    async def tb(ctx):
        ctx.set(dut.i_stream.payload, byte)
        ctx.set(dut.i_stream.valid, 1)
        await ctx.tick()
        ctx.set(dut.i_stream.valid, 0)
        for _ in range(10 * divisor + 2):
            line.append((ctx.get(dut.tx), ctx.get(dut.i_stream.ready)))
            await ctx.tick()

    _run(dut, tb)
    bits = [0] + [byte >> i & 1 for i in range(8)] + [1]
    # every bit holds for exactly `divisor` cycles, and the next byte is taken right after
    assert [v for v, _ in line[:10 * divisor]] == [b for b in bits for _ in range(divisor)]
    assert [r for _, r in line[:10 * divisor]] == [0] * 10 * divisor
    assert line[10 * divisor] == (1, 1)


def _drive_frames(ctx, pin, frames, period):
    """Drive 8N1 frames onto ``pin``; ``frames`` holds (byte, stop_bit); period in cycles."""
    async def run():
        for byte, stop in frames:
            for bit in [0] + [byte >> i & 1 for i in range(8)] + [stop]:
                ctx.set(pin, bit)
                await ctx.tick().repeat(period)
            ctx.set(pin, 1)
            await ctx.tick().repeat(2 * period)
    return run()


@pytest.mark.parametrize("period", [98, 100, 102])   # 2% slow and fast senders
def test_uart_rx_tolerates_rate_error(rng, period):
    dut = UARTRx(divisor=100)
    data = [int(b) for b in rng.integers(0, 256, 6)]
    got = []

    async def sender(ctx):
        await ctx.tick().repeat(5)
        await _drive_frames(ctx, dut.rx, [(b, 1) for b in data], period)

    async def receiver(ctx):
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(13 * period * len(data) + 50):
            _, _, payload, valid = await ctx.tick().sample(dut.o_stream.payload, dut.o_stream.valid)
            if valid:
                got.append(payload)

    _run(dut, sender, receiver)
    assert got == data


def test_uart_rx_drops_framing_errors_and_glitches():
    divisor = 8
    dut = UARTRx(divisor=divisor)
    got, ferrs = [], []

    async def sender(ctx):
        await ctx.tick().repeat(3)
        # a glitch shorter than half a bit is not a start bit
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * divisor)
        await _drive_frames(ctx, dut.rx, [(0x5A, 1), (0xC3, 0), (0x0F, 1)], divisor)
        # a break: the line held low for several frames, then a good byte
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(30 * divisor)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * divisor)
        await _drive_frames(ctx, dut.rx, [(0xA5, 1)], divisor)

    async def receiver(ctx):
        ctx.set(dut.o_stream.ready, 1)
        for cycle in range(90 * divisor):
            _, _, payload, valid, ferr = await ctx.tick().sample(
                dut.o_stream.payload, dut.o_stream.valid, dut.frame_error)
            if valid:
                got.append(payload)
            if ferr:
                ferrs.append(cycle)

    _run(dut, sender, receiver)
    assert got == [0x5A, 0x0F, 0xA5]
    assert len(ferrs) == 2          # the bad stop bit and the break


def test_uart_rx_flags_overrun_and_keeps_the_waiting_byte():
    divisor = 6
    dut = UARTRx(divisor=divisor)
    overruns = []

    async def sender(ctx):
        await ctx.tick().repeat(3)
        await _drive_frames(ctx, dut.rx, [(0x11, 1), (0x22, 1)], divisor)

    async def receiver(ctx):
        for _ in range(30 * divisor):
            _, _, ovr = await ctx.tick().sample(dut.overrun)
            if ovr:
                overruns.append(1)
        assert ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.payload) == 0x11

    _run(dut, sender, receiver)
    assert overruns == [1]


def test_baud_divisor():
    assert baud_divisor(12_000_000, 115_200) == 104
    assert baud_divisor(25_000_000, 115_200) == 217
    assert baud_divisor(48_000_000, 3_000_000) == 16


@pytest.mark.parametrize("clk, baud, msg", [
    (12_000_000, 2_500_000,
     r"^Baud rate 2500000 is off by 4\.0% at 12 MHz \(divisor 5\); at most 2% is allowed$"),
    (12_000_000, 4_000_000, r"^Baud rate 4000000 is too fast for a 12 MHz clock "
                            r"\(at most 3000000\)$"),
    (12_000_000, 0, r"^Baud rate must be a positive integer, not 0$"),
])
def test_baud_divisor_errors(clk, baud, msg):
    with pytest.raises(ValueError, match=msg):
        baud_divisor(clk, baud)


def test_uart_divisor_must_be_at_least_4():
    with pytest.raises(ValueError, match=r"^Baud divisor must be an integer of at least 4, "
                                         r"not 3$"):
        UARTTx(divisor=3)


# ---------------------------------------------------------------- on-chip weight memory


def _burst_ram(words=64, word_bits=16, max_burst=8):
    from lpu.boards.top import BurstRAM
    from lpu.hw.streamer import mem_request_layout
    return BurstRAM(words=words, word_bits=word_bits,
                    request_layout=mem_request_layout((words - 1).bit_length(), max_burst))


@pytest.mark.parametrize("ready_prob", [1.0, 0.5])
def test_burst_ram_returns_every_burst_in_order(rng, ready_prob):
    dut = _burst_ram()
    contents = [int(x) for x in rng.integers(0, 1 << 16, 64)]
    bursts = [(int(rng.integers(0, 60)), int(rng.integers(0, 5))) for _ in range(30)]
    expected = [contents[a + i] for a, n in bursts for i in range(n)]
    readies = [bool(r) for r in rng.random(4000) < ready_prob]
    got = []
    loaded = []

    async def host(ctx):
        for addr, word in enumerate(contents):
            ctx.set(dut.wr.payload.addr, addr)
            ctx.set(dut.wr.payload.data, word)
            ctx.set(dut.wr.valid, 1)
            await ctx.tick()
        ctx.set(dut.wr.valid, 0)
        loaded.append(1)
        for addr, n in bursts:
            ctx.set(dut.req.payload.addr, addr)
            ctx.set(dut.req.payload.len, n)
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
        ctx.set(dut.req.valid, 0)

    async def sink(ctx):
        held = None
        for ready in readies:
            ctx.set(dut.resp.ready, ready)
            _, _, valid, word = await ctx.tick().sample(dut.resp.valid, dut.resp.payload)
            if held is not None:
                assert valid and word == held     # an offered word stays until taken
                held = None
            if valid and ready:
                got.append(word)
            elif valid:
                held = word
            if len(got) == len(expected):
                break

    _run(dut, host, sink)
    assert got == expected


def test_burst_ram_streams_back_to_back_bursts_without_a_gap():
    dut = _burst_ram()
    trace = []

    async def tb(ctx):
        ctx.set(dut.resp.ready, 1)
        for i in range(64):
            ctx.set(dut.wr.payload.addr, i)
            ctx.set(dut.wr.payload.data, 100 + i)
            ctx.set(dut.wr.valid, 1)
            await ctx.tick()
        ctx.set(dut.wr.valid, 0)
        for addr, n in [(3, 4), (40, 2)]:
            ctx.set(dut.req.payload.addr, addr)
            ctx.set(dut.req.payload.len, n)
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
        ctx.set(dut.req.valid, 0)
        for _ in range(4):
            trace.append(ctx.get(dut.resp.valid) and ctx.get(dut.resp.payload))
            await ctx.tick()

    _run(dut, tb)
    # as MemoryModel's bram preset: the first word one cycle after the request, one per cycle
    # (the loop above returns one cycle after the second request was accepted)
    assert trace == [106, 140, 141, 0]


# ---------------------------------------------------------------- lpu build

# The smallest LPU the command takes: its control and buffers, not the array, set its size.
_TINY = ["--lanes", "4", "--pes", "1", "--mem-words", "256", "--max-k", "64",
         "--max-vectors", "1", "--max-burst", "4", "--out-depth", "8", "--scale-depth", "8"]


def test_build_rejects_an_unknown_board(capsys):
    from lpu.cli import main
    assert main(["build", "--board", "nexys"]) == 2
    assert capsys.readouterr().err == ("lpu: error: Board must be one of icebreaker, "
                                       "ulx3s-85f, tang-nano-9k, not 'nexys'\n")


def test_build_rejects_bad_parameters(capsys, tmp_path):
    from lpu.cli import main
    assert main(["build", "--board", "icebreaker", "--lanes", "0", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("lpu: error: Lane count must be an integer from 1 to "
                                       "65536, not 0\n")
    assert main(["build", "--board", "icebreaker", "--baud", "10000000",
                 "-o", str(tmp_path)]) == 2
    # the divisor comes from the PLL clock (48 MHz on the iCEBreaker)
    assert capsys.readouterr().err == ("lpu: error: Baud rate 10000000 is off by 4.0% at 48 MHz "
                                       "(divisor 5); at most 2% is allowed\n")
    assert main(["build", "--board", "icebreaker", "--freq", "300", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("lpu: error: PLL output frequency must be from 16 to 275 "
                                       "MHz for the iCE40 PLL (SB_PLL40), not 300 MHz\n")
    assert main(["build", "--board", "ulx3s-85f", "--freq", "-5", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("lpu: error: PLL output frequency must be positive, "
                                       "not -5 MHz\n")
    # 0 is a baud rate given, and refused (it once fell back to the board's 115200)
    assert main(["build", "--board", "icebreaker", "--baud", "0", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "lpu: error: Baud rate must be a positive integer, not 0\n"
    assert not any(tmp_path.iterdir())


def test_board_table_is_consistent():
    from lpu.boards.build import _platform_class, board_pll
    from lpu.boards.pll import PLL_FAMILIES
    from lpu.boards.top import BOARDS, BoardTop, board_spec, lpu_for
    for name, spec in BOARDS.items():
        assert spec.name == name and spec.family in PLL_FAMILIES
        assert set(spec.resources) == {"lut", "ff", "bram", "spram", "dsp"}
        lpu = lpu_for(**spec.lpu)
        assert lpu.streamer.mem_words == spec.lpu["mem_words"]
        # block RAM weights are pipelined with the rest of an LPU's registered RAM (ULX3S)
        top = BoardTop(lpu=lpu, clk_hz=spec.freq_mhz * 1_000_000, baud=spec.baud)
        assert top.ram.pipelined == lpu.streamer.registered_ram == (name == "ulx3s-85f")
        # every board's default clock is a frequency its PLL makes exactly
        pll = board_pll(spec, _platform_class(spec)())
        assert pll.family == spec.family and pll.out_hz == spec.freq_mhz * 1_000_000
    assert board_spec("ulx3s-85f").lpu["lanes"] == 64 and board_spec("ulx3s-85f").lpu["pes"] == 4
    # clocks the default builds meet (docs/boards.md, Measured): the iCE40's target of 48 MHz,
    # the ECP5's below its target of 150
    assert [board_spec(b).freq_mhz for b in ("icebreaker", "ulx3s-85f", "tang-nano-9k")] == [
        48, 100, 54]


def test_board_top_clock_is_the_pll_output():
    from lpu.boards.pll import ecp5_pll
    from lpu.boards.top import BoardTop, lpu_for
    from lpu.boards.uart import baud_divisor
    lpu = lpu_for(lanes=4, pes=1, mem_words=256, max_k=64, max_vectors=1, max_burst=4,
                  out_depth=8, scale_depth=8)
    pll = ecp5_pll(25_000_000, 123_456_000)      # not reachable exactly: 125 MHz
    top = BoardTop(lpu=lpu, baud=115200, pll=pll)
    assert top.pll is pll and top.clk_hz == round(pll.out_hz) != 123_456_000
    assert top.divisor == baud_divisor(round(pll.out_hz), 115200)
    with pytest.raises(ValueError, match=r"^Clock frequency 25000000 Hz is not the PLL's output "
                                         r"frequency 125000000 Hz$"):
        BoardTop(lpu=lpu, clk_hz=25_000_000, baud=115200, pll=pll)
    with pytest.raises(TypeError, match=r"^PLL configuration must be a PLLConfig, not 125$"):
        BoardTop(lpu=lpu, baud=115200, pll=125)


@pytest.mark.slow
def test_build_icebreaker_too_much_memory_is_caught_after_synthesis(capsys, tmp_path):
    # 64K words of weights (256 KiB) need far more than the UP5K's 30 block RAMs; the check
    # stops before place and route and names the resource.
    from lpu.cli import main
    args = [*_TINY[:4], "--mem-words", "65536", *_TINY[6:]]
    assert main(["build", "--board", "icebreaker", *args, "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.fullmatch(r"lpu: error: Design does not fit on icebreaker \(iCE40UP5K\): BRAM \d+ "
                        r"used, 30 available \(after synthesis\)\n", err)
    assert (tmp_path / "stat.json").exists() and not (tmp_path / "top.asc").exists()


@pytest.mark.slow
def test_build_icebreaker_tiny_writes_bitstream_and_report(capsys, tmp_path):
    from lpu.boards.pll import ice40_pll
    from lpu.boards.uart import baud_divisor
    from lpu.cli import main

    # The tiny LPU reaches 44-48 MHz on the UP5K placed for 48 MHz; it is built at 18 MHz
    # (12 MHz x 48 / 32), far below that, so that placement cannot make the test fail.
    assert main(["build", "--board", "icebreaker", *_TINY, "--freq", "18", "--seed", "3",
                 "--json", "-o", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "build_report.json").read_text())
    assert report["board"] == "icebreaker" and report["device"] == "iCE40UP5K"
    # the placement seed reaches nextpnr and the report
    assert report["seed"] == 3 and " --seed 3" in (tmp_path / "build_top.sh").read_text()
    pll = ice40_pll(12_000_000, 18_000_000)
    assert report["pll"] == pll.report() and report["clk_mhz"] == 18.0
    assert report["baud_divisor"] == baud_divisor(18_000_000, 115200)
    # nextpnr times the PLL's output clock against the PLL frequency
    (clock,) = report["clocks"].values()
    assert abs(clock["target_mhz"] - 18) < 0.02
    assert clock["fmax_mhz"] >= clock["target_mhz"] and report["timing_met"] is True
    # the clock's critical path is the one nextpnr's fmax comes from
    path = clock["critical_path"]
    assert path["ns"] == pytest.approx(1000 / clock["fmax_mhz"], abs=0.02)
    assert path["ns"] == pytest.approx(path["logic_ns"] + path["routing_ns"], abs=0.02)
    assert path["from"] and path["to"] and path["nets"]
    util = report["utilization"]
    assert util["pll"] == {"used": 1, "available": 1}
    assert 0 < util["lut"]["used"] <= util["lc"]["used"] <= util["lc"]["available"] == 5280
    assert 1 <= util["bram"]["used"] <= 30 and util["dsp"]["used"] >= 1   # the scale multiplier
    assert (tmp_path / "top.bin").stat().st_size == report["bitstream_bytes"] > 0


@pytest.mark.slow
def test_build_ulx3s_tiny_writes_bitstream_and_report(capsys, tmp_path):
    from lpu.boards.pll import ecp5_pll
    from lpu.boards.uart import baud_divisor
    from lpu.cli import main

    # The tiny LPU reaches about 99 MHz, short of the ECP5 target of 150 MHz; 50 MHz (the
    # board's default) is the 25 MHz oscillator doubled by the PLL.
    assert main(["build", "--board", "ulx3s-85f", *_TINY, "--freq", "50", "--json",
                 "--detailed-timing", "-o", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "build_report.json").read_text())
    assert report["board"] == "ulx3s-85f" and report["device"] == "LFE5U-85F"
    assert report["seed"] is None          # nextpnr's default placement
    assert report["lpu"]["lanes"] == 4 and report["lpu"]["pes"] == 1
    pll = ecp5_pll(25_000_000, 50_000_000)
    assert report["pll"] == pll.report() and report["clk_mhz"] == float(pll.out_hz) / 1e6
    assert report["baud"] == 115200
    assert report["baud_divisor"] == baud_divisor(round(pll.out_hz), 115200)
    # nextpnr times the PLL's output clock against the PLL frequency
    assert len(report["clocks"]) == 1
    (clock,) = report["clocks"].values()
    assert abs(clock["target_mhz"] - report["clk_mhz"]) < 0.02
    assert clock["fmax_mhz"] > clock["target_mhz"]
    assert report["timing_met"] is True
    assert clock["critical_path"]["ns"] == pytest.approx(1000 / clock["fmax_mhz"], abs=0.02)
    # (--detailed-timing: timing is met, so no input arrives past the period)
    assert clock["late_inputs"] == {"count": 0, "worst": []}
    util = report["utilization"]
    assert set(util) == {"lut", "ff", "bram", "spram", "dsp", "pll"}
    assert util["pll"] == {"used": 1, "available": 4}
    assert util["lut"]["available"] == 83640 and 0 < util["lut"]["used"] < 83640
    assert util["bram"]["available"] == 208 and util["bram"]["used"] >= 1
    assert Path(report["bitstream"]) == tmp_path / "top.bit"
    assert (tmp_path / "top.bit").stat().st_size == report["bitstream_bytes"] > 0
    assert report["build_seconds"] >= sum(report["seconds"].values()) - 1


def _segment(kind, delay, cell_from, cell_to, port="O", net=None):
    seg = {"type": kind, "delay": delay, "from": {"cell": cell_from, "port": "O"},
           "to": {"cell": cell_to, "port": port}}
    if net is not None:
        seg["net"] = net
    return seg


_NEXTPNR_REPORT = {
    "fmax": {"clk": {"achieved": 40.0, "constraint": 48.0}},
    "critical_paths": [
        # a path into the clock's domain from outside it: not the clock's own critical path
        {"from": "<async>", "to": "posedge clk",
         "path": [_segment("source", 0.0, "rx_pin", "rx_pin"),
                  _segment("routing", 3.0, "rx_pin", "sync0", "I3", "rx")]},
        {"from": "posedge clk", "to": "posedge clk",
         "path": [_segment("clk-to-q", 1.25, "a_DFFLC", "a_DFFLC"),
                  _segment("routing", 10.0, "a_DFFLC", "lut_LC", "I1", "a"),
                  _segment("logic", 1.25, "lut_LC", "lut_LC"),
                  _segment("routing", 12.25, "lut_LC", "b_LC", "CEN", "b_en"),
                  _segment("setup", 0.25, "b_LC", "b_LC", "CEN")]},
    ],
}


def test_build_report_names_each_clocks_critical_path():
    from lpu.boards.build import critical_paths
    assert critical_paths(_NEXTPNR_REPORT) == {"clk": {
        "ns": 25.0, "logic_ns": 2.75, "routing_ns": 22.25, "from": "a_DFFLC", "to": "b_LC.CEN",
        "nets": ["a", "b_en"]}}
    assert critical_paths({"fmax": {}}) == {}


def _endpoint(cell, port, arrival, event="posedge clk"):
    return {"cell": cell, "port": port, "delay": [arrival - 1, arrival], "event": event}


def test_late_inputs_counts_the_sinks_past_the_period():
    """Period 10 ns: flip-flop inputs (by port, whatever the cell's name) and the inputs of
    block RAMs count; LUT inputs (cells named ..._Z or ..._F) do not; each pin once, at its
    latest arrival; the groups by cell name, worst first."""
    from lpu.boards.build import late_inputs
    report = {"fmax": {"clk": {"achieved": 90.0, "constraint": 100.0}}, "detailed_net_timings": [
        {"net": "a", "endpoints": [
            _endpoint("x.q_TRELLIS_FF_Q_1", "DI", 10.5),
            _endpoint("x.q_TRELLIS_FF_Q_2", "CE", 11.0),
            _endpoint("x.q_LUT4_Z", "CE", 12.0),          # a flip-flop port: counted
            _endpoint("y_LUT4_Z", "A", 13.0),             # a LUT input: not counted
            _endpoint("z.bram0", "CEB", 10.2),
            _endpoint("z.bram1", "CEB", 9.9),             # in time
            _endpoint("w_TRELLIS_FF_Q", "DI", 20.0, event="posedge other")]},  # no such clock
        {"net": "b", "endpoints": [_endpoint("x.q_TRELLIS_FF_Q_1", "DI", 10.7)]},
    ]}
    assert late_inputs(report) == {"clk": {"count": 4, "worst": [
        [12.0, 3, "x.q", "CE"], [10.2, 1, "z.bram0", "CEB"]]}}
    assert late_inputs(report, top=1)["clk"]["worst"] == [[12.0, 3, "x.q", "CE"]]
    assert late_inputs({"fmax": {"clk": {"achieved": 90.0, "constraint": 100.0}}}) == {
        "clk": {"count": 0, "worst": []}}


def test_timing_error_names_the_clock_and_its_critical_path(tmp_path):
    from lpu.boards.build import TimingError, check_timing, critical_paths
    from lpu.boards.top import board_spec
    clocks = {"clk": {"fmax_mhz": 40.0, "target_mhz": 48.0,
                      "critical_path": critical_paths(_NEXTPNR_REPORT)["clk"]}}
    with pytest.raises(TimingError, match=(
            r"^Timing not met on icebreaker: clock clk reaches 40.0 MHz, target 48.0 MHz; "
            r"critical path 25.0 ns from a_DFFLC to b_LC.CEN \(report: .*build_report.json\)$")):
        check_timing(board_spec("icebreaker"), {"timing_met": False, "clocks": clocks},
                     tmp_path / "build_report.json")
    check_timing(board_spec("icebreaker"), {"timing_met": True, "clocks": clocks},
                 tmp_path / "build_report.json")


def test_build_lists_late_inputs_when_timing_is_missed(monkeypatch, tmp_path, capsys):
    """With --detailed-timing, a build that misses its clock prints, after the error, the
    late inputs its report holds."""
    import lpu.boards.build as build
    from lpu.cli import main
    clock = {"fmax_mhz": 90.0, "target_mhz": 100.0,
             "late_inputs": {"count": 3, "worst": [[11.5, 2, "x.q", "CE"]]}}

    def missed(board, *, out_dir, **kwargs):
        assert kwargs["detailed_timing"] is True
        (Path(out_dir) / "build_report.json").write_text(json.dumps({"clocks": {"clk": clock}}))
        raise build.TimingError("Timing not met")
    monkeypatch.setattr(build, "build_board", missed)
    assert main(["build", "--board", "ulx3s-85f", "--detailed-timing", "-o", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == "lpu: error: Timing not met\n"
    assert captured.out.splitlines() == [
        "  clock clk: 90.0 MHz (target 100.0 MHz)", "    3 inputs past the period",
        "       11.50 ns     2  x.q (worst pin CE)"]
