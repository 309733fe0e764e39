"""hw/bram.py: RegisteredRAM (simulated, and its ECP5 DP16KDs against yosys's own mapping of the
same memory), CreditQueue and RegisteredFIFO."""

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator
from conftest import ecp5_netlist

from lpu.boards.area import TargetFamily
from lpu.boards.build import COLLISIONS_DONT_CARE
from lpu.hw.bram import (
    DP16KD_MODES,
    CreditQueue,
    RegisteredFIFO,
    RegisteredRAM,
    dp16kd_mode,
)


@pytest.mark.parametrize("depth, width", [(16, 8), (5, 33)])
def test_registered_ram_reads_through_its_output_register(rng, depth, width):
    """Random writes and reads with random read and output enables and output resets: each
    cycle ``r_data`` is the word the read stage held before the last edge with ``r_oe`` (zero
    if ``r_rst`` was high too); the read stage takes the RAM's word at ``r_addr`` at each edge
    with ``r_en``."""
    dut = RegisteredRAM(shape=width, depth=depth, clearable=True)
    mem = [0] * depth
    seen = []

    async def bench(ctx):
        stage = out = 0
        for _ in range(600):
            w_addr, r_addr = (int(a) for a in rng.integers(0, depth, 2))
            w_en = int(rng.random() < 0.4) and w_addr != r_addr   # (no read of a word written)
            r_en, r_oe = int(rng.random() < 0.7), int(rng.random() < 0.7)
            r_rst = int(rng.random() < 0.2)
            w_data = int(rng.integers(0, 1 << width, dtype=np.uint64))
            for sig, val in ((dut.w_addr, w_addr), (dut.w_data, w_data), (dut.w_en, w_en),
                             (dut.r_addr, r_addr), (dut.r_en, r_en), (dut.r_oe, r_oe),
                             (dut.r_rst, r_rst)):
                ctx.set(sig, val)
            await ctx.tick()
            if r_oe:
                out = 0 if r_rst else stage
            if r_en:
                stage = mem[r_addr]
            if w_en:
                mem[w_addr] = w_data
            seen.append((ctx.get(dut.r_data), out))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    got, want = zip(*seen, strict=True)
    assert got == want
    assert len(set(want)) > 50


def _run_credit_queue(rng, *, latency, want_prob, ready_prob, cycles=1500):
    """Reads issued with a credit pass a pipeline of ``latency`` registers into the queue;
    returns the words issued, the words taken, and the cycles ``room`` was high."""
    dut = CreditQueue(shape=16, latency=latency)
    depth = dut.depth
    issued, got = [], []
    flags = {"room": 0, "busy_wrong": 0, "over": 0}

    async def bench(ctx):
        pipe = [None] * latency
        nxt = 0
        for _ in range(cycles):
            room = ctx.get(dut.room)
            flags["room"] += room
            issue = room and rng.random() < want_prob
            ctx.set(dut.issue, issue)
            arriving = pipe[-1]
            ctx.set(dut.w_en, arriving is not None)
            ctx.set(dut.w_data, 0 if arriving is None else arriving)
            ctx.set(dut.r_en, int(rng.random() < ready_prob))
            await ctx.delay(1e-9)
            out = len(issued) - len(got)
            flags["busy_wrong"] += ctx.get(dut.busy) != (out > 0)
            flags["over"] += out > depth
            if ctx.get(dut.r_valid) and ctx.get(dut.r_en):
                got.append(ctx.get(dut.r_data))
            pipe = [nxt if issue else None] + pipe[:-1]
            if issue:
                issued.append(nxt)
                nxt = (nxt + 1) & 0xFFFF
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return issued, got, flags


@pytest.mark.parametrize("latency", [1, 2, 9])
@pytest.mark.parametrize("ready_prob", [1.0, 0.5, 0.1])
def test_credit_queue_keeps_every_word_in_order(rng, ready_prob, latency):
    """Behind a pipeline of ``latency`` registers, every word issued leaves in order, no more
    than the queue's ``depth`` are ever out, and ``busy`` says whether any is."""
    issued, got, flags = _run_credit_queue(rng, latency=latency, want_prob=0.8,
                                           ready_prob=ready_prob)
    assert len(got) > 100
    assert got == issued[:len(got)]
    assert flags["over"] == 0 and flags["busy_wrong"] == 0


