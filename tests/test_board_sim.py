"""Board-level simulation: the host driver over the simulated UART into a board's top."""

import json

import numpy as np
import pytest
from conftest import needs_verilator
from test_transformer import tiny_model

from lpu.boards.top import board_spec
from lpu.host.driver import LPUDriver
from lpu.host.fabric import FabricBackend
from lpu.host.run import CharTokenizer, default_model_path
from lpu.host.transformer import GoldenBackend, forward
from lpu.hw.protocol import FrameError, Status, decode_reply
from lpu.sim import golden
from lpu.sim.board import (
    BoardLinkSystem,
    BoardTransport,
    LineFault,
    board_clock_hz,
    fastest_baud,
    link_cycles,
    tokens_per_second,
)


def _transport(board, **kwargs):
    kwargs.setdefault("baud", fastest_baud(board))
    return BoardTransport(BoardLinkSystem(board, **kwargs))


def _short_exchange(transport, rng):
    """PING, then a matrix product (WRITE_MEM, WRITE_ACT, WRITE_SCALE, RUN, READ_OUT) checked
    against the golden model."""
    drv = LPUDriver(transport)
    w = rng.integers(-1, 2, size=(2 * drv.config["pes"] + 1, 40))
    x = rng.integers(-128, 128, size=40)
    x[0] = -128
    assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))


@needs_verilator
@pytest.mark.slow
def test_shipped_model_bit_exact_over_the_uart(rng):
    """The shipped model on the ULX3S-85F's top at the fastest baud rate its 50 MHz clock makes
    (divisor 4): all weights and scales written over the line, every projection once on one
    token of random activations, then the logits of a one-token forward pass, all equal to
    the golden model's. (A Verilator build of the 64 x 4 LPU, ~35 s, and ~10M cycles.)"""
    from lpu.host.loaders import load_hf_bitnet
    model = load_hf_bitnet(default_model_path())
    transport = _transport("ulx3s-85f")
    try:
        assert transport.system.divisor == 4
        fabric, gold = FabricBackend(LPUDriver(transport)), GoldenBackend()
        for lin in model.linears.values():
            fabric.preload(lin)
        for lin in model.linears.values():
            x = rng.integers(-128, 128, size=(lin.shape[1], 1)).astype(np.int8)
            assert np.array_equal(fabric.scaled_matmul(lin, x), gold.scaled_matmul(lin, x))
        ids = CharTokenizer(model.config["lpu_vocab"]).encode("\n")
        assert np.array_equal(forward(model, ids, fabric), forward(model, ids, gold))
        assert transport.link_cycles < transport.cycles
    finally:
        transport.close()


@needs_verilator
def test_icebreaker_small_model_bit_exact(rng):
    """The iCEBreaker's memory (1024 words) cannot hold the shipped model: a random one-layer
    model that fits, every projection and a forward pass exact."""
    # on the default 16 x 1 array: 56 of the 1024 weight words, 56 of the 64 scale words
    model = tiny_model(rng, layers=1, hidden=8, heads=1, kv_heads=1, head_dim=8, inter=8)
    transport = _transport("icebreaker")
    try:
        fabric, gold = FabricBackend(LPUDriver(transport)), GoldenBackend()
        for lin in model.linears.values():
            x = rng.integers(-128, 128, size=(lin.shape[1], 3)).astype(np.int8)
            assert np.array_equal(fabric.scaled_matmul(lin, x), gold.scaled_matmul(lin, x))
        ids = [1, 5, 7]
        assert np.array_equal(forward(model, ids, fabric), forward(model, ids, gold))
    finally:
        transport.close()


@needs_verilator
@pytest.mark.parametrize("board", ["icebreaker", pytest.param("ulx3s-85f", marks=pytest.mark.slow)])
def test_short_exchange_at_the_board_baud(rng, board):
    """The exchange at the board's own baud rate (115200: divisor 417 at 48 MHz, 868 at
    100 MHz) and at the fastest: the same results, and the cycles outside the link
    (link_cycles) the same at both, so figures at the board's baud follow from a fast run."""
    spec = board_spec(board)
    clk = board_clock_hz(spec)
    seed = int(rng.integers(1 << 30))
    runs = []
    for baud in (spec.baud, fastest_baud(board)):
        transport = _transport(board, baud=baud)
        try:
            _short_exchange(transport, np.random.default_rng(seed))
        finally:
            transport.close()
        runs.append(transport)
    real, fast = runs
    assert real.system.divisor == round(clk / spec.baud) and fast.system.divisor == 4
    assert (real.exchanges, real.link_bytes) == (fast.exchanges, fast.link_bytes)
    assert real.cycles - real.link_cycles == fast.cycles - fast.link_cycles
    assert 0 < real.link_cycles < real.cycles
    # tokens_per_second on the fast run's counts gives the real run's cycles exactly
    device = fast.cycles - fast.link_cycles
    assert tokens_per_second(bytes_per_token=fast.link_bytes, exchanges_per_token=fast.exchanges,
                             device_cycles_per_token=device, baud=spec.baud,
                             clk_hz=clk) == clk / real.cycles


