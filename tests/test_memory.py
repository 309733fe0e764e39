import json
import re

import numpy as np
import pytest
from amaranth.sim import Simulator
from conftest import env_int
from test_transformer import tiny_model

from lpu.boards.build import _platform_class
from lpu.boards.memory import (
    BANK_WORDS,
    BurstRAM,
    SPIFlashReader,
    SPRAMBurstRAM,
    weight_memory,
)
from lpu.boards.top import BoardTop, board_spec, lpu_for
from lpu.host import image
from lpu.host.driver import LPUDriver, PysimTransport
from lpu.host.fabric import FabricBackend
from lpu.host.transformer import GoldenBackend
from lpu.hw.formats import WeightFormat
from lpu.hw.lpu import LPU
from lpu.hw.streamer import StreamError, WeightStreamer, mem_request_layout
from lpu.sim import golden, pysim
from lpu.sim.memory_models import SimulatedFlash
from lpu.sim.system import LPUSystem, StreamerSystem

LAYOUT = mem_request_layout(10, 8)


def _run_port(dut, *, writes=(), bursts=(), rng, ready_prob=1.0, interleave=False,
              max_cycles=200_000, gap=0):
    """Drive a memory's ports: ``writes`` (addr, data) then (or, with ``interleave``, beside)
    ``bursts`` (addr, len), taking words with random ``ready``; with ``gap``, up to that many
    idle cycles after each request. Returns the words taken with their cycle numbers, and the
    memory contents each burst saw (writes accepted before it)."""
    taken = []
    order = []                  # ("w", addr, data) and ("r", addr, len) in accepted order
    state = {"cycle": 0, "done": False}
    total = sum(n for _, n in bursts)

    async def writer(ctx):
        for addr, value in writes:
            ctx.set(dut.wr.payload, {"addr": addr, "data": value})
            ctx.set(dut.wr.valid, 1)
            await ctx.tick().until(dut.wr.ready)
            order.append(("w", addr, value))
        ctx.set(dut.wr.valid, 0)
        state["writes_done"] = True

    async def requester(ctx):
        if not interleave:
            while not state.get("writes_done"):
                await ctx.tick()
        for addr, n in bursts:
            ctx.set(dut.req.payload, {"addr": addr, "len": n})
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
            order.append(("r", addr, n))
            if gap:
                ctx.set(dut.req.valid, 0)
                for _ in range(int(rng.integers(0, gap + 1))):
                    await ctx.tick()
        ctx.set(dut.req.valid, 0)

    async def sink(ctx):
        while len(taken) < total:
            ready = int(rng.random() < ready_prob)
            ctx.set(dut.resp.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.resp.valid, dut.resp.payload)
            state["cycle"] += 1
            if valid and ready:
                taken.append((state["cycle"], int(payload)))
            if state["cycle"] > max_cycles:
                raise TimeoutError(f"{len(taken)} of {total} words after {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(writer, background=True)
    sim.add_testbench(requester, background=True)
    sim.add_testbench(sink)
    sim.run()
    # what each burst must read: the memory as the writes accepted before it left it
    mem, expect = {}, []
    for kind, addr, x in order:
        if kind == "w":
            mem[addr] = x
        else:
            expect += [mem.get(a, 0) for a in range(addr, addr + x)]
    return taken, expect


def _bursts(rng, n, depth, max_len, contiguous=0.5):
    out, addr = [], 0
    for _ in range(n):
        length = int(rng.integers(1, max_len + 1))
        if rng.random() >= contiguous or addr + length > depth:
            addr = int(rng.integers(0, depth - length + 1))
        out.append((addr, length))
        addr += length
    return out


def test_spram_has_the_timing_of_burstram(rng):
    """Reads after writes: the same words on the same cycles as BurstRAM (the behavioural
    SPRAM model without a platform)."""
    depth = 64
    writes = [(a, int(rng.integers(1 << 32))) for a in rng.permutation(depth)]
    bursts = _bursts(rng, env_int("LPU_MEM_BURSTS", 30), depth, 8)
    seed = int(rng.integers(1 << 31))
    runs = []
    for cls in (BurstRAM, SPRAMBurstRAM):
        dut = cls(words=depth, word_bits=32, request_layout=LAYOUT)
        runs.append(_run_port(dut, writes=writes, bursts=bursts,
                              rng=np.random.default_rng(seed), ready_prob=0.6))
    (ram, expect), (spram, _) = runs
    assert [w for _, w in ram] == expect
    assert spram == ram


def test_spram_writes_wait_for_bursts(rng):
    """Writes offered during bursts wait (one port); every burst reads the memory as the
    writes accepted before it left it."""
    depth = 32
    writes = [(int(rng.integers(depth)), int(rng.integers(1 << 16))) for _ in range(60)]
    bursts = _bursts(rng, 30, depth, 8)
    dut = SPRAMBurstRAM(words=depth, word_bits=16, request_layout=LAYOUT)
    taken, expect = _run_port(dut, writes=writes, bursts=bursts, rng=rng, ready_prob=0.5,
                              interleave=True)
    assert [w for _, w in taken] == expect


@pytest.mark.parametrize("width", [1, 4])
def test_flash_reader_bursts(rng, width):
    """Random bursts (half of them continuing the previous one) with random backpressure read
    the image's little-endian words."""
    words = 48
    img = rng.integers(0, 256, size=4 * words, dtype=np.uint8)
    offset = int(rng.integers(0, 1 << 16))
    dut = SimulatedFlash(words=words, word_bits=32, request_layout=LAYOUT, image=img.tobytes(),
                         offset=offset, width=width)
    bursts = _bursts(rng, env_int("LPU_MEM_BURSTS", 12), words, 8)
    taken, _ = _run_port(dut, bursts=bursts, rng=rng, ready_prob=0.4)
    mem = image.image_words(img, 32)
    assert [w for _, w in taken] == [mem[a] for addr, n in bursts for a in range(addr, addr + n)]


def test_flash_drops_writes(rng):
    """A write is taken (so WRITE_MEM completes), raises wr_dropped and changes nothing."""
    img = rng.integers(0, 256, size=64, dtype=np.uint8)
    dut = SimulatedFlash(words=16, word_bits=32, request_layout=LAYOUT, image=img.tobytes())
    seen = {}

    async def tb(ctx):
        seen["before"] = ctx.get(dut.wr_dropped)
        ctx.set(dut.wr.payload, {"addr": 2, "data": 0x12345678})
        ctx.set(dut.wr.valid, 1)
        await ctx.tick().until(dut.wr.ready)
        ctx.set(dut.wr.valid, 0)
        seen["after"] = ctx.get(dut.wr_dropped)
        ctx.set(dut.req.payload, {"addr": 0, "len": 4})
        ctx.set(dut.req.valid, 1)
        await ctx.tick().until(dut.req.ready)
        ctx.set(dut.req.valid, 0)
        ctx.set(dut.resp.ready, 1)
        words = []
        while len(words) < 4:
            _, _, valid, payload = await ctx.tick().sample(dut.resp.valid, dut.resp.payload)
            if valid:
                words.append(int(payload))
        seen["words"] = words

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert (seen["before"], seen["after"]) == (0, 1)
    assert seen["words"] == image.image_words(img, 32)[:4]


@pytest.mark.parametrize("fmt, width", [("t2", 1), ("t5", 4)])
def test_streamer_reads_weights_from_flash(rng, fmt, width):
    """A job's weights stream from the flash model through the reader, bit-exact against the
    golden model."""
    st = WeightStreamer(lanes=4, pes=2, word_bits=32, addr_width=10, max_k=32, max_burst=4,
                        formats=["t2", "t5"], max_vectors=2)
    rows, cols, base, vectors = 6, 21, 5, 2
    w = rng.integers(-1, 2, size=(rows, cols)).astype(np.int8)
    x = rng.integers(-128, 128, size=(cols, vectors))
    img = image.weight_image(w, fmt, lanes=st.lanes, pes=st.pes, word_bits=st.word_bits)
    flash = SimulatedFlash(words=st.mem_words, word_bits=32,
                           request_layout=mem_request_layout(st.addr_width, st.max_burst),
                           image=bytes(4 * base) + img.tobytes(), width=width)
    desc = image.descriptor(st, base=base, rows=rows, cols=cols, fmt=fmt, vectors=vectors)
    res = pysim.run_streamer(StreamerSystem(st, memory=flash), desc, image.activation_entries(
        x, lanes=st.lanes, act_tiles=st.act_tiles), seed=int(rng.integers(1 << 31)),
        ready_prob=0.7)
    mode = WeightFormat(fmt).mode
    tiles = golden.tile_matvec(w, x, lanes=st.lanes, pes=st.pes, mode=mode)
    ref = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"], tiles["last"],
                               tiles.get("vector"), act_bits=st.act_bits, mode=mode)
    assert res["error"] == StreamError.NONE
    assert np.array_equal(res["outputs"], ref)
    assert res["perf"]["words_read"] == len(img) // 4


