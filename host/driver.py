"""Host driver: talks the LPU protocol over an abstract byte transport.

Transports carry one request frame to the device and bring back its reply frame:
:class:`PysimTransport` (the Amaranth simulator, for tests), the compiled simulator and a serial
port come next to it. The driver retries a request whose reply is garbled or reports a damaged
request, and raises :class:`LinkError` when a request fails ``retries`` times. Runs of
idempotent requests (memory, scale and activation writes, result reads) go out as one batch
(:meth:`Transport.exchange_many`), so a transport can keep the link busy without a round trip
per frame.
"""

import gc
import queue
import struct
import threading

import numpy as np

from lpu.hw.lpu import STATUS_REPLY_LAYOUT, parse_config
from lpu.hw.protocol import (
    HEADER_BYTES,
    MAX_PAYLOAD,
    REPLY_SYNC,
    Command,
    FrameError,
    Status,
    decode_reply,
    encode_request,
    frame_length,
    read_out_entries,
)
from lpu.hw.scale import JOB_LAYOUT, scale_groups, scale_image, scale_words
from lpu.hw.streamer import StreamError, act_tiles_for

from . import image

__all__ = ["LPUDriver", "LinkError", "DeviceError", "Transport", "PysimTransport"]



def _stream_error_name(code):
    """The :class:`StreamError` name of ``code``, or the number if it names none."""
    try:
        return StreamError(code).name
    except ValueError:
        return f"unknown error code {code}"

class LinkError(RuntimeError):
    """The link to the device failed: no valid reply after all retries."""


class DeviceError(RuntimeError):
    """The device refused a request (bad command or length) or a job failed."""


class Transport:
    """Carries a request frame to the device and returns the raw reply frame (bytes).

    Implementations return whatever arrived, even if it is damaged; they raise TimeoutError if
    no complete reply arrives.
    """

    def exchange(self, frame):
        raise NotImplementedError

    def exchange_many(self, frames):
        """Carry several request frames; return the replies that came back, in order.

        Transports that can keep the link busy (the compiled simulator) send them back to back
        in one batch; this default sends them one at a time and stops at the first timeout.
        """
        replies = []
        for frame in frames:
            try:
                replies.append(self.exchange(frame))
            except TimeoutError:
                break
        return replies

    def close(self):
        pass


class PysimTransport(Transport):
    """The Amaranth simulator of an :class:`~lpu.sim.system.LPUSystem`, run in a thread.

    The simulation waits (in simulated time, not at all) while the host has nothing to send.
    ``corrupt`` may map a request frame to the bytes actually sent, and ``corrupt_reply`` a
    reply to the bytes received (tests of a bad link). ``monitors`` are more ``async def
    (ctx)`` processes to run beside the host, in the background (tests that watch signals); an
    exception in one stops the simulation, and the exchange waiting for a reply raises
    :class:`RuntimeError` from it.
    """

    def __init__(self, system, *, reply_cycles=2_000_000, monitors=()):
        from amaranth.sim import Simulator
        self._req = queue.Queue()
        self._resp = queue.Queue()
        self.cycles = 0
        self.corrupt = None
        self.corrupt_reply = None

        async def bench(ctx):
            while True:
                frame = self._req.get()
                if frame is None:
                    return
                for byte in frame:
                    ctx.set(system.rx.payload, byte)
                    ctx.set(system.rx.valid, 1)
                    await ctx.tick().until(system.rx.ready)
                    self.cycles += 1
                ctx.set(system.rx.valid, 0)
                ctx.set(system.tx.ready, 1)
                got = []
                waited = 0
                while True:
                    _, _, valid, data = await ctx.tick().sample(system.tx.valid,
                                                               system.tx.payload)
                    self.cycles += 1
                    waited += 1
                    if valid:
                        got.append(int(data))
                        if _complete(got):
                            break
                    if waited > reply_cycles:
                        break
                ctx.set(system.tx.ready, 0)
                self._resp.put(bytes(got))

        sim = Simulator(system)
        sim.add_clock(1e-6)
        sim.add_testbench(bench)
        for monitor in monitors:
            sim.add_process(monitor)
        self._error = None
        self._sim = sim

        def run():
            try:
                self._sim.run()
            except Exception as exc:        # a process failed: no reply will come
                self._error = exc
                self._resp.put(None)
            finally:
                # The simulator and its processes are dropped and collected here, at a known
                # point: a process stopped mid-way is closed when collected, and collected
                # at a random point of the program (inside a compilation) it upset the
                # interpreter.
                self._sim = None
                gc.collect()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def exchange(self, frame):
        if self.corrupt is not None:
            frame = self.corrupt(frame)
        if self._error is None:
            self._req.put(bytes(frame))
        got = self._resp.get() if self._error is None else None
        if got is None:
            raise RuntimeError(f"The simulation stopped: {self._error}") from self._error
        if self.corrupt_reply is not None:
            got = self.corrupt_reply(got)
        if not _complete(list(got)):
            raise TimeoutError("No complete reply from the simulated device")
        return got

    def close(self):
        self._req.put(None)
        self._thread.join()


