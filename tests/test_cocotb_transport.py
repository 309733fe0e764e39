import shutil

import numpy as np
import pytest

from lpu.host.driver import LPUDriver
from lpu.hw.lpu import LPU
from lpu.sim import cocotb_runner, golden
from lpu.sim.system import LPUSystem

pytestmark = pytest.mark.skipif(not cocotb_runner.available("verilator")[0],
                                reason=cocotb_runner.available("verilator")[1] or "verilator")


def _lpu():
    return LPU(lanes=4, pes=2, word_bits=16, addr_width=10, max_k=64, max_vectors=2,
               timeout=300)


def test_cocotb_transport_matches_golden_and_the_fast_simulator(rng):
    from lpu.sim.cocotb_transport import CocotbTransport
    from lpu.sim.fast import VerilatorTransport
    w = rng.integers(-1, 2, size=(9, 30))
    x = rng.integers(-128, 128, size=(30, 2))
    cocotb = CocotbTransport(LPUSystem(_lpu()))
    fast = VerilatorTransport(LPUSystem(_lpu()))
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
    transport = CocotbTransport(LPUSystem(_lpu()))
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

