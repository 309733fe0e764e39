"""``lpu demo``: the shipped model on the simulated LPU, checked against the golden model."""

import time

import numpy as np
from rich.console import Console
from rich.progress import Progress

from lpu.host.run import Session, accuracy_problems

__all__ = ["run_demo"]

# Stated operating points: the clock, and the memory bandwidth the weights stream from. The
# simulated device is the ULX3S-85F's default LPU (64 lanes x 4 PEs) reading a 32-bit on-chip
# memory at one word per clock; its default board clock is one the build meets, 150 MHz the
# ECP5 target it does not reach yet (docs/boards.md). The boards' flash readers
# (boards/memory.py) clock the flash at half the LPU clock, 4 (iCEBreaker, quad I/O) or 1
# (ULX3S) data bits per flash clock, which bounds the rate by bandwidth instead.
def _operating_points():
    from lpu.boards.memory import flash_cycles_per_word
    from lpu.boards.top import board_spec
    ulx, ice = board_spec("ulx3s-85f"), board_spec("icebreaker")
    clocks = [(f"ULX3S-85F at its default {ulx.freq_mhz:g} MHz", ulx.freq_mhz * 1e6),
              ("ECP5-85F at the 150 MHz target (not reached yet)", 150e6)]
    # bytes a second: 4-byte words, each flash_cycles_per_word LPU clocks
    memories = [(f"iCEBreaker QSPI flash at {ice.freq_mhz / 2:g} MHz x 4 bits",
                 ice.freq_mhz * 1e6 * 4 / flash_cycles_per_word(32, 4)),
                (f"ULX3S-85F SPI flash at {ulx.freq_mhz / 2:g} MHz x 1 bit",
                 ulx.freq_mhz * 1e6 * 4 / flash_cycles_per_word(32, 1))]
    return clocks, memories


def run_demo(*, problems=6, seed=7, model_path=None):
    console = Console()
    console.print("[bold]lpu demo[/]: the shipped ternary model (sums of two numbers) on the "
                  "generated LPU, simulated cycle by cycle (Verilator), against the golden model")
    t0 = time.monotonic()
    fab = Session(model_path, backend="sim")
    gold = Session(model_path, backend="golden")
    build = time.monotonic() - t0
    st = fab.transport
    cfg = fab.backend.driver.config
    n_weights = sum(lin.weights.size for lin in fab.model.linears.values())
    console.print(f"LPU: {cfg['pes']} PEs x {cfg['lanes']} lanes, int8 activations, t2 weights "
                  f"from a {cfg['word_bits']}-bit memory; model: "
                  f"{len(fab.model.linears)} ternary projections, {n_weights:,} weights; "
                  f"weights loaded through the link in {fab.load_cycles:,} cycles "
                  f"(build and load {build:.0f} s)")
    rows = []
    exact = True
    tokens_total = 0
    cycles = fabric = 0
    seconds = 0.0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=problems)
        for prompt, want in accuracy_problems(problems, seed):
            c0, f0, s0 = st.cycles, fab.backend.fabric_cycles, st.sim_seconds
            ids = fab.generate(prompt, 6)
            cycles += st.cycles - c0
            fabric += fab.backend.fabric_cycles - f0
            seconds += st.sim_seconds - s0
            ref = gold.generate(prompt, 6)
            text = fab.tokenizer.decode(ids)
            # bit-exact: the same tokens and the same logits over the whole sequence
            same = ids == ref and np.array_equal(fab.logits(prompt + text),
                                                 gold.logits(prompt + text))
            exact &= same
            tokens_total += len(ids)
            rows.append((prompt.strip(), text.strip(), want.strip(), same))
            progress.advance(task)
    for prompt, got, want, same in rows:
        mark = "ok" if got == want else f"wrong (expected {want})"
        console.print(f"  {prompt:>9} {got:<5} {mark}; fabric == golden: {same}")
    console.print(f"bit-exact agreement with the golden model (tokens and logits): "
                  f"[bold]{'PASS' if exact else 'FAIL'}[/]")
    per_token = fabric / tokens_total
    console.print(f"{tokens_total} tokens generated in {cycles:,} simulated cycles: "
                  f"{cycles / tokens_total:,.0f} cycles/token including the byte link (one "
                  f"byte per cycle), {per_token:,.0f} cycles/token of streamer time; "
                  f"{cycles / seconds:,.0f} simulated cycles/s")
    weight_bytes = n_weights * 2 / 8
    word_bytes = cfg["word_bits"] / 8
    clocks, memories = _operating_points()
    for name, clock in clocks:
        console.print(f"  {name} with this device's memory "
                      f"({cfg['word_bits']} bits per clock): {clock / per_token:,.0f} tokens/s "
                      f"projected (roofline {clock * word_bytes / weight_bytes:,.0f} tokens/s "
                      f"for {weight_bytes / 1024:.0f} KiB of t2 weights per token)")
    for name, bandwidth in memories:
        console.print(f"  {name}, {bandwidth / 1e6:.3g} MB/s: roofline "
                      f"{bandwidth / weight_bytes:,.1f} tokens/s")
    console.print("  (host link time not counted in the projections)")
    fab.close()
    gold.close()
    return 0 if exact else 1
