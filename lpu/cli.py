"""The ``lpu`` command."""

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

#: The boards of :data:`lpu.boards.top.BOARDS`, for help texts (the parser is built without
#: importing Amaranth; tests/test_cli.py checks the two agree).
_BOARD_NAMES = "icebreaker, ulx3s-85f or tang-nano-9k"


def _add_array_options(p):
    p.add_argument("--lanes", type=int, required=True, help="lanes per PE (N)")
    p.add_argument("--pes", type=int, required=True, help="number of PEs (P)")
    p.add_argument("--act-bits", type=int, default=8, help="signed activation width (2-16)")
    p.add_argument("--weights", default="ternary", help="ternary or binary")
    p.add_argument("--pipeline", type=int, default=1,
                   help="register every K adder-tree levels (0: combinational)")
    p.add_argument("--max-k", type=int, default=4096,
                   help="longest row the accumulators hold without overflow")
    p.add_argument("--negation", default="carry", help="carry, shared or local")


def _array_from(args):
    from lpu.hw.generate import build_array
    return build_array(lanes=args.lanes, pes=args.pes, act_bits=args.act_bits,
                       weights=args.weights, pipeline=args.pipeline, max_k=args.max_k,
                       negation=args.negation)


def _cmd_generate(args):
    from lpu.hw.generate import write_design
    array = _array_from(args)
    info = write_design(array, args.output, top=args.top)
    print(f"wrote {args.output}/{info['verilog']} and {args.output}/manifest.json "
          f"(latency {info['latency']} cycles, accumulators {info['acc_width']} bits)")
    return 0


def _cmd_area(args):
    from lpu.boards.area import synthesize
    array = _array_from(args)
    result = synthesize(array, target=args.target)
    lanes_total = args.lanes * args.pes
    out = {"target": args.target, "lanes": args.lanes, "pes": args.pes,
           "act_bits": args.act_bits, "weights": array.mode.value, "pipeline": args.pipeline,
           "negation": args.negation, "luts": result["luts"], "ffs": result["ffs"],
           "luts_per_lane": round(result["luts"] / lanes_total, 3),
           "lut4_cells": result["lut4_cells"], "carry_cells": result["carry_cells"],
           "seconds": result["seconds"]}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>14}: {v}")
    return 0


#: `lpu build` options (besides --lanes and --pes) that `lpu sweep` passes to every build.
_BOARD_LPU_OPTIONS = ("mem_words", "max_k", "max_vectors", "max_burst", "out_depth",
                      "scale_depth", "baud")


def _print_late_inputs(clock):
    """The ``late_inputs`` of a build report's clock (``--detailed-timing``), if it has them."""
    if "late_inputs" in clock:
        late = clock["late_inputs"]
        print(f"    {late['count']} inputs past the period")
        for ns, pins, group, pin in late["worst"]:
            print(f"      {ns:6.2f} ns {pins:5d}  {group} (worst pin {pin})")


def _cmd_build(args):
    from lpu.boards.build import BuildError, TimingError, build_board, default_build_dir
    from lpu.boards.top import board_spec
    overrides = {k: getattr(args, k) for k in ("lanes", "pes", *_BOARD_LPU_OPTIONS,
                                                "memory", "freq")}
    board_spec(args.board)
    out_dir = args.output or default_build_dir(args.board)
    try:
        report = build_board(args.board, out_dir=out_dir, seed=args.seed,
                             detailed_timing=args.detailed_timing, **overrides)
    except BuildError as exc:
        print(f"lpu: error: {exc}", file=sys.stderr)
        if isinstance(exc, TimingError) and args.detailed_timing and not args.json:
            # (a report was written: where the missed clock's inputs are late)
            report = json.loads((Path(out_dir) / "build_report.json").read_text())
            for clk, c in report["clocks"].items():
                print(f"  clock {clk}: {c['fmax_mhz']} MHz (target {c['target_mhz']} MHz)")
                _print_late_inputs(c)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['board']} ({report['device']}): {report['bitstream']}, "
              f"{report['build_seconds']} s")
        pll = report["pll"]
        print(f"  PLL {pll['primitive']}: {pll['achieved_mhz']:.6g} MHz (requested "
              f"{pll['requested_mhz']:.6g} MHz), UART {report['baud']} baud "
              f"(divisor {report['baud_divisor']})")
        for clk, c in report["clocks"].items():
            print(f"  clock {clk}: {c['fmax_mhz']} MHz (target {c['target_mhz']} MHz)")
            if "critical_path" in c:
                path = c["critical_path"]
                print(f"    critical path {path['ns']} ns ({path['logic_ns']} logic, "
                      f"{path['routing_ns']} routing): {path['from']} -> {path['to']}")
            _print_late_inputs(c)
        for res, u in report["utilization"].items():
            print(f"  {res:>5}: {u['used']} / {u['available']}")
    return 0


