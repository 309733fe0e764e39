"""``lpu sweep``: a board's design space (lanes x PEs) built through place and route.

Every configuration is built with :func:`lpu.boards.build.build_board` in its own directory
(``$LPU_BUILD_DIR/sweep-BOARD/N-x-P``), in parallel on the local cores. A configuration that
does not fit, misses timing or makes a tool fail is a row that says so.

Per row: the resources, fmax after place and route, the array's ternary MACs per second at
fmax and per logic cell (iCE40) or LUT4 (ECP5), and projected decode tokens per second for the
shipped model and for a model of BitNet b1.58 2B4T's shape.

How the projection is made (:func:`token_projection`):

- Every ternary projection of every layer runs on the LPU once per token (one activation
  vector). The PE array accepts one tile of P rows x N columns per cycle (:class:`PEArray`:
  P PEs, N lanes each, one tile a cycle), so ``lanes * pes`` ternary MACs a cycle and a
  ``rows x cols`` matrix takes ``ceil(rows / P) * ceil(cols / N)`` cycles: the compute bound.
- The weights stream from memory once per token in the t2 format (2 bits a weight,
  :mod:`lpu.hw.formats`), as the image the streamer reads (:func:`image_word_count`, padding
  included). The memory's cycles for those words come from the cycle model
  (:func:`lpu.host.cycle_model.memory_cycles`) with the memory's timing preset
  (:mod:`lpu.sim.memory_models`), the memory clocked with the LPU at fmax:

  ``block RAM``: one ``word_bits`` word a cycle (``word_bits x fmax`` bits/s);
  ``QSPI flash`` (iCEBreaker): 4 bits a clock, 18 clocks of command, address and dummy
  cycles per burst (quad I/O fast read);
  ``SDRAM`` (ULX3S, 16-bit SDR): 16 bits a clock inside a row of 512 columns, CAS latency 3 per
  burst, 6 clocks per row opened, 8 of every 780 clocks refreshing.
- Tokens per second = fmax / max(compute cycles, memory cycles): the smaller of the two bounds.
  The set-up of each matrix job, the host's share (attention over the KV cache, norms,
  embeddings and the ``lm_head``) and the serial link are not counted.
"""

import itertools
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import date
from importlib import metadata
from pathlib import Path

from rich import progress as rp
from rich.console import Console

from lpu.hw.params import check_positive

from .build import (
    _YOWASP,
    BuildError,
    FitError,
    TimingError,
    board_config,
    build_board,
    default_build_dir,
)
from .top import WORD_BITS, board_spec

__all__ = ["DEFAULT_LANES", "DEFAULT_PES", "QUICK_OVERRIDES", "BITNET_2B_CONFIG",
           "DENSITY_TARGETS", "WeightMemory", "ON_CHIP", "EXTERNAL_MEMORY", "model_matrices",
           "shipped_matrices", "token_projection", "parse_int_list", "run_sweep", "sweep_rows",
           "format_table", "write_results"]

DEFAULT_LANES = (4, 8, 16, 32, 64)
DEFAULT_PES = (1, 2, 4)
#: ``--quick``: one small LPU (the tiny configuration of the board-build tests).
QUICK_LANES, QUICK_PES = (4,), (1,)
QUICK_OVERRIDES = dict(mem_words=256, max_k=64, max_vectors=1, max_burst=4, out_depth=8,
                       scale_depth=8)

#: The shape of BitNet b1.58 2B4T (its Hugging Face config.json): 2.08 G ternary weights in the
#: projections of its 30 layers; head_dim 2560 / 20 = 128, so k/v project to 5 x 128 = 640.
BITNET_2B_CONFIG = {"hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 30,
                    "num_attention_heads": 20, "num_key_value_heads": 5, "vocab_size": 128256}

#: Ternary MAC/s per logic cell (iCE40) or per LUT4 (ECP5) at fmax after place and route: the
#: targets, and what a naive pipelined adder tree (64 lanes, int8 activations, behind a serial
#: wrapper) measured: 3022 logic cells at 60 MHz on the iCE40UP5K, 2889 LUTs at 198 MHz on
#: the ECP5-85F.
#: (The issue states none for the Gowin family.)
DENSITY_TARGETS = {"ice40": 3e6, "ecp5": 10e6}
NAIVE_DENSITY = {"ice40": 1.3e6, "ecp5": 4.4e6}
CELL_NAME = {"ice40": "logic cell", "ecp5": "LUT4", "gowin": "LUT4"}


