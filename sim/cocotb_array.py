"""cocotb bench for an exported :class:`~lpu.hw.array.PEArray`.

Run by :mod:`lpu.sim.cocotb_runner`; it is not a pytest module. Everything the bench knows about
the design it reads back: parameters and port widths from the generator's ``manifest.json``,
payload bit positions from the codec the runner derived from the component's layouts (see
:mod:`lpu.sim.payload`), and the widths of the ports the simulator actually built, which must
agree with both.

Parts, in the usual cocotb manner:

* :class:`StreamDriver` pushes payloads into ``i_stream`` with random valid gaps (valid, once
  raised, stays up until the transfer, as stream producers must) and drives random bits on the
  payload while valid is low;
* :class:`StreamMonitor` drives ``o_stream.ready`` with random backpressure and hands every
  transfer to the scoreboard;
* the golden model (:mod:`lpu.sim.golden`) turns random matrices into tiles and expected sums;
* :class:`Scoreboard` compares every output bit for bit, in order, and the bench ends only when
  every expected output has arrived and nothing more arrives while the output stays ready.

Handshakes are sampled in the read-only phase after all inputs and combinational paths have
settled, so the bench behaves the same on Icarus and Verilator; a transfer sampled in cycle
``c`` happens at the rising edge that ends cycle ``c``.

Environment (set by the runner; see :func:`lpu.sim.cocotb_runner.run`):
``LPU_COCOTB_MANIFEST``, ``LPU_COCOTB_CODEC``, ``LPU_COCOTB_SEED``, ``LPU_COCOTB_SAMPLES``,
``LPU_COCOTB_VALID_PROB``, ``LPU_COCOTB_READY_PROB`` and ``LPU_COCOTB_PERF`` (where cycle counts
and wall-clock times are written).
"""

import json
import os
import random
import time
import zlib
from collections import deque
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge, SimTimeoutError, Timer, with_timeout

from lpu.sim import golden
from lpu.sim.payload import PayloadCodec, tile_payloads

__all__ = ["BenchConfig", "Bench", "StreamDriver", "StreamMonitor", "Scoreboard"]

# Clock period in simulator steps: no timescale is needed, so Icarus and Verilator agree.
PERIOD = 2
RESET_CYCLES = 3


class BenchConfig:
    """Bench parameters from the environment the runner sets."""

    def __init__(self, environ=os.environ):
        def get(name, default=None):
            value = environ.get(f"LPU_COCOTB_{name}", default)
            if value is None:
                raise RuntimeError(f"LPU_COCOTB_{name} is not set; run the bench through "
                                   f"lpu.sim.cocotb_runner")
            return value

        self.manifest = json.loads(Path(get("MANIFEST")).read_text())
        codecs = json.loads(Path(get("CODEC")).read_text())
        self.codec_in = PayloadCodec.from_dict(codecs["input"])
        self.codec_out = PayloadCodec.from_dict(codecs["output"])
        self.seed = int(get("SEED", "1"))
        self.samples = int(get("SAMPLES", "20"))
        self.valid_prob = float(get("VALID_PROB", "0.7"))
        self.ready_prob = float(get("READY_PROB", "0.6"))
        perf = environ.get("LPU_COCOTB_PERF")
        self.perf_path = Path(perf) if perf else None

    @property
    def params(self):
        return self.manifest["parameters"]

    @property
    def latency(self):
        return self.manifest["latency"]

    def port_width(self, name):
        for port in self.manifest["ports"]:
            if port["name"] == name:
                return port["width"]
        raise KeyError(f"Port {name!r} is not in the manifest")


def check_ports(dut, cfg):
    """The design the simulator built must have the manifest's ports, and the payload codecs
    must span the manifest's payload widths."""
    for port in cfg.manifest["ports"]:
        handle = getattr(dut, port["name"], None)
        assert handle is not None, f"DUT has no port {port['name']!r}"
        assert len(handle) == port["width"], (
            f"Port {port['name']} is {len(handle)} bits in the DUT, {port['width']} in the "
            f"manifest")
    assert cfg.codec_in.width == cfg.port_width("i_stream__payload"), (
        f"Input codec spans {cfg.codec_in.width} bits, port has "
        f"{cfg.port_width('i_stream__payload')}")
    assert cfg.codec_out.width == cfg.port_width("o_stream__payload"), (
        f"Output codec spans {cfg.codec_out.width} bits, port has "
        f"{cfg.port_width('o_stream__payload')}")


def cycle_now():
    return get_sim_time("step") // PERIOD