def test_fabric_backend_on_preloaded_flash(rng):
    """A model's weights programmed into flash (model_image) and used in place: every
    projection through the protocol, the reader and the flash model equals the golden backend,
    and no WRITE_MEM is sent."""
    model = tiny_model(rng, layers=1, hidden=16, heads=2, kv_heads=1, inter=24)
    lpu = LPU(lanes=8, pes=2, word_bits=32, addr_width=10, max_k=32, max_vectors=2,
              timeout=300)
    st = lpu.streamer
    img, layout = image.model_image(model.linears.values(), lanes=st.lanes, pes=st.pes,
                                    word_bits=st.word_bits, mem_words=st.mem_words)
    flash = SimulatedFlash(words=st.mem_words, word_bits=32,
                           request_layout=mem_request_layout(st.addr_width, st.max_burst),
                           image=img, width=4)
    transport = PysimTransport(LPUSystem(lpu, memory=flash))
    drv = LPUDriver(transport)
    sent = []
    write_mem = drv.write_mem
    drv.write_mem = lambda *a, **k: (sent.append(a), write_mem(*a, **k))
    fabric, gold = FabricBackend(drv, preloaded=layout), GoldenBackend()
    try:
        for lin in model.linears.values():
            x = rng.integers(-128, 128, size=(lin.shape[1], 2)).astype(np.int8)
            assert np.array_equal(fabric.scaled_matmul(lin, x), gold.scaled_matmul(lin, x))
    finally:
        transport.close()
    assert sent == []


