import numpy as np
from conftest import needs_verilator, small_lpu

from lpu.host.driver import LPUDriver, PysimTransport
from lpu.sim import golden
from lpu.sim.system import LPUSystem

pytestmark = needs_verilator



def test_fast_sim_matches_golden_and_the_amaranth_simulator(rng):
    from lpu.sim.fast import VerilatorTransport
    w = rng.integers(-1, 2, size=(9, 30))
    x = rng.integers(-128, 128, size=(30, 2))
    fast = VerilatorTransport(LPUSystem(small_lpu()))
    slow = PysimTransport(LPUSystem(small_lpu()))
    try:
        for transport in (fast, slow):
            drv = LPUDriver(transport)
            assert np.array_equal(drv.matmul(w, x, fmt="t5"), golden.matvec(w, x))
            assert drv.status()["tiles"] == 5 * 8 * 2
        # the same design, the same requests: the same cycles in both simulators (the
        # harness also counts its three reset cycles)
        assert fast.cycles == slow.cycles + 3
    finally:
        fast.close()
        slow.close()


def test_fast_sim_recovers_from_a_truncated_request(rng):
    from lpu.sim.fast import VerilatorTransport
    transport = VerilatorTransport(LPUSystem(small_lpu()))
    try:
        drv = LPUDriver(transport)
        reply = transport.exchange(b"\xa5\x05\x00")      # stops after three bytes
        assert reply[1] == 0x04                           # TRUNCATED
        w = rng.integers(-1, 2, size=(3, 8))
        x = rng.integers(-128, 128, size=8)
        assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))
    finally:
        transport.close()
