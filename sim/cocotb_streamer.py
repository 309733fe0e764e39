"""cocotb bench for an exported :class:`~lpu.sim.system.StreamerSystem`: the weight streamer
with its memory model, the weight image baked into the memory's initial contents.

Run through :func:`lpu.sim.cocotb_runner.simulate` by ``tests/test_cocotb_streamer.py``; it is
not a pytest module. The pytest side writes a job file (``LPU_COCOTB_JOB``) next to the Verilog:
the design's parameters and ports, the payload layouts of every port (:mod:`lpu.sim.payload`
codecs), and the jobs -- descriptor bits, activation-buffer writes and the outputs the golden
model (:mod:`lpu.sim.golden`) computes from the image read back, plus the cycles and counters
the Amaranth simulator measured for the same design (:func:`lpu.sim.pysim.run_streamer`) and
the cycle model's prediction (:func:`lpu.host.cycle_model.predict_cycles`).

The bench follows the protocol of :func:`~lpu.sim.pysim.run_streamer`: write the activations
through ``act_wr``, send the descriptor on ``desc``, take ``o_stream``, wait for
``status.busy`` to fall, read ``status.error`` and ``perf``. Its parts:

* :class:`ActWriter` writes activation entries with random gaps (random bits on the payload
  while ``valid`` is low); :class:`DescDriver` offers a descriptor, ``valid`` held until the
  streamer takes it;
* :class:`OutputMonitor` drives ``o_stream.ready`` at random, hands every transfer to the
  :class:`Scoreboard` and notes the cycles an output waited;
* the scoreboard compares every output bit for bit, in order, and fails on any output it does
  not expect, so nothing may appear between or after jobs.

The tests: ``random_traffic`` (every job, random gaps and backpressure, memory stalls as the
build's memory model makes them), ``full_throughput`` (cycle counts and counters against the
Amaranth simulator and the cycle model), ``back_to_back`` (descriptors queued behind each other)
and ``bad_descriptors`` (every error the streamer reports, on the Verilog too).

Handshakes are sampled in the read-only phase; a transfer sampled in cycle ``c`` happens at the
rising edge that ends cycle ``c``. The job's cycle count runs from the cycle the descriptor is
taken to the first cycle ``status.busy`` is low, as ``run_streamer`` counts it.

Environment (set by the pytest side): ``LPU_COCOTB_JOB``, ``LPU_COCOTB_SEED``,
``LPU_COCOTB_VALID_PROB`` (activation writes and descriptor offers), ``LPU_COCOTB_READY_PROB``
and ``LPU_COCOTB_PERF``.
"""

import json
import os
import random
import time
import zlib
from collections import deque
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge

from lpu.sim.payload import PayloadCodec

__all__ = ["JobConfig", "Bench", "ActWriter", "DescDriver", "OutputMonitor", "Scoreboard"]

# Clock period in simulator steps (the exported Verilog has no timescale).
PERIOD = 2
RESET_CYCLES = 3
# Cycles the output is held ready after the last job, for anything left over to show up.
QUIET_CYCLES = 32


class JobConfig:
    """The job file and bench parameters from the environment."""

    def __init__(self, environ=os.environ):
        def get(name, default=None):
            value = environ.get(f"LPU_COCOTB_{name}", default)
            if value is None:
                raise RuntimeError(f"LPU_COCOTB_{name} is not set; run the bench through "
                                   f"tests/test_cocotb_streamer.py")
            return value

        job = json.loads(Path(get("JOB")).read_text())
        self.params = job["params"]
        self.ports = job["ports"]
        self.codecs = {name: PayloadCodec.from_dict(c) for name, c in job["codecs"].items()}
        self.errors = job["errors"]                  # StreamError name -> value
        self.error_names = {v: k for k, v in self.errors.items()}
        self.jobs = job["jobs"]
        self.bad_jobs = job["bad_jobs"]
        self.chains = job["chains"]
        self.seed = int(get("SEED", "1"))
        self.valid_prob = float(get("VALID_PROB", "0.7"))
        self.ready_prob = float(get("READY_PROB", "0.6"))
        perf = environ.get("LPU_COCOTB_PERF")
        self.perf_path = Path(perf) if perf else None

    def port_width(self, name):
        for port in self.ports:
            if port["name"] == name:
                return port["width"]
        raise KeyError(f"Port {name!r} is not in the job file")