def _cmd_flash_image(args):
    from lpu.boards.build import board_config, board_platform, check_flash
    from lpu.boards.memory import FLASH_OFFSET
    from lpu.boards.program import weights_command
    from lpu.boards.top import WORD_BITS
    from lpu.host.image import flash_image
    from lpu.host.loaders import load_hf_bitnet
    from lpu.host.run import default_model_path
    spec, cfg, _ = board_config(args.board, lanes=args.lanes, pes=args.pes,
                                mem_words=args.mem_words)
    offset = FLASH_OFFSET if args.offset is None else args.offset
    # the device memory must fit the board's flash, and the offset its programmer (before
    # anything is written)
    check_flash(spec, board_platform(spec), "flash", cfg["mem_words"], offset)
    out = Path(args.output)
    program = " ".join(weights_command(args.board, out, offset))
    model = load_hf_bitnet(Path(args.model) if args.model else default_model_path())
    info = flash_image(model.linears.values(), args.output, offset=offset, lanes=cfg["lanes"],
                       pes=cfg["pes"], word_bits=WORD_BITS, mem_words=cfg["mem_words"],
                       ternary_format=args.format)
    print(f"wrote {out} ({info['bytes']} bytes, {info['words']} words of {cfg['mem_words']}, "
          f"{len(info['layout'])} projections, {args.format}) and {out.with_suffix('.json')}")
    print(f"program at byte {offset:#x}: {program}")
    return 0


def _run_suite(suite, bench, *, record, command, name):
    """Run every configuration of ``suite`` through ``bench``, printing each row as JSON;
    with ``record``, record the rows under docs/results/NAME.json. Exit status 1 if a row's
    results were not exact."""
    rows = []
    for cfg in suite:
        rows.append(bench(**cfg))
        print(json.dumps(rows[-1]), flush=True)
    if record:
        from lpu.boards.bench_area import record as record_rows
        record_rows(rows, command, name=name)
    return 0 if all(r["exact"] for r in rows) else 1


def _cmd_bench_memory(args):
    from lpu.sim.bench_memory import MEMORY_SUITE, run_memory_bench
    return _run_suite(MEMORY_SUITE, run_memory_bench, record=args.record,
                      command="lpu bench memory --record", name="memory")


def _cmd_program(args):
    from lpu.boards.program import ProgramError, program_board
    try:
        argv = program_board(args.board, bitstream=args.bitstream, mode=args.mode)
    except ProgramError as exc:
        print(f"lpu: error: {exc}", file=sys.stderr)
        return 1
    print("programmed:", " ".join(argv))
    return 0


def _cmd_sweep(args):
    from lpu.boards import sweep
    from lpu.boards.top import board_spec
    spec = board_spec(args.board)
    lanes = sweep.parse_int_list(args.lanes, "Lane counts") if args.lanes else (
        sweep.QUICK_LANES if args.quick else sweep.DEFAULT_LANES)
    pes = sweep.parse_int_list(args.pes, "PE counts") if args.pes else (
        sweep.QUICK_PES if args.quick else sweep.DEFAULT_PES)
    overrides = dict(sweep.QUICK_OVERRIDES) if args.quick else {}
    overrides.update({k: getattr(args, k) for k in (*_BOARD_LPU_OPTIONS, "freq")
                      if getattr(args, k) is not None})
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    # the models first: a missing checkpoint stops the sweep before its builds
    models = {"shipped": sweep.shipped_matrices(),
              "2b": sweep.model_matrices(sweep.BITNET_2B_CONFIG)}
    results = sweep.run_sweep(spec.name, lanes=list(lanes), pes=list(pes), jobs=jobs,
                              **overrides)
    rows = sweep.sweep_rows(spec.name, results, models)
    command = " ".join(
        ["lpu sweep", "--board", spec.name, "--lanes", ",".join(map(str, lanes)), "--pes",
         ",".join(map(str, pes)), "--jobs", str(jobs)]
        + [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in (*_BOARD_LPU_OPTIONS, "freq")
           if getattr(args, k) is not None]
        + (["--quick"] if args.quick else []) + (["--record"] if args.record else []))
    root = Path("docs") if args.record else sweep.sweep_root(spec.name)
    paths = sweep.write_results(spec.name, rows, command=command, root=root, jobs=jobs,
                                models_meta=sweep.models_meta(models))
    if args.json:
        print(json.dumps(rows))
    else:
        print(sweep.format_table(spec.name, rows))
        print("wrote", ", ".join(str(p) for p in paths))
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def _cmd_demo(args):
    from lpu.sim.demo import run_demo
    return run_demo(problems=args.problems, seed=args.seed, model_path=args.model)


