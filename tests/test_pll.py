from fractions import Fraction

import pytest
from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, IOPort, Module
from amaranth.lib import io
from conftest import env_int

from lpu.boards.pll import (
    PLL_FAMILIES,
    PLLClockDomain,
    PLLConfig,
    ecp5_pll,
    gowin_pll,
    ice40_pll,
    pll_config,
)

MHZ = 1_000_000
SAMPLES = env_int("LPU_PLL_SAMPLES", 6)

# The documented ranges (MHz) each search must keep to: iCE40 TN1251/icepll, ECP5 DS1044/ecppll,
# GW1N(R)-9 C6/I5 (apicula gowin_pll).
RANGES = {
    "ice40": dict(f_in=(10, 133), f_out=(16, 275), pfd=(10, 133), vco=(533, 1066)),
    "ecp5": dict(f_in=(8, 400), f_out=(Fraction("3.125"), 400), pfd=(Fraction("3.125"), 400),
                 vco=(400, 800)),
    "gowin": dict(f_in=(3, 400), f_out=(Fraction("3.125"), 600), pfd=(3, 400),
                  vco=(400, 1200)),
}
# The board clocks the searches are used with.
INPUTS = {"ice40": [12 * MHZ], "ecp5": [25 * MHZ], "gowin": [27 * MHZ]}


def _formula(cfg):
    """Output, phase-detector and VCO frequency from the parameters, by each family's formula."""
    p, f_in = cfg.params, cfg.in_hz
    if cfg.family == "ice40":
        pfd = f_in / (p["DIVR"] + 1)
        vco = pfd * (p["DIVF"] + 1)
        return vco / 2 ** p["DIVQ"], pfd, vco
    if cfg.family == "ecp5":
        pfd = f_in / p["CLKI_DIV"]
        out = pfd * p["CLKFB_DIV"]
        return out, pfd, out * p["CLKOP_DIV"]
    pfd = f_in / (p["IDIV_SEL"] + 1)
    out = pfd * (p["FBDIV_SEL"] + 1)
    return out, pfd, out * p["ODIV_SEL"]


def _within(value, rng_mhz):
    lo, hi = rng_mhz
    return lo * MHZ <= value <= hi * MHZ


def _check_params(cfg):
    p = cfg.params
    if cfg.family == "ice40":
        assert 0 <= p["DIVR"] <= 15 and 0 <= p["DIVF"] <= 127 and 1 <= p["DIVQ"] <= 6
        # icepll's loop-filter choice by phase-detector frequency
        bounds = [17, 26, 44, 66, 101]
        assert p["FILTER_RANGE"] == 1 + sum(cfg.pfd_hz >= b * MHZ for b in bounds)
    elif cfg.family == "ecp5":
        assert 1 <= p["CLKI_DIV"] <= 128 and 1 <= p["CLKFB_DIV"] <= 80
        assert 1 <= p["CLKOP_DIV"] <= 128 and p["CLKOP_CPHASE"] == p["CLKOP_DIV"] - 1
    else:
        assert 0 <= p["IDIV_SEL"] <= 63 and 0 <= p["FBDIV_SEL"] <= 63
        assert p["ODIV_SEL"] in (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128)


def _achievable(family, f_in):
    """Every output frequency the family's dividers reach within the ranges, enumerated
    independently of the search (outputs first, then whether some VCO divider fits)."""
    r = RANGES[family]
    found = set()
    if family == "ice40":
        for divr in range(16):
            pfd = f_in / (divr + 1)
            for divf in range(128):
                for divq in range(1, 7):
                    vco = pfd * (divf + 1)
                    out = vco / 2 ** divq
                    if all(_within(v, r[k]) for k, v in (("pfd", pfd), ("vco", vco),
                                                          ("f_out", out))):
                        found.add(out)
        return found
    divs = ([(d, d) for d in range(1, 129)], range(1, 81), range(1, 129)) if family == "ecp5" \
        else ([(d + 1, d) for d in range(64)], range(1, 65),
              (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128))
    for in_div, _ in divs[0]:
        pfd = f_in / in_div
        if not _within(pfd, r["pfd"]):
            continue
        for mult in divs[1]:
            out = pfd * mult
            if _within(out, r["f_out"]) and any(_within(out * od, r["vco"]) for od in divs[2]):
                found.add(out)
    return found


