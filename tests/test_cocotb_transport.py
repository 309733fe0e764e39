import shutil

import numpy as np
import pytest
from conftest import needs_verilator, small_lpu

from lpu.host.driver import LPUDriver
from lpu.sim import golden
from lpu.sim.system import LPUSystem

pytestmark = needs_verilator



def test_cocotb_transport_matches_golden_and_the_fast_simulator(rng):
    from lpu.sim.cocotb_transport import CocotbTransport
    from lpu.sim.fast import VerilatorTransport
    w = rng.integers(-1, 2, size=(9, 30))
    x = rng.integers(-128, 128, size=(30, 2))
    cocotb = CocotbTransport(LPUSystem(small_lpu()))
    fast = VerilatorTransport(LPUSystem(small_lpu()))
    try:
        for transport in (cocotb, fast):
            drv = LPUDriver(transport)
            assert np.array_equal(drv.matmul(w, x, fmt="t5"), golden.matvec(w, x))
            assert drv.status()["tiles"] == 5 * 8 * 2
        # the same Verilog, the same requests: the same cycles, reset included
        assert cocotb.cycles == fast.cycles > 0
        # a request that stops part way: answered TRUNCATED after the device's timeout, in
        # the same cycle on both
        assert cocotb.exchange(b"\xa5\x05\x00") == fast.exchange(b"\xa5\x05\x00")
        assert cocotb.exchange(b"\xa5\x05\x00")[1] == 0x04
        fast.exchange(b"\xa5\x05\x00")
        assert cocotb.cycles == fast.cycles
    finally:
        cocotb.close()
        fast.close()


def test_cocotb_transport_reports_a_failing_simulation():
    from lpu.sim.cocotb_transport import CocotbTransport, SimulationError
    transport = CocotbTransport(LPUSystem(small_lpu()))
    with pytest.raises(ValueError, match=r"^Frame must not be empty$"):
        transport.exchange(b"")
    # the bench refuses a request longer than it accepts: the cocotb test fails, the simulator
    # ends, and the caller gets the failure instead of waiting for a reply
    with pytest.raises(SimulationError, match=r"(?s)^The cocotb simulation ended unexpectedly\n"
                       r"  serve: .*Request of 65537 bytes is longer than the 65536 the bench "
                       r"accepts"):
        transport.exchange(b"\x00" * 65537)
    with pytest.raises(SimulationError, match=r"^The cocotb simulation failed \(log in .*"):
        transport.close()
    assert (transport.run_dir / "sim.log").is_file()
    shutil.rmtree(transport.run_dir)

