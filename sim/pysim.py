"""Amaranth-simulator benches for the PE and the PE array: stream drivers with random valid gaps
and random output backpressure, results collected for comparison with the golden model."""

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from lpu.hw.formats import weight_codes

__all__ = ["run_pe", "run_array", "run_streamer", "run_scale"]


def _drive(dut, inputs, n_out, *, seed, valid_prob, ready_prob, max_cycles, vcd=None):
    """Push ``inputs`` (payload values) into ``dut.i_stream`` and collect ``n_out`` outputs."""
    rng = np.random.default_rng(seed)
    outputs = []
    state = {"cycles": 0}

    async def producer(ctx):
        for payload in inputs:
            while rng.random() >= valid_prob:
                await ctx.tick()
            ctx.set(dut.i_stream.payload, payload)
            ctx.set(dut.i_stream.valid, 1)
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.i_stream.valid, 0)

    async def consumer(ctx):
        cycles = 0
        while len(outputs) < n_out:
            ready = int(rng.random() < ready_prob)
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                          dut.o_stream.payload)
            cycles += 1
            if valid and ready:
                outputs.append(payload)
            if cycles > max_cycles:
                raise TimeoutError(f"No progress after {max_cycles} cycles "
                                   f"({len(outputs)} of {n_out} outputs)")
        ctx.set(dut.o_stream.ready, 0)
        state["cycles"] = cycles

    _simulate(dut, producer, consumer, vcd)
    return outputs, state["cycles"]


def _simulate(dut, background, main, vcd):
    """Run ``main`` (and ``background`` beside it) against ``dut`` on a 1 MHz clock."""
    # A combinational DUT has no clock domain of its own; the bench still runs on a clock.
    top = Module()
    top.submodules.dut = dut
    heartbeat = Signal()
    top.d.sync += heartbeat.eq(~heartbeat)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(background, background=True)
    sim.add_testbench(main)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def run_pe(dut, acts, weights, *, seed=0, valid_prob=1.0, ready_prob=1.0, vcd=None):
    """Run rows of ``acts`` (V, N) and integer ``weights`` (V, N) through a :class:`TernaryPE`."""
    codes = weight_codes(weights, dut.mode)
    inputs = [{"act": [int(v) for v in a], "weight": [int(c) for c in w]}
              for a, w in zip(acts, codes, strict=True)]
    outs, cycles = _drive(dut, inputs, len(inputs), seed=seed, valid_prob=valid_prob,
                          ready_prob=ready_prob, max_cycles=100 * len(inputs) + 100, vcd=vcd)
    return np.array([int(o) for o in outs], dtype=np.int64), cycles


def run_array(dut, tiles, *, seed=0, valid_prob=1.0, ready_prob=1.0, vcd=None):
    """Run a tile sequence (as from :func:`lpu.sim.golden.tile_matvec`) through a
    :class:`PEArray`; returns the (R, P) sums and the cycles taken."""
    codes = weight_codes(tiles["weight"], dut.mode)
    vector = tiles.get("vector", np.zeros(len(tiles["act"]), dtype=np.int64))
    inputs = [{"act": [int(v) for v in a], "weight": [[int(c) for c in pe] for pe in w],
               "first": int(f), "last": int(la), **({"vector": int(vi)} if dut.vectors > 1
                                                    else {})}
              for a, w, f, la, vi in zip(tiles["act"], codes, tiles["first"], tiles["last"],
                                         vector, strict=True)]
    n_out = int(np.count_nonzero(tiles["last"]))
    outs, cycles = _drive(dut, inputs, n_out, seed=seed, valid_prob=valid_prob,
                          ready_prob=ready_prob, max_cycles=100 * len(inputs) + 100, vcd=vcd)
    return np.array([[int(v) for v in o] for o in outs], dtype=np.int64).reshape(
        n_out, dut.pes), cycles


