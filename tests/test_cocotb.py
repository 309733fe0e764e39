"""Tier 3: the exported Verilog under cocotb on Verilator and Icarus, plus the payload packing the
benches rely on.

Each simulation test exports one configuration, builds it, runs the cocotb bench
(lpu.sim.cocotb_array or lpu.sim.cocotb_pe) and fails if any cocotb test failed. Replay a failure
with the LPU_SEED / LPU_SAMPLES / LPU_VALID_PROB / LPU_READY_PROB values its message prints;
LPU_WAVES=1 writes waveforms into the build directory.
"""

import numpy as np
import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring

from lpu.hw.array import PEArray
from lpu.hw.formats import weight_codes
from lpu.hw.generate import build_array, build_pe
from lpu.hw.pe import TernaryPE
from lpu.sim import cocotb_runner
from lpu.sim.cocotb_runner import CocotbFailure
from lpu.sim.payload import PayloadCodec, pack_tiles, tile_payloads, unpack_sums


def _weights(rng, shape, mode):
    return rng.choice([-1, 1] if mode == "binary" else [-1, 0, 1], size=shape)


# -- payload packing -----------------------------------------------------------------------------

@pytest.mark.parametrize("lanes, pes, act_bits, mode", [
    (1, 1, 8, "ternary"), (3, 4, 4, "binary"), (16, 8, 8, "ternary"), (64, 4, 8, "ternary"),
    (5, 3, 2, "binary"), (7, 2, 16, "ternary"),
])
def test_pack_matches_layout_const(rng, lanes, pes, act_bits, mode):
    arr = PEArray(lanes=lanes, pes=pes, act_bits=act_bits, weights=mode, max_k=max(lanes, 100))
    codec = PayloadCodec.from_layout(arr.input_layout)
    t = 40
    lo, hi = -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1
    act = rng.integers(lo, hi + 1, size=(t, lanes))
    act[0], act[1] = lo, hi
    weight = _weights(rng, (t, pes, lanes), mode)
    first, last = rng.integers(0, 2, size=t), rng.integers(0, 2, size=t)
    got = pack_tiles(codec, act, weight, first, last, mode=mode)
    codes = weight_codes(weight, mode)
    want = [arr.input_layout.const({"act": act[i].tolist(), "weight": codes[i].tolist(),
                                    "first": int(first[i]), "last": int(last[i])}).as_bits()
            for i in range(t)]
    assert got == want
    assert all(0 <= p < (1 << arr.input_layout.size) for p in got)
    back = codec.unpack(got)
    assert np.array_equal(back["act"], act) and np.array_equal(back["weight"], codes)
    assert np.array_equal(back["first"], first) and np.array_equal(back["last"], last)


@pytest.mark.parametrize("pes, max_k, act_bits", [(1, 8, 8), (4, 4096, 8), (8, 100, 4)])
def test_unpack_sums_matches_layout_const(rng, pes, max_k, act_bits):
    arr = PEArray(lanes=4, pes=pes, act_bits=act_bits, max_k=max_k)
    codec = PayloadCodec.from_layout(arr.output_layout)
    bound = 1 << (arr.acc_width - 1)
    sums = rng.integers(-bound, bound, size=(30, pes))
    sums[0], sums[1] = -bound, bound - 1
    ints = [arr.output_layout.const(s.tolist()).as_bits() for s in sums]
    assert np.array_equal(unpack_sums(codec, ints), sums)
    assert codec.pack(value=sums) == ints


def test_pe_payloads_match_layout_const(rng):
    pe = TernaryPE(lanes=5, act_bits=6, weights="binary")
    codec = PayloadCodec.from_layout(pe.input_layout)
    act = rng.integers(-32, 32, size=(10, 5))
    weight = _weights(rng, (10, 5), "binary")
    codes = weight_codes(weight, "binary")
    assert pack_tiles(codec, act, weight, mode="binary") == [
        pe.input_layout.const({"act": a.tolist(), "weight": w.tolist()}).as_bits()
        for a, w in zip(act, codes, strict=True)]
    out = PayloadCodec.from_layout(pe.o_stream.payload.shape())
    assert out.width == pe.output_width
    sums = np.array([-(1 << (pe.output_width - 1)), -1, 0, 7])
    ints = out.pack(value=sums)
    assert ints == [s & ((1 << pe.output_width) - 1) for s in sums.tolist()]
    assert np.array_equal(unpack_sums(out, ints), sums)


def test_codec_round_trips_through_json():
    arr = PEArray(lanes=3, pes=2, act_bits=4, weights="binary", max_k=9)
    codec = PayloadCodec.from_layout(arr.input_layout)
    again = PayloadCodec.from_dict(codec.to_dict())
    assert again.width == codec.width == arr.input_layout.size
    assert again.fields == codec.fields
    assert codec["first"].offset == arr.input_layout["first"].offset


