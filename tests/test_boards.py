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
