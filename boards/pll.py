"""PLLs: the divider settings nearest a requested clock, and the PLL primitive that makes it.

One search per FPGA family, in exact (rational) arithmetic, over the dividers each PLL has and
within the ranges its data sheet states; each returns the achievable output frequency nearest
the request as a :class:`PLLConfig`:

* iCE40 ``SB_PLL40_PAD``/``SB_PLL40_CORE`` in simple feedback mode (as ``icepll`` does,
  iCE40 sysCLOCK PLL design guide TN1251):
  ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``, the phase detector at
  ``f_in / (DIVR + 1)`` in 10-133 MHz, the VCO at ``f_out * 2**DIVQ`` in 533-1066 MHz, the
  output in 16-275 MHz; ``FILTER_RANGE`` follows the phase-detector frequency.
* ECP5 ``EHXPLLL`` with feedback from ``CLKOP`` (as ``ecppll`` does, ECP5 data sheet DS1044):
  ``f_out = f_in * CLKFB_DIV / CLKI_DIV``, the VCO at ``f_out * CLKOP_DIV`` in 400-800 MHz
  (ties broken towards 600 MHz, as ``ecppll``), the phase detector at ``f_in / CLKI_DIV`` in
  3.125-400 MHz, the output in 3.125-400 MHz.
* Gowin GW1N(R)-9 ``rPLL`` (as apicula's ``gowin_pll`` for the Tang Nano 9K):
  ``f_out = f_in * (FBDIV_SEL + 1) / (IDIV_SEL + 1)``, the VCO at ``f_out * ODIV_SEL`` in
  400-1200 MHz, the phase detector in 3-400 MHz, the output in 3.125-600 MHz.

:class:`PLL` instantiates the primitive on a clock pin; :class:`PLLClockDomain` clocks a clock
domain with its output, held in reset until the PLL reports lock.
"""

from dataclasses import dataclass
from fractions import Fraction
from numbers import Rational, Real

from amaranth.hdl import ClockDomain, ClockSignal, Const, Instance, Module, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["PLLConfig", "PLL_FAMILIES", "pll_config", "ice40_pll", "ecp5_pll", "gowin_pll",
           "PLL", "PLLClockDomain", "LockReset", "add_pll_sync_domain"]

_MHZ = 1_000_000


@dataclass(frozen=True)
class PLLConfig:
    """A PLL setting: the divider parameters and the frequencies they give (in Hz, exact).

    ``params`` are the primitive's divider parameters by their primitive names
    (``DIVR``/``DIVF``/``DIVQ``/``FILTER_RANGE``, ``CLKI_DIV``/``CLKFB_DIV``/``CLKOP_DIV``/
    ``CLKOP_CPHASE``, ``IDIV_SEL``/``FBDIV_SEL``/``ODIV_SEL``).
    """

    family: str
    primitive: str
    in_hz: Fraction
    requested_hz: Fraction
    out_hz: Fraction
    pfd_hz: Fraction
    vco_hz: Fraction
    params: dict

    def report(self):
        """The setting as JSON-ready values (frequencies in MHz)."""
        return {"primitive": self.primitive,
                "in_mhz": float(self.in_hz / _MHZ),
                "requested_mhz": float(self.requested_hz / _MHZ),
                "achieved_mhz": float(self.out_hz / _MHZ),
                "pfd_mhz": float(self.pfd_hz / _MHZ),
                "vco_mhz": float(self.vco_hz / _MHZ),
                "params": dict(self.params)}


def _hz(what, value):
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{what} must be a number of Hz, not {value!r}")
    value = Fraction(value) if isinstance(value, Rational) else Fraction(float(value))
    if value <= 0:
        raise ValueError(f"{what} must be positive, not {float(value / _MHZ):g} MHz")
    return value


def _check_range(what, name, value, lo, hi):
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be from {float(lo / _MHZ):g} to {float(hi / _MHZ):g} MHz "
                         f"for the {name}, not {float(value / _MHZ):g} MHz")


def _mhz(x):
    return Fraction(x) * _MHZ


def _nearest(name, ranges, in_hz, out_hz, settings, *, tie=lambda vco: 0):
    """``(f_in, req, (out, pfd, vco, params))``: of ``settings(f_in)`` -- every setting within
    the ``ranges`` as ``(out, pfd, vco, params)`` -- the one nearest ``out_hz``, ties to the
    smallest ``tie(vco)`` and then to the first found."""
    f_in = _hz("PLL input frequency", in_hz)
    req = _hz("PLL output frequency", out_hz)
    _check_range("PLL input frequency", name, f_in, *ranges["f_in"])
    _check_range("PLL output frequency", name, req, *ranges["f_out"])
    best = best_key = None
    for setting in settings(f_in):
        key = (abs(setting[0] - req), tie(setting[2]))
        if best is None or key < best_key:
            best, best_key = setting, key
    if best is None:
        raise ValueError(f"No {name} setting reaches {float(req / _MHZ):g} MHz from "
                         f"{float(f_in / _MHZ):g} MHz")
    return f_in, req, best