def _codec():
    return PayloadCodec.from_layout(data.StructLayout({"a": data.ArrayLayout(signed(4), 2),
                                                       "b": 1}))


@pytest.mark.parametrize("values, exc, msg", [
    ({"a": [[1, 2]]}, ValueError, r"^Payload fields must be exactly \['a', 'b'\], not \['a'\]$"),
    ({"a": [[1, 2]], "b": [0], "c": [1]}, ValueError,
     r"^Payload fields must be exactly \['a', 'b'\], not \['a', 'b', 'c'\]$"),
    ({"a": [[1.0, 2.0]], "b": [0]}, TypeError,
     r"^Payload field 'a' must be an integer array, not float64$"),
    ({"a": [1, 2], "b": [0]}, ValueError,
     r"^Payload field 'a' must have shape \(T, \*\(2,\)\), not \(2,\)$"),
    ({"a": [[1, 2]], "b": [0, 1]}, ValueError, r"^Payload field 'b' has 2 items, not 1$"),
    ({"a": [[8, 0]], "b": [0]}, ValueError, r"^Payload field 'a' must be in \[-8, 7\]$"),
    ({"a": [[0, 0]], "b": [2]}, ValueError, r"^Payload field 'b' must be in \[0, 1\]$"),
])
def test_pack_errors(values, exc, msg):
    with pytest.raises(exc, match=msg):
        _codec().pack(**values)


def test_unpack_error():
    with pytest.raises(ValueError, match=r"^Payload 0x200 does not fit in 9 bits$"):
        _codec().unpack([0x200])


def test_layout_errors():
    with pytest.raises(TypeError, match=r"^Payload member 'a' has a nested StructLayout; only "
                                        r"arrays of plain shapes are supported$"):
        PayloadCodec.from_layout(data.StructLayout({"a": data.StructLayout({"x": 1})}))
    with pytest.raises(ValueError, match=r"^Payload member 'value' has 64-bit elements; at "
                                         r"most 63 are supported$"):
        PayloadCodec.from_layout(signed(64))
    f = PayloadCodec.from_layout(signed(8))["value"]
    with pytest.raises(ValueError, match=r"^Payload field 'value' \(bits 0...7\) does not fit "
                                         r"in 4 bits$"):
        PayloadCodec([f], 4)


def test_vector_tiles_rejected():
    codec = PayloadCodec.from_layout(PEArray(lanes=2, pes=1, max_k=4).input_layout)
    with pytest.raises(ValueError, match=r"^Tiles with a vector index are not supported$"):
        tile_payloads(codec, {"act": [], "weight": [], "first": [], "last": [],
                              "vector": []}, mode="ternary")


# -- runner ------------------------------------------------------------------------------------

def test_runner_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"^Simulator must be one of verilator, icarus, not "
                                         r"'vcs'$"):
        cocotb_runner.available("vcs")
    with pytest.raises(ValueError, match=r"^Component must be a PEArray or TernaryPE, not "
                                         r"Module$"):
        cocotb_runner.run(Module(), tmp_path, sim="icarus")
    with pytest.raises(ValueError, match=r"^The cocotb bench covers one vector per weight "
                                         r"tile, not 2$"):
        cocotb_runner.run(PEArray(lanes=2, pes=1, max_k=4, vectors=2), tmp_path, sim="icarus")
    arr = PEArray(lanes=2, pes=1, max_k=4)
    with pytest.raises(ValueError, match=r"^Valid probability must be in \(0, 1\], not 0$"):
        cocotb_runner.run(arr, tmp_path, valid_prob=0)
    with pytest.raises(ValueError, match=r"^Ready probability must be in \(0, 1\], not 1.5$"):
        cocotb_runner.run(arr, tmp_path, ready_prob=1.5)
    with pytest.raises(ValueError, match=r"^Sample count must be a positive integer, not 0$"):
        cocotb_runner.run(arr, tmp_path, samples=0)


def test_results_file_failures_are_reported(tmp_path):
    xml = tmp_path / "results.xml"
    xml.write_text('<testsuites><testsuite name="s" tests="2" failures="1">'
                   '<testcase name="good"/><testcase name="bad">'
                   '<failure message="Output 3: got [1], expected [2]"/></testcase>'
                   '</testsuite></testsuites>')
    assert cocotb_runner.read_results(xml) == (2, [("bad", "Output 3: got [1], expected [2]")])
    with pytest.raises(CocotbFailure, match=r"^Simulation ended without a results file"):
        cocotb_runner.read_results(tmp_path / "missing.xml")


# -- simulation ----------------------------------------------------------------------------------

def _skip_unless(sim):
    ok, why = cocotb_runner.available(sim)
    if not ok:
        pytest.skip(f"{sim} unavailable: {why}")