def check_design(dut, cfg):
    """The simulated design must have the job file's ports, the codecs must span them, and the
    layouts must agree with the parameters."""
    for port in cfg.ports:
        handle = getattr(dut, port["name"], None)
        assert handle is not None, f"DUT has no port {port['name']!r}"
        assert len(handle) == port["width"], (
            f"Port {port['name']} is {len(handle)} bits in the DUT, {port['width']} in the "
            f"job file")
    for name, port in (("desc", "desc__payload"), ("act_wr", "act_wr__payload"),
                       ("o_stream", "o_stream__payload"), ("status", "status"),
                       ("perf", "perf")):
        assert cfg.codecs[name].width == cfg.port_width(port), (
            f"The {name} codec spans {cfg.codecs[name].width} bits, port {port} has "
            f"{cfg.port_width(port)}")
    p = cfg.params
    data = cfg.codecs["act_wr"]["data"]
    assert data.dims == (p["lanes"],) and data.width == p["act_bits"] and data.signed
    out = cfg.codecs["o_stream"]["value"]
    assert out.dims == (p["pes"],) and out.signed
    assert (1 << cfg.codecs["act_wr"]["addr"].width) >= p["act_depth"]


def cycle_now():
    return get_sim_time("step") // PERIOD


class ActWriter:
    """Source of ``act_wr`` (always ready): one entry per cycle, random gaps between."""

    def __init__(self, dut, edge, rnd):
        self._dut = dut
        self._edge = edge
        self._rnd = rnd
        self._width = len(dut.act_wr__payload)

    async def write(self, payloads, valid_prob):
        dut, rnd = self._dut, self._rnd
        for payload in payloads:
            while rnd.random() >= valid_prob:
                # Garbage while invalid: the buffer must ignore the payload without valid.
                dut.act_wr__valid.value = 0
                dut.act_wr__payload.value = rnd.getrandbits(self._width)
                await self._edge
            dut.act_wr__valid.value = 1
            dut.act_wr__payload.value = payload
            await self._edge
        dut.act_wr__valid.value = 0


class DescDriver:
    """Source of ``desc``: random idle cycles, then ``valid`` until the descriptor is taken."""

    def __init__(self, dut, edge, settled, rnd):
        self._dut = dut
        self._edge = edge
        self._settled = settled
        self._rnd = rnd
        self._width = len(dut.desc__payload)

    async def idle(self, valid_prob):
        while self._rnd.random() >= valid_prob:
            self._dut.desc__valid.value = 0
            self._dut.desc__payload.value = self._rnd.getrandbits(self._width)
            await self._edge

    def offer(self, bits):
        self._dut.desc__valid.value = 1
        self._dut.desc__payload.value = bits

    async def send(self, bits, valid_prob=1.0, *, budget=10):
        """Offer ``bits`` and return the cycle of the transfer (the edge has passed)."""
        await self.idle(valid_prob)
        self.offer(bits)
        for _ in range(budget):
            await self._settled
            taken = int(self._dut.desc__ready.value)
            cycle = cycle_now()
            await self._edge
            if taken:
                self._dut.desc__valid.value = 0
                return cycle
        raise AssertionError(f"Descriptor not taken in {budget} cycles (desc.ready low)")


class Scoreboard:
    """Expected ``o_stream`` payloads in order, compared exactly with every transfer.

    An output nobody expects, or one that differs, is recorded (the first one) and raised; the
    bench checks :attr:`failure` too, so an error inside the monitor task cannot go unnoticed.
    """

    def __init__(self, codec):
        self._codec = codec
        self._expected = deque()
        self.received = 0
        self.failure = None
        #: Cycle of each output transfer.
        self.cycles = []

    def expect(self, payloads, tags):
        self._expected.extend(zip(payloads, tags, strict=True))

    @property
    def pending(self):
        return len(self._expected)

    def _fail(self, msg):
        if self.failure is None:
            self.failure = msg
        raise AssertionError(msg)

    def __call__(self, payload, cycle):
        if not self._expected:
            got = self._codec.unpack([payload])["value"][0]
            self._fail(f"Unexpected output {got.tolist()} in cycle {cycle} after "
                       f"{self.received} expected ones")
        want, tag = self._expected.popleft()
        if payload != want:
            dec = self._codec.unpack([payload, want])["value"]
            self._fail(f"Output {self.received} ({tag}) in cycle {cycle}: got "
                       f"{dec[0].tolist()}, expected {dec[1].tolist()}")
        self.received += 1
        self.cycles.append(cycle)

    def check(self):
        assert self.failure is None, self.failure