def _within(ranges, what, value):
    lo, hi = ranges[what]
    return lo <= value <= hi


# iCE40: TN1251 and icepll. FILTER_RANGE by phase-detector frequency (upper bounds, MHz).
_ICE40 = dict(f_in=(_mhz(10), _mhz(133)), f_out=(_mhz(16), _mhz(275)),
              pfd=(_mhz(10), _mhz(133)), vco=(_mhz(533), _mhz(1066)))
_ICE40_FILTER = ((_mhz(17), 1), (_mhz(26), 2), (_mhz(44), 3), (_mhz(66), 4), (_mhz(101), 5))


def _ice40_settings(f_in):
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not _within(_ICE40, "pfd", pfd):
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not _within(_ICE40, "vco", vco):
                continue
            for divq in range(1, 7):
                out = vco / 2 ** divq
                if _within(_ICE40, "f_out", out):
                    yield out, pfd, vco, {"DIVR": divr, "DIVF": divf, "DIVQ": divq}


def ice40_pll(in_hz, out_hz):
    """The iCE40 PLL setting nearest ``out_hz`` from a clock of ``in_hz``.

    Raises
    ------
    ValueError
        If ``in_hz`` or ``out_hz`` is outside the PLL's input or output range.
    """
    f_in, req, (out, pfd, vco, params) = _nearest("iCE40 PLL (SB_PLL40)", _ICE40, in_hz, out_hz,
                                                  _ice40_settings)
    filter_range = next((r for hi, r in _ICE40_FILTER if pfd < hi), 6)
    return PLLConfig(family="ice40", primitive="SB_PLL40", in_hz=f_in, requested_hz=req,
                     out_hz=out, pfd_hz=pfd, vco_hz=vco,
                     params={**params, "FILTER_RANGE": filter_range})


# ECP5: DS1044 (sysCLOCK PLL timing) and ecppll.
_ECP5 = dict(f_in=(_mhz(8), _mhz(400)), f_out=(_mhz("3.125"), _mhz(400)),
             pfd=(_mhz("3.125"), _mhz(400)), vco=(_mhz(400), _mhz(800)))
_ECP5_VCO_CENTRE = _mhz(600)


def _ecp5_settings(f_in):
    for clki_div in range(1, 129):
        pfd = f_in / clki_div
        if not _within(_ECP5, "pfd", pfd):
            continue
        for clkfb_div in range(1, 81):
            out = pfd * clkfb_div
            if not _within(_ECP5, "f_out", out):
                continue
            for clkop_div in range(1, 129):
                vco = out * clkop_div
                if _within(_ECP5, "vco", vco):
                    yield out, pfd, vco, {"CLKI_DIV": clki_div, "CLKFB_DIV": clkfb_div,
                                          "CLKOP_DIV": clkop_div,
                                          "CLKOP_CPHASE": clkop_div - 1}


def ecp5_pll(in_hz, out_hz):
    """The ECP5 ``EHXPLLL`` setting nearest ``out_hz`` from a clock of ``in_hz`` (ties to the
    VCO nearest 600 MHz).

    Raises
    ------
    ValueError
        If ``in_hz`` or ``out_hz`` is outside the PLL's input or output range.
    """
    f_in, req, (out, pfd, vco, params) = _nearest(
        "ECP5 PLL (EHXPLLL)", _ECP5, in_hz, out_hz, _ecp5_settings,
        tie=lambda vco: abs(vco - _ECP5_VCO_CENTRE))
    return PLLConfig(family="ecp5", primitive="EHXPLLL", in_hz=f_in, requested_hz=req,
                     out_hz=out, pfd_hz=pfd, vco_hz=vco, params=params)


# Gowin GW1N(R)-9 C6/I5: data sheet DS117 and apicula's gowin_pll limits for that device.
_GOWIN = dict(f_in=(_mhz(3), _mhz(400)), f_out=(_mhz("3.125"), _mhz(600)),
              pfd=(_mhz(3), _mhz(400)), vco=(_mhz(400), _mhz(1200)))
_GOWIN_ODIV = (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128)


def _gowin_settings(f_in):
    for idiv in range(64):
        pfd = f_in / (idiv + 1)
        if not _within(_GOWIN, "pfd", pfd):
            continue
        for fbdiv in range(64):
            out = pfd * (fbdiv + 1)
            if not _within(_GOWIN, "f_out", out):
                continue
            for odiv in _GOWIN_ODIV:
                if _within(_GOWIN, "vco", out * odiv):
                    yield out, pfd, out * odiv, {"IDIV_SEL": idiv, "FBDIV_SEL": fbdiv,
                                                 "ODIV_SEL": odiv}


