import numpy as np
import pytest
from test_transformer import tiny_model

from lpu.host.driver import LPUDriver, PysimTransport
from lpu.host.fabric import FabricBackend
from lpu.host.quant import linear_scales
from lpu.host.transformer import GoldenBackend, forward
from lpu.hw.lpu import LPU
from lpu.sim import cocotb_runner
from lpu.sim.system import LPUSystem


def _driver(weights="ternary", formats=None, out_depth=1024):
    """The compiled simulator where Verilator is at hand, else the Amaranth simulator."""
    lpu = LPU(lanes=8, pes=4, weights=weights, formats=formats, word_bits=32, addr_width=12,
              max_k=64, max_vectors=4, timeout=300, out_depth=out_depth)
    if cocotb_runner.available("verilator")[0]:
        from lpu.sim.fast import VerilatorTransport
        return LPUDriver(VerilatorTransport(LPUSystem(lpu)))
    return LPUDriver(PysimTransport(LPUSystem(lpu)))


@pytest.mark.parametrize("fmt", ["t2", "t5"])
def test_every_projection_bit_exact(rng, fmt):
    model = tiny_model(rng)
    drv = _driver()
    fabric, gold = FabricBackend(drv, ternary_format=fmt), GoldenBackend()
    try:
        for lin in model.linears.values():
            x = rng.integers(-128, 128, size=(lin.shape[1], 3)).astype(np.int8)
            assert np.array_equal(fabric.scaled_matmul(lin, x), gold.scaled_matmul(lin, x))
    finally:
        drv._t.close()


def test_binary_group_scales_bit_exact(rng):
    """Group scales applied on the fabric: one scaled sum per row comes back."""
    model = tiny_model(rng, group=16)
    drv = _driver("binary")
    fabric, gold = FabricBackend(drv), GoldenBackend()
    try:
        lin = model.linears["model.layers.0.mlp.down_proj"]
        lin.scale[0] = np.array([-32767, 32767, 1]) / 1024    # mantissas +-(2**15 - 1), 1
        x = rng.integers(-128, 128, size=(lin.shape[1], 6)).astype(np.int8)  # V > max_vectors
        x[:, 0] = -128
        assert np.array_equal(fabric.scaled_matmul(lin, x), gold.scaled_matmul(lin, x))
        assert np.abs(linear_scales(lin).mantissa[0]).max() == (1 << 15) - 1
        # written once: a second call sends only activations
        assert np.array_equal(fabric.scaled_matmul(lin, x[:, :2]),
                              gold.scaled_matmul(lin, x[:, :2]))
    finally:
        drv._t.close()


def test_whole_model_logits_equal(rng):
    model = tiny_model(rng)
    drv = _driver()
    try:
        ids = [1, 5, 7, 2]
        gold = forward(model, ids, GoldenBackend())
        fab = forward(model, ids, FabricBackend(drv))
        assert np.array_equal(gold, fab)
    finally:
        drv._t.close()


def test_jobs_split_to_fit_the_output_buffer(rng):
    """4 entries of 4 sums: a 12-row projection (3 row blocks) runs one vector per job, and
    one of 20 rows (5 row blocks) cannot run at all."""
    model = tiny_model(rng, hidden=12, heads=3, kv_heads=1, head_dim=4, inter=20)
    drv = _driver(out_depth=4)
    fabric, gold = FabricBackend(drv), GoldenBackend()
    try:
        lin = model.linears["model.layers.0.self_attn.q_proj"]
        x = rng.integers(-128, 128, size=(lin.shape[1], 3)).astype(np.int8)
        assert np.array_equal(fabric.scaled_matmul(lin, x), gold.scaled_matmul(lin, x))
        lin = model.linears["model.layers.0.mlp.gate_proj"]
        x = rng.integers(-128, 128, size=(lin.shape[1], 1)).astype(np.int8)
        with pytest.raises(ValueError, match=r"^model\.layers\.0\.mlp\.gate_proj: 20 outputs "
                                             r"exceed the device's output buffer \(4 entries of "
                                             r"4\)$"):
            fabric.scaled_matmul(lin, x)
    finally:
        drv._t.close()