@pytest.fixture(scope="session")
def cocotb_root(tmp_path_factory):
    # Shared by every simulation test of a session, so Verilator runtime objects are compiled
    # once (see lpu.sim.cocotb_runner).
    return tmp_path_factory.mktemp("cocotb")


def _array(lanes, pes, act_bits, weights, pipeline, negation, max_k):
    return build_array(lanes=lanes, pes=pes, act_bits=act_bits, weights=weights,
                       pipeline=pipeline, negation=negation, max_k=max_k)


def _pe(lanes, act_bits, weights, pipeline, negation):
    return build_pe(lanes=lanes, act_bits=act_bits, weights=weights, pipeline=pipeline,
                    negation=negation)


# (kind, parameters): lanes, [pes,] act_bits, weights, pipeline, negation[, max_k]. The
# accumulator-extremes job runs max_k columns, so small arrays get a small max_k.
VERILATOR_CONFIGS = [
    ("array", (64, 4, 8, "ternary", 1, "carry", 4096)),       # the default configuration
    ("array", (16, 8, 4, "binary", 2, "carry", 200)),
    ("array", (3, 4, 8, "ternary", 0, "shared", 40)),
    ("array", (1, 1, 8, "ternary", 1, "carry", 24)),
    ("array", (64, 1, 4, "binary", 0, "local", 1000)),
    ("array", (3, 8, 4, "ternary", 2, "carry", 50)),
    ("pe", (16, 8, "ternary", 0, "carry")),         # combinational: no clk, rst
    ("pe", (16, 8, "ternary", 2, "local")),
    ("pe", (3, 4, "binary", 1, "shared")),
]
ICARUS_CONFIGS = [
    ("array", (64, 4, 8, "ternary", 1, "carry", 4096)),
    ("array", (3, 4, 4, "binary", 2, "carry", 30)),
    ("array", (16, 8, 8, "ternary", 0, "shared", 100)),
    ("pe", (1, 8, "ternary", 0, "local")),
    ("pe", (5, 8, "binary", 1, "carry")),
]


def _config_id(config):
    kind, p = config
    return f"{kind}-" + "-".join(str(v) for v in p)


def _component(config):
    kind, p = config
    return _array(*p) if kind == "array" else _pe(*p)


def _run(sim, config, root):
    _skip_unless(sim)
    component = _component(config)
    result = cocotb_runner.run(component, root / sim / cocotb_runner.config_name(component),
                               sim=sim, cache_dir=root / ".verilated")
    assert result["cycles"] > 0
    assert set(result["tests"]) >= {"random_traffic", "full_throughput"}


@pytest.mark.parametrize("config", VERILATOR_CONFIGS, ids=_config_id)
def test_verilator(cocotb_root, config):
    _run("verilator", config, cocotb_root)


@pytest.mark.parametrize("config", ICARUS_CONFIGS, ids=_config_id)
def test_icarus(cocotb_root, config):
    _run("icarus", config, cocotb_root)


class _BrokenArray(PEArray):
    """A PEArray with one fault between its ports and a correct array inside: ``"lsb"`` clears
    the least significant bit of the first sum, ``"stall"`` never accepts an input."""

    def __init__(self, fault, **kwargs):
        self._fault = fault
        super().__init__(**kwargs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = PEArray(
            lanes=self.lanes, pes=self.pes, act_bits=self.act_bits, weights=self.mode,
            pipeline=self.pipeline, max_k=self.max_k, negation=self.negation)
        wiring.connect(m, inner.o_stream, wiring.flipped(self.o_stream))
        if self._fault == "lsb":
            wiring.connect(m, wiring.flipped(self.i_stream), inner.i_stream)
            m.d.comb += self.o_stream.payload.eq(inner.o_stream.payload.as_value() & ~1)
        else:
            m.d.comb += inner.i_stream.payload.eq(self.i_stream.payload)
        return m


@pytest.mark.parametrize("sim", cocotb_runner.SIMULATORS)
@pytest.mark.parametrize("fault, message", [
    pytest.param("lsb", r"Output \d+ \(job \d+ \(\d+x\d+\) row block \d+\) in cycle \d+: "
                 r"got \[-?\d+, ", id="lsb"),
    pytest.param("stall", r"Input stalled: 0 of \d+ inputs accepted in \d+ cycles "
                 r"\(0 outputs\)", id="stall"),
])
def test_bench_catches_a_fault(cocotb_root, sim, fault, message):
    # The cocotb runner never raises on a failed cocotb test; run() must, naming the test.
    _skip_unless(sim)
    broken = _BrokenArray(fault, lanes=4, pes=2, max_k=32)
    with pytest.raises(CocotbFailure, match=rf"^1 of 1 cocotb tests failed on {sim}:\n"
                                            rf"  random_traffic: {message}"):
        cocotb_runner.run(broken, cocotb_root / sim / f"broken-{fault}", sim=sim,
                          testcase="random_traffic", cache_dir=cocotb_root / ".verilated")