class OutputMonitor:
    """Sink of ``o_stream``: random ``ready``; transfers go to ``on_output``, and the cycles in
    which an output waited (valid without ready, what ``perf.out_stall`` counts) to
    :attr:`stalls`."""

    def __init__(self, dut, edge, settled, rnd, ready_prob, on_output):
        self._dut = dut
        self._edge = edge
        self._settled = settled
        self._rnd = rnd
        self.ready_prob = ready_prob
        self._on_output = on_output
        self.stalls = []

    def stalls_in(self, first, last):
        """Stalled cycles from ``first`` to ``last`` inclusive."""
        return sum(first <= c <= last for c in self.stalls)

    async def run(self):
        dut, rnd = self._dut, self._rnd
        driven = None
        while True:
            ready = rnd.random() < self.ready_prob
            if ready is not driven:
                dut.o_stream__ready.value = int(ready)
                driven = ready
            await self._settled
            if int(dut.o_stream__valid.value):
                if ready:
                    self._on_output(dut.o_stream__payload.value.to_unsigned(), cycle_now())
                else:
                    self.stalls.append(cycle_now())
            await self._edge


class Bench:
    """Clock, reset, drivers, monitor and scoreboard around the DUT for one cocotb test."""

    def __init__(self, dut, name, *, ready_prob=None):
        self.dut = dut
        self.name = name
        self.cfg = JobConfig()
        check_design(dut, self.cfg)
        # One stream per test, reproducible from the seed and the test's name.
        seed = [self.cfg.seed, zlib.crc32(name.encode())]
        rnd = random.Random(str(seed))
        self.rnd = rnd
        self.edge = RisingEdge(dut.clk)
        self.settled = ReadOnly()
        self.scoreboard = Scoreboard(self.cfg.codecs["o_stream"])
        self.writer = ActWriter(dut, self.edge, random.Random(rnd.getrandbits(64)))
        self.desc = DescDriver(dut, self.edge, self.settled, random.Random(rnd.getrandbits(64)))
        self.monitor = OutputMonitor(dut, self.edge, self.settled,
                                     random.Random(rnd.getrandbits(64)),
                                     self.cfg.ready_prob if ready_prob is None else ready_prob,
                                     self.scoreboard)
        self._clock = None
        self._monitor_task = None
        self._t0 = self._c0 = None
        self._queued = 0            # expected outputs of jobs not yet started
        self.jobs_run = 0

    async def reset(self):
        """Hold reset for a few cycles; returns right after the edge that ends it, so the next
        cycle is the first the design runs (the Amaranth simulator's cycle 0)."""
        dut = self.dut
        if self._clock is None:
            self._clock = Clock(dut.clk, PERIOD, unit="step")
            self._clock.start()
        dut.rst.value = 1
        dut.act_wr__valid.value = 0
        dut.act_wr__payload.value = 0
        dut.desc__valid.value = 0
        dut.desc__payload.value = 0
        for _ in range(RESET_CYCLES):
            await self.edge
        dut.rst.value = 0
        if self._monitor_task is None:
            self._monitor_task = cocotb.start_soon(self.monitor.run())
            self._t0, self._c0 = time.perf_counter(), cycle_now()

    def status(self):
        """``(busy, error)``; call in the read-only phase."""
        s = self.cfg.codecs["status"].unpack([self.dut.status.value.to_unsigned()])
        return int(s["busy"][0]), int(s["error"][0])

    def perf(self):
        p = self.cfg.codecs["perf"].unpack([self.dut.perf.value.to_unsigned()])
        return {k: int(v[0]) for k, v in p.items()}

    def error_name(self, value):
        return self.cfg.error_names.get(value, str(value))

    async def wait_idle(self, budget, what):
        """Wait (from the cycle after the descriptor) for ``status.busy`` to fall; returns that
        cycle, in whose read-only phase the bench then is."""
        for _ in range(budget):
            await self.settled
            busy, _ = self.status()
            if not busy:
                return cycle_now()
            await self.edge
        raise AssertionError(f"{what}: still busy after {budget} cycles "
                             f"({self.scoreboard.received} outputs, "
                             f"{self.scoreboard.pending} missing)")

    async def after_idle(self):
        """Status and counters one cycle after busy fell (when ``run_streamer`` reads them);
        returns in the next cycle's write phase."""
        await self.edge
        await self.settled
        busy, error = self.status()
        perf = self.perf()
        await self.edge
        return busy, error, perf

    def budget(self, job):
        # Generous: twenty times the prediction at the output's ready rate. A deadlocked design
        # fails here instead of hanging the simulator.
        return int(20 * job["predicted_cycles"] / self.monitor.ready_prob) + 1000

    def expect(self, job):
        self.scoreboard.expect(job["expected"], [f"{job['name']} output {i}"
                                                 for i in range(len(job["expected"]))])

    def check_idle(self, job, c_desc, c_idle, perf):
        """Checks in the first idle cycle after ``job``: every output taken, nothing valid, and
        the counters (as read in that cycle or the next: the idle cycle adds nothing)."""
        tag = job["name"]
        self.scoreboard.check()
        # The streamer returns to idle only when its last output has been taken.
        assert self.scoreboard.pending == self._queued, (
            f"{tag}: idle in cycle {c_idle} with {self.scoreboard.pending - self._queued} "
            f"outputs missing ({self.scoreboard.received} arrived)")
        assert not int(self.dut.o_stream__valid.value), f"{tag}: output valid while idle"
        cycles = c_idle - c_desc
        want = {"tiles": job["tiles"], "words_read": job["words"], "busy_cycles": cycles - 1,
                "out_stall": self.monitor.stalls_in(c_desc + 1, c_idle)}
        got = {k: perf[k] for k in want}
        assert got == want, f"{tag}: perf counters {got}, expected {want}"
        self.jobs_run += 1
        return cycles

    async def run_job(self, job, *, valid_prob):
        """Write the activations, send the descriptor, check outputs, status and counters.

        Returns the cycle count and the counters.
        """
        tag = job["name"]
        self.expect(job)
        await self.writer.write(job["act_payloads"], valid_prob)
        c_desc = await self.desc.send(job["desc_bits"], valid_prob)
        c_idle = await self.wait_idle(self.budget(job), tag)
        busy, error, perf = await self.after_idle()
        cycles = self.check_idle(job, c_desc, c_idle, perf)
        assert not busy, f"{tag}: busy again without a descriptor"
        assert error == self.cfg.errors["NONE"], (
            f"{tag}: status.error is {self.error_name(error)} after a valid descriptor")
        return cycles, perf

    async def run_chain(self, jobs, *, valid_prob):
        """Jobs on the same activations, each descriptor offered as soon as the one before is
        taken: not taken while busy, taken in the first idle cycle."""
        for job in jobs:
            self.expect(job)
        self._queued = sum(len(job["expected"]) for job in jobs)
        await self.writer.write(jobs[0]["act_payloads"], valid_prob)
        c_desc = await self.desc.send(jobs[0]["desc_bits"], valid_prob)
        for i, job in enumerate(jobs):
            self._queued -= len(job["expected"])
            nxt = jobs[i + 1] if i + 1 < len(jobs) else None
            if nxt is not None:
                self.desc.offer(nxt["desc_bits"])
            for _ in range(self.budget(job)):
                await self.settled
                busy, error = self.status()
                ready = int(self.dut.desc__ready.value)
                if not busy:
                    break
                assert not ready, f"{job['name']}: desc.ready high while busy"
                await self.edge
            else:
                raise AssertionError(f"{job['name']}: still busy after {self.budget(job)} "
                                     f"cycles")
            c_idle = cycle_now()
            assert ready, f"{job['name']}: desc.ready low in the idle cycle {c_idle}"
            want = job.get("error", self.cfg.errors["NONE"])
            assert error == want, (
                f"{job['name']}: status.error is {self.error_name(error)}, expected "
                f"{self.error_name(want)}")
            self.check_idle(job, c_desc, c_idle, self.perf())
            await self.edge
            # The next descriptor went in at that edge.
            self.dut.desc__valid.value = 0
            c_desc = c_idle

    async def finish(self):
        """Hold the output ready for a while: nothing more may come out."""
        self.monitor.ready_prob = 1.0
        for _ in range(QUIET_CYCLES):
            await self.edge
        self.scoreboard.check()
        assert not self.scoreboard.pending
        self._monitor_task.cancel()
        cycles = cycle_now() - self._c0
        seconds = time.perf_counter() - self._t0
        cocotb.log.info("%s: %d jobs, %d outputs, %d cycles in %.3f s (%.0f cycles/s)",
                        self.name, self.jobs_run, self.scoreboard.received, cycles, seconds,
                        cycles / seconds)
        self.record(cycles=cycles, seconds=seconds, jobs=self.jobs_run,
                    outputs=self.scoreboard.received)

    def record(self, **values):
        path = self.cfg.perf_path
        if path is None:
            return
        perf = json.loads(path.read_text()) if path.exists() else {}
        perf[self.name] = values
        path.write_text(json.dumps(perf, indent=2) + "\n")