def gowin_pll(in_hz, out_hz):
    """The Gowin GW1N-9 ``rPLL`` setting nearest ``out_hz`` from a clock of ``in_hz``.

    Raises
    ------
    ValueError
        If ``in_hz`` or ``out_hz`` is outside the PLL's input or output range.
    """
    f_in, req, (out, pfd, vco, params) = _nearest("Gowin PLL (rPLL)", _GOWIN, in_hz, out_hz,
                                                  _gowin_settings)
    return PLLConfig(family="gowin", primitive="rPLL", in_hz=f_in, requested_hz=req,
                     out_hz=out, pfd_hz=pfd, vco_hz=vco, params=params)


#: The PLL search of each FPGA family.
PLL_FAMILIES = {"ice40": ice40_pll, "ecp5": ecp5_pll, "gowin": gowin_pll}


def pll_config(family, in_hz, out_hz):
    """The PLL setting nearest ``out_hz`` on an FPGA of ``family`` (see :data:`PLL_FAMILIES`)."""
    if family not in PLL_FAMILIES:
        raise ValueError(f"FPGA family must be one of {', '.join(PLL_FAMILIES)}, not {family!r}")
    return PLL_FAMILIES[family](in_hz, out_hz)


def _mhz_str(hz):
    return f"{float(hz / _MHZ):.6g}"


class PLL(wiring.Component):
    """The PLL primitive of ``config``'s family, on the clock input ``pin``.

    Parameters
    ----------
    config : PLLConfig
    pin : io.PortLike
        The clock input, as ``platform.request(..., dir="-")`` returns it. An iCE40 PLL takes
        it directly (``SB_PLL40_PAD``: the iCEBreaker's 12 MHz clock arrives on the PLL's own
        input pad); the other families through an input buffer.
    gowin_device : str
        The ``DEVICE`` parameter of a Gowin ``rPLL`` (the family name, e.g. ``GW1NR-9C``).

    Attributes
    ----------
    clk : Out(1)
        The PLL's output clock, at ``config.out_hz``.
    locked : Out(1)
        The PLL's lock output (asynchronous to every clock).
    """

    clk: Out(1)
    locked: Out(1)

    def __init__(self, *, config, pin, gowin_device=None):
        if not isinstance(config, PLLConfig):
            raise TypeError(f"PLL configuration must be a PLLConfig, not {config!r}")
        if config.family == "gowin" and gowin_device is None:
            raise ValueError("A Gowin PLL needs its device (gowin_device), not None")
        self._config = config
        self._pin = pin
        self._gowin_device = gowin_device
        super().__init__()

    config = property(lambda self: self._config)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        p = cfg.params
        if cfg.family == "ice40":
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=Const(p["DIVR"], 4), p_DIVF=Const(p["DIVF"], 7),
                p_DIVQ=Const(p["DIVQ"], 3), p_FILTER_RANGE=Const(p["FILTER_RANGE"], 3),
                i_PACKAGEPIN=self._pin.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=self.clk, o_LOCK=self.locked)
            return m
        m.submodules.clk_buf = buf = io.Buffer("i", self._pin)
        if cfg.family == "ecp5":
            # As ecppll writes it: CLKOP fed back, phase CLKOP_DIV - 1 (no shift), and the
            # frequencies as attributes for nextpnr's timing analysis.
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=_mhz_str(cfg.in_hz),
                a_FREQUENCY_PIN_CLKOP=_mhz_str(cfg.out_hz),
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
                a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKOP_ENABLE="ENABLED", p_FEEDBK_PATH="CLKOP",
                p_CLKI_DIV=p["CLKI_DIV"], p_CLKFB_DIV=p["CLKFB_DIV"],
                p_CLKOP_DIV=p["CLKOP_DIV"], p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
                p_CLKOP_FPHASE=0,
                i_CLKI=buf.i, i_CLKFB=self.clk, i_RST=Const(0), i_STDBY=Const(0),
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(0),
                i_PHASESTEP=Const(0), i_PHASELOADREG=Const(0), i_PLLWAKESYNC=Const(0),
                i_ENCLKOP=Const(0),
                o_CLKOP=self.clk, o_LOCK=self.locked)
        else:
            m.submodules.pll = Instance(
                "rPLL",
                p_FCLKIN=_mhz_str(cfg.in_hz), p_DEVICE=self._gowin_device,
                p_IDIV_SEL=p["IDIV_SEL"], p_FBDIV_SEL=p["FBDIV_SEL"], p_ODIV_SEL=p["ODIV_SEL"],
                p_DYN_IDIV_SEL="false", p_DYN_FBDIV_SEL="false", p_DYN_ODIV_SEL="false",
                p_CLKFB_SEL="internal",
                i_CLKIN=buf.i, i_CLKFB=Const(0), i_RESET=Const(0), i_RESET_P=Const(0),
                i_FBDSEL=Const(0, 6), i_IDSEL=Const(0, 6), i_ODSEL=Const(0, 6),
                i_PSDA=Const(0, 4), i_DUTYDA=Const(0, 4), i_FDLY=Const(0, 4),
                o_CLKOUT=self.clk, o_LOCK=self.locked)
        return m


