import json

import pytest

from lpu.boards.area import synthesize
from lpu.cli import main
from lpu.hw.array import PEArray


@pytest.mark.parametrize("target", ["ice40", "ecp5"])
def test_area_json(target, capsys):
    assert main(["area", "--target", target, "--lanes", "4", "--pes", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == target and out["lanes"] == 4 and out["pes"] == 2
    assert out["luts"] > 0 and out["ffs"] > 0
    assert out["luts_per_lane"] == round(out["luts"] / 8, 3)


def test_area_counts_carry_cells_as_luts_on_ecp5():
    r = synthesize(PEArray(lanes=4, pes=1, max_k=16), target="ecp5")
    assert r["luts"] == r["cells"].get("LUT4", 0) + 2 * r["cells"].get("CCU2C", 0)
    assert r["carry_cells"] > 0


def test_area_bad_target():
    with pytest.raises(ValueError, match=r"^Target must be 'ice40' or 'ecp5', not 'xc7'$"):
        synthesize(PEArray(lanes=4, pes=1, max_k=16), target="xc7")