@cocotb.test()
async def random_traffic(dut):
    """Every job in turn: activation writes and descriptor offers with random gaps, random
    output backpressure, memory stalls as the build's memory model has them."""
    bench = Bench(dut, "random_traffic")
    await bench.reset()
    for job in bench.cfg.jobs:
        await bench.run_job(job, valid_prob=bench.cfg.valid_prob)
    await bench.finish()


@cocotb.test()
async def full_throughput(dut):
    """One job per matrix from reset, as the Amaranth simulator ran it: activations back to
    back, the descriptor right after, the output always ready. The cycle count and every
    counter must equal the Amaranth simulator's, and the cycle model's prediction where it is
    exact."""
    bench = Bench(dut, "full_throughput", ready_prob=1.0)
    for job in bench.cfg.jobs:
        ref = job.get("reference")
        if ref is None:
            continue
        # From reset, so the memory model's stall LFSR and refresh timer start where the
        # Amaranth simulator's did.
        await bench.reset()
        cycles, perf = await bench.run_job(job, valid_prob=1.0)
        assert (cycles, perf) == (ref["cycles"], ref["perf"]), (
            f"{job['name']}: {cycles} cycles, perf {perf}; the Amaranth simulator took "
            f"{ref['cycles']} cycles, perf {ref['perf']}")
        if job["cycles_exact"]:
            assert cycles == job["predicted_cycles"], (
                f"{job['name']}: {cycles} cycles, the cycle model predicts "
                f"{job['predicted_cycles']}")
        cocotb.log.info("%s: %d cycles (model %d), perf %s", job["name"], cycles,
                        job["predicted_cycles"], perf)
    await bench.finish()


