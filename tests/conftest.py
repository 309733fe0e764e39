import os

import numpy as np
import pytest


def env_int(name, default):
    """Seeds and sample counts come from the environment so a failure can be replayed."""
    return int(os.environ.get(name, default))


@pytest.fixture
def rng(request):
    seed = env_int("LPU_SEED", 12345)
    # One stream per test, reproducible from LPU_SEED and the test's name.
    return np.random.default_rng([seed, sum(map(ord, request.node.nodeid))])