class StreamDriver:
    """Source of ``i_stream``: one payload per transfer, random gaps of low valid between."""

    def __init__(self, dut, edge, settled, rnd, valid_prob):
        self._dut = dut
        self._edge = edge
        self._settled = settled
        self._rnd = rnd
        self.valid_prob = valid_prob
        self._width = len(dut.i_stream__payload)
        #: Cycle in which each payload was transferred.
        self.accepted = []

    async def send(self, payloads):
        dut, rnd = self._dut, self._rnd
        rising, settled = self._edge, self._settled
        for payload in payloads:
            while rnd.random() >= self.valid_prob:
                # Garbage while invalid: the design must ignore the payload without valid.
                dut.i_stream__valid.value = 0
                dut.i_stream__payload.value = rnd.getrandbits(self._width)
                await rising
            dut.i_stream__valid.value = 1
            dut.i_stream__payload.value = payload
            while True:
                await settled
                taken = int(dut.i_stream__ready.value)
                if taken:
                    self.accepted.append(cycle_now())
                await rising
                if taken:
                    break
        dut.i_stream__valid.value = 0


class StreamMonitor:
    """Sink of ``o_stream``: random ``ready``; every transfer goes to ``on_output``."""

    def __init__(self, dut, edge, settled, rnd, ready_prob, on_output):
        self._dut = dut
        self._edge = edge
        self._settled = settled
        self._rnd = rnd
        self.ready_prob = ready_prob
        self._on_output = on_output

    async def run(self):
        dut, rnd = self._dut, self._rnd
        rising, settled = self._edge, self._settled
        driven = None
        while True:
            ready = rnd.random() < self.ready_prob
            if ready is not driven:
                dut.o_stream__ready.value = int(ready)
                driven = ready
            if ready:
                await settled
                if int(dut.o_stream__valid.value):
                    self._on_output(dut.o_stream__payload.value.to_unsigned(), cycle_now())
            await rising


class Scoreboard:
    """Expected outputs in order, compared exactly with what the monitor delivers.

    Expected sums are packed with the output codec once, so each arrival is one integer
    comparison; a mismatch is unpacked for the message.
    """

    def __init__(self, codec):
        self._codec = codec
        self._expected = deque()
        self.received = 0
        #: Cycle of each output transfer.
        self.cycles = []

    def expect(self, sums, tags):
        payloads = self._codec.pack(value=np.asarray(sums, dtype=np.int64))
        self._expected.extend(zip(payloads, tags, strict=True))

    @property
    def pending(self):
        return len(self._expected)

    def __call__(self, payload, cycle):
        if not self._expected:
            got = self._codec.unpack([payload])["value"][0]
            raise AssertionError(f"Unexpected output {got.tolist()} in cycle {cycle} after "
                                 f"{self.received} expected ones")
        want, tag = self._expected.popleft()
        if payload != want:
            dec = self._codec.unpack([payload, want])["value"]
            raise AssertionError(f"Output {self.received} ({tag}) in cycle {cycle}: got "
                                 f"{dec[0].tolist()}, expected {dec[1].tolist()}")
        self.received += 1
        self.cycles.append(cycle)


