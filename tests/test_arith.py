import pytest
from amaranth.sim import Simulator
from conftest import env_int

from lpu.hw.arith import SequentialDivider, SequentialMultiplier


def _run(dut, cases, result):
    got = []

    async def tb(ctx):
        for inputs in cases:
            for name, value in inputs.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 0
            while ctx.get(dut.busy):
                await ctx.tick()
                cycles += 1
            got.append((result(ctx), cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return got


@pytest.mark.parametrize("width, den_width", [(18, None), (35, 3), (8, 8)])
def test_divider(rng, width, den_width):
    dut = SequentialDivider(width, den_width=den_width)
    dw = width if den_width is None else den_width
    n = env_int("LPU_SAMPLES", 20)
    cases = [{"num": (1 << width) - 1, "den": 1}, {"num": 0, "den": (1 << dw) - 1},
             {"num": 12345 % (1 << width), "den": 0}]
    cases += [{"num": int(rng.integers(0, 1 << width)), "den": int(rng.integers(1, 1 << dw))}
              for _ in range(n)]
    got = _run(dut, cases, lambda ctx: (ctx.get(dut.quot), ctx.get(dut.rem)))
    for case, ((quot, rem), cycles) in zip(cases, got, strict=True):
        assert cycles == width
        if case["den"] == 0:
            assert quot == (1 << width) - 1         # all ones, as documented
        else:
            assert (quot, rem) == divmod(case["num"], case["den"])


def test_multiplier(rng):
    dut = SequentialMultiplier(17)
    cases = [{"a": int(rng.integers(0, 1 << 17)), "b": int(rng.integers(0, 1 << 17))}
             for _ in range(env_int("LPU_SAMPLES", 20))] + [{"a": (1 << 17) - 1,
                                                              "b": (1 << 17) - 1}]
    got = _run(dut, cases, lambda ctx: ctx.get(dut.product))
    for case, (product, cycles) in zip(cases, got, strict=True):
        assert (product, cycles) == (case["a"] * case["b"], 17)
