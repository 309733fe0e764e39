"""``lpu bench density``: the PE array's ternary MAC/s per logic cell (iCE40) or LUT4 (ECP5)
after place and route, at the Fmax nextpnr reports.

The array is placed and routed on the board's FPGA in a harness that keeps every input and output
of the array live, so that nothing is optimized away, and adds as little logic as it can:

* Tiles come from block RAM initialized with random activations and t2 codes (and the
  ``first``/``last`` framing of row blocks of ``tiles`` tiles): block RAM read data costs no
  logic cells, as in the LPU, where weights stream from block RAM. The address counter advances
  when the array takes a tile.
* The array's output ``ready`` comes from a button through two flip-flops, so its stall logic is
  the real one and not folded away.
* Every bit of the P sums is folded by a tree of registered 4-input XORs into one LED.
* The clock is the board's PLL at the frequency asked for (the constraint nextpnr works to).

Every logic cell (LUT4) the placed design uses is counted, harness included: the figure is the
MAC/s of the array over the cells of the whole placed design, so it errs low.
"""

import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from lpu.hw.array import PEArray
from lpu.hw.params import check_choice, check_positive
from lpu.hw.pe import check_pe_params

from .build import board_platform, board_pll, device_name, implement
from .pll import PLLConfig, add_pll_sync_domain
from .sweep import CELL_NAME, DENSITY_TARGETS, NAIVE_DENSITY, density_cells, slowest_clock
from .top import board_spec

__all__ = ["DensityHarness", "DENSITY_SUITE", "build_density", "run_density_bench",
           "format_table"]

#: Configurations measured by ``lpu bench density``: on the UP5K, whose 30 block RAMs of 16 bits
#: feed at most 480 tile bits a cycle, the most MACs a cycle they feed (16 x 8: 384 bits) and
#: wider PEs with fewer accumulators (32 x 3: 450 bits); on the LFE5U-85F the LPU's default
#: 64 x 4.
DENSITY_SUITE = [
    dict(board="icebreaker", lanes=16, pes=8, freq=60),
    dict(board="icebreaker", lanes=32, pes=3, freq=60),
    dict(board="ulx3s-85f", lanes=64, pes=4, freq=200),
]

# Tile sources: block RAM on the iCE40 (one block per 16 bits of a tile, 256 deep), a ring of
# flip-flops on the ECP5 (one tile, rotating).
_SOURCE = {"ice40": ("bram", 256), "ecp5": ("ring", 1)}
# Bits the ring rotates by per tile: prime, so every bit visits every lane.
_RING_STEP = 37


class DensityHarness(wiring.Component):
    """A :class:`PEArray` fed from random tiles in block RAM, its sums folded into one output.

    Parameters
    ----------
    array : PEArray
    pll : PLLConfig or None
        On a platform, the ``sync`` domain comes from this PLL on the default clock pin.
    depth : int
        Tiles held in block RAM (a multiple of ``tiles``).
    tiles : int
        Tiles per row block (``first`` on the first, ``last`` on the last).
    source : str
        ``"bram"``: tiles read from block RAM, which costs no logic cells. ``"ring"``: the
        random tiles of the first ``depth`` addresses, concatenated, in a ring of flip-flops
        that rotates by a prime number of bits per tile: no LUT4s either, and no block RAM
        clock-to-output (5.8 ns on the ECP5 without the output register yosys does not map),
        but a logic cell per bit on the iCE40. The rotation moves bits across fields, so its
        tiles also hold the reserved t2 code 0b11 (read as -1) and random framing.
    seed : int
        Seed of the random tiles.

    Attributes
    ----------
    stall : In(1)
        Held high, the array's output is not taken (on a platform: the board's button 0).
    fold : Out(1)
        XOR of every output bit (valid and sums), through a tree of registers (on a platform:
        LED 0).
    """

    stall: In(1)
    fold: Out(1)

    def __init__(self, *, array, pll=None, depth=256, tiles=8, source="bram", seed=1):
        if not isinstance(array, PEArray):
            raise TypeError(f"Array must be a PEArray, not {array!r}")
        if pll is not None and not isinstance(pll, PLLConfig):
            raise TypeError(f"PLL configuration must be a PLLConfig, not {pll!r}")
        check_positive("Tiles per row block", tiles)
        check_positive("Tile memory depth", depth)
        if depth % tiles:
            raise ValueError(f"Tile memory depth ({depth}) must be a multiple of the tiles per "
                             f"row block ({tiles})")
        self._array = array
        self._pll = pll
        self._depth = depth
        self._tiles = tiles
        self._source = check_choice("Tile source", source, ("bram", "ring"))
        self._seed = seed
        super().__init__()

    array = property(lambda self: self._array)

    def tile_words(self):
        """The block RAM's contents: one packed ``i_stream`` payload per address."""
        rng = random.Random(self._seed)
        layout = self._array.input_layout
        words = []
        for a in range(self._depth):
            fields = {
                "act": [rng.randrange(-128, 128) >> (8 - self._array.act_bits)
                        for _ in range(self._array.lanes)],
                # t2 codes: bit 0 is +1, bit 1 is -1; 0b11 is never written.
                "weight": [[rng.choice((0, 1, 2)) for _ in range(self._array.lanes)]
                           for _ in range(self._array.pes)],
                "first": int(a % self._tiles == 0),
                "last": int(a % self._tiles == self._tiles - 1),
            }
            words.append(layout.const(fields).as_value().value)
        return words

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = array = self._array
        layout = array.input_layout
        take = array.i_stream.ready
        m.d.comb += array.i_stream.valid.eq(1)
        if self._source == "bram":
            m.submodules.tiles = tiles = Memory(shape=layout.size, depth=self._depth,
                                                init=self.tile_words())
            rd = tiles.read_port()
            addr = Signal(range(self._depth))
            with m.If(take):
                m.d.sync += addr.eq(addr + 1)
            # The read port follows the address the next tile comes from, and holds its data
            # while the array stalls.
            m.d.comb += [rd.en.eq(take), rd.addr.eq(addr), array.i_stream.payload.eq(rd.data)]
        else:
            bits = layout.size * self._depth
            ring = Signal(bits, reset_less=True, init=sum(w << (i * layout.size)
                                          for i, w in enumerate(self.tile_words())))
            with m.If(take):
                m.d.sync += ring.eq(ring.rotate_left(_RING_STEP))
            m.d.comb += array.i_stream.payload.eq(ring[:layout.size])

        stall = Signal()
        # A tree of registered 4-input XORs: each LUT shares its logic cell with its register.
        bits = Cat(array.o_stream.valid, array.o_stream.payload.as_value())
        level = 0
        while len(bits) > 1:
            level += 1
            groups = [bits[i:i + 4] for i in range(0, len(bits), 4)]
            folded = Signal(len(groups), name=f"fold{level}")
            m.d.sync += [folded[j].eq(g.xor()) for j, g in enumerate(groups)]
            bits = folded
        m.d.comb += self.fold.eq(bits)
        if platform is None:
            m.d.comb += stall.eq(self.stall)
        else:
            if self._pll is not None:
                add_pll_sync_domain(m, platform, self._pll)
            button = platform.request("button", 0)
            m.submodules.stall_sync = FFSynchronizer(button.i, stall)
            led = platform.request("led", 0)
            m.d.comb += led.o.eq(self.fold)
        m.d.comb += array.o_stream.ready.eq(~stall)
        return m