class Bench:
    """Clock, reset, driver, monitor and scoreboard around the DUT for one cocotb test."""

    def __init__(self, dut, name, *, valid_prob=None, ready_prob=None):
        self.dut = dut
        self.name = name
        self.cfg = BenchConfig()
        check_ports(dut, self.cfg)
        seed = self.cfg.seed
        # One stream per test, reproducible from the seed and the test's name.
        self.rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        rnd = random.Random(int(self.rng.integers(1 << 62)))
        # A combinational design (a TernaryPE without pipeline registers) has no clock port;
        # the bench then keeps the same cycle grid with a timer.
        self.clocked = getattr(dut, "clk", None) is not None
        self.edge = RisingEdge(dut.clk) if self.clocked else Timer(PERIOD, "step")
        settled = ReadOnly()
        self.scoreboard = Scoreboard(self.cfg.codec_out)
        self.driver = StreamDriver(dut, self.edge, settled, rnd, self.cfg.valid_prob
                                   if valid_prob is None else valid_prob)
        self.monitor = StreamMonitor(dut, self.edge, settled, rnd, self.cfg.ready_prob
                                     if ready_prob is None else ready_prob, self.scoreboard)
        self._monitor_task = None
        self._t0 = self._c0 = None

    async def start(self):
        dut = self.dut
        if self.clocked:
            Clock(dut.clk, PERIOD, unit="step").start()
            dut.rst.value = 1
        dut.i_stream__valid.value = 0
        dut.i_stream__payload.value = 0
        dut.o_stream__ready.value = 0
        for _ in range(RESET_CYCLES):
            await self.edge
        if self.clocked:
            dut.rst.value = 0
        self._monitor_task = cocotb.start_soon(self.monitor.run())
        self._t0, self._c0 = time.perf_counter(), cycle_now()

    def _budget(self, inputs, outputs):
        # Generous: twenty times the expected cycles at the given valid and ready rates. A
        # deadlocked design fails here instead of hanging the simulator.
        return int(20 * (inputs / self.driver.valid_prob + (outputs + self.cfg.latency + 1)
                         / self.monitor.ready_prob)) + 1000

    async def send(self, payloads):
        """Drive every payload into the DUT, failing if it stops accepting them."""
        budget = self._budget(len(payloads), self.scoreboard.pending)
        try:
            await with_timeout(self.driver.send(payloads), budget * PERIOD, "step")
        except SimTimeoutError:
            raise AssertionError(f"Input stalled: {len(self.driver.accepted)} of "
                                 f"{len(payloads)} inputs accepted in {budget} cycles "
                                 f"({self.scoreboard.received} outputs)") from None

    async def finish(self):
        """Wait for every expected output, then check that no further output appears."""
        rising = self.edge
        max_wait = self._budget(0, self.scoreboard.pending)
        for _ in range(max_wait):
            if not self.scoreboard.pending:
                break
            await rising
        assert not self.scoreboard.pending, (
            f"{self.scoreboard.pending} outputs missing {max_wait} cycles after the last input "
            f"({self.scoreboard.received} arrived)")
        # With the output always ready, anything still in the pipeline would now come out.
        self.monitor.ready_prob = 1.0
        for _ in range(2 * self.cfg.latency + 16):
            await rising
        self._monitor_task.cancel()
        assert not self.scoreboard.pending
        cycles = cycle_now() - self._c0
        seconds = time.perf_counter() - self._t0
        cocotb.log.info("%s: %d outputs, %d tiles, %d cycles in %.3f s (%.0f cycles/s)",
                      self.name, self.scoreboard.received, len(self.driver.accepted), cycles,
                      seconds, cycles / seconds)
        self.record(cycles=cycles, seconds=seconds, outputs=self.scoreboard.received,
                    inputs=len(self.driver.accepted))

    def record(self, **values):
        path = self.cfg.perf_path
        if path is None:
            return
        perf = json.loads(path.read_text()) if path.exists() else {}
        perf[self.name] = values
        path.write_text(json.dumps(perf, indent=2) + "\n")


def random_matrix(rng, *, lanes, pes, act_bits, mode, max_k, extreme=False):
    """A weight matrix and activation vector of random shape, biased toward edge cases.

    K ranges over values below, at and above multiples of N (including K < N) up to a few
    tiles; M over values below and above P. A quarter of the activations take the extreme
    values; ``extreme`` makes every activation one extreme and every row one sign.
    """
    lo, hi = golden.act_range(act_bits)
    k_cap = min(max_k, 4 * lanes + 3)
    pick = rng.integers(4)
    if pick == 0 and lanes > 1:
        k = int(rng.integers(1, min(lanes, max_k) + 1))
    elif pick == 1:
        k = int(min(max_k, lanes * rng.integers(1, 4)))
    else:
        k = int(rng.integers(1, k_cap + 1))
    m = int(rng.integers(1, 2 * pes + 2))
    values = [-1, 1] if mode == "binary" else [-1, 0, 1]
    if extreme:
        x = np.full(k, lo if rng.integers(2) else hi, dtype=np.int64)
        w = np.where(np.arange(m)[:, None] % 2, -1, 1) * np.ones((1, k), dtype=np.int64)
        return w, x
    x = rng.integers(lo, hi + 1, size=k)
    edge = rng.random(k) < 0.25
    x[edge] = rng.choice([lo, hi], size=int(edge.sum()))
    w = rng.choice(values, size=(m, k))
    return w, x


def accumulator_extremes(*, act_bits, max_k):
    """Rows that drive the accumulators to both ends of their range: ``max_k`` columns of the
    most negative activation against all -1 (the largest sum) and all +1 (the smallest)."""
    lo, _ = golden.act_range(act_bits)
    x = np.full(max_k, lo, dtype=np.int64)
    w = np.stack([np.full(max_k, -1), np.full(max_k, 1)])
    return w, x


def tiles_for(jobs, *, lanes, pes, act_bits, mode):
    """Concatenated tiles and expected outputs of several matrix-vector products."""
    parts, expected, tags = [], [], []
    for j, (w, x) in enumerate(jobs):
        t = golden.tile_matvec(w, x, lanes=lanes, pes=pes, mode=mode)
        out = golden.array_outputs(t["act"], t["weight"], t["first"], t["last"],
                                   act_bits=act_bits, mode=mode)
        # The tiled model must agree with the plain product before it judges the hardware.
        assert np.array_equal(out.reshape(-1)[:w.shape[0]],
                              golden.matvec(w, x, act_bits=act_bits, mode=mode))
        parts.append(t)
        expected.append(out)
        tags += [f"job {j} ({w.shape[0]}x{w.shape[1]}) row block {r}" for r in range(len(out))]
    tiles = {key: np.concatenate([p[key] for p in parts]) for key in
             ("act", "weight", "first", "last")}
    return tiles, np.concatenate(expected), tags


