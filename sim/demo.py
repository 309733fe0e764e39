"""``lpu demo``: the shipped model on the simulated LPU, checked against the golden model."""

import time

import numpy as np
from rich.console import Console
from rich.progress import Progress

from lpu.host.run import Session, accuracy_problems

__all__ = ["run_demo"]

# Stated operating points: the clock, and the memory bandwidth the weights stream from. The
# simulated device reads a 32-bit on-chip memory at one word per clock; the boards' external
# memories (QSPI flash at 4 bits per clock, 16-bit SDRAM) bound the rate by bandwidth instead.
CLOCKS = [("iCE40 UP5K", 48e6), ("ECP5-85F", 150e6)]
BOARD_MEMORIES = [("iCE40 UP5K, QSPI flash at 48 MHz", 24e6),
                  ("ECP5-85F, 16-bit SDRAM at 100 MHz", 200e6)]


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
    for name, clock in CLOCKS:
        console.print(f"  {name} at {clock / 1e6:.0f} MHz with this device's memory "
                      f"({cfg['word_bits']} bits per clock): {clock / per_token:,.0f} tokens/s "
                      f"projected (roofline {clock * word_bytes / weight_bytes:,.0f} tokens/s "
                      f"for {weight_bytes / 1024:.0f} KiB of t2 weights per token)")
    for name, bandwidth in BOARD_MEMORIES:
        console.print(f"  {name}, {bandwidth / 1e6:.0f} MB/s: roofline "
                      f"{bandwidth / weight_bytes:,.0f} tokens/s")
    console.print("  (host link time not counted in the projections)")
    fab.close()
    gold.close()
    return 0 if exact else 1