def test_model_image_is_the_fabric_layout(rng):
    """The image holds each projection's weight image at its layout address, one after another
    in order."""
    model = tiny_model(rng, layers=1)
    lins = list(model.linears.values())
    img, layout = image.model_image(lins, lanes=8, pes=2, word_bits=32, ternary_format="t5")
    assert list(layout) == [lin.name for lin in lins]
    words = np.frombuffer(img, dtype=np.uint8)
    at = 0                                   # each image starts where the previous one ended
    for lin in lins:
        one = image.weight_image(lin.weights, "t5", lanes=8, pes=2, word_bits=32)
        assert layout[lin.name] == at
        assert np.array_equal(words[4 * at:4 * at + len(one)], one)
        at += len(image.image_words(one, 32))
    assert len(img) == 4 * at


def _rtlil(board, memory, **cfg):
    spec = board_spec(board)
    platform = _platform_class(spec)()
    params = dict(lanes=4, pes=1, mem_words=256, max_k=64, max_vectors=1, max_burst=8,
                  out_depth=8, scale_depth=8) | cfg
    top = BoardTop(lpu=lpu_for(**params), clk_hz=int(platform.default_clk_frequency),
                   baud=spec.baud, memory=memory)
    plan = platform.prepare(top, name="top")
    return plan.files["top.il"]