@pytest.mark.parametrize("latency", [1, 2, 5, 9])
def test_credit_queue_keeps_a_read_a_cycle(latency):
    """The depth the queue takes for its pipeline's latency (at least two more than its
    registers) keeps ``room`` high with a reader always ready: a read every cycle."""
    rng = np.random.default_rng(0)
    issued, got, flags = _run_credit_queue(rng, latency=latency, want_prob=1.0,
                                           ready_prob=1.0, cycles=200)
    assert flags["room"] == 200 and len(issued) == 200
    assert got == issued[:len(got)] and len(got) >= 200 - latency - 2


@pytest.mark.parametrize("latency, exc", [(-1, ValueError), (2.0, TypeError)])
def test_credit_queue_refuses_a_bad_latency(latency, exc):
    with pytest.raises(exc, match=rf"^Pipeline latency must be a non-negative integer, "
                                  rf"not {latency!r}$"):
        CreditQueue(shape=8, latency=latency)


@pytest.mark.parametrize("ready_prob", [1.0, 0.5, 0.1])
def test_registered_fifo_keeps_every_word_in_order(rng, ready_prob):
    """Words written while ``w_rdy`` leave in order, whatever the reader's ready; ``pop``
    counts each word leaving the block RAM for the output queue."""
    depth = 6
    dut = RegisteredFIFO(width=16, depth=depth)
    sent, got = [], []
    pops = [0]

    async def bench(ctx):
        nxt = 0
        for _ in range(1500):
            w_en = int(rng.random() < 0.6)
            ctx.set(dut.w_en, w_en)
            ctx.set(dut.w_data, nxt)
            ctx.set(dut.o_ready, int(rng.random() < ready_prob))
            await ctx.delay(1e-9)
            if w_en and ctx.get(dut.w_rdy):
                sent.append(nxt)
                nxt = (nxt + 1) & 0xFFFF
            if ctx.get(dut.o_valid) and ctx.get(dut.o_ready):
                got.append(ctx.get(dut.o_data))
            pops[0] += ctx.get(dut.pop)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) > 100
    assert got == sent[:len(got)]
    held = len(sent) - len(got)
    # (a word popped is on its way to the output queue or in it)
    assert len(got) <= pops[0] <= len(got) + dut.queue_depth
    assert held <= depth + dut.queue_depth


def test_registered_fifo_holds_its_depth_and_the_output_register():
    dut = RegisteredFIFO(width=8, depth=4)
    accepted = []

    async def bench(ctx):
        ctx.set(dut.o_ready, 0)
        ctx.set(dut.w_en, 1)
        for n in range(12):
            ctx.set(dut.w_data, n)
            await ctx.delay(1e-9)
            if ctx.get(dut.w_rdy):
                accepted.append(n)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        ctx.set(dut.o_ready, 1)
        out = []
        for _ in range(12):
            await ctx.delay(1e-9)
            if ctx.get(dut.o_valid):
                out.append(ctx.get(dut.o_data))
            await ctx.tick()
        assert out == accepted

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert accepted == list(range(4 + dut.queue_depth))


@pytest.mark.parametrize("depth, exc", [(0, ValueError), (1, ValueError), ("4", TypeError)])
def test_registered_fifo_refuses_a_bad_depth(depth, exc):
    with pytest.raises(exc, match=r"^FIFO depth must be an integer of at least 2, not "):
        RegisteredFIFO(width=8, depth=depth)


def test_registered_ram_refuses_a_bad_depth():
    with pytest.raises(ValueError, match="RAM depth"):
        RegisteredRAM(shape=8, depth=0)