@dataclass(frozen=True)
class WeightMemory:
    """Where the weights stream from: a timing preset of :mod:`lpu.sim.memory_models`, or
    the board's SPI flash as :class:`~lpu.boards.memory.SPIFlashReader` reads it."""

    #: Name in the tables.
    name: str
    #: ``bram``, ``qspi``, ``sdram`` (presets) or ``flash`` (the reader built here).
    kind: str
    #: Data bits per memory clock (None: one word a cycle); for ``flash``, its data lines.
    data_bits: int | None = None
    #: Data bits a memory row holds (SDRAM), 0 without rows.
    row_bits: int = 0

    def timing(self, word_bits):
        """The :class:`~lpu.sim.memory_models.MemoryTiming` for ``word_bits``-bit words."""
        from lpu.sim.memory_models import MemoryTiming, memory_timing
        if self.kind == "flash":
            # SCK at half the clock; a new command costs its command, address, mode and dummy
            # clocks, twice over (lpu bench memory measures 16.3 cycles a word in sequence
            # and about 41 more per command on four lines).
            from .memory import flash_command_clocks, flash_cycles_per_word
            return MemoryTiming(burst_overhead=2 * flash_command_clocks(self.data_bits),
                                cycles_per_word=flash_cycles_per_word(word_bits,
                                                                      self.data_bits))
        t = memory_timing(self.kind, word_bits)
        if self.kind == "sdram":
            t = replace(t, cycles_per_word=-(-word_bits // self.data_bits),
                        row_words=self.row_bits // word_bits)
        return t

    @property
    def continues(self):
        """Whether a burst at the next address continues the last one without a new command
        (the flash reader): a projection's image, read in order, costs one command."""
        return self.kind == "flash"


ON_CHIP = WeightMemory("block RAM", "bram")
#: The external memory of each board: the iCEBreaker's 16 MiB flash as the quad-I/O reader of
#: boards/memory.py reads it (``lpu build --memory qspi``), the ULX3S's 32 MiB 16-bit SDR
#: SDRAM (512 columns of 16 bits a row; no controller is built for it yet), the Tang Nano
#: 9K's 4 MiB SPI flash on one data line (the reader is not wired to its pins yet).
EXTERNAL_MEMORY = {
    "icebreaker": WeightMemory("QSPI flash", "flash", data_bits=4),
    "ulx3s-85f": WeightMemory("SDRAM 16-bit", "sdram", data_bits=16, row_bits=512 * 16),
    "tang-nano-9k": WeightMemory("SPI flash", "flash", data_bits=1),
}


def model_matrices(config):
    """(rows, cols) of every ternary projection of a model with the HF BitNet ``config``."""
    from lpu.host.loaders import projection_shapes
    shapes = list(projection_shapes(config).values())
    return [s for _ in range(config["num_hidden_layers"]) for s in shapes]


def shipped_matrices():
    """(rows, cols) of every ternary projection of the shipped model, from its checkpoint."""
    from lpu.host.loaders import load_hf_bitnet
    from lpu.host.run import default_model_path
    model = load_hf_bitnet(default_model_path())
    return [tuple(lin.shape) for lin in model.linears.values()]


def token_projection(matrices, *, lanes, pes, word_bits, max_burst, fmax_mhz, memory):
    """Decode tokens per second of a model of ``matrices`` on an LPU at ``fmax_mhz``.

    Returns
    -------
    dict
        ``weights`` (ternary weights a token), ``weight_bytes`` (bytes of their t2 images),
        ``compute_cycles``, ``memory_cycles`` (a token), ``compute_tokens_per_s``,
        ``memory_tokens_per_s``, ``tokens_per_s`` (the smaller) and ``bound``.
    """
    from lpu.host.cycle_model import memory_cycles
    from lpu.host.image import image_word_count
    from lpu.hw.formats import WeightFormat
    timing = memory.timing(word_bits)
    compute = mem = words = weights = 0
    for rows, cols in matrices:
        weights += rows * cols
        compute += -(-rows // pes) * -(-cols // lanes)
        w = image_word_count(rows, cols, WeightFormat.T2, lanes=lanes, pes=pes,
                             word_bits=word_bits)
        words += w
        mem += memory_cycles(w, timing=timing, max_burst=w if memory.continues else max_burst)
    hz = fmax_mhz * 1e6
    return {"memory": memory.name, "weights": weights, "weight_bytes": words * word_bits // 8,
            "compute_cycles": compute, "memory_cycles": mem,
            "compute_tokens_per_s": hz / compute, "memory_tokens_per_s": hz / mem,
            "tokens_per_s": hz / max(compute, mem),
            "bound": "memory" if mem > compute else "compute"}


def parse_int_list(text, what):
    """``"4,8,16"`` -> ``[4, 8, 16]``; ValueError naming ``what`` otherwise."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be comma-separated positive integers, not {text!r}")
    return values


def _build_point(job):
    """One configuration (in a worker process): the build's report or why there is none."""
    build_fn, board, out_dir, overrides = job
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "build_report.json").unlink(missing_ok=True)
    start = time.monotonic()
    result = {"overrides": overrides, "out_dir": str(out)}
    try:
        result.update(status="ok", report=build_fn(board, out_dir=out, **overrides))
    except TimingError as exc:
        # build_board writes its report before it raises for missed timing
        report = json.loads((out / "build_report.json").read_text())
        result.update(status="timing not met", message=str(exc), report=report)
    except FitError as exc:
        result.update(status="does not fit", message=str(exc), report=None)
    except BuildError as exc:
        result.update(status="failed", message=str(exc), report=None)
    except (ValueError, TypeError) as exc:
        result.update(status="invalid", message=str(exc), report=None)
    except Exception as exc:    # a crash of one configuration is one row, not the sweep's end
        result.update(status="failed", message=f"{type(exc).__name__}: {exc}", report=None)
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def sweep_root(board):
    """``$LPU_BUILD_DIR/sweep-BOARD`` (else ``build/sweep-BOARD``)."""
    return default_build_dir(f"sweep-{board}")


def run_sweep(board, *, lanes=DEFAULT_LANES, pes=DEFAULT_PES, jobs=None, root=None,
              build_fn=build_board, progress=True, **overrides):
    """Build every (lanes, pes) of the grid for ``board`` with ``jobs`` processes.

    ``overrides`` (LPU parameters, ``baud``, and whatever else ``build_fn`` takes) go to every
    build. Returns one result per configuration, in grid order: ``{"overrides", "out_dir",
    "status", "message"?, "report", "seconds"}``; :func:`sweep_rows` makes the table rows.

    Raises
    ------
    ValueError
        Unknown board, bad grid or job count.
    """
    spec = board_spec(board)
    jobs = check_positive("Job count", (os.cpu_count() or 1) if jobs is None else jobs)
    for what, values in (("Lane counts", lanes), ("PE counts", pes)):
        if not values or any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{what} must be positive integers, not {list(values)!r}")
    root = Path(root) if root is not None else sweep_root(spec.name)
    grid = list(itertools.product(lanes, pes))
    work = [(build_fn, spec.name, root / f"{n}-x-{p}",
             {**overrides, "lanes": n, "pes": p}) for n, p in grid]
    results = [None] * len(work)
    console = Console(stderr=True)
    with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool, \
            rp.Progress(rp.SpinnerColumn(), rp.TextColumn(f"sweep {spec.name}"),
                        rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeElapsedColumn(),
                        console=console, disable=not progress) as bar:
        task = bar.add_task("builds", total=len(work))
        futures = {pool.submit(_build_point, job): i for i, job in enumerate(work)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = r = fut.result()
            n, p = grid[i]
            if progress:
                bar.console.print(f"{n} x {p}: {r['status']}"
                                  + (f" ({r['message']})" if "message" in r else "")
                                  + f", {r['seconds']} s")
            bar.advance(task)
    return results


def slowest_clock(report):
    # The slowest clock is the LPU's: with a PLL the oscillator's own net is nearly empty.
    clk = min(report["clocks"].values(), key=lambda c: c["fmax_mhz"])
    return clk["fmax_mhz"], clk["target_mhz"]


def density_cells(family, utilization):
    """The cells a density is per: logic cells on the iCE40, LUT4s elsewhere."""
    return utilization["lc" if family == "ice40" else "lut"]["used"]


def sweep_rows(board, results, models):
    """Table rows from :func:`run_sweep`'s results.

    ``models`` maps a model's key to its matrices (:func:`model_matrices`); each row gets its
    projection on the board's block RAM and on its external memory.
    """
    spec = board_spec(board)
    memories = {"bram": ON_CHIP, "ext": EXTERNAL_MEMORY[spec.name]}
    rows = []
    for r in results:
        cfg = board_config(spec.name, **r["overrides"])[1]
        row = {"lanes": cfg["lanes"], "pes": cfg["pes"], "status": r["status"]}
        if "message" in r:
            row["message"] = r["message"]
        report = r["report"]
        if report is not None:
            util = report["utilization"]
            fmax, target = slowest_clock(report)
            cells = density_cells(spec.family, util)
            macs = cfg["lanes"] * cfg["pes"]
            word_bits = cfg.get("word_bits", WORD_BITS)
            row.update(
                lut=util["lut"]["used"], ff=util["ff"]["used"], bram=util["bram"]["used"],
                dsp=util["dsp"]["used"], cells=cells, fmax_mhz=fmax, target_mhz=target,
                macs_per_cycle=macs, mac_per_s=macs * fmax * 1e6,
                mac_per_s_per_cell=macs * fmax * 1e6 / cells,
                build_seconds=report["build_seconds"],
                tokens={name: {mk: token_projection(
                    mats, lanes=cfg["lanes"], pes=cfg["pes"], word_bits=word_bits,
                    max_burst=cfg["max_burst"], fmax_mhz=fmax, memory=mem)
                    for mk, mem in memories.items()} for name, mats in models.items()})
            if spec.family == "ice40":
                row["lc"] = util["lc"]["used"]
        rows.append(row)
    return rows


def _si(x, unit=""):
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".rstrip()
    return f"{x:.3g} {unit}".rstrip()


def _num(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def format_table(board, rows):
    """The rows as a markdown table."""
    spec = board_spec(board)
    ext = EXTERNAL_MEMORY[spec.name].name
    cell = CELL_NAME[spec.family]
    head = ["lanes x PEs", "status", "LUT", *(["LC"] if spec.family == "ice40" else []), "FF",
            "BRAM", "DSP", "fmax MHz", "MAC/s", f"MAC/s per {cell}",
            "shipped tok/s (BRAM)", f"shipped tok/s ({ext})",
            "2B tok/s (BRAM)", f"2B tok/s ({ext})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        status = r["status"] + (f": {r['message']}" if r["status"] in ("invalid", "failed",
                                                                      "does not fit") else "")
        status = status.replace("|", "/")
        cols = [f"{r['lanes']} x {r['pes']}", status]
        if "fmax_mhz" in r:
            t = r["tokens"]
            cols += [str(r["lut"]), *([str(r["lc"])] if "lc" in r else []), str(r["ff"]),
                     str(r["bram"]), str(r["dsp"]), f"{r['fmax_mhz']:.1f}",
                     _si(r["mac_per_s"]), _si(r["mac_per_s_per_cell"])]
            for name in ("shipped", "2b"):
                for mk in ("bram", "ext"):
                    p = t[name][mk]
                    cols.append(f"{_num(p['tokens_per_s'])} ({p['bound'][0]})")
        else:
            cols += [""] * (len(head) - 2)
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _machine(family):
    from lpu.sim.fast import cpu_model
    tools = {}
    for pkg in ("amaranth", _YOWASP["yosys"], _YOWASP[f"nextpnr-{family}"]):
        try:
            tools[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            tools[pkg] = None
    return {"machine": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "tools": tools}


def _plot(board, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    spec = board_spec(board)
    built = [r for r in rows if "fmax_mhz" in r]
    labels = [f"{r['lanes']}x{r['pes']}" for r in built]
    x = range(len(built))
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.5))
    a1.bar(x, [r["cells"] for r in built], color="tab:blue")
    a1.axhline(spec.resources["lut"], color="gray", ls="--", label="available")
    a1.set_ylabel(f"{CELL_NAME[spec.family]}s used")
    a1.legend()
    a2.plot(x, [r["mac_per_s_per_cell"] / 1e6 for r in built], "o-", label="measured")
    if spec.family in DENSITY_TARGETS:
        a2.axhline(DENSITY_TARGETS[spec.family] / 1e6, color="tab:green", ls="--",
                   label="target")
        a2.axhline(NAIVE_DENSITY[spec.family] / 1e6, color="tab:red", ls=":",
                   label="naive tree (array only)")
    a2.set_yscale("log")
    a2.set_ylabel(f"ternary MAC/s per {CELL_NAME[spec.family]} (M), at fmax")
    a2.legend()
    ext = EXTERNAL_MEMORY[spec.name].name
    for name, mk, style, label in (("shipped", "bram", "o-", "shipped model, block RAM"),
                                   ("shipped", "ext", "o--", f"shipped model, {ext}"),
                                   ("2b", "bram", "s-", "2B shape, block RAM bandwidth"),
                                   ("2b", "ext", "s--", f"2B shape, {ext}")):
        a3.plot(x, [r["tokens"][name][mk]["tokens_per_s"] for r in built], style, label=label)
    a3.set_yscale("log")
    a3.set_ylabel("projected tokens/s")
    a3.legend(fontsize="small")
    for ax in (a1, a2, a3):
        ax.set_xticks(list(x), labels, rotation=45)
        ax.set_xlabel("lanes x PEs")
        ax.grid(alpha=0.3)
    fig.suptitle(f"lpu sweep --board {spec.name} ({len(built)} of {len(rows)} built)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(board, rows, *, command, root, models_meta, jobs):
    """Write ``root/results/sweep-BOARD.json``, ``root/sweep-BOARD.md`` and its plot
    ``root/sweep-BOARD.png``; returns the three paths."""
    spec = board_spec(board)
    root = Path(root)
    (root / "results").mkdir(parents=True, exist_ok=True)
    stem = f"sweep-{spec.name}"
    json_path, md_path, png_path = (root / "results" / f"{stem}.json", root / f"{stem}.md",
                                    root / f"{stem}.png")
    ext = EXTERNAL_MEMORY[spec.name]
    meta = {"command": command, "board": spec.name, "date": date.today().isoformat(),
            "jobs": jobs, **_machine(spec.family), "cell": CELL_NAME[spec.family],
            "density_target": DENSITY_TARGETS.get(spec.family),
            "naive_density": NAIVE_DENSITY.get(spec.family),
            "models": models_meta,
            "memories": {"bram": ON_CHIP.name, "ext": ext.name}}
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    _plot(spec.name, rows, png_path)

    built = [r for r in rows if "fmax_mhz" in r]
    cell = CELL_NAME[spec.family]
    target = DENSITY_TARGETS.get(spec.family)
    if built:
        best = max(built, key=lambda r: r["mac_per_s_per_cell"])
        verdict = (f"Best density: {_si(best['mac_per_s_per_cell'])} ternary MAC/s per {cell} "
                   f"({best['lanes']} x {best['pes']}, {best['cells']} {cell}s at "
                   f"{best['fmax_mhz']} MHz)")
        if target is None:
            verdict += "."
        else:
            verdict += (f" against the target of {_si(target)} "
                        f"({'met' if best['mac_per_s_per_cell'] >= target else 'not met'}); "
                        f"the naive adder tree measured {_si(NAIVE_DENSITY[spec.family])} "
                        f"(array alone; `lpu bench density` measures this project's array "
                        f"alone).")
    else:
        verdict = "No configuration was built."
    m = meta
    shipped, big = models_meta["shipped"], models_meta["2b"]
    tools = m["tools"]
    nextpnr = _YOWASP[f"nextpnr-{spec.family}"]
    text = f"""# Design-space sweep: {spec.name}

Made by

    {command}

on {m['date']}, {m['cpu']}, {m['cores']} cores, {jobs} build(s) at a time; Python
{m['python']}, amaranth {tools['amaranth']}, {_YOWASP['yosys']} {tools[_YOWASP['yosys']]},
{nextpnr} {tools[nextpnr]}. Figures: `results/{stem}.json`; plot: `{stem}.png`.

Every row is a whole board build (UART + LPU + block-RAM weight memory, as `lpu build`) after
place and route at the board clock; fmax is nextpnr's for the slowest clock. LUT and FF count
the cells of synthesis{', LC the logic cells placed' if spec.family == 'ice40' else ''}.
MAC/s = lanes x PEs ternary MACs a cycle (one tile a cycle) at fmax; the density is per
{cell} of the whole design, control and buffers included.

{verdict}

![sweep]({stem}.png)

{format_table(spec.name, rows)}

Tokens/s: decode, one token a pass through every ternary projection, the smaller of the
compute bound (ceil(rows/P) x ceil(cols/N) cycles a matrix) and the weight-memory bound (the
t2 image, 2 bits a weight, read once a token), both at fmax; (c) or (m) says which bound
limits. The host's share (attention, norms, embeddings, lm_head) and each job's set-up are not
counted. A 32-bit word holds 16 t2 weights, so from block RAM an array of more than 16 MACs a
cycle waits on memory: its tokens/s stay near fmax x 16 / weights whatever its size.

- Shipped model ({shipped['name']}): {shipped['weights']:,} ternary weights a token,
  {shipped['weight_bytes']:,} bytes of t2 images.
- 2B shape ({big['name']}): {big['weights']:,} ternary weights a token,
  {big['weight_bytes'] / 2**20:.0f} MiB of t2 images, more than either board's memory holds:
  its figures are what the bandwidth allows, not a configuration that runs.
- Block RAM: one 32-bit word a cycle (32 bits x fmax). The shipped model's images fit the
  ULX3S-85F's block RAM (208 x 2 KiB) but not the iCEBreaker's (30 x 512 B).
- {ext.name}: {EXTERNAL_DESCRIPTION[spec.name]}
"""
    md_path.write_text(text)
    return json_path, md_path, png_path


EXTERNAL_DESCRIPTION = {
    "icebreaker": "the 16 MiB flash in quad I/O fast read (0xEB) as boards/memory.py's reader "
                  "does it (`lpu build --memory qspi`): the flash clocked at half the LPU "
                  "clock, 16 clocks a 32-bit word, 40 clocks of command, address, mode and "
                  "dummy cycles once per projection (a burst at the next address continues "
                  "the last); `lpu bench memory` measures 16.3 clocks a word.",
    "ulx3s-85f": "the 32 MiB 16-bit SDR SDRAM clocked with the LPU: 16 bits a clock inside a row "
                 "of 512 columns, CAS latency 3 a burst, 6 clocks to open a row, 8 of every 780 "
                 "clocks refreshing (the `sdram` preset of sim/memory_models.py at 16 bits). No "
                 "SDRAM controller is built yet: this is what the board's memory allows.",
    "tang-nano-9k": "the 4 MiB SPI flash in fast read (0x0B) on one data line as "
                    "boards/memory.py's reader does it: 64 clocks a 32-bit word, 80 clocks of "
                    "command once per projection. The reader is not wired to this board's "
                    "pins yet: this is what it would allow.",
}


def models_meta(models, *, lanes=16, pes=2):
    """Name, weights and t2 bytes of each model (for the notes of the table)."""
    names = {"shipped": "models/bitnet-adder",
             "2b": "BitNet b1.58 2B4T shape: hidden 2560, intermediate 6912, 30 layers, 20 "
                   "heads, 5 KV heads, vocab 128256"}
    out = {}
    for key, mats in models.items():
        p = token_projection(mats, lanes=lanes, pes=pes, word_bits=32, max_burst=8, fmax_mhz=1,
                             memory=ON_CHIP)
        out[key] = {"name": names[key], "matrices": len(mats), "weights": p["weights"],
                    "weight_bytes": p["weight_bytes"]}
    return out