class _Recording(BoardTransport):
    """Keeps every reply as it came off the line."""

    def __init__(self, system):
        self.replies = []
        super().__init__(system)

    def exchange(self, frame):
        got = super().exchange(frame)
        self.replies.append(got)
        return got


def _statuses(replies):
    out = []
    for got in replies:
        try:
            out.append(decode_reply(got)[0])
        except FrameError:
            out.append("garbled")
    return out


@needs_verilator
def test_garbled_bits_on_the_line_are_caught_and_resent(rng):
    """A bit inverted on each line: the board's CRC check refuses the request (BAD_CRC), the
    driver's CRC check refuses the reply, and the driver resends both; the results are exact."""
    board = "icebreaker"
    seed = int(rng.integers(1 << 30))
    clean = _Recording(BoardLinkSystem(board, baud=fastest_baud(board)))
    try:
        _short_exchange(clean, np.random.default_rng(seed))
    finally:
        clean.close()
    # reply byte 5 is a payload byte of the PING reply; request byte 6 + 4 + 4 the first data
    # byte of the first WRITE_MEM (after the six bytes of the PING request)
    faulty = _Recording(BoardLinkSystem(board, baud=fastest_baud(board),
                                        garble_request=(14, 3), garble_reply=(5, 0)))
    try:
        _short_exchange(faulty, np.random.default_rng(seed))
    finally:
        faulty.close()
    assert set(_statuses(clean.replies)) == {Status.OK}
    got = _statuses(faulty.replies)
    assert got[0] == "garbled" and got[1:3] == [Status.OK, Status.BAD_CRC]
    assert got.count("garbled") == 1 and got.count(Status.BAD_CRC) == 1
    assert faulty.exchanges == clean.exchanges + 2


def test_line_fault_inverts_one_data_bit():
    from amaranth.hdl import Module
    from amaranth.sim import Simulator

    from lpu.boards.uart import UARTTx
    divisor = 5
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=divisor)
    m.submodules.fault = fault = LineFault(divisor=divisor, byte=1, bit=6)
    m.d.comb += fault.i.eq(tx.tx)
    data = [0x3C, 0x81, 0x5A]
    line = []

    async def tb(ctx):
        for byte in data:
            ctx.set(tx.i_stream.payload, byte)
            ctx.set(tx.i_stream.valid, 1)
            await ctx.tick().until(tx.i_stream.ready)
        ctx.set(tx.i_stream.valid, 0)
        for _ in range(12 * divisor):
            await ctx.tick()

    async def probe(ctx):
        async for _, _, o in ctx.tick().sample(fault.o):
            line.append(o)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(probe)
    sim.run_until(4 * 10 * divisor * 1e-6)
    # decode the line as an 8N1 receiver: the middle of each bit after a falling edge
    got, i = [], 0
    while i < len(line) - 10 * divisor:
        if line[i] == 0:
            bits = [line[i + divisor // 2 + k * divisor] for k in range(10)]
            got.append(sum(b << k for k, b in enumerate(bits[1:9])))
            i += 10 * divisor
        else:
            i += 1
    assert got == [data[0], data[1] ^ (1 << 6), data[2]]


def test_link_cycles_and_tokens_per_second():
    # one exchange of 10 bytes at divisor 4: 400 line cycles less half a bit each way
    assert link_cycles(10, 1, 4) == 10 * 10 * 4 - 2 * 2
    assert link_cycles(10, 1, 217) == 10 * 10 * 217 - 2 * 109
    assert tokens_per_second(bytes_per_token=10, exchanges_per_token=1,
                             device_cycles_per_token=1000, baud=115200,
                             clk_hz=25_000_000) == 25_000_000 / (link_cycles(10, 1, 217) + 1000)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(board="nexys"), ValueError,
     r"^Board must be one of icebreaker, ulx3s-85f, tang-nano-9k, not 'nexys'$"),
    (dict(board="icebreaker", baud=20_000_000), ValueError,
     r"^Baud rate 20000000 is too fast for a 48 MHz clock \(at most 12000000\)$"),
    (dict(board="icebreaker", baud=5_000_000), ValueError,
     r"^Baud rate 5000000 is off by 4\.0% at 48 MHz \(divisor 10\); at most 2% is allowed$"),
    (dict(board="icebreaker", baud=0), ValueError,
     r"^Baud rate must be a positive integer, not 0$"),
    (dict(board="icebreaker", garble_request=(0, 8)), ValueError,
     r"^Garbled bit must be an integer from 0 to 7, not 8$"),
    (dict(board="icebreaker", garble_reply=(-1, 0)), ValueError,
     r"^Garbled byte index must be a non-negative integer, not -1$"),
    (dict(board="icebreaker", garble_reply=5), TypeError,
     r"^Garbled reply position must be a \(byte, bit\) pair, not 5$"),
])
def test_board_link_system_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        BoardLinkSystem(**kwargs)


