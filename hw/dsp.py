"""A multiplier whose product register is the DSP block's own on an ECP5.

yosys maps a product to an ECP5 ``MULT18X18D`` without any of its registers (its ``mul2dsp``
leaves every ``REG_*`` at ``NONE``), so a product registered in the fabric waits for the DSP's
combinational multiply and the route out of the DSP in one cycle. :func:`registered_product`
instantiates the ``MULT18X18D`` itself with ``REG_OUTPUT_CLK = "CLK0"``: the product register is
inside the DSP, and the route into the next stage starts at a register.
"""

from amaranth.hdl import ClockSignal, Instance, Shape, Signal

from .pe import cell_family

__all__ = ["DSP_OPERAND_BITS", "registered_product"]

#: A ``MULT18X18D``'s operands: 18-bit two's complement (``SIGNEDA``/``SIGNEDB`` high).
DSP_OPERAND_BITS = 18


def registered_product(m, platform, a, b, *, en, shape, name):
    """A register of ``shape`` loaded with ``a * b`` in each cycle ``en`` is high.

    ``a`` and ``b`` are Amaranth values, signed or unsigned, that fit an 18-bit two's
    complement operand (at most 18 bits signed, 17 unsigned). On an ECP5 the register is a
    ``MULT18X18D``'s output register; elsewhere (and in simulation) a fabric register after
    the product, with the same cycles.
    """
    out = Signal(shape, name=name, reset_less=True)
    if cell_family(platform) != "ecp5":
        with m.If(en):
            m.d.sync += out.eq(a * b)
        return out
    ops = []
    for op in (a, b):
        s = op.shape()
        if s.width + (not s.signed) > DSP_OPERAND_BITS:
            raise ValueError(f"Operand of {s.width} bits ({'signed' if s.signed else 'unsigned'})"
                             f" does not fit the DSP's {DSP_OPERAND_BITS}-bit signed operand")
        wide = Signal(Shape(DSP_OPERAND_BITS, signed=True), name=f"{name}_op{len(ops)}")
        m.d.comb += wide.eq(op)            # sign- or zero-extended
        ops.append(wide)
    p = Signal(2 * DSP_OPERAND_BITS, name=f"{name}_p")
    pins = {f"i_{port}{i}": ops[n][i] for n, port in enumerate("AB")
            for i in range(DSP_OPERAND_BITS)}
    pins.update({f"o_P{i}": p[i] for i in range(2 * DSP_OPERAND_BITS)})
    m.submodules[name + "_dsp"] = Instance(
        "MULT18X18D",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_GSR="DISABLED",
        i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
        i_CLK0=ClockSignal("sync"), i_CE0=en, i_RST0=0,
        **pins)
    m.d.comb += out.eq(p[:Shape.cast(shape).width])
    return out