def test_board_tops_instantiate_the_memories():
    """On the platforms: four SB_SPRAM256KA for 32768 words of 32 bits on the iCEBreaker; the
    flash pins (one data line or four) on the iCEBreaker, and USRMCLK for the ULX3S's flash
    clock."""
    il = _rtlil("icebreaker", "spram", mem_words=32768)
    assert il.count("cell \\SB_SPRAM256KA") == 4
    il = _rtlil("icebreaker", "flash", mem_words=1 << 16)
    assert "spi_flash_1x_0__cs" in il and "SB_SPRAM256KA" not in il
    il = _rtlil("icebreaker", "qspi", mem_words=1 << 16)
    assert "spi_flash_4x_0__dq" in il
    il = _rtlil("ulx3s-85f", "flash", mem_words=1 << 16)
    assert il.count("cell \\USRMCLK") == 1


def test_tang_nano_flash_is_on_its_mspi_pins():
    """The Tang Nano 9K's flash: the reader drives the platform's spi_flash_1x pins (60 CS#,
    59 SCK, 61 to the flash, 62 from it) and the packer releases the MSPI pins to the fabric."""
    spec = board_spec("tang-nano-9k")
    platform = _platform_class(spec)()
    top = BoardTop(lpu=lpu_for(lanes=4, pes=1, mem_words=1 << 16, max_k=64, max_vectors=1,
                               max_burst=8, out_depth=8, scale_depth=8),
                   clk_hz=int(platform.default_clk_frequency), baud=spec.baud, memory="flash")
    plan = platform.prepare(top, name="top")
    cst = plan.files["top.cst"]
    for sub, pin in (("cs", 60), ("clk", 59), ("copi", 61), ("cipo", 62)):
        assert re.search(rf'IO_LOC "spi_flash_1x_0__{sub}[^"]*" {pin};', cst), sub
    assert "--mspi_as_gpio" in plan.files["build_top.sh"]