def test_board_transport_needs_a_board_system():
    from conftest import small_lpu

    from lpu.sim.system import LPUSystem
    with pytest.raises(TypeError, match=r"^System must be a BoardLinkSystem, not <"):
        BoardTransport(LPUSystem(small_lpu()))


# ---------------------------------------------------------------- lpu run --backend board


@pytest.mark.parametrize("args, msg", [
    (["--backend", "board"], "The board backend needs a board (--board)"),
    (["--backend", "sim", "--board", "icebreaker"],
     "A board is used by the board backend only, not by 'sim'"),
    (["--backend", "board", "--board", "nexys"],
     "Board must be one of icebreaker, ulx3s-85f, tang-nano-9k, not 'nexys'"),
    (["--backend", "board", "--board", "ulx3s-85f", "--baud", "32000000"],
     "Baud rate 32000000 is too fast for a 100 MHz clock (at most 25000000)"),
])
def test_run_board_errors_exit_2(capsys, args, msg):
    from lpu.cli import main
    assert main(["run", *args]) == 2
    assert capsys.readouterr().err == f"lpu: error: {msg}\n"


def test_run_board_that_cannot_hold_the_model_exits_2(capsys):
    from lpu.cli import main
    assert main(["run", "--backend", "board", "--board", "icebreaker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lpu: error: The model's weights need ")
    assert err.endswith(" words of memory, more than the icebreaker's 1024\n")


@needs_verilator
@pytest.mark.slow
def test_run_board_matches_golden(capsys):
    from lpu.cli import main
    args = ["run", "--prompt", "\\n4+5=", "--max-tokens", "2", "--json"]
    assert main([*args, "--backend", "board", "--board", "ulx3s-85f"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert main([*args, "--backend", "golden"]) == 0
    gold = json.loads(capsys.readouterr().out)
    assert board["tokens"] == gold["tokens"]
    link = board["link"]
    clk = board_clock_hz(board_spec("ulx3s-85f"))
    assert (link["board"], link["baud"], link["divisor"]) == ("ulx3s-85f", clk // 4, 4)
    assert 0 < link["cycles"] < board["cycles"]
    assert link["cycles"] == link_cycles(link["bytes"], link["exchanges"], 4)
    n = len(board["tokens"])
    assert link["tokens_per_s"] == round(clk * n / board["cycles"], 4)
    assert link["tokens_per_s_at_board_baud"] == round(tokens_per_second(
        bytes_per_token=link["bytes"] / n, exchanges_per_token=link["exchanges"] / n,
        device_cycles_per_token=(board["cycles"] - link["cycles"]) / n, baud=115200,
        clk_hz=clk), 4)


@pytest.mark.parametrize("shape, msg", [
    ((200, 16), r"^The model's scales need \d+ words of scale memory, more than the "
                r"icebreaker's 64$"),
    ((2, 512), r"^The model's rows of 512 inputs are longer than the icebreaker's maximum row "
               r"length \(256\)$"),
])
def test_board_that_cannot_hold_a_model(rng, shape, msg):
    from lpu.host.run import check_board_holds
    from lpu.host.tensors import QuantLinear, QuantModel
    lin = QuantLinear("p", rng.integers(-1, 2, size=shape), 0.5)
    with pytest.raises(ValueError, match=msg):
        check_board_holds(QuantModel({}, linears={"p": lin}), "icebreaker")