def run_streamer(system, desc, act_entries, *, seed=0, ready_prob=1.0, max_cycles=200000,
                 vcd=None, setup=None):
    """Run one job on a :class:`~lpu.sim.system.StreamerSystem` in the Amaranth simulator.

    Writes ``act_entries`` (address, values) into the activation buffer, sends ``desc``, takes
    the outputs with random backpressure and waits for the streamer to go idle. Returns a dict
    with ``outputs`` (R, P), ``error`` (a StreamError), ``cycles`` (descriptor accepted to idle),
    ``perf`` (the counters) and ``requests`` (the memory requests taken, as (address,
    length)). ``setup``, an ``async def setup(ctx)``, runs first (to load a memory through its
    write port, say).
    """
    rng = np.random.default_rng(seed)
    outputs = []
    requests = []
    result = {"requests": requests}
    done = {"flag": False}
    req = system.streamer.mem_req

    async def host(ctx):
        if setup is not None:
            await setup(ctx)
        for addr, values in act_entries:
            ctx.set(system.act_wr.payload, {"addr": addr, "data": values})
            ctx.set(system.act_wr.valid, 1)
            await ctx.tick()
        ctx.set(system.act_wr.valid, 0)
        ctx.set(system.desc.payload, desc)
        ctx.set(system.desc.valid, 1)
        await ctx.tick().until(system.desc.ready)
        ctx.set(system.desc.valid, 0)
        cycles = 1
        while True:
            _, _, busy = await ctx.tick().sample(system.status.busy)
            if not busy:
                break
            cycles += 1
            if cycles > max_cycles:
                raise TimeoutError(f"Streamer still busy after {max_cycles} cycles")
        result["cycles"] = cycles
        result["error"] = ctx.get(system.status.error)
        result["perf"] = {k: int(ctx.get(getattr(system.perf, k)))
                          for k in ("busy_cycles", "mem_stall", "out_stall", "words_read",
                                    "tiles")}
        done["flag"] = True

    async def sink(ctx):
        while not done["flag"]:
            ready = int(rng.random() < ready_prob)
            ctx.set(system.o_stream.ready, ready)
            _, _, valid, payload, r_valid, r_ready, r_pay = await ctx.tick().sample(
                system.o_stream.valid, system.o_stream.payload,
                req.valid, req.ready, req.payload)
            if valid and ready:
                outputs.append([int(v) for v in payload])
            if r_valid and r_ready:
                requests.append((int(r_pay.addr), int(r_pay.len)))

    _simulate(system, sink, host, vcd)
    pes = system.streamer.pes
    result["outputs"] = np.array(outputs, dtype=np.int64).reshape(len(outputs), pes)
    return result


def run_scale(unit, jobs, *, seed=0, valid_prob=1.0, ready_prob=1.0, max_cycles=200000,
              vcd=None):
    """Run jobs through a :class:`~lpu.hw.scale.ScaleUnit` in the Amaranth simulator.

    Each job is a dict: ``job`` (a :data:`~lpu.hw.scale.JOB_LAYOUT` dict), ``scales`` (word
    address, ``(n, P)`` words of :func:`~lpu.hw.scale.scale_image`) written first, ``beats``
    (n, P) group sums in the array's order with random valid gaps, and optionally
    ``abort_after`` (beats after which the job is aborted). Outputs are taken with random
    backpressure. Returns, per job, a dict with ``outputs`` (R, P),
    ``error``, ``cycles`` (job accepted to idle) and ``setup`` (job accepted to set-up done).
    """
    rng = np.random.default_rng(seed)
    results = []
    pes = unit.pes

    async def host(ctx):
        outputs = []

        async def tick():
            """One cycle with a random output ``ready``; returns whether an input beat offered
            was taken at its edge (the input's ``ready`` may follow the output's)."""
            ready = int(rng.random() < ready_prob)
            ctx.set(unit.o_stream.ready, ready)
            _, _, valid, payload, taken = await ctx.tick().sample(
                unit.o_stream.valid, unit.o_stream.payload, unit.i_stream.ready)
            if valid and ready:
                outputs.append([int(v) for v in payload])
            return taken

        for job in jobs:
            outputs.clear()
            base, values = job.get("scales", (0, []))
            for i, value in enumerate(values):
                ctx.set(unit.scale_wr.payload, {"addr": base + i,
                                                "data": [int(x) for x in value]})
                ctx.set(unit.scale_wr.valid, 1)
                await tick()
            ctx.set(unit.scale_wr.valid, 0)
            ctx.set(unit.desc.payload, job["job"])
            ctx.set(unit.desc.valid, 1)
            while not ctx.get(unit.desc.ready):
                await tick()
            await tick()
            ctx.set(unit.desc.valid, 0)
            cycles = 1
            while ctx.get(unit.status.setup):
                await tick()
                cycles += 1
            error = bool(ctx.get(unit.status.error))
            setup = cycles
            beats = [] if error else job["beats"]
            stop = job.get("abort_after")
            for n, beat in enumerate(beats):
                if stop is not None and n == stop:
                    break
                while rng.random() >= valid_prob:
                    await tick()
                    cycles += 1
                ctx.set(unit.i_stream.payload, [int(s) for s in beat])
                ctx.set(unit.i_stream.valid, 1)
                while True:
                    cycles += 1
                    if await tick():
                        break
                    if cycles > max_cycles:
                        raise TimeoutError(f"Scale unit took no beat in {max_cycles} cycles")
                ctx.set(unit.i_stream.valid, 0)
            if stop is not None:
                ctx.set(unit.abort, 1)
                await tick()
                ctx.set(unit.abort, 0)
            while ctx.get(unit.status.busy):
                await tick()
                cycles += 1
                if cycles > max_cycles:
                    raise TimeoutError(f"Scale unit still busy after {max_cycles} cycles")
            results.append({"outputs": np.array(outputs, dtype=np.int64).reshape(-1, pes),
                            "error": error, "cycles": cycles, "setup": setup})

    async def idle(ctx):
        return

    _simulate(unit, idle, host, vcd)
    return results