@pytest.mark.parametrize("make, exc, msg", [
    (lambda: SPRAMBurstRAM(words=64, word_bits=24, request_layout=LAYOUT), ValueError,
     r"^SPRAM word width must be a multiple of 16, not 24$"),
    (lambda: SPRAMBurstRAM(words=32769, word_bits=32, request_layout=mem_request_layout(16, 8)),
     ValueError, r"^SPRAM of 32769 words of 32 bits needs 6 SB_SPRAM256KA, the iCE40 UP5K has 4 "
                 r"\(at most 32768 words\)$"),
    (lambda: BurstRAM(words=8, word_bits=8, request_layout=8), TypeError,
     r"^Request layout must be a StructLayout with addr and len, not 8$"),
    (lambda: SPIFlashReader(words=8, word_bits=12, request_layout=LAYOUT), ValueError,
     r"^Flash word width must be a multiple of 8, not 12$"),
    (lambda: SPIFlashReader(words=8, word_bits=32, request_layout=LAYOUT, width=2), ValueError,
     r"^Flash data lines must be 1 or 4, not 2$"),
    (lambda: SPIFlashReader(words=8, word_bits=32, request_layout=LAYOUT, offset=-1),
     ValueError, r"^Flash offset must be a non-negative integer, not -1$"),
    (lambda: SPIFlashReader(words=1 << 22, word_bits=32, request_layout=LAYOUT), ValueError,
     r"^Flash image at byte 1048576 of 4194304 words of 32 bits ends at byte 17825792, past "
     r"24-bit addresses \(16 MiB\)$"),
    (lambda: weight_memory("sdram", WeightStreamer(lanes=4, pes=1)), ValueError,
     r"^Weight memory must be one of bram, spram, flash, qspi, not 'sdram'$"),
    (lambda: weight_memory("bram", WeightStreamer(lanes=4, pes=1, addr_width=8), offset=0),
     ValueError, r"^Options offset apply only to flash, not to 'bram'$"),
    (lambda: _rtlil("ulx3s-85f", "qspi"), ValueError,
     r"^Platform ULX3S_85F_Platform has no spi_flash_4x resource for a 4-line flash$"),
    (lambda: image.model_image(tiny_model(np.random.default_rng(0)).linears.values(), lanes=8,
                               pes=2, word_bits=32, mem_words=100), ValueError,
     r"^Weight image of \d+ words does not fit device memory \(100 words\)$"),
    (lambda: image.model_image([], lanes=8, pes=2, word_bits=32, ternary_format="b1"),
     ValueError, r"^Ternary format must be 't2' or 't5', not 'b1'$"),
    (lambda: StreamerSystem(WeightStreamer(lanes=4, pes=1, addr_width=4), init=[1],
                            memory=BurstRAM(words=16, word_bits=32, request_layout=LAYOUT)),
     ValueError, r"^A memory component and a timing or contents for the memory model are "
                 r"exclusive$"),
    (lambda: _rtlil("ulx3s-85f", "spram"), ValueError,
     r"^SPRAM \(SB_SPRAM256KA\) exists only on iCE40 UP devices, not on platform "
     r"ULX3S_85F_Platform$"),
    (lambda: BurstRAM(words=16, word_bits=32, request_layout=LAYOUT, pipelined="yes"),
     TypeError, r"^Pipelined must be a bool, not 'yes'$"),
])
def test_memory_errors(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize("board, args, msg", [
    ("tang-nano-9k", ["--memory", "qspi"],
     "Platform TangNano9kPlatform has no spi_flash_4x resource for a 4-line flash"),
    ("ulx3s-85f", ["--memory", "qspi"],
     "Platform ULX3S_85F_Platform has no spi_flash_4x resource for a 4-line flash"),
    ("tang-nano-9k", ["--memory", "flash", "--mem-words", str(3 << 18 | 1)],
     "Flash image at byte 1048576 of 786433 words of 32 bits ends at byte 4194308, past "
     "tang-nano-9k's 4 MiB flash"),
    ("icebreaker", ["--memory", "flash", "--mem-words", str(15 << 18 | 1)],
     "Flash image at byte 1048576 of 3932161 words of 32 bits ends at byte 16777220, past "
     "icebreaker's 16 MiB flash"),
])
def test_flash_build_refused(tmp_path, capsys, board, args, msg):
    """A flash the board does not have, or an image past its end: refused before any tool
    runs, and nothing is written."""
    from lpu.cli import main
    out = tmp_path / "b"
    assert main(["build", "--board", board, *args, "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"lpu: error: {msg}\n"
    assert not out.exists()


def test_preloaded_layout_refuses_unknown_projection(rng):
    model = tiny_model(rng, layers=1)
    lin = next(iter(model.linears.values()))
    fabric = FabricBackend(driver=None, preloaded={})
    with pytest.raises(ValueError, match=rf"^{lin.name}: not in the preloaded weight layout$"):
        fabric.preload(lin)


def test_flash_image_command(tmp_path, capsys):
    """The shipped model: its t5 image fits the UP5K's SPRAM-sized 32768 words, its t2 image
    does not (exit 2, nothing written)."""
    from lpu.boards.top import board_spec
    from lpu.cli import main
    from lpu.host.loaders import load_hf_bitnet
    from lpu.host.run import default_model_path
    model = load_hf_bitnet(default_model_path())
    shape = {k: board_spec("icebreaker").lpu[k] for k in ("lanes", "pes")}
    t2, _ = image.model_image(model.linears.values(), **shape, word_bits=32)
    img, layout = image.model_image(model.linears.values(), **shape, word_bits=32,
                                    ternary_format="t5")
    out = tmp_path / "w.bin"
    args = ["flash-image", "--board", "icebreaker", "--mem-words", "32768", "-o", str(out)]
    assert main(args) == 2
    assert capsys.readouterr().err == (f"lpu: error: Weight image of {len(t2) // 4} words does "
                                       f"not fit device memory (32768 words)\n")
    assert not out.exists()
    assert main([*args, "--format", "t5", "--offset", "0x200000"]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert out.read_bytes() == img
    assert info["layout"] == layout and info["offset"] == 0x200000
    assert info["words"] == len(img) // 4 <= 32768


def test_flash_image_names_the_boards_programmer(tmp_path, capsys):
    """Each board's command for the image at the offset; an offset the programmers cannot
    take, or a device memory past the board's flash, is refused before anything is written."""
    from lpu.cli import main
    out = tmp_path / "w.bin"
    base = ["flash-image", "--format", "t5", "--mem-words", "32768", "-o", str(out)]
    assert main([*base, "--board", "tang-nano-9k", "--lanes", "16", "--pes", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"program at byte 0x100000: openFPGALoader -b tangnano9k --external-flash -o 0x100000 "
        f"{out}")
    assert main([*base, "--board", "icebreaker", "--offset", "0x180000"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"program at byte 0x180000: iceprog -o 1536k {out}")
    out.unlink()
    out.with_suffix(".json").unlink()
    assert main([*base, "--board", "ulx3s-85f", "--offset", "1000"]) == 2
    assert capsys.readouterr().err == ("lpu: error: Flash offset must be a multiple of 1024, "
                                       "not 1000\n")
    assert main([*base, "--board", "tang-nano-9k", "--offset", "0x3f0000"]) == 2
    assert capsys.readouterr().err == (
        "lpu: error: Flash image at byte 4128768 of 32768 words of 32 bits ends at byte "
        "4259840, past tang-nano-9k's 4 MiB flash\n")
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("ready_prob", [1.0, 0.6])
def test_pipelined_burstram_reads_across_banks(rng, ready_prob):
    """A pipelined BurstRAM of three banks (the last one short) returns every burst's words,
    in order, whatever the reader's ready; a reader always ready gets the first word six
    cycles after the first request and then one word per cycle, across bursts and banks."""
    words = 2 * BANK_WORDS + 100
    layout = mem_request_layout(12, 16)
    addrs = [0, 1, BANK_WORDS - 3, BANK_WORDS, 2 * BANK_WORDS - 5, 2 * BANK_WORDS + 90,
             *rng.integers(0, words, 40)]
    writes = [(int(a), int(rng.integers(1 << 32))) for a in dict.fromkeys(addrs)]
    bursts = [(BANK_WORDS - 6, 16), (2 * BANK_WORDS - 7, 9), (0, 1), (5, 3),
              *_bursts(rng, 20, words, 16)]
    dut = BurstRAM(words=words, word_bits=32, request_layout=layout, pipelined=True)
    taken, expect = _run_port(dut, writes=writes, bursts=bursts, rng=rng, ready_prob=ready_prob)
    assert [w for _, w in taken] == expect
    if ready_prob == 1.0:
        cycles = [c for c, _ in taken]
        assert cycles == list(range(cycles[0], cycles[0] + len(cycles)))


def test_pipelined_burstram_runs_dry_between_bursts(rng):
    """Requests with idle cycles between them, taken as soon as offered: the FIFO empties
    between bursts, and no word is offered that is not there."""
    words = BANK_WORDS + 200
    layout = mem_request_layout(12, 16)
    writes = [(a, int(rng.integers(1 << 32))) for a in rng.choice(words, 300, replace=False)]
    bursts = _bursts(rng, 40, words, 16)
    dut = BurstRAM(words=words, word_bits=32, request_layout=layout, pipelined=True)
    taken, expect = _run_port(dut, writes=writes, bursts=bursts, rng=rng, gap=12)
    assert [w for _, w in taken] == expect


def test_pipelined_burstram_first_word_latency():
    """One burst into an idle pipelined BurstRAM: its first word is offered in the sixth
    cycle after the request's handshake, the unpipelined RAM's in the first."""
    layout = mem_request_layout(10, 8)
    firsts = []
    for pipelined in (False, True):
        dut = BurstRAM(words=64, word_bits=32, request_layout=layout, pipelined=pipelined)

        async def bench(ctx, dut=dut):
            ctx.set(dut.resp.ready, 1)
            ctx.set(dut.req.payload, {"addr": 3, "len": 2})
            ctx.set(dut.req.valid, 1)
            await ctx.tick().until(dut.req.ready)
            ctx.set(dut.req.valid, 0)
            for n in range(1, 10):
                if ctx.get(dut.resp.valid):
                    firsts.append(n)
                    return
                await ctx.tick()

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        sim.run()
    assert firsts == [1, 6]