class PLLClockDomain(wiring.Component):
    """Drives a clock domain from a :class:`PLL`, in reset until the PLL locks and a little after.

    The domain itself is defined by the module that uses this one (as Amaranth wants domains
    defined at or above every user); this drives its clock and reset signals.

    The reset is released ``hold_s`` seconds (at the PLL frequency) after lock is seen, in step
    with the domain's clock. The hold covers the iCE40 block RAMs, which read as zero for about
    3 us after configuration (the reason Amaranth's iCE40 platform holds its reset 15 us).

    Parameters
    ----------
    config : PLLConfig
    pin : io.PortLike
        The clock input (see :class:`PLL`).
    domain : str
        Name of the clock domain driven.
    gowin_device : str
        See :class:`PLL`.
    hold_s : float
        Reset hold after lock, in seconds.

    Attributes
    ----------
    clk : Out(1)
        The domain's clock; this is the signal a clock constraint goes on.
    locked : Out(1)
        The domain is out of reset.
    """

    clk: Out(1)
    locked: Out(1)

    def __init__(self, *, config, pin, domain="sync", gowin_device=None, hold_s=15e-6):
        self._pll = PLL(config=config, pin=pin, gowin_device=gowin_device)
        self._domain = domain
        self._hold = max(1, int(hold_s * config.out_hz))
        super().__init__()

    config = property(lambda self: self._pll.config)
    domain = property(lambda self: self._domain)

    def elaborate(self, platform):
        m = Module()
        m.submodules.pll = pll = self._pll
        # The hold logic runs on the PLL clock without a reset of its own.
        m.domains.pll_hold = ClockDomain("pll_hold", reset_less=True, local=True)
        m.submodules.hold = hold = LockReset(cycles=self._hold, domain="pll_hold")
        m.d.comb += [self.clk.eq(pll.clk), ClockSignal("pll_hold").eq(self.clk),
                     ClockSignal(self._domain).eq(self.clk),
                     hold.lock.eq(pll.locked),
                     ResetSignal(self._domain).eq(~hold.ready), self.locked.eq(hold.ready)]
        return m


def add_pll_sync_domain(m, platform, config):
    """Define ``m``'s ``sync`` domain, clocked by a PLL of ``config`` on ``platform``'s default
    clock pin and held in reset until it locks, and constrain it to the PLL's frequency for
    place and route."""
    m.domains.sync = ClockDomain("sync")
    m.submodules.clock = clock = PLLClockDomain(
        config=config, pin=platform.request(platform.default_clk, dir="-"),
        gowin_device=getattr(platform, "family", None))
    platform.add_clock_constraint(clock.clk, float(config.out_hz))


class LockReset(wiring.Component):
    """``ready`` rises ``cycles`` clock cycles after ``lock`` is seen high, and falls in the cycle
    after ``lock`` is seen low; ``lock`` is asynchronous (two synchronizer stages).

    The synchronizer's flip-flops start at 0, the state every FPGA family configures them to
    (iCE40 flip-flops start at 0 whatever their initial value says), so ``lock`` is seen low
    for the first two cycles at least and the timer is loaded then, with ``ready`` low:
    ``domain`` needs no reset.

    Parameters
    ----------
    cycles : int
    domain : str
        A domain without reset, clocked by the PLL.

    Attributes
    ----------
    lock : In(1)
    ready : Out(1)
    """

    lock: In(1)
    ready: Out(1)

    def __init__(self, *, cycles, domain):
        self._cycles = cycles
        self._domain = domain
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        lock = Signal()
        m.submodules.lock_sync = FFSynchronizer(self.lock, lock, o_domain=self._domain)
        # The timer counts up from `start` and `ready` is its top bit, set after `cycles` + 1
        # ticks: no comparator between the count and `ready` (whose fan-out is the reset of a
        # whole design).
        width = (self._cycles + 1).bit_length()
        start = (1 << width) - (self._cycles + 1)
        timer = Signal(width + 1, init=start)
        with m.If(~lock):
            m.d[self._domain] += timer.eq(start)
        with m.Elif(~timer[-1]):
            m.d[self._domain] += timer.eq(timer + 1)
        m.d.comb += self.ready.eq(timer[-1])
        return m