@pytest.mark.parametrize("family", list(PLL_FAMILIES))
def test_pll_search_is_the_formula_within_the_ranges_and_nearest(rng, family):
    r = RANGES[family]
    for f_in in INPUTS[family]:
        reachable = sorted(_achievable(family, Fraction(f_in)))
        lo, hi = (Fraction(x) * MHZ for x in r["f_out"])
        requests = [lo, hi] + [Fraction(int(x)) for x in rng.uniform(lo, hi, SAMPLES)]
        for req in requests:
            cfg = pll_config(family, f_in, req)
            assert isinstance(cfg, PLLConfig) and cfg.family == family
            assert cfg.in_hz == f_in and cfg.requested_hz == req
            assert (cfg.out_hz, cfg.pfd_hz, cfg.vco_hz) == _formula(cfg)
            _check_params(cfg)
            for key in ("pfd", "vco", "f_out"):
                assert _within({"pfd": cfg.pfd_hz, "vco": cfg.vco_hz,
                                "f_out": cfg.out_hz}[key], r[key])
            assert cfg.out_hz in reachable
            assert abs(cfg.out_hz - req) == min(abs(f - req) for f in reachable)


@pytest.mark.parametrize("family, f_in, f_out", [
    ("ice40", 12 * MHZ, 48 * MHZ), ("ecp5", 25 * MHZ, 150 * MHZ), ("gowin", 27 * MHZ, 54 * MHZ)])
def test_board_clocks_are_met_exactly(family, f_in, f_out):
    cfg = pll_config(family, f_in, f_out)
    assert cfg.out_hz == f_out
    report = cfg.report()
    assert report["achieved_mhz"] == report["requested_mhz"] == f_out / MHZ
    assert report["in_mhz"] == f_in / MHZ and report["params"] == cfg.params


def test_ecp5_ties_go_to_the_vco_nearest_600_mhz():
    # 100 MHz from 25 MHz: CLKOP_DIV 4..8 all keep the VCO in 400-800 MHz; ecppll picks 600.
    assert ecp5_pll(25 * MHZ, 100 * MHZ).vco_hz == 600 * MHZ


def test_pll_accepts_floats_and_fractions():
    assert ice40_pll(12e6, 48e6) == ice40_pll(12 * MHZ, Fraction(48 * MHZ))


@pytest.mark.parametrize("search, f_in, f_out, msg", [
    (ice40_pll, 12 * MHZ, 300 * MHZ, r"PLL output frequency must be from 16 to 275 MHz for the "
     r"iCE40 PLL \(SB_PLL40\), not 300 MHz"),
    (ice40_pll, 12 * MHZ, 15 * MHZ, r"PLL output frequency must be from 16 to 275 MHz for the "
     r"iCE40 PLL \(SB_PLL40\), not 15 MHz"),
    (ice40_pll, 5 * MHZ, 48 * MHZ, r"PLL input frequency must be from 10 to 133 MHz for the "
     r"iCE40 PLL \(SB_PLL40\), not 5 MHz"),
    (ecp5_pll, 25 * MHZ, 401 * MHZ, r"PLL output frequency must be from 3.125 to 400 MHz for "
     r"the ECP5 PLL \(EHXPLLL\), not 401 MHz"),
    (ecp5_pll, 500 * MHZ, 100 * MHZ, r"PLL input frequency must be from 8 to 400 MHz for the "
     r"ECP5 PLL \(EHXPLLL\), not 500 MHz"),
    (gowin_pll, 27 * MHZ, 700 * MHZ, r"PLL output frequency must be from 3.125 to 600 MHz for "
     r"the Gowin PLL \(rPLL\), not 700 MHz"),
    (gowin_pll, 27 * MHZ, 0, r"PLL output frequency must be positive, not 0 MHz"),
])
def test_pll_rejects_out_of_range_requests(search, f_in, f_out, msg):
    with pytest.raises(ValueError, match=rf"^{msg}$"):
        search(f_in, f_out)


