"""Board tops: an LPU with on-chip weight memory behind a UART, for amaranth-boards platforms.

:data:`BOARDS` is the one table of supported boards and their default LPU configurations.
:class:`BoardTop` puts together a PLL clock (:mod:`lpu.boards.pll`), an 8N1 UART
(:mod:`lpu.boards.uart`), the :class:`~lpu.hw.lpu.LPU` and a :class:`BurstRAM` holding the
weights. The host reaches it with ``lpu run --backend serial --port ... --baud ...``.
"""

from dataclasses import dataclass, field

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lpu.hw.lpu import LPU
from lpu.hw.params import check_positive

from .memory import BurstRAM, connect_memory, weight_memory
from .pll import PLLConfig, add_pll_sync_domain
from .uart import UARTRx, UARTTx, baud_divisor

__all__ = ["BoardSpec", "BOARDS", "WORD_BITS", "board_spec", "BurstRAM", "BoardTop", "lpu_for"]

#: Width of a board LPU's weight memory word (:func:`lpu_for`'s default), in bits: the
#: unit of ``mem_words`` and of a flash image.
WORD_BITS = 32


@dataclass(frozen=True)
class BoardSpec:
    """A supported board: its platform, its FPGA's resources and its default LPU."""

    name: str
    #: ``module:class`` of the amaranth-boards platform.
    platform: str
    #: ``ice40`` or ``ecp5``: picks the synthesis script.
    family: str
    #: Resources available on the FPGA (nextpnr's count), for the fit check and the report.
    resources: dict
    #: Weight memory: ``bram``, ``spram``, ``flash`` or ``qspi`` (:mod:`lpu.boards.memory`).
    memory: str = "bram"
    #: Keyword arguments of :func:`lpu_for` (LPU parameters and memory size).
    lpu: dict = field(default_factory=dict)
    #: Baud rate of the UART.
    baud: int = 115_200
    #: Default frequency of the LPU's clock (the PLL output), in MHz.
    freq_mhz: float = 48
    #: Bytes of the board's SPI flash, which ``--memory flash``/``qspi`` read from
    #: :data:`~lpu.boards.memory.FLASH_OFFSET` on; None where the board's revisions differ
    #: (the reader's 24-bit addresses are then the limit).
    flash_bytes: int = None
    #: Whether the bitstream is stored in that flash, below the weights (not on the GW1NR-9,
    #: whose bitstream is in its embedded flash).
    bitstream_in_flash: bool = True


#: The supported boards. Default LPU sizes: the iCEBreaker's UP5K has 5280 logic cells and 30
#: block RAMs of 512 bytes, so it gets a 16-lane, 1-PE array (4251 cells after placement; a
#: second PE, or 8 x 2, needed about 5400 before the board build dropped yosys's read-first
#: emulation around the block RAMs, some 500 cells, and has not been measured since) and 4 KiB
#: of weights; the ULX3S-85F's LFE5U-85F
#: has 83640 LUTs and 208 block RAMs of 2 KiB, so it gets the 64-lane, 4-PE array of
#: :func:`lpu.host.run.device_for` and 160 KiB of weights (80 block RAMs: the shipped model's
#: t2 image is 36864 words). The Tang Nano 9K's GW1NR-9 has 8640 LUT4s and 26 block RAMs of
#: 2 KiB: an 8-lane, 2-PE array and 8 KiB of weights. Default clocks are ones each default
#: build meets (docs/boards.md, Measured): 48 MHz on the UP5K, 100 MHz on the ECP5-85F (short of
#: the 150 MHz it should reach), 54 MHz on the GW1NR-9.
BOARDS = {
    "icebreaker": BoardSpec(
        name="icebreaker", platform="amaranth_boards.icebreaker:ICEBreakerPlatform",
        family="ice40",
        resources={"lut": 5280, "ff": 5280, "bram": 30, "spram": 4, "dsp": 8},
        lpu=dict(lanes=16, pes=1, mem_words=1024, max_k=256, max_vectors=1, max_burst=8,
                 out_depth=32, scale_depth=64),
        freq_mhz=48, flash_bytes=16 << 20),     # W25Q128JV
    "ulx3s-85f": BoardSpec(
        name="ulx3s-85f", platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        family="ecp5",
        resources={"lut": 83640, "ff": 83640, "bram": 208, "spram": 0, "dsp": 156},
        lpu=dict(lanes=64, pes=4, mem_words=40960, max_k=1024, max_vectors=16, max_burst=32,
                 out_depth=256, scale_depth=1024, registered_ram=True),
        freq_mhz=100),
    "tang-nano-9k": BoardSpec(
        name="tang-nano-9k", platform="amaranth_boards.tang_nano_9k:TangNano9kPlatform",
        family="gowin",
        resources={"lut": 8640, "ff": 6480, "bram": 26, "spram": 0, "dsp": 20},
        lpu=dict(lanes=8, pes=2, mem_words=2048, max_k=256, max_vectors=1, max_burst=8,
                 out_depth=32, scale_depth=64),
        freq_mhz=54, flash_bytes=4 << 20, bitstream_in_flash=False),   # P25Q32U
}