@cocotb.test()
async def bad_descriptors(dut):
    """Descriptors the streamer must refuse: the error in ``status``, back to idle in the
    Amaranth simulator's cycle count, no memory read, no output. Then a valid job with a bad
    descriptor offered behind it: not taken while busy, taken in the first idle cycle; and a
    valid job after it clears the error."""
    bench = Bench(dut, "bad_descriptors")
    cfg = bench.cfg
    await bench.reset()
    for bad in cfg.bad_jobs:
        tag = bad["name"]
        c_desc = await bench.desc.send(bad["desc_bits"], cfg.valid_prob)
        c_idle = await bench.wait_idle(bad["reference"]["cycles"] + 100, tag)
        busy, error, perf = await bench.after_idle()
        cycles = c_idle - c_desc
        assert error == bad["error"], (
            f"{tag}: status.error is {bench.error_name(error)}, expected "
            f"{bench.error_name(bad['error'])}")
        assert not busy
        assert cycles == bad["reference"]["cycles"], (
            f"{tag}: refused in {cycles} cycles, the Amaranth simulator took "
            f"{bad['reference']['cycles']}")
        assert perf == bad["reference"]["perf"], (
            f"{tag}: perf {perf}, the Amaranth simulator's {bad['reference']['perf']}")
        assert perf["words_read"] == 0 and perf["tiles"] == 0, f"{tag}: perf {perf}"
        bench.scoreboard.check()
        bench.jobs_run += 1

    # A valid job with a refused descriptor waiting behind it.
    job, bad = cfg.jobs[0], cfg.bad_jobs[0]
    await bench.run_chain([job, {**bad, "expected": [], "tiles": 0, "words": 0,
                                 "predicted_cycles": bad["reference"]["cycles"]}],
                          valid_prob=cfg.valid_prob)
    _, error, _ = await bench.after_idle()
    assert error == bad["error"], (
        f"{bad['name']} after {job['name']}: status.error is {bench.error_name(error)}")
    # The next valid descriptor clears the error.
    await bench.run_job(job, valid_prob=cfg.valid_prob)
    await bench.finish()


@cocotb.test()
async def back_to_back(dut):
    """Chains of jobs on one set of activations (the matrices with the same columns and
    vectors, then the first again), each descriptor taken in the first idle cycle after the
    one before: no state carries over from one job to the next."""
    bench = Bench(dut, "back_to_back")
    await bench.reset()
    for chain in bench.cfg.chains:
        await bench.run_chain(chain, valid_prob=bench.cfg.valid_prob)
    await bench.finish()