def _dp16kds(il_text, tmp_path, name):
    """Synthesize ``il_text`` for the ECP5 and return its DP16KD cells, each as its data widths
    and the top-level signal bit (or constant) on each of its read port's address and data
    pins and its write port's address and data pins (through the flip-flop that yosys puts
    behind a read port whose block RAM has no output register). Read-during-write collisions
    are declared don't-care, as ``lpu build`` does."""
    cells_of, logical = ecp5_netlist(il_text, tmp_path, name,
                                     ("w_addr", "w_data", "r_addr", "r_data", "r_rst"),
                                     commands=COLLISIONS_DONT_CARE)
    cells = []
    for c in cells_of.values():
        if c["type"] != "DP16KD":
            continue
        conn = c["connections"]
        # the read port: the one whose data pins reach the RAM's read data
        read = "B" if any(logical(conn[f"DOB{p}"][0]) != "-" for p in range(18)) else "A"
        write = "A" if read == "B" else "B"
        width = int(c["parameters"][f"DATA_WIDTH_{read}"], 2)    # (write_json: binary)
        low = {w: lo for _, w, lo in DP16KD_MODES}[width]
        pins = {f"R.AD{p}": logical(conn[f"AD{read}{p}"][0]) for p in range(low, 14)}
        pins |= {f"W.AD{p}": logical(conn[f"AD{write}{p}"][0]) for p in range(low, 14)}
        pins |= {f"R.DO{p}": logical(conn[f"DO{read}{p}"][0]) for p in range(width)}
        # (a padding bit's data in: "x" to yosys, 0 here)
        pins |= {f"W.DI{p}": "-" if v == "0" else v
                 for p, v in ((p, logical(conn[f"DI{write}{p}"][0])) for p in range(width))}
        cells.append((width, tuple(sorted(pins.items())), c["parameters"].get(f"REGMODE_{read}"),
                      logical(conn[f"RST{read}"][0])))
    return sorted(cells)


@pytest.mark.parametrize("depth, width", [(1024, 32), (600, 18), (2048, 12), (4096, 5)])
def test_ecp5_dp16kds_are_wired_as_yosys_maps_the_memory(tmp_path, depth, width):
    """On an ECP5 the RAM is DP16KDs with output registers. Their address and data pins carry
    the same bits as the DP16KDs yosys itself makes of the same memory with a register behind
    it (which leaves the block RAM's register unused). Ours reset their output registers with
    ``r_rst``."""
    mode = dp16kd_mode(depth)
    ours = _dp16kds(rtlil.convert(RegisteredRAM(shape=width, depth=depth, clearable=True),
                                  name="top", platform=TargetFamily("ecp5")), tmp_path, "ours")
    theirs = _dp16kds(rtlil.convert(RegisteredRAM(shape=width, depth=depth, clearable=True),
                                    name="top"), tmp_path, "theirs")
    assert len(ours) == -(-width // mode[1]) == len(theirs)
    assert [c[:2] for c in ours] == [c[:2] for c in theirs]
    assert {c[2] for c in ours} == {"OUTREG"} and {c[2] for c in theirs} == {"NOREG"}
    assert {c[3] for c in ours} == {"r_rst[0]"} and {c[3] for c in theirs} <= {"0", "-"}


def test_dp16kd_only_where_it_fits():
    assert RegisteredRAM(shape=8, depth=16384).dp16kd_count(TargetFamily("ecp5")) == 8
    assert RegisteredRAM(shape=8, depth=16385).dp16kd_count(TargetFamily("ecp5")) == 0
    assert RegisteredRAM(shape=40, depth=100).dp16kd_count(TargetFamily("ecp5")) == 3
    for platform in (None, TargetFamily("iCE40"), TargetFamily("ecp5", cells=False)):
        assert RegisteredRAM(shape=40, depth=100).dp16kd_count(platform) == 0


def test_registered_ram_clearable_is_a_bool():
    with pytest.raises(TypeError, match=r"^Clearable must be a bool, not 'yes'$"):
        RegisteredRAM(shape=8, depth=4, clearable="yes")
    assert "r_rst" not in RegisteredRAM(shape=8, depth=4).signature.members