def board_spec(name):
    """The :class:`BoardSpec` called ``name``."""
    if name not in BOARDS:
        raise ValueError(f"Board must be one of {', '.join(BOARDS)}, not {name!r}")
    return BOARDS[name]


def lpu_for(*, lanes, pes, mem_words, max_k, max_vectors, max_burst, out_depth, scale_depth,
            word_bits=WORD_BITS, formats=("t2",), registered_ram=False):
    """An LPU whose memory port addresses ``mem_words`` words of on-chip RAM
    (``registered_ram``: :class:`~lpu.hw.streamer.WeightStreamer`'s; a :class:`BoardTop`
    then also pipelines its block RAM weights)."""
    check_positive("Memory size in words", mem_words)
    addr_width = max(1, (mem_words - 1).bit_length())
    return LPU(lanes=lanes, pes=pes, word_bits=word_bits, addr_width=addr_width,
               mem_words=mem_words, max_k=max_k, max_vectors=max_vectors, max_burst=max_burst,
               formats=list(formats), out_depth=out_depth, scale_depth=scale_depth,
               registered_ram=registered_ram)


class BoardTop(wiring.Component):
    """UART + LPU + weight memory, clocked by a PLL or the platform's default clock.

    Parameters
    ----------
    lpu : LPU
        Its memory port must address exactly ``mem_words`` words (see :func:`lpu_for`).
    clk_hz : int
        Frequency of the ``sync`` domain. With ``pll`` it may be left out: it is then the
        PLL's output frequency rounded to the hertz.
    baud : int
        UART baud rate; the bit period is ``clk_hz / baud`` rounded (:func:`baud_divisor`).
    pll : PLLConfig or None
        On a platform, the ``sync`` domain comes from this PLL on the platform's default clock
        pin (held in reset until it locks) and is constrained to its output frequency for
        place and route. None: the platform's default clock. Without a platform (simulation)
        the ``sync`` domain is the simulator's either way.
    memory : str
        Weight memory kind, one of :data:`lpu.boards.memory.MEMORY_KINDS` (block RAM, the
        UP5K's SPRAM, the configuration flash on one or four data lines). Block RAM is a
        pipelined :class:`BurstRAM` (its first word five cycles later) for an LPU built with
        ``registered_ram``, as the rest of its block RAMs.

    Raises
    ------
    ValueError
        If ``clk_hz`` is not the PLL's frequency.

    Attributes
    ----------
    uart_rx : In(1), uart_tx : Out(1)
        The serial lines; on a platform they are connected to the board's ``uart`` resource
        instead.
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)

    def __init__(self, *, lpu, clk_hz=None, baud, pll=None, memory="bram"):
        if not isinstance(lpu, LPU):
            raise TypeError(f"LPU must be an LPU, not {lpu!r}")
        if pll is not None:
            if not isinstance(pll, PLLConfig):
                raise TypeError(f"PLL configuration must be a PLLConfig, not {pll!r}")
            if clk_hz is None:
                clk_hz = round(pll.out_hz)
            elif clk_hz != round(pll.out_hz):
                raise ValueError(f"Clock frequency {clk_hz} Hz is not the PLL's output "
                                 f"frequency {round(pll.out_hz)} Hz")
        self._pll = pll
        self._lpu = lpu
        self._clk_hz = check_positive("Clock frequency", clk_hz)
        self._baud = baud
        self._divisor = baud_divisor(clk_hz, baud)
        self._ram = weight_memory(memory, lpu.streamer,
                                  pipelined=memory == "bram" and lpu.streamer.registered_ram)
        super().__init__()

    lpu = property(lambda self: self._lpu)
    clk_hz = property(lambda self: self._clk_hz)
    baud = property(lambda self: self._baud)
    divisor = property(lambda self: self._divisor)
    pll = property(lambda self: self._pll)
    ram = property(lambda self: self._ram)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lpu = lpu = self._lpu
        m.submodules.ram = ram = self._ram
        m.submodules.uart_rx = urx = UARTRx(divisor=self._divisor)
        m.submodules.uart_tx = utx = UARTTx(divisor=self._divisor)
        connect_memory(m, lpu, ram)
        wiring.connect(m, urx.o_stream, lpu.rx)
        wiring.connect(m, lpu.tx, utx.i_stream)
        if platform is None:
            m.d.comb += [urx.rx.eq(self.uart_rx), self.uart_tx.eq(utx.tx)]
        else:
            if self._pll is not None:
                add_pll_sync_domain(m, platform, self._pll)
            uart = platform.request("uart", 0)
            m.d.comb += [urx.rx.eq(uart.rx.i), uart.tx.o.eq(utx.tx)]
        return m
