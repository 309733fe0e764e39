"""cocotb bench for an exported :class:`~lpu.hw.pe.TernaryPE`.

The same driver, monitor and scoreboard as :mod:`lpu.sim.cocotb_array`; each input is one
activation vector with one weight vector and each output its exact dot product
(:func:`lpu.sim.golden.pe_dot`). A PE built with ``pipeline=0`` is combinational, so its
``latency`` is 0 and its ``ready`` follows the output's ``ready`` within the cycle.
"""

import cocotb
import numpy as np

from lpu.sim import golden
from lpu.sim.cocotb_array import Bench
from lpu.sim.payload import pack_tiles


def _params(cfg):
    p = cfg.params
    act, weight = cfg.codec_in["act"], cfg.codec_in["weight"]
    out = cfg.codec_out["value"]
    assert set(cfg.codec_in.fields) == {"act", "weight"}, (
        f"This bench is for a TernaryPE, not {cfg.manifest['kind']} with input fields "
        f"{sorted(cfg.codec_in.fields)}")
    assert act.dims == (p["lanes"],) and act.width == p["act_bits"] and act.signed
    assert weight.dims == (p["lanes"],)
    assert weight.width == (2 if p["weights"] == "ternary" else 1)
    assert out.dims == () and out.width == cfg.manifest["output_width"] and out.signed
    return p["lanes"], p["act_bits"], p["weights"]


def random_inputs(rng, count, *, lanes, act_bits, mode):
    """Random activation and weight vectors; the first four put every lane at an extreme
    activation with one sign of weight, the rest have a quarter of their lanes at extremes."""
    lo, hi = golden.act_range(act_bits)
    acts = rng.integers(lo, hi + 1, size=(count + 4, lanes))
    edge = rng.random(acts.shape) < 0.25
    acts[edge] = rng.choice([lo, hi], size=int(edge.sum()))
    weights = rng.choice([-1, 1] if mode == "binary" else [-1, 0, 1], size=(count + 4, lanes))
    for i, (a, w) in enumerate([(lo, -1), (lo, 1), (hi, -1), (hi, 1)]):
        acts[i], weights[i] = a, w
    return acts, weights


async def _run(bench, count):
    lanes, act_bits, mode = _params(bench.cfg)
    acts, weights = random_inputs(bench.rng, count, lanes=lanes, act_bits=act_bits, mode=mode)
    sums = golden.pe_dot(acts, weights, act_bits=act_bits, mode=mode)
    bench.scoreboard.expect(sums, [f"input {i}" for i in range(len(sums))])
    await bench.start()
    await bench.send(pack_tiles(bench.cfg.codec_in, acts, weights, mode=mode))
    await bench.finish()
    return len(sums)


@cocotb.test()
async def random_traffic(dut):
    """Random vectors with random valid gaps and output backpressure."""
    bench = Bench(dut, "random_traffic")
    await _run(bench, 8 * bench.cfg.samples)


@cocotb.test()
async def full_throughput(dut):
    """One input per cycle; each sum exactly ``latency`` cycles after its input."""
    bench = Bench(dut, "full_throughput", valid_prob=1.0, ready_prob=1.0)
    count = await _run(bench, 4 * bench.cfg.samples)
    accepted = np.array(bench.driver.accepted)
    assert len(accepted) == count
    assert np.all(np.diff(accepted) == 1), "Input stalled without backpressure"
    got = np.array(bench.scoreboard.cycles)
    assert np.array_equal(got, accepted + bench.cfg.latency), (
        f"Output cycles {got[:8].tolist()}..., expected {(accepted + bench.cfg.latency)[:8]}")
