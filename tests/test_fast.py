import numpy as np
import pytest

from lpu.host.driver import LPUDriver, PysimTransport
from lpu.hw.lpu import LPU
from lpu.sim import cocotb_runner, golden
from lpu.sim.system import LPUSystem

pytestmark = pytest.mark.skipif(not cocotb_runner.available("verilator")[0],
                                reason=cocotb_runner.available("verilator")[1] or "verilator")


def _lpu():
    return LPU(lanes=4, pes=2, word_bits=16, addr_width=10, max_k=64, max_vectors=2,
               timeout=300)


def test_fast_sim_matches_golden_and_the_amaranth_simulator(rng):
    from lpu.sim.fast import VerilatorTransport
    w = rng.integers(-1, 2, size=(9, 30))
    x = rng.integers(-128, 128, size=(30, 2))
    fast = VerilatorTransport(LPUSystem(_lpu()))
    slow = PysimTransport(LPUSystem(_lpu()))
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
    transport = VerilatorTransport(LPUSystem(_lpu()))
    try:
        drv = LPUDriver(transport)
        reply = transport.exchange(b"\xa5\x05\x00")      # stops after three bytes
        assert reply[1] == 0x04                           # TRUNCATED
        w = rng.integers(-1, 2, size=(3, 8))
        x = rng.integers(-128, 128, size=8)
        assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))
    finally:
        transport.close()