def _decode(got):
    """Status and payload of the reply frame in ``got`` (bytes before its sync are skipped)."""
    return decode_reply(got[got.index(REPLY_SYNC):] if REPLY_SYNC in got else got)


def _complete(got):
    """Whether ``got`` (bytes so far) holds a whole reply frame."""
    try:
        start = got.index(REPLY_SYNC)
    except ValueError:
        return False
    rest = got[start:]
    return len(rest) >= HEADER_BYTES and len(rest) >= frame_length(rest)


class LPUDriver:
    """Runs matrix products on an LPU through a :class:`Transport`.

    Parameters
    ----------
    transport : Transport
    retries : int
        Attempts per request before :class:`LinkError`.
    """

    def __init__(self, transport, *, retries=4):
        self._t = transport
        self._retries = retries
        self.config = self.ping()

    def request(self, command, payload=b""):
        """Send one request; return the reply payload. Retries on a damaged link."""
        frame = encode_request(command, payload)
        last = None
        for _ in range(self._retries):
            try:
                got = self._t.exchange(frame)
                status, data = _decode(got)
            except (FrameError, TimeoutError) as exc:
                last = str(exc)
                continue
            if status in (Status.BAD_CRC, Status.TRUNCATED):
                last = f"device reported {status.name}"
                continue
            if status in (Status.BAD_COMMAND, Status.BAD_LENGTH):
                raise DeviceError(f"Device refused {Command(command).name}: {status.name}")
            return status, data
        raise LinkError(f"{Command(command).name} failed after {self._retries} attempts: "
                        f"{last}")

    def request_many(self, command, payloads):
        """Send several requests of one idempotent command as one batch; return their reply
        payloads in order.

        A reply that is missing or damaged, or refused for a damaged request, is resent on its
        own (:meth:`request`) together with every request after it: without sequence numbers,
        the replies after a lost one cannot be matched to their requests.
        """
        payloads = list(payloads)
        frames = [encode_request(command, p) for p in payloads]
        replies = self._t.exchange_many(frames) if frames else []
        if len(replies) != len(frames):
            replies = []
        out = []
        for got in replies:
            try:
                status, data = _decode(got)
            except FrameError:
                break
            if status in (Status.BAD_COMMAND, Status.BAD_LENGTH):
                raise DeviceError(f"Device refused {Command(command).name}: {status.name}")
            if status is not Status.OK:
                break
            out.append(data)
        for p in payloads[len(out):]:
            out.append(self.request(command, p)[1])
        return out

    def ping(self):
        _, data = self.request(Command.PING)
        return parse_config(data)

    def write_mem(self, words, at=0):
        """Write memory words (ints of ``word_bits``) starting at word ``at``."""
        wb = self.config["word_bits"] // 8
        per = (MAX_PAYLOAD - 4) // wb
        self.request_many(Command.WRITE_MEM, (
            struct.pack("<I", at + i) + b"".join(int(w).to_bytes(wb, "little")
                                                 for w in words[i:i + per])
            for i in range(0, len(words), per)))

    def write_vectors(self, x):
        """Write activation vectors ``x`` (K x V, int8) into the activation buffer."""
        cfg = self.config
        self.write_acts(image.activation_entries(
            x, lanes=cfg["lanes"], act_tiles=act_tiles_for(cfg["max_k"], cfg["lanes"])))

    def write_acts(self, entries):
        self.request_many(Command.WRITE_ACT, (
            struct.pack("<H", addr) + bytes(int(v) & 0xFF for v in values)
            for addr, values in entries))

    def write_scales(self, mantissas, at=0):
        """Write a job's ``(rows, groups)`` mantissas (signed 16-bit) into the scale memory
        from word address ``at``, as the words of P mantissas of
        :func:`lpu.hw.scale.scale_image`.

        Raises
        ------
        ValueError
            If the mantissas are not 16-bit integers or run past the scale memory.
        """
        pes = self.config["pes"]
        words = scale_image(mantissas, pes)
        depth = self.config["scale_depth"]
        if at < 0 or at + len(words) > depth:
            raise ValueError(f"Scale words at {at}..{at + len(words) - 1} run past the scale "
                             f"memory ({depth} words)")
        per = (MAX_PAYLOAD - 2) // (2 * pes)
        self.request_many(Command.WRITE_SCALE, (
            struct.pack("<H", at + i) + words[i:i + per].astype("<i2").tobytes()
            for i in range(0, len(words), per)))

    def run(self, desc):
        """Run a job (:data:`~lpu.hw.scale.JOB_LAYOUT`: the streamer's descriptor and
        ``scale_base``); return the number of results.

        Raises
        ------
        ValueError
            If the job's mantissas would run past the scale memory (checked before sending).
        DeviceError
            On a job error.
        """
        groups = scale_groups(desc["cols"], desc["group"])
        end = desc.get("scale_base", 0) + scale_words(desc["rows"], groups, self.config["pes"])
        if end > self.config["scale_depth"]:
            raise ValueError(f"Job scales at {desc.get('scale_base', 0)}..{end - 1} run past "
                             f"the scale memory ({self.config['scale_depth']} words)")
        value = JOB_LAYOUT.const({"scale_base": 0, **desc}).as_value().value
        nbytes = (JOB_LAYOUT.size + 7) // 8
        status, data = self.request(Command.RUN, value.to_bytes(nbytes, "little"))
        if status is not Status.OK:
            if not data:
                raise DeviceError(f"Device refused RUN: {status.name}")
            raise DeviceError(f"Job failed on the device: {_stream_error_name(data[0])}")
        if len(data) != 3:
            raise DeviceError(f"RUN reply has {len(data)} payload bytes, not 3 (error code and "
                              f"result count)")
        (count,) = struct.unpack("<H", data[1:3])
        return count

    def read_out(self, count, start=0):
        """Results ``start .. start+count`` as an int64 array (count, P)."""
        pes, nb = self.config["pes"], self.config["result_bytes"]
        per = read_out_entries(pes, nb)
        spans = [(i, min(per, start + count - i)) for i in range(start, start + count, per)]
        replies = self.request_many(Command.READ_OUT,
                                    (struct.pack("<HH", i, n) for i, n in spans))
        rows = []
        for (_, n), data in zip(spans, replies, strict=True):
            if len(data) != nb * pes * n:
                raise DeviceError(f"READ_OUT returned {len(data)} bytes for {n} results")
            raw = np.frombuffer(data, dtype=np.uint8).reshape(n * pes, nb).astype(np.int64)
            value = (raw << (8 * np.arange(nb))).sum(axis=1)
            value -= (value >> (8 * nb - 1) & 1) << (8 * nb)       # sign-extend
            rows.append(value.reshape(n, pes))
        return np.concatenate(rows) if rows else np.zeros((0, pes), np.int64)

    def status(self):
        _, data = self.request(Command.STATUS)
        if len(data) != STATUS_REPLY_LAYOUT.size // 8:
            raise DeviceError(f"STATUS reply has {len(data)} payload bytes, not "
                              f"{STATUS_REPLY_LAYOUT.size // 8}")
        reply = STATUS_REPLY_LAYOUT.from_bits(int.from_bytes(data, "little"))
        return {"busy": bool(reply.busy), "writes_dropped": bool(reply.writes_dropped),
                "error": reply.error,
                **{k: int(getattr(reply.perf, k)) for k in
                   ("busy_cycles", "mem_stall", "out_stall", "words_read", "tiles")}}

    def matmul(self, weights, acts, *, fmt, base=0, group=0, mantissas=None, scale_base=0):
        """``sum_g m[:, g] * (W @ X)[:, g]`` on the device: integer weights (M x K), int8
        activations (K or K x V), mantissas ``(M, groups)`` (default all 1: plain ``W @ X``)
        written at ``scale_base``.

        Returns int64 (M x V), or (M,) for 1-D ``acts``."""
        acts = np.asarray(acts)
        x = acts[:, None] if acts.ndim == 1 else acts
        rows, cols = np.shape(weights)
        lanes, pes = self.config["lanes"], self.config["pes"]
        img = image.weight_image(weights, fmt, lanes=lanes, pes=pes,
                                 word_bits=self.config["word_bits"])
        self.write_mem(image.image_words(img, self.config["word_bits"]), at=base)
        self.write_vectors(x)
        groups = scale_groups(cols, group)
        if mantissas is None:
            mantissas = np.ones((rows, groups), dtype=np.int64)
        self.write_scales(mantissas, at=scale_base)
        desc = {"base": base, "rows": rows, "cols": cols, "group": group,
                "vectors": x.shape[1], "fmt": image.FormatCode.of(fmt),
                "scale_base": scale_base}
        count = self.run(desc)
        y = image.result_matrix(self.read_out(count), rows, x.shape[1])
        return y[:, 0] if acts.ndim == 1 else y
