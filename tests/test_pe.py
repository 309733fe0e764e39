import numpy as np
import pytest
from conftest import env_int

from lpu.hw.pe import NEGATIONS, TernaryPE, tree_depth
from lpu.sim import golden, pysim


def _random(rng, n, lanes, act_bits, mode):
    lo, hi = golden.act_range(act_bits)
    acts = rng.integers(lo, hi + 1, size=(n, lanes))
    values = [-1, 1] if mode == "binary" else [-1, 0, 1]
    weights = rng.choice(values, size=(n, lanes))
    # extremes: the most negative activation times -1 and +1, the most positive likewise
    acts[0], weights[0] = lo, -1
    acts[1], weights[1] = lo, 1
    acts[2], weights[2] = hi, -1
    acts[3], weights[3] = hi, 1
    return acts, weights


@pytest.mark.parametrize("negation", NEGATIONS)
@pytest.mark.parametrize("mode", ["ternary", "binary"])
@pytest.mark.parametrize("lanes, act_bits, pipeline", [
    (1, 8, 1), (3, 4, 0), (5, 2, 1), (16, 8, 2), (7, 16, 3), (12, 5, 9),
])
def test_pe_matches_golden(rng, negation, mode, lanes, act_bits, pipeline):
    pe = TernaryPE(lanes=lanes, act_bits=act_bits, weights=mode, pipeline=pipeline,
                   negation=negation)
    acts, weights = _random(rng, env_int("LPU_SAMPLES", 40), lanes, act_bits, mode)
    out, _ = pysim.run_pe(pe, acts, weights, seed=int(rng.integers(1 << 31)),
                          valid_prob=0.7, ready_prob=0.6)
    assert np.array_equal(out, golden.pe_dot(acts, weights, act_bits=act_bits, mode=mode))


def test_pe_output_width_and_latency():
    pe = TernaryPE(lanes=64, act_bits=8, pipeline=1)
    # 64 * 128 = 8192 needs 15 signed bits
    assert pe.output_width == 15
    assert pe.latency == tree_depth(64) == 6
    assert TernaryPE(lanes=64, pipeline=4).latency == 2
    assert TernaryPE(lanes=64, pipeline=0).latency == 0
    assert TernaryPE(lanes=3, pipeline=1).latency == 2
    assert TernaryPE(lanes=1, pipeline=1).latency == 0


def test_pe_full_throughput(rng):
    pe = TernaryPE(lanes=8, act_bits=8, pipeline=1)
    acts, weights = _random(rng, 50, 8, 8, "ternary")
    out, cycles = pysim.run_pe(pe, acts, weights)
    assert np.array_equal(out, golden.pe_dot(acts, weights))
    # one input per cycle: the last output appears latency cycles after the last input
    assert cycles == 50 + pe.latency


def test_reserved_code_reads_as_minus_one():
    # the t2 code 0b11 is never packed; the datapath lets the negative flag win
    from amaranth.sim import Simulator
    pe = TernaryPE(lanes=2, act_bits=8, pipeline=0)

    async def tb(ctx):
        ctx.set(pe.i_stream.payload, {"act": [5, 7], "weight": [0b11, 0b01]})
        assert ctx.get(pe.o_stream.payload) == -5 + 7

    sim = Simulator(pe)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"lanes": 0}, ValueError, r"^Lane count must be a positive integer, not 0$"),
    ({"lanes": 2.0}, TypeError, r"^Lane count must be a positive integer, not 2\.0$"),
    ({"lanes": True}, TypeError, r"^Lane count must be a positive integer, not True$"),
    ({"lanes": 4, "act_bits": 1}, ValueError,
     r"^Activation width must be an integer from 2 to 16, not 1$"),
    ({"lanes": 4, "act_bits": 17}, ValueError,
     r"^Activation width must be an integer from 2 to 16, not 17$"),
    ({"lanes": 4, "act_bits": "8"}, TypeError,
     r"^Activation width must be an integer from 2 to 16, not '8'$"),
    ({"lanes": 4, "weights": "quaternary"}, ValueError,
     r"^Weight mode must be 'ternary' or 'binary', not 'quaternary'$"),
    ({"lanes": 4, "weights": 3}, TypeError,
     r"^Weight mode must be 'ternary' or 'binary', not 3$"),
    ({"lanes": 4, "pipeline": -1}, ValueError,
     r"^Pipeline interval must be a non-negative integer, not -1$"),
    ({"lanes": 4, "negation": "xor"}, ValueError,
     r"^Negation must be 'carry', 'shared' or 'local', not 'xor'$"),
])
def test_pe_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        TernaryPE(**kwargs)