def _density_spec(board):
    spec = board_spec(board)
    if spec.family not in DENSITY_TARGETS:
        raise ValueError(f"Density is measured on iCE40 and ECP5 boards, not {spec.name} "
                         f"({spec.family})")
    return spec


def _array(lanes, pes, act_bits=8, max_k=4096):
    return PEArray(lanes=lanes, pes=pes, act_bits=act_bits, max_k=max_k, pipeline=1)


def build_density(board, *, lanes, pes, freq, out_dir, act_bits=8, max_k=4096, tiles=8,
                  seed=None):
    """Place and route a :class:`DensityHarness` on ``board`` and return its row (a dict)."""
    spec = _density_spec(board)
    platform = board_platform(spec)
    pll = board_pll(spec, platform, freq)
    array = _array(lanes, pes, act_bits, max_k)
    source, depth = _SOURCE[spec.family]
    top = DensityHarness(array=array, pll=pll, depth=depth, tiles=min(tiles, depth),
                         source=source)
    start = time.monotonic()
    impl = implement(spec, platform, top, out_dir=out_dir, name="density", pll=pll, seed=seed)
    util = impl["utilization"]
    cells = density_cells(spec.family, util)
    fmax, target_mhz = slowest_clock(impl)
    macs = lanes * pes
    mac_s = macs * fmax * 1e6
    target, naive = DENSITY_TARGETS[spec.family], NAIVE_DENSITY[spec.family]
    row = {
        "board": spec.name, "device": device_name(platform), "family": spec.family,
        "lanes": lanes, "pes": pes, "act_bits": act_bits, "max_k": max_k,
        "macs_per_cycle": macs, "fmax_mhz": fmax, "target_mhz": target_mhz,
        "cells": cells, "cell": CELL_NAME[spec.family],
        "ffs": util["ff"]["used"], "bram": util["bram"]["used"],
        "mac_per_s": mac_s, "density": mac_s / cells, "target_density": target,
        "naive_density": naive, "met": mac_s / cells >= target, "seed": seed,
        "seconds": round(time.monotonic() - start, 1),
    }
    (Path(out_dir) / "density_report.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def _one(job):
    cfg, root = job
    seed = "" if cfg.get("seed") is None else f"-seed{cfg['seed']}"
    out = Path(root) / f"{cfg['board']}-{cfg['lanes']}x{cfg['pes']}{seed}"
    return build_density(out_dir=out, **cfg)


def run_density_bench(configs=None, *, root="build/density", jobs=1):
    """Build every configuration (``jobs`` at a time) and return the rows."""
    check_positive("Job count", jobs)
    for cfg in configs or DENSITY_SUITE:
        # Parameter errors before any tool runs.
        _density_spec(cfg["board"])
        check_pe_params(cfg["lanes"], 8, "ternary", 1, "carry")
        check_positive("PE count", cfg["pes"])
    jobs_list = [(cfg, root) for cfg in (configs or DENSITY_SUITE)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_one, jobs_list))


def format_table(rows):
    lines = ["| board | N x P | MAC/cycle | Fmax (constraint) | cells | FFs | BRAM "
             "| MAC/s | MAC/s per cell | target | naive tree |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['board']} | {r['lanes']} x {r['pes']} | {r['macs_per_cycle']} "
            f"| {r['fmax_mhz']} MHz ({r['target_mhz']}) | {r['cells']} {r['cell']}s "
            f"| {r['ffs']} | {r['bram']} | {r['mac_per_s'] / 1e9:.2f}G "
            f"| **{r['density'] / 1e6:.2f}M** | {r['target_density'] / 1e6:g}M "
            f"{'met' if r['met'] else 'not met'} | {r['naive_density'] / 1e6:g}M |")
    return "\n".join(lines)