def test_pll_errors():
    with pytest.raises(TypeError, match=r"^PLL output frequency must be a number of Hz, "
                                        r"not '48'$"):
        ice40_pll(12 * MHZ, "48")
    with pytest.raises(ValueError, match=r"^FPGA family must be one of ice40, ecp5, gowin, "
                                         r"not 'xc7'$"):
        pll_config("xc7", 12 * MHZ, 48 * MHZ)
    with pytest.raises(TypeError, match=r"^PLL configuration must be a PLLConfig, not 48$"):
        PLLClockDomain(config=48, pin=None)
    with pytest.raises(ValueError, match=r"^A Gowin PLL needs its device \(gowin_device\), "
                                         r"not None$"):
        PLLClockDomain(config=gowin_pll(27 * MHZ, 54 * MHZ), pin=None)


@pytest.mark.parametrize("family, primitive, f_in, f_out", [
    ("ice40", "SB_PLL40_PAD", 12 * MHZ, 48 * MHZ), ("ecp5", "EHXPLLL", 25 * MHZ, 150 * MHZ),
    ("gowin", "rPLL", 27 * MHZ, 54 * MHZ)])
def test_pll_primitive_carries_the_parameters(family, primitive, f_in, f_out):
    cfg = pll_config(family, f_in, f_out)
    pin = io.SingleEndedPort(IOPort(1, name="clk_pin"), direction="i")
    m = Module()
    m.domains.sync = ClockDomain("sync")
    m.submodules.clock = PLLClockDomain(config=cfg, pin=pin, gowin_device="GW1NR-9C")
    text = rtlil.convert(m, name="top", ports=[])
    cell = text[text.index(f"cell \\{primitive} "):]
    cell = cell[:cell.index("\n  end")]
    for name, value in cfg.params.items():
        if family == "ice40":
            width = {"DIVR": 4, "DIVF": 7, "DIVQ": 3, "FILTER_RANGE": 3}[name]
            expect = f"{width}'{value:0{width}b}"
        else:
            expect = f"{value}"
        assert f"parameter \\{name} {expect}\n" in cell
    if family == "gowin":
        assert 'parameter \\FCLKIN "27"\n' in cell and 'parameter \\DEVICE "GW1NR-9C"\n' in cell
    if family == "ecp5":
        # RTLIL writes a cell's attributes just before it
        attrs = text[:text.index("cell \\EHXPLLL ")].rsplit("cell ", 1)[-1]
        assert 'attribute \\FREQUENCY_PIN_CLKI "25"\n' in attrs
        assert 'attribute \\FREQUENCY_PIN_CLKOP "150"\n' in attrs


def test_lock_reset_holds_until_lock_plus_the_hold_and_drops_with_lock():
    from amaranth.sim import Simulator

    from lpu.boards.pll import LockReset

    cycles = 5
    m = Module()
    m.domains.hold = ClockDomain("hold", reset_less=True)
    m.submodules.dut = dut = LockReset(cycles=cycles, domain="hold")
    seen = []

    async def tb(ctx):
        for lock in [0] * 4 + [1] * 12 + [0] * 4 + [1] * 12:
            ctx.set(dut.lock, lock)
            await ctx.tick("hold")
            seen.append((lock, ctx.get(dut.ready)))

    sim = Simulator(m)
    sim.add_clock(1e-6, domain="hold")
    sim.add_testbench(tb)
    sim.run()
    # ready follows lock through two synchronizer stages, then the count of `cycles` ticks
    # (rising only), one more register stage on both edges
    locks = [lk for lk, _ in seen]
    model = []
    sync, timer, ready = [0, 0], 0, 0
    for lk in locks:
        s2 = sync[1]
        if not s2:
            timer, ready = 0, 0
        elif timer == cycles:
            ready = 1
        else:
            timer += 1
        sync = [lk, sync[0]]
        model.append(ready)
    assert [r for _, r in seen] == model
    assert 0 < sum(model) < len(model) and model[:4 + 2 + cycles] == [0] * (4 + 2 + cycles)

