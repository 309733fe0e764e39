"""hw/dsp.py: registered_product, simulated, and on an ECP5 its MULT18X18D against the one yosys
makes of the same product."""

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Shape, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from conftest import ecp5_netlist

from lpu.boards.area import TargetFamily
from lpu.hw.dsp import DSP_OPERAND_BITS, registered_product


class _Product(wiring.Component):
    def __init__(self, a_shape, b_shape, out_shape):
        self._out = out_shape
        super().__init__({"a": In(a_shape), "b": In(b_shape), "en": In(1),
                          "out": Out(out_shape)})

    def elaborate(self, platform):
        m = Module()
        p = registered_product(m, platform, self.a, self.b, en=self.en, shape=self._out,
                               name="prod")
        m.d.comb += self.out.eq(p)
        return m


SHAPES = [(signed(16), unsigned(17), signed(34)), (signed(16), signed(4), signed(20)),
          (signed(18), signed(18), signed(36))]


@pytest.mark.parametrize("a_shape, b_shape, out_shape", SHAPES)
def test_registered_product_loads_with_its_enable(rng, a_shape, b_shape, out_shape):
    dut = _Product(a_shape, b_shape, out_shape)
    lo_a, hi_a = (-(1 << a_shape.width - 1), 1 << a_shape.width - 1) if a_shape.signed \
        else (0, 1 << a_shape.width)
    lo_b, hi_b = (-(1 << b_shape.width - 1), 1 << b_shape.width - 1) if b_shape.signed \
        else (0, 1 << b_shape.width)

    async def bench(ctx):
        want = 0
        for _ in range(300):
            a, b = int(rng.integers(lo_a, hi_a)), int(rng.integers(lo_b, hi_b))
            en = int(rng.random() < 0.6)
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, en)
            await ctx.tick()
            if en:
                want = a * b
            assert ctx.get(dut.out) == want

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def _mults(il_text, tmp_path, name):
    """Synthesize ``il_text`` for the ECP5; return each MULT18X18D as its operands' pins (the
    top-level signal bit or constant on each), its product pins (the output bit each reaches,
    directly or through a fabric flip-flop), its output register's clock enable and its
    REG_OUTPUT_CLK."""
    cells, logical = ecp5_netlist(il_text, tmp_path, name, ("a", "b", "en", "out"))
    mults = []
    for c in cells.values():
        if c["type"] != "MULT18X18D":
            continue
        conn = c["connections"]
        operands = sorted(tuple(logical(conn[f"{x}{i}"][0]) for i in range(DSP_OPERAND_BITS))
                          for x in "AB")
        signs = (logical(conn["SIGNEDA"][0]), logical(conn["SIGNEDB"][0]))
        product = tuple(logical(conn[f"P{i}"][0]) for i in range(2 * DSP_OPERAND_BITS))
        enable = logical(conn["CE0"][0]) if "CE0" in conn else "-"
        mults.append((operands, signs, product, enable,
                      c["parameters"].get("REG_OUTPUT_CLK", "NONE")))
    return mults


@pytest.mark.parametrize("a_shape, b_shape, out_shape", SHAPES)
def test_ecp5_product_register_is_the_dsps_own(tmp_path, a_shape, b_shape, out_shape):
    """On an ECP5 the product is one MULT18X18D whose operand and product pins carry the same
    bits as the MULT18X18D yosys makes of the same product with a register behind it; ours
    registers the product itself (REG_OUTPUT_CLK CLK0, loaded with ``en``), yosys's in the
    fabric."""
    ours = _mults(rtlil.convert(_Product(a_shape, b_shape, out_shape), name="top",
                                platform=TargetFamily("ecp5")), tmp_path, "ours")
    theirs = _mults(rtlil.convert(_Product(a_shape, b_shape, out_shape), name="top"),
                    tmp_path, "theirs")
    assert len(ours) == 1 == len(theirs)
    (o_ops, o_signs, o_prod, o_en, o_reg), (t_ops, t_signs, t_prod, _, t_reg) = ours[0], theirs[0]
    assert (o_ops, o_signs) == (t_ops, t_signs)
    # every product pin yosys uses reaches the same output bit (yosys may leave a product's
    # redundant sign bits unused and repeat the one below), and ours reach them all in order
    assert all(o == t for o, t in zip(o_prod, t_prod, strict=True) if t != "-")
    width = Shape.cast(out_shape).width
    unused = ("-",) * (2 * DSP_OPERAND_BITS - width)
    assert o_prod == tuple(f"out[{i}]" for i in range(width)) + unused
    assert (o_en, o_reg) == ("en[0]", "CLK0") and t_reg == "NONE"


def test_operand_too_wide_for_the_dsp():
    with pytest.raises(ValueError, match=r"^Operand of 18 bits \(unsigned\) does not fit the "
                                         r"DSP's 18-bit signed operand$"):
        rtlil.convert(_Product(unsigned(18), signed(4), signed(22)), name="top",
                      platform=TargetFamily("ecp5"))