def _cmd_run(args):
    from lpu.host.driver import DeviceError, LinkError
    from lpu.host.run import run
    prompt = args.prompt.replace("\\n", "\n")
    try:
        out = run(args.model, backend=args.backend, prompt=prompt, max_tokens=args.max_tokens,
                  temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                  port=args.port, baudrate=args.baud, board=args.board,
                  preloaded=args.preloaded)
    except (LinkError, DeviceError) as exc:
        print(f"lpu: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
    else:
        print(repr(out["prompt"]), "->", repr(out["text"]))
        if out["cycles"] is not None:
            print(f"{out['cycles']} cycles, {out['cycles_per_token']} cycles/token")
        if "link" in out:
            ln = out["link"]
            print(f"UART link ({ln['baud']} baud, divisor {ln['divisor']} at {ln['clk_mhz']:g} "
                  f"MHz): {ln['cycles']} of the cycles, {ln['cycles_per_token']} per token; "
                  f"{ln['bytes_per_token']} bytes and {ln['exchanges_per_token']} exchanges "
                  f"per token")
            print(f"{ln['tokens_per_s']} tokens/s as simulated; "
                  f"{ln['tokens_per_s_at_board_baud']} tokens/s at {ln['board_baud']} baud")
    return 0


def _cmd_bench_area(args):
    from lpu.boards import bench_area
    if args.decoder:
        rows = bench_area.run_decoder_bench(jobs=args.jobs)
        table = bench_area.format_decoder_table(rows)
    else:
        rows = bench_area.run_area_bench(jobs=args.jobs)
        table = bench_area.format_table(rows)
    print(json.dumps(rows) if args.json else table)
    if args.record:
        cmd = "lpu bench area --record" + (" --decoder" if args.decoder else "")
        bench_area.record(rows, cmd, name="decoder" if args.decoder else "area")
    return 0


def _cmd_bench_density(args):
    from lpu.boards import density
    given = [a for a in ("board", "lanes", "pes", "freq") if getattr(args, a) is not None]
    if given and len(given) < 4:
        missing = sorted({"board", "lanes", "pes", "freq"} - set(given))
        raise ValueError(f"--board, --lanes, --pes and --freq go together; missing "
                         f"{', '.join('--' + m for m in missing)}")
    configs = [dict(cfg, seed=args.seed) for cfg in
               ([dict(board=args.board, lanes=args.lanes, pes=args.pes, freq=args.freq)]
                if given else density.DENSITY_SUITE)]
    from lpu.boards.build import BuildError
    try:
        rows = density.run_density_bench(configs, root=args.output, jobs=args.jobs)
    except BuildError as exc:
        print(f"lpu: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rows) if args.json else density.format_table(rows))
    if args.record:
        # The command that reproduces the recorded rows, with the options given.
        from lpu.boards.bench_area import record
        options = "".join(f" --{a} {getattr(args, a)}" for a in (*given, "seed")
                          if getattr(args, a) is not None)
        record(rows, f"lpu bench density{options} --record", name="density")
        print("recorded docs/results/density.json")
    return 0


def _cmd_bench_stream(args):
    from lpu.sim.bench_stream import STREAM_SUITE, run_stream_bench
    if args.suite:
        return _run_suite(STREAM_SUITE, run_stream_bench, record=args.record,
                          command="lpu bench stream --suite --record", name="stream")
    if args.format is None:
        raise ValueError("Weight format (--format) is required unless --suite is given")
    out = run_stream_bench(fmt=args.format, rows=args.rows, cols=args.cols, mem=args.mem,
                           lanes=args.lanes, pes=args.pes, word_bits=args.word_bits,
                           max_burst=args.max_burst, vectors=args.vectors, stall=args.stall,
                           seed=args.seed)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")
    return 0 if out["exact"] else 1


def _cmd_bench_sim(args):
    from lpu.sim.bench_sim import run_sim_bench
    out = run_sim_bench(prompt=args.prompt.replace("\\n", "\n"))
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>24}: {v}")
    if args.record:
        from lpu.boards.bench_area import record
        record([out], "lpu bench sim --record", name="sim_bench")
    return 0 if out["cycles_equal"] and out["tokens_match_golden"] else 1


def build_parser():
    parser = argparse.ArgumentParser(prog="lpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write the Verilog of a PE array and its manifest")
    _add_array_options(p)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--top", default="lpu_array", help="Verilog module name")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("area", help="quick yosys synthesis of a PE array; prints cell counts")
    p.add_argument("--target", required=True, choices=["ice40", "ecp5"])
    _add_array_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_area)

    p = sub.add_parser("build", help="a board's bitstream (UART + LPU + on-chip weights) "
                                     "and a JSON report of timing and utilization")
    p.add_argument("--board", required=True, help=_BOARD_NAMES)
    for opt, what in (("lanes", "lanes per PE (N)"), ("pes", "number of PEs (P)"),
                      ("mem-words", "on-chip weight memory in 32-bit words"),
                      ("max-k", "longest row"), ("max-vectors", "most vectors per pass"),
                      ("max-burst", "longest memory burst in words"),
                      ("out-depth", "output-buffer entries"),
                      ("scale-depth", "scale-memory entries"), ("baud", "UART baud rate")):
        p.add_argument(f"--{opt}", type=int, default=None, help=f"{what} (default: the board's)")
    p.add_argument("--memory", default=None, choices=["bram", "spram", "flash", "qspi"],
                   help="weight memory: block RAM, UP5K SPRAM, the board's SPI flash on "
                        "one data line or four (default: the board's)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="LPU clock: the PLL output nearest this (default: the board's)")
    p.add_argument("--seed", type=int, default=None,
                   help="nextpnr placement seed (default: nextpnr's)")
    p.add_argument("--detailed-timing", action="store_true",
                   help="nextpnr's detailed timing report: count the inputs that arrive past "
                        "each clock's period and list the worst (late_inputs in the report)")
    p.add_argument("-o", "--output", default=None,
                   help="build directory (default: $LPU_BUILD_DIR/BOARD, else build/BOARD)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("flash-image", help="a model's weight image (.bin) to program into a "
                                           "board's flash, and its layout (.json)")
    p.add_argument("--board", required=True, help=_BOARD_NAMES)
    p.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    p.add_argument("--format", default="t2", choices=["t2", "t5"],
                   help="device format of ternary weights")
    for opt, what in (("lanes", "lanes per PE (N)"), ("pes", "number of PEs (P)"),
                      ("mem-words", "memory words the LPU addresses")):
        p.add_argument(f"--{opt}", type=int, default=None, help=f"{what} (default: the board's)")
    p.add_argument("--offset", type=lambda v: int(v, 0), default=None,
                   help="byte address in the flash (default: 0x100000)")
    p.add_argument("-o", "--output", required=True, help="the .bin to write")
    p.set_defaults(func=_cmd_flash_image)

    p = sub.add_parser("program", help="load the bitstream of `lpu build` onto a board "
                                       "(openFPGALoader or iceprog)")
    p.add_argument("--board", required=True, help=_BOARD_NAMES)
    p.add_argument("--bitstream", default=None,
                   help="bitstream file (default: the last `lpu build` of the board)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--flash", dest="mode", action="store_const", const="flash",
                      help="write the configuration flash (default for icebreaker)")
    mode.add_argument("--sram", dest="mode", action="store_const", const="sram",
                      help="load the FPGA's SRAM, lost at power-off (default for ulx3s-85f "
                           "and tang-nano-9k)")
    p.set_defaults(func=_cmd_program)

    p = sub.add_parser("sweep", help="build a board's lanes x PEs grid in parallel: table "
                                     "and plot of LUTs, fmax, MAC/s, projected tokens/s")
    p.add_argument("--board", required=True, help=_BOARD_NAMES)
    p.add_argument("--lanes", default=None,
                   help="comma-separated lane counts (default: 4,8,16,32,64)")
    p.add_argument("--pes", default=None, help="comma-separated PE counts (default: 1,2,4)")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel builds (default: the number of local cores)")
    p.add_argument("--quick", action="store_true",
                   help="one tiny LPU (4 x 1, 256 words, max_k 64): a check of the flow")
    p.add_argument("--record", action="store_true",
                   help="write docs/sweep-BOARD.md, docs/sweep-BOARD.png and "
                        "docs/results/sweep-BOARD.json (default: under the sweep's build dir)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    for opt in _BOARD_LPU_OPTIONS:
        p.add_argument(f"--{opt.replace('_', '-')}", type=int, default=None,
                       help="as lpu build (default: the board's)")
    p.add_argument("--freq", type=float, default=None, metavar="MHZ",
                   help="clock every build is placed and routed for, as lpu build "
                        "(default: the board's)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("demo", help="the shipped model on the simulated LPU, checked against "
                                    "the golden model")
    p.add_argument("--problems", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="generate text with a model on a backend")
    p.add_argument("--model", default=None, help="model directory (default: the shipped one)")
    p.add_argument("--backend", default="golden",
                   choices=["golden", "sim", "cocotb", "serial", "board"],
                   help="golden: NumPy; sim: Verilator with a C++ harness; cocotb: the same "
                        "Verilog under cocotb (slower); serial: a board on --port; board: "
                        "--board's top (UART, LPU, block RAM) simulated behind a serial line")
    p.add_argument("--port", default=None,
                   help="serial port or pyserial URL (serial backend)")
    p.add_argument("--board", default=None,
                   help=f"{_BOARD_NAMES} (board backend)")
    p.add_argument("--baud", type=int, default=None,
                   help="baud rate (serial backend: default 115200; board backend: the "
                        "simulated link's, default the fastest the board's clock makes, "
                        "a quarter of it)")
    p.add_argument("--prompt", default="\\n123+456=",
                   help="prompt text; \\n stands for a newline")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--preloaded", default=None, metavar="FILE.json",
                   help="serial backend: the weights are already in the device's memory "
                        "(flash programmed with lpu flash-image); its layout .json")
    p.set_defaults(func=_cmd_run)
    bench = sub.add_parser("bench", help="measure and record figures")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("area", help="LUTs per lane of the PE-array variants (iCE40, ECP5)")
    p.add_argument("--jobs", type=int, default=2, help="parallel synthesis jobs")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--record", action="store_true",
                   help="write docs/results/area.json (decoder.json with --decoder)")
    p.add_argument("--decoder", action="store_true",
                   help="the weight decoders (LUTs per byte decoded per cycle) instead")
    p.set_defaults(func=_cmd_bench_area)
    p = bsub.add_parser("density", help="ternary MAC/s per logic cell (iCE40) or LUT4 (ECP5) "
                                        "of the PE array, placed and routed at its Fmax")
    p.add_argument("--board", help="one configuration instead of the recorded set (with "
                                    "--lanes, --pes, --freq): icebreaker or ulx3s-85f")
    p.add_argument("--lanes", type=int)
    p.add_argument("--pes", type=int)
    p.add_argument("--freq", type=float, help="clock constraint in MHz (the PLL setting)")
    p.add_argument("--seed", type=int, help="nextpnr's placement seed (default: nextpnr's)")
    p.add_argument("--jobs", type=int, default=1, help="parallel place-and-route jobs")
    p.add_argument("-o", "--output", default="build/density", help="build directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--record", action="store_true", help="write docs/results/density.json")
    p.set_defaults(func=_cmd_bench_density)
    p = bsub.add_parser("stream", help="one matrix through the weight streamer and a memory "
                                       "model (compiled simulation) against the cycle model")
    p.add_argument("--format", choices=["t2", "t5", "b1"])
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--mem", default="bram", choices=["bram", "qspi", "sdram"])
    p.add_argument("--lanes", type=int, default=64)
    p.add_argument("--pes", type=int, default=4)
    p.add_argument("--word-bits", type=int, default=32)
    p.add_argument("--max-burst", type=int, default=32)
    p.add_argument("--vectors", type=int, default=1)
    p.add_argument("--stall", type=float, default=0.0,
                   help="probability of a random memory stall per cycle")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--suite", action="store_true", help="run the recorded set of jobs")
    p.add_argument("--record", action="store_true",
                   help="with --suite: write docs/results/stream.json")
    p.set_defaults(func=_cmd_bench_stream)
    p = bsub.add_parser("sim", help="the shipped model on the fast simulator and under cocotb "
                                    "(same Verilog, same cycles): simulated cycles per second")
    p.add_argument("--prompt", default="\\n12+34=",
                   help="prompt of the forward pass; \\n stands for a newline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--record", action="store_true", help="write docs/results/sim_bench.json")
    p.set_defaults(func=_cmd_bench_sim)
    p = bsub.add_parser("memory", help="words per cycle of the boards' weight memories (block "
                                       "RAM, SPRAM, SPI flash 1x/4x), Amaranth simulator")
    p.add_argument("--record", action="store_true", help="write docs/results/memory.json")
    p.set_defaults(func=_cmd_bench_memory)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TypeError, ValueError) as exc:
        print(f"lpu: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
