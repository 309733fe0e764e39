"""Tier 3 for the weight streamer: a :class:`~lpu.sim.system.StreamerSystem` (streamer plus
memory model, the weight image in the memory's initial contents) exported to Verilog and run
under cocotb (lpu.sim.cocotb_streamer) on Verilator and Icarus.

Each configuration places two to four matrices in memory (odd shapes, one image ending at the
last word of memory, the rest of memory random), writes a job file with the descriptors, the
activation writes and the golden outputs, plus what the Amaranth simulator measured for the same
design with the output always ready (lpu.sim.pysim.run_streamer), and fails if any cocotb test
failed. Replay a failure with
the LPU_SEED / LPU_STREAM_SAMPLES / LPU_VALID_PROB / LPU_READY_PROB values its message prints;
LPU_WAVES=1 writes waveforms into the build directory.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Value
from amaranth.lib import wiring

from lpu.host import image
from lpu.host.cycle_model import predict_cycles
from lpu.hw.formats import FormatCode, WeightFormat
from lpu.hw.generate import port_list
from lpu.hw.streamer import (
    DESCRIPTOR_LAYOUT,
    PERF_LAYOUT,
    STATUS_LAYOUT,
    StreamError,
    WeightStreamer,
)
from lpu.sim import cocotb_runner, golden, pysim
from lpu.sim.cocotb_runner import CocotbFailure
from lpu.sim.memory_models import memory_timing
from lpu.sim.payload import PayloadCodec
from lpu.sim.system import StreamerSystem

TOP = "lpu_streamer"
TEST_MODULE = "lpu.sim.cocotb_streamer"

# Defaults of the environment variables that make a run replayable.
DEFAULT_SEED = 12345
DEFAULT_SAMPLES = 6          # activation sets per matrix in random_traffic
DEFAULT_VALID_PROB = 0.7
DEFAULT_READY_PROB = 0.6


def _env(name, default, cast):
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)


@dataclass(frozen=True)
class Matrix:
    """One matrix job: ``base`` None places it after the previous image (a small random gap),
    "end" so that its image ends at the last word of memory. ``exact``: the cycle model is
    exact for it (checked with the output always ready and no memory stalls)."""

    fmt: str
    rows: int
    cols: int
    group: int = 0
    vectors: int = 1
    base: object = None
    exact: bool = False


@dataclass(frozen=True)
class Config:
    """A streamer (``WeightStreamer`` keyword arguments), its memory (a preset of
    :data:`lpu.sim.memory_models.MEMORIES` with random stalls ``stall``) and its matrices."""

    name: str
    streamer: dict
    memory: str
    stall: float
    matrices: tuple

    def build(self):
        return WeightStreamer(**self.streamer)


# Formats x memories: t2 on bram, qspi, sdram; t5 on bram, qspi, sdram; b1 on bram, qspi,
# sdram. M and K are mostly not multiples of P and N; word widths 8, 16, 32.
VERILATOR_CONFIGS = [
    # The cycle model is exact here (a word carries a tile; the t2 case of
    # tests/test_streamer.py::test_streamer_cycles_match_model), so no memory stalls.
    Config("t2-bram-exact", dict(lanes=8, pes=2, word_bits=32, addr_width=9, max_k=64,
                                 max_burst=16), "bram", 0.0,
           (Matrix("t2", 16, 64, exact=True), Matrix("t5", 9, 64),
            Matrix("t5", 13, 37, base="end"))),
    # K < N, a 1 x 1 matrix (one word), an odd FIFO depth.
    Config("t5-qspi-w8", dict(lanes=5, pes=3, word_bits=8, addr_width=8, mem_words=200,
                              max_k=40, max_burst=4, fifo_depth=5, pipeline=0), "qspi", 0.25,
           (Matrix("t5", 7, 23), Matrix("t2", 5, 23), Matrix("t2", 4, 3),
            Matrix("t5", 1, 1, base="end"))),
    # Memory past one SDRAM row (512 words): an image crosses into the next row.
    Config("b1-sdram-w16", dict(lanes=6, pes=4, act_bits=6, weights="binary", word_bits=16,
                                addr_width=10, mem_words=600, max_k=40, max_burst=8,
                                negation="local"), "sdram", 0.15,
           (Matrix("b1", 9, 30), Matrix("b1", 11, 40, base=500), Matrix("b1", 3, 4),
            Matrix("b1", 2, 30))),
    # Several vectors per tile, groups (one longer than the row).
    Config("t5t2-sdram-vectors", dict(lanes=4, pes=2, word_bits=16, addr_width=8, max_k=32,
                                      max_vectors=3, max_burst=8, pipeline=2), "sdram", 0.2,
           (Matrix("t5", 5, 14, group=8, vectors=2), Matrix("t2", 6, 16, group=4, vectors=3),
            Matrix("t2", 3, 9, group=16, vectors=2), Matrix("t5", 4, 9, vectors=2, base="end"))),
    # FIFO depth equal to the burst.
    Config("b1-bram-k-below-n", dict(lanes=16, pes=1, act_bits=4, weights="binary",
                                     word_bits=8, addr_width=7, max_k=48, max_burst=3,
                                     fifo_depth=3, negation="shared"), "bram", 0.4,
           (Matrix("b1", 3, 5), Matrix("b1", 4, 45, base="end"))),
]
ICARUS_CONFIGS = [
    Config("b1-qspi-w32", dict(lanes=8, pes=2, weights="binary", word_bits=32, addr_width=6,
                               max_k=24, max_burst=4), "qspi", 0.1,
           (Matrix("b1", 5, 21), Matrix("b1", 2, 8, base="end"))),
    Config("t5-bram-vectors", dict(lanes=3, pes=2, word_bits=8, addr_width=7, max_k=16,
                                   max_vectors=2, max_burst=4), "bram", 0.3,
           (Matrix("t5", 5, 10, group=6, vectors=2), Matrix("t2", 4, 10, group=6, vectors=2),
            Matrix("t2", 3, 7, base="end"))),
]


# -- job file ------------------------------------------------------------------------------------

def _codec(shape):
    return PayloadCodec.from_layout(shape)


def _fields(desc):
    """A descriptor as plain integers (the format as its code)."""
    return {k: v.value if isinstance(v, FormatCode) else int(v) for k, v in desc.items()}


def _desc_bits(desc):
    bits = _codec(DESCRIPTOR_LAYOUT).pack(**{k: [v] for k, v in _fields(desc).items()})[0]
    if desc["fmt"] in list(FormatCode):
        # The codec packs the bits where the layout puts them.
        assert bits == DESCRIPTOR_LAYOUT.const(desc).as_bits()
    return bits


def _place(st, matrices, rng):
    """Images and bases of ``matrices``; returns the memory words (the rest random) and, per
    matrix, (weights as read back from the image, base, image words)."""
    mem = image.image_words(rng.integers(0, 256, size=st.mem_words * st.word_bits // 8),
                            st.word_bits)
    placed, nxt = [], 0
    for mx in matrices:
        fmt = WeightFormat(mx.fmt)
        w = rng.choice(fmt.mode.values, size=(mx.rows, mx.cols)).astype(np.int8)
        img = image.weight_image(w, fmt, lanes=st.lanes, pes=st.pes, word_bits=st.word_bits)
        words = image.image_words(img, st.word_bits)
        if mx.base == "end":
            base = st.mem_words - len(words)
        elif mx.base is None:
            base = nxt + int(rng.integers(0, 3))
        else:
            base = mx.base
        assert base >= nxt and base + len(words) <= st.mem_words, f"{mx} overlaps"
        mem[base:base + len(words)] = words
        nxt = base + len(words)
        # The golden model computes from the image as the streamer reads it.
        w_img = image.read_image(img, fmt, mx.rows, mx.cols, lanes=st.lanes, pes=st.pes)
        assert np.array_equal(w_img, w)
        placed.append((w_img, base, len(words)))
    return mem, placed


def _acts(rng, st, cols, vectors):
    lo, hi = golden.act_range(st.act_bits)
    x = rng.integers(lo, hi + 1, size=(cols, vectors))
    edge = rng.random(x.shape) < 0.2
    x[edge] = rng.choice([lo, hi], size=int(edge.sum()))
    return x


def _job(st, timing, mx, w, base, n_words, x, codecs, name):
    fmt = WeightFormat(mx.fmt)
    desc = image.descriptor(st, base=base, rows=mx.rows, cols=mx.cols, fmt=fmt, group=mx.group,
                            vectors=mx.vectors)
    entries = image.activation_entries(x, lanes=st.lanes, act_tiles=st.act_tiles)
    tiles = golden.tile_matvec(w, x, lanes=st.lanes, pes=st.pes, mode=fmt.mode,
                               group=mx.group or None)
    out = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"], tiles["last"],
                               tiles.get("vector"), act_bits=st.act_bits, mode=fmt.mode)
    if not mx.group:
        # The tiled model must agree with the plain product before it judges the hardware.
        y = out.reshape(-1, mx.vectors, st.pes).transpose(0, 2, 1).reshape(-1, mx.vectors)
        assert np.array_equal(y[:mx.rows], golden.matvec(w, x, act_bits=st.act_bits,
                                                         mode=fmt.mode))
    pred = predict_cycles(st, timing, rows=mx.rows, cols=mx.cols, fmt=fmt, vectors=mx.vectors,
                          base=base)
    assert n_words == pred.words
    act_payloads = codecs["act_wr"].pack(addr=[a for a, _ in entries],
                                         data=[v for _, v in entries]) if entries else []
    return {"name": name, "desc": _fields(desc),
            "desc_bits": _desc_bits(desc), "act_entries": entries,
            "act_payloads": act_payloads, "expected_sums": out.tolist(),
            "expected": codecs["o_stream"].pack(value=out),
            "tiles": pred.tiles * mx.vectors, "words": pred.words,
            "predicted_cycles": pred.cycles, "cycles_exact": mx.exact}, desc, entries


def _reference(st, timing, mem, desc, entries):
    """What the Amaranth simulator measures for one job from reset, the output always ready."""
    res = pysim.run_streamer(StreamerSystem(st, timing=timing, init=mem), desc, entries,
                             ready_prob=1.0, max_cycles=20000)
    return res, {"cycles": res["cycles"], "perf": res["perf"]}


def _bad_descriptors(st, first, first_words):
    """Descriptors the streamer must refuse, one or two per error it can report; the address
    errors use the whole ``first`` matrix (of ``first_words`` words)."""
    good = {"base": 0, "rows": 3, "cols": 2, "group": 0, "vectors": 1,
            "fmt": FormatCode.of(st.formats[0])}
    whole = {**good, "rows": first.rows, "cols": first.cols, "fmt": FormatCode.of(first.fmt)}
    other = FormatCode.T2 if st.mode.value == "binary" else FormatCode.B1
    bad = [
        ("rows-0", {**good, "rows": 0}, StreamError.ZERO_SIZE),
        ("cols-0", {**good, "cols": 0}, StreamError.ZERO_SIZE),
        ("vectors-0", {**good, "vectors": 0}, StreamError.ZERO_SIZE),
        ("fmt-other-mode", {**good, "fmt": other}, StreamError.FORMAT),
        ("fmt-3", {**good, "fmt": 3}, StreamError.FORMAT),
        ("cols-past-max-k", {**good, "cols": st.max_k + 1}, StreamError.TOO_LONG),
        ("group-not-lanes", {**good, "group": st.lanes + 1}, StreamError.GROUP),
        # One word too far: the image would end one word past memory.
        ("base-past-end", {**whole, "base": st.mem_words - first_words + 1},
         StreamError.ADDRESS),
        ("base-top", {**whole, "base": (1 << 32) - 1}, StreamError.ADDRESS),
    ]
    if st.max_vectors < 255:        # the descriptor field holds up to 255
        bad.append(("vectors-past-max", {**good, "vectors": st.max_vectors + 1},
                    StreamError.VECTORS))
    if st.lanes == 1:               # every group is a multiple of one lane
        bad = [b for b in bad if b[2] is not StreamError.GROUP]
    return bad


def write_job(config, out_dir, *, seed, samples, wrap=None):
    """Export ``config``'s system to ``out_dir/lpu_streamer.v`` and write ``job.json``;
    returns the Verilog path. ``wrap`` (system -> component) exports something else around
    the system (a fault, to check that the bench catches it)."""
    rng = np.random.default_rng([seed, *config.name.encode()])
    st = config.build()
    timing = memory_timing(config.memory, st.word_bits, stall_prob=config.stall,
                           seed=int(rng.integers(1, 1 << 16)))
    codecs = {"desc": _codec(DESCRIPTOR_LAYOUT),
              "act_wr": _codec(st.signature.members["act_wr"].signature.members["payload"]
                               .shape),
              "o_stream": _codec(st.array.output_layout), "status": _codec(STATUS_LAYOUT),
              "perf": _codec(PERF_LAYOUT)}
    mem, placed = _place(st, config.matrices, rng)
    jobs = []
    for s in range(samples):
        for i, (mx, (w, base, n_words)) in enumerate(zip(config.matrices, placed,
                                                         strict=True)):
            name = (f"sample {s} matrix {i} ({mx.fmt} {mx.rows}x{mx.cols} at {base}, "
                    f"group {mx.group}, {mx.vectors} vectors)")
            x = _acts(rng, st, mx.cols, mx.vectors)
            job, desc, entries = _job(st, timing, mx, w, base, n_words, x, codecs, name)
            if s == 0:
                res, job["reference"] = _reference(st, timing, mem, desc, entries)
                assert res["error"] == StreamError.NONE
                assert np.array_equal(res["outputs"], np.array(job["expected_sums"]))
                if mx.exact:
                    assert config.stall == 0
                    assert res["cycles"] == job["predicted_cycles"]
            jobs.append(job)

    # Chains for back_to_back: the matrices with the same columns and vectors on one set of
    # activations, then the first of them again.
    groups = {}
    for i, mx in enumerate(config.matrices):
        groups.setdefault((mx.cols, mx.vectors), []).append(i)
    chains = []
    for c, members in enumerate(groups.values()):
        mx0 = config.matrices[members[0]]
        x = _acts(rng, st, mx0.cols, mx0.vectors)
        chain = []
        for j, i in enumerate([*members, members[0]]):
            mx, (w, base, n_words) = config.matrices[i], placed[i]
            name = f"chain {c} job {j} (matrix {i}: {mx.fmt} {mx.rows}x{mx.cols} at {base})"
            chain.append(_job(st, timing, mx, w, base, n_words, x, codecs, name)[0])
        chains.append(chain)

    bad_jobs = []
    for name, desc, error in _bad_descriptors(st, config.matrices[0], placed[0][2]):
        res = pysim.run_streamer(StreamerSystem(st, timing=timing, init=mem),
                                 DESCRIPTOR_LAYOUT.from_bits(_desc_bits(desc)), [],
                                 max_cycles=1000)
        assert res["error"] == error and len(res["outputs"]) == 0
        bad_jobs.append({"name": name, "desc": _fields(desc),
                         "desc_bits": _desc_bits(desc), "error": error.value,
                         "reference": {"cycles": res["cycles"], "perf": res["perf"]}})

    system = StreamerSystem(st, timing=timing, init=mem)
    if wrap is not None:
        system = wrap(system)
    params = {"lanes": st.lanes, "pes": st.pes, "act_bits": st.act_bits,
              "mode": st.mode.value, "formats": [f.value for f in st.formats],
              "word_bits": st.word_bits, "mem_words": st.mem_words, "max_k": st.max_k,
              "max_vectors": st.max_vectors, "max_burst": st.max_burst,
              "fifo_depth": st.fifo_depth, "act_tiles": st.act_tiles,
              "act_depth": st.act_depth, "memory": config.memory, "stall_prob": config.stall,
              "timing": {k: getattr(timing, k) for k in timing.__dataclass_fields__}}
    job_file = {"config": config.name, "params": params, "ports": port_list(system),
                "codecs": {k: c.to_dict() for k, c in codecs.items()},
                "errors": {e.name: e.value for e in StreamError},
                "memory_words": len(mem), "jobs": jobs, "chains": chains,
                "bad_jobs": bad_jobs}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "job.json").write_text(json.dumps(job_file, indent=1) + "\n")
    path = out_dir / f"{TOP}.v"
    path.write_text(verilog.convert(system, name=TOP))
    return path


# -- simulation ----------------------------------------------------------------------------------

def _skip_unless(sim):
    ok, why = cocotb_runner.available(sim)
    if not ok:
        pytest.skip(f"{sim} unavailable: {why}")


@pytest.fixture(scope="session")
def cocotb_root(tmp_path_factory):
    # Shared by every simulation test of a session, so Verilator runtime objects are compiled
    # once (see lpu.sim.cocotb_runner).
    return tmp_path_factory.mktemp("cocotb_streamer")


def run_config(config, build_dir, *, sim, cache_dir=None, testcase=None, wrap=None):
    seed = _env("LPU_SEED", DEFAULT_SEED, int)
    samples = _env("LPU_STREAM_SAMPLES", DEFAULT_SAMPLES, int)
    valid_prob = _env("LPU_VALID_PROB", DEFAULT_VALID_PROB, float)
    ready_prob = _env("LPU_READY_PROB", DEFAULT_READY_PROB, float)
    design = build_dir / "design"
    verilog_path = write_job(config, design, seed=seed, samples=samples, wrap=wrap)
    extra_env = {"LPU_COCOTB_JOB": str(design / "job.json"), "LPU_COCOTB_SEED": str(seed),
                 "LPU_COCOTB_VALID_PROB": str(valid_prob),
                 "LPU_COCOTB_READY_PROB": str(ready_prob)}
    replay = (f"replay: LPU_SEED={seed} LPU_STREAM_SAMPLES={samples} "
              f"LPU_VALID_PROB={valid_prob} LPU_READY_PROB={ready_prob}; job file, log and "
              f"results in {build_dir}")
    return cocotb_runner.simulate([verilog_path], top=TOP, test_module=TEST_MODULE,
                                  build_dir=build_dir, sim=sim, extra_env=extra_env,
                                  replay=replay, testcase=testcase, cache_dir=cache_dir)


def _run(sim, config, root):
    _skip_unless(sim)
    result = run_config(config, root / sim / config.name, sim=sim,
                        cache_dir=root / ".verilated")
    assert set(result["tests"]) == {"random_traffic", "full_throughput", "back_to_back",
                                    "bad_descriptors"}
    assert result["cycles"] > 0


@pytest.mark.parametrize("config", VERILATOR_CONFIGS, ids=lambda c: c.name)
def test_verilator(cocotb_root, config):
    _run("verilator", config, cocotb_root)


@pytest.mark.parametrize("config", ICARUS_CONFIGS, ids=lambda c: c.name)
def test_icarus(cocotb_root, config):
    _run("icarus", config, cocotb_root)


class _OutputFault(wiring.Component):
    """A StreamerSystem with one fault at its output: bit 0 of the first PE's sum inverted."""

    def __init__(self, system):
        self._system = system
        super().__init__(system.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.system = inner = self._system
        for name in ("desc", "act_wr"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(inner, name))
        wiring.connect(m, inner.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [self.o_stream.payload.eq(Value.cast(inner.o_stream.payload) ^ 1),
                     self.status.eq(inner.status), self.perf.eq(inner.perf)]
        return m


def test_bench_catches_a_fault(cocotb_root):
    # simulate() must raise on a failed cocotb test, naming it and the first wrong output. The
    # bench is the same Python on both simulators; Icarus builds in a fraction of a second.
    sim = "icarus"
    _skip_unless(sim)
    with pytest.raises(CocotbFailure, match=rf"^1 of 1 cocotb tests failed on {sim}:\n"
                                            r"  random_traffic: Output 0 \(sample 0 matrix 0 "
                                            r"\(b1 5x21 at \d+, group 0, 1 vectors\) output "
                                            r"0\) in cycle \d+: got \[-?\d+, "):
        run_config(ICARUS_CONFIGS[0], cocotb_root / sim / "broken-lsb", sim=sim,
                   testcase="random_traffic", wrap=_OutputFault)