def _params(cfg):
    p = cfg.params
    assert set(cfg.codec_in.fields) == {"act", "weight", "first", "last"}, (
        f"This bench is for a PEArray, not {cfg.manifest['kind']} with input fields "
        f"{sorted(cfg.codec_in.fields)}")
    act, weight = cfg.codec_in["act"], cfg.codec_in["weight"]
    out = cfg.codec_out["value"]
    # The manifest's parameters and the payload layout must describe the same design.
    assert act.dims == (p["lanes"],) and act.width == p["act_bits"] and act.signed
    assert weight.dims == (p["pes"], p["lanes"])
    assert weight.width == (2 if p["weights"] == "ternary" else 1)
    assert out.dims == (p["pes"],) and out.width == cfg.manifest["acc_width"] and out.signed
    return dict(lanes=p["lanes"], pes=p["pes"], act_bits=p["act_bits"], mode=p["weights"])


async def _run_jobs(bench, jobs, *, drop_first=0.0):
    geo = _params(bench.cfg)
    tiles, expected, tags = tiles_for(jobs, **geo)
    if drop_first:
        # Every row block follows a last tile (or reset), which restarts the sums by itself:
        # without its first flag a block must give the same sums.
        tiles["first"] &= bench.rng.random(len(tiles["first"])) >= drop_first
        again = golden.array_outputs(tiles["act"], tiles["weight"], tiles["first"],
                                     tiles["last"], act_bits=geo["act_bits"], mode=geo["mode"])
        assert np.array_equal(again, expected)
    payloads = tile_payloads(bench.cfg.codec_in, tiles, mode=geo["mode"])
    bench.scoreboard.expect(expected, tags)
    await bench.start()
    await bench.send(payloads)
    await bench.finish()
    return tiles


def _random_jobs(bench, count):
    geo = _params(bench.cfg)
    max_k = bench.cfg.params["max_k"]
    rng = bench.rng
    return [random_matrix(rng, **geo, max_k=max_k, extreme=bool(rng.random() < 0.15))
            for _ in range(count)]


@cocotb.test()
async def random_traffic(dut):
    """Random matrices with random valid gaps and output backpressure, plus the accumulator
    extremes at the longest row the array is built for; some row blocks start without
    ``first``."""
    bench = Bench(dut, "random_traffic")
    geo = _params(bench.cfg)
    jobs = _random_jobs(bench, bench.cfg.samples)
    jobs.append(accumulator_extremes(act_bits=geo["act_bits"], max_k=bench.cfg.params["max_k"]))
    await _run_jobs(bench, jobs, drop_first=0.3)


@cocotb.test()
async def saturated_backpressure(dut):
    """Input always valid, output rarely ready: the pipeline fills and must hold every stage."""
    bench = Bench(dut, "saturated_backpressure", valid_prob=1.0, ready_prob=0.2)
    await _run_jobs(bench, _random_jobs(bench, max(1, bench.cfg.samples // 2)))


@cocotb.test()
async def full_throughput(dut):
    """No gaps, no backpressure: one tile per cycle, each output exactly ``latency`` cycles
    after its last tile."""
    bench = Bench(dut, "full_throughput", valid_prob=1.0, ready_prob=1.0)
    geo = _params(bench.cfg)
    jobs = _random_jobs(bench, max(1, bench.cfg.samples // 2))
    # Single-tile row blocks: an output every cycle.
    lo, hi = golden.act_range(geo["act_bits"])
    w = bench.rng.choice([-1, 1], size=(3 * geo["pes"], geo["lanes"]))
    jobs.append((w, bench.rng.integers(lo, hi + 1, size=geo["lanes"])))
    tiles = await _run_jobs(bench, jobs)

    accepted = np.array(bench.driver.accepted)
    assert len(accepted) == len(tiles["act"])
    gaps = np.flatnonzero(np.diff(accepted) != 1)
    assert not gaps.size, f"Input stalled after tile {gaps[0]}: cycles {accepted[gaps[0]:][:3]}"
    want = accepted[tiles["last"]] + bench.cfg.latency
    got = np.array(bench.scoreboard.cycles)
    assert np.array_equal(got, want), (
        f"Output cycles {got[:8].tolist()}..., expected {want[:8].tolist()}... "
        f"(latency {bench.cfg.latency})")
    cocotb.log.info("full_throughput: %d tiles in %d cycles, first output %d cycles after the "
                  "first tile", len(accepted), int(got[-1] - accepted[0] + 1),
                  int(got[0] - accepted[0]))
