import struct

import numpy as np
import pytest
from conftest import small_lpu

from lpu.host import image
from lpu.host.driver import DeviceError, LinkError, LPUDriver, PysimTransport
from lpu.hw.lpu import LPU
from lpu.hw.protocol import (
    Command,
    FrameError,
    Status,
    decode_reply,
    encode_reply,
    encode_request,
)
from lpu.hw.scale import JOB_LAYOUT
from lpu.hw.streamer import StreamError
from lpu.sim import golden
from lpu.sim.system import LPUSystem


def _device(registered_ram=False):
    transport = PysimTransport(LPUSystem(small_lpu(timeout=200, registered_ram=registered_ram)))
    return LPUDriver(transport), transport


@pytest.fixture
def device():
    drv, transport = _device()
    yield drv, transport
    transport.close()


@pytest.fixture
def registered_device():
    """The small LPU with registers behind its block RAMs (``registered_ram``)."""
    drv, transport = _device(registered_ram=True)
    yield drv, transport
    transport.close()


@pytest.mark.parametrize("fmt, vectors, group, registered", [
    ("t5", 2, 0, False), ("t2", 1, 8, False), ("t2", 2, 0, False), ("t2", 2, 8, True)])
def test_matmul_through_the_protocol(rng, request, fmt, vectors, group, registered):
    drv, _ = request.getfixturevalue("registered_device" if registered else "device")
    w = rng.integers(-1, 2, size=(7, 19))
    x = rng.integers(-128, 128, size=(19, vectors))
    x[0, 0] = -128
    assert np.array_equal(drv.matmul(w, x, fmt=fmt, group=group), golden.matvec(w, x))
    # The scale unit: the group sums (3 groups, the last partial) times extreme mantissas.
    groups = 3 if group else 1
    mant = rng.integers(-(1 << 15), 1 << 15, size=(7, groups))
    mant[0] = (1 << 15) - 1
    mant[1] = -(1 << 15)
    y = drv.matmul(w, x, fmt=fmt, group=group, mantissas=mant, scale_base=1000)
    assert np.array_equal(y, golden.scaled_matvec(w, x, mant, group=group))
    st = drv.status()
    assert not st["busy"] and st["tiles"] == 4 * 5 * vectors


def test_ping_reports_configuration(device):
    drv, _ = device
    cfg = drv.config
    assert (cfg["lanes"], cfg["pes"], cfg["word_bits"], cfg["max_k"]) == (4, 2, 16, 64)
    assert [f.value for f in cfg["formats"]] == ["t2", "t5"]


def _once(fn):
    """Damage only the first frame it sees."""
    state = {"done": False}

    def wrapped(frame):
        if state["done"]:
            return frame
        state["done"] = True
        return fn(frame)
    return wrapped


@pytest.mark.parametrize("damage", [
    lambda f: f[:6] + bytes([f[6] ^ 0x10]) + f[7:],     # a garbled byte: BAD_CRC
    lambda f: f[:5] + f[6:],                             # a dropped byte: TRUNCATED
    lambda f: f[: len(f) // 2],                          # a truncated frame: TRUNCATED
    lambda f: b"\x00\x13" + f,                           # noise before the frame: skipped
    lambda f: f[:-2] + bytes([f[-2] ^ 0x80]) + f[-1:],  # the CRC's high byte: BAD_CRC
    lambda f: f[:-1] + bytes([f[-1] ^ 0x01]),           # the CRC's low byte: BAD_CRC
])
@pytest.mark.parametrize("registered", [False, True])
def test_link_recovers_from_a_damaged_request(rng, request, damage, registered):
    drv, transport = request.getfixturevalue("registered_device" if registered else "device")
    w = rng.integers(-1, 2, size=(3, 8))
    x = rng.integers(-128, 128, size=8)
    transport.corrupt = _once(damage)
    assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))


def test_link_recovers_from_a_damaged_reply(rng, device):
    drv, transport = device
    transport.corrupt_reply = _once(lambda r: r[:4] + bytes([r[4] ^ 1]) + r[5:])
    w = rng.integers(-1, 2, size=(3, 8))
    x = rng.integers(-128, 128, size=8)
    assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))


def test_dead_link_raises(device):
    drv, transport = device
    transport.corrupt = lambda f: f[:-1]
    with pytest.raises(LinkError, match=r"^STATUS failed after 4 attempts: device reported "
                                        r"TRUNCATED$"):
        drv.status()


def test_device_refuses_bad_requests(device):
    drv, _ = device
    with pytest.raises(DeviceError, match=r"^Device refused WRITE_ACT: BAD_LENGTH$"):
        drv.request(Command.WRITE_ACT, b"\x00\x00\x01")
    with pytest.raises(DeviceError, match=r"^Device refused READ_OUT: BAD_LENGTH$"):
        drv.read_out(5)     # no results yet
    # an unknown command code, sent raw
    transport = drv._t
    status, _ = decode_reply(transport.exchange(bytes([0xA5]) + _raw(0x7E)))
    assert status is Status.BAD_COMMAND
    # a length above the frame buffer is refused as soon as it arrives; 256 bytes are taken
    for length in (257, 0x1FF, 0x200, 0xFFFF):
        header = bytes([0xA5, Command.WRITE_MEM.value]) + length.to_bytes(2, "little")
        status, _ = decode_reply(transport.exchange(header))
        assert status is Status.BAD_LENGTH
    drv.request(Command.WRITE_MEM, bytes(256))


@pytest.mark.parametrize("registered", [False, True])
def test_each_crc_bit_is_checked(request, registered):
    """A request whose CRC differs in any one bit of either byte is answered BAD_CRC; the
    frame with its own CRC is answered."""
    drv, _ = request.getfixturevalue("registered_device" if registered else "device")
    frame = encode_request(Command.WRITE_MEM, bytes(8))
    for bit in range(16):
        bad = bytearray(frame)
        bad[-2 + bit // 8] ^= 1 << (bit % 8)
        status, _ = decode_reply(drv._t.exchange(bytes(bad)))
        assert status is Status.BAD_CRC, bit
    status, _ = decode_reply(drv._t.exchange(frame))
    assert status is Status.OK


@pytest.mark.parametrize("registered", [False, True])
def test_read_out_range_is_checked(rng, request, registered):
    """READ_OUT's range check at its edges: ``start + count`` up to the results present, and a
    reply no longer than the frame buffer (``per`` results; the job leaves ``per + 1``)."""
    drv, _ = request.getfixturevalue("registered_device" if registered else "device")
    per = 256 // (drv.config["result_bytes"] * drv.config["pes"])
    w = rng.integers(-1, 2, size=(drv.config["pes"] * (per + 1), 4))
    x = rng.integers(-128, 128, size=4)
    assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))

    def read(start, n):
        return drv.request(Command.READ_OUT, struct.pack("<HH", start, n))[1]

    assert len(read(1, per)) == 256
    assert read(per + 1, 0) == b""
    for start, n in ((0, per + 1), (2, per), (per + 2, 0), (per, 2), (0xFFFF, 1),
                     (1, 0xFFFF)):
        with pytest.raises(DeviceError, match=r"^Device refused READ_OUT: BAD_LENGTH$"):
            read(start, n)


def _raw(code):
    frame = encode_request(Command.PING)
    body = bytes([code]) + frame[2:4]
    from lpu.hw.protocol import crc16
    return body + crc16(body).to_bytes(2, "big")


@pytest.mark.parametrize("registered", [False, True])
def test_write_mem_past_the_memory_is_refused_whole(rng, request, registered):
    """1024 words of 16 bits: words that would run past the memory (and wrap around its
    10-bit address port onto word 0) are refused, and none of them is written. (The last
    word's address against 1024 - n: equal, one above, above in the high bits with the low
    bits below, and below in the high bits with the low bits above, as the registered LPU
    compares them in two halves.)"""
    drv, _ = request.getfixturevalue("registered_device" if registered else "device")
    assert (drv.config["mem_words"], drv.config["word_bits"]) == (1024, 16)
    w = rng.integers(-1, 2, size=(4, 16))
    x = rng.integers(-128, 128, size=16)
    assert np.array_equal(drv.matmul(w, x, fmt="t2"), golden.matvec(w, x))   # image at 0
    for at, n in ((1023, 2), (1024, 1), (1 << 31, 1), (0xFFFFFFFF, 1), (925, 100),
                  (960, 100)):
        with pytest.raises(DeviceError, match=r"^Device refused WRITE_MEM: BAD_LENGTH$"):
            drv.request(Command.WRITE_MEM, struct.pack("<I", at) + bytes(2 * n))
    for at in (924, 872):       # 924 + 100 fits; so does 872, its low bits above 924's
        drv.request(Command.WRITE_MEM, struct.pack("<I", at) + bytes(2 * 100))
    with pytest.raises(DeviceError, match=r"^Device refused WRITE_MEM: BAD_LENGTH$"):
        drv.request(Command.WRITE_MEM, struct.pack("<I", 4) + bytes(3))     # half a word
    drv.request(Command.WRITE_MEM, struct.pack("<I", 1022) + bytes(4))    # 1022 + 2 fits
    # The image at word 0 is intact: the same job again gives the same sums.
    desc = {"base": 0, "rows": 4, "cols": 16, "group": 0, "vectors": 1, "fmt": 0,
            "scale_base": 0}
    count = drv.run(desc)
    got = image.result_matrix(drv.read_out(count), 4, 1)[:, 0]
    assert np.array_equal(got, golden.matvec(w, x))


def test_job_error_is_reported(device):
    drv, _ = device
    desc = {"base": 1000, "rows": 8, "cols": 64, "group": 0, "vectors": 1, "fmt": 0}
    with pytest.raises(DeviceError, match=r"^Job failed on the device: ADDRESS$"):
        drv.run(desc)
    assert drv.status()["error"] is StreamError.ADDRESS


class _ScriptedTransport:
    """Answers PING with the small LPU's real reply, then RUN with the replies given."""

    def __init__(self, run_replies):
        lpu_transport = PysimTransport(LPUSystem(small_lpu()))
        try:
            self._ping = lpu_transport.exchange(encode_request(Command.PING))
        finally:
            lpu_transport.close()
        self._run = list(run_replies)

    def exchange(self, frame):
        return self._ping if frame == encode_request(Command.PING) else self._run.pop(0)

    def close(self):
        pass


@pytest.mark.parametrize("reply, msg", [
    (encode_reply(Status.OK, b""), r"^RUN reply has 0 payload bytes, not 3 \(error code and "
                                   r"result count\)$"),
    (encode_reply(Status.OK, b"\x00\x01"), r"^RUN reply has 2 payload bytes, not 3 "),
    (encode_reply(Status.RUN_ERROR, b""), r"^Device refused RUN: RUN_ERROR$"),
    (encode_reply(Status.RUN_ERROR, b"\x09"), r"^Job failed on the device: unknown error code 9$"),
])
def test_malformed_run_reply_is_a_device_error(reply, msg):
    drv = LPUDriver(_ScriptedTransport([reply]))
    desc = {"base": 0, "rows": 4, "cols": 8, "group": 0, "vectors": 1, "fmt": 0}
    with pytest.raises(DeviceError, match=msg):
        drv.run(desc)


def _job_bytes(desc):
    return JOB_LAYOUT.const(desc).as_value().value.to_bytes((JOB_LAYOUT.size + 7) // 8, "little")


@pytest.mark.parametrize("registered", [False, True])
def test_scale_range_errors(rng, request, registered):
    """Scale words past the scale memory (1024 words of P = 2 mantissas): the host refuses
    first, the device sets SCALES rather than run the job, and a job after it runs normally.
    Each RUN reply carries its own job's error (SCALES, SCALES, ADDRESS, then none)."""
    drv, _ = request.getfixturevalue("registered_device" if registered else "device")
    assert (drv.config["scale_depth"], drv.config["result_bytes"]) == (1024, 4)
    desc = {"base": 0, "rows": 7, "cols": 19, "group": 8, "vectors": 1, "fmt": 0,
            "scale_base": 1013}                                 # 1013 + 4 blocks * 3 = 1025
    with pytest.raises(ValueError, match=r"^Job scales at 1013\.\.1024 run past the scale "
                                         r"memory \(1024 words\)$"):
        drv.run(desc)
    status, data = drv.request(Command.RUN, _job_bytes(desc))
    assert status is Status.RUN_ERROR and data[0] == StreamError.SCALES.value
    assert drv.status()["error"] is StreamError.SCALES
    per_tensor = {**desc, "group": 0, "rows": 2049, "scale_base": 0}   # 1025 blocks
    status, data = drv.request(Command.RUN, _job_bytes(per_tensor))
    assert status is Status.RUN_ERROR and data[0] == StreamError.SCALES.value
    # A job the streamer refuses does not leave the scale unit waiting.
    status, data = drv.request(Command.RUN, _job_bytes({**desc, "scale_base": 0, "base": 1020}))
    assert status is Status.RUN_ERROR and data[0] == StreamError.ADDRESS.value
    w = rng.integers(-1, 2, size=(7, 19))
    x = rng.integers(-128, 128, size=19)
    assert np.array_equal(drv.matmul(w, x, fmt="t2", group=8, scale_base=1012),
                          golden.matvec(w, x))
    with pytest.raises(ValueError, match=r"^Scale words at 1022\.\.1024 run past the scale "
                                         r"memory \(1024 words\)$"):
        drv.write_scales(np.ones((5, 1), dtype=np.int64), at=1022)
    with pytest.raises(DeviceError, match=r"^Device refused WRITE_SCALE: BAD_LENGTH$"):
        drv.request(Command.WRITE_SCALE, b"\xfe\x03" + bytes(12))       # 1022 + 3 > 1024
    with pytest.raises(DeviceError, match=r"^Device refused WRITE_SCALE: BAD_LENGTH$"):
        drv.request(Command.WRITE_SCALE, b"\x00\x00" + bytes(6))        # half a word
    with pytest.raises(DeviceError, match=r"^Device refused WRITE_SCALE: BAD_LENGTH$"):
        drv.request(Command.WRITE_SCALE, b"\x00")                       # half an address
    drv.request(Command.WRITE_SCALE, b"\xfe\x03" + bytes(8))            # 1022 + 2 fits
    drv.request(Command.WRITE_SCALE, b"\x00\x04")                       # no words at 1024


@pytest.mark.parametrize("frame, msg", [
    (b"\x5a\x00", r"^Reply frame of 2 bytes is shorter than 6$"),
    (b"\x11" + encode_reply(Status.OK)[1:], r"^Reply frame starts with 0x11, not 0x5a$"),
    (encode_reply(Status.OK, b"ab")[:-1], r"^Reply frame holds 7 bytes, its length field "
                                          r"says 8$"),
    (encode_reply(Status.OK, b"ab")[:-1] + b"\x00", r"^Reply frame has a bad CRC$"),
])
def test_reply_decoding_errors(frame, msg):
    with pytest.raises(FrameError, match=msg):
        decode_reply(frame)


def test_request_too_long():
    with pytest.raises(ValueError, match=r"^Payload of 300 bytes exceeds the maximum of 256$"):
        encode_request(Command.WRITE_MEM, bytes(300))


def test_lpu_parameter_errors():
    with pytest.raises(ValueError, match=r"^Activation width must be at most 8 for the byte "
                                         r"protocol, not 12$"):
        LPU(lanes=4, pes=2, act_bits=12)
    with pytest.raises(ValueError, match=r"^Output buffer depth must be a positive integer, "
                                         r"not 0$"):
        LPU(lanes=4, pes=2, out_depth=0)


class _Batches:
    """Wraps a transport's batches: ``damage(replies)`` changes what comes back once."""

    def __init__(self, transport, damage):
        self.t, self.damage, self.sent = transport, damage, []

    def exchange(self, frame):
        self.sent.append(bytes(frame))
        return self.t.exchange(frame)

    def exchange_many(self, frames):
        replies = [self.exchange(f) for f in frames]
        damage, self.damage = self.damage, lambda r: r
        return damage(replies)


@pytest.mark.parametrize("damage, resent", [
    (lambda r: r[:1] + r[2:], 5),                                 # a reply lost: all resent
    (lambda r: r[:2] + [r[2][:4] + bytes([r[2][4] ^ 1]) + r[2][5:]] + r[3:], 3),  # garbled
    (lambda r: r[:1] + [encode_reply(Status.BAD_CRC)] + r[2:], 4),  # a damaged request
])
def test_a_batch_with_a_bad_reply_is_resent(rng, device, damage, resent):
    drv, transport = device
    batches = _Batches(transport, damage)
    drv._t = batches
    entries = [(a, rng.integers(-128, 128, size=4)) for a in range(5)]
    drv.write_acts(entries)
    # five requests in the batch, then the one at fault and every one after it on their own
    assert len(batches.sent) == 5 + resent
    assert batches.sent[5:] == batches.sent[5 - resent:5]
    w = rng.integers(-1, 2, size=(3, 4))
    out = drv.matmul(w, entries[0][1], fmt="t2")
    assert np.array_equal(out, golden.matvec(w, entries[0][1]))


def test_pysim_transport_raises_when_the_simulation_stops():
    # a background process that fails stops the simulation: the exchange waiting for its reply
    # raises (it once waited forever), and so does the next
    async def fail(ctx):
        await ctx.tick().repeat(5)
        raise ValueError("planted")

    transport = PysimTransport(LPUSystem(small_lpu()), monitors=[fail])
    try:
        with pytest.raises(RuntimeError, match=r"^The simulation stopped: planted$"):
            LPUDriver(transport)            # its first exchange, a PING
        with pytest.raises(RuntimeError, match=r"^The simulation stopped: planted$"):
            transport.exchange(encode_request(Command.PING))
    finally:
        transport.close()


def test_scale_unit_is_ready_for_every_sum(rng):
    """The LPU ties the streamer's output ready high (hw/lpu.py): the scale unit must be ready
    in every cycle the streamer offers a sum, from the shortest job (one tile per row: its
    first sum comes soonest after the start) to several vectors and groups."""
    lpu = small_lpu(timeout=200)
    offered = []

    async def watch(ctx):
        # (an exception here stops the simulation, and the driver's exchange raises it)
        async for _, _, valid, ready in ctx.tick().sample(lpu._streamer.o_stream.valid,
                                                           lpu._scale.i_stream.ready):
            if valid:
                offered.append(1)
                if not ready:
                    raise AssertionError(f"sum {len(offered)} offered while the scale unit "
                                         f"is not ready")

    transport = PysimTransport(LPUSystem(lpu), monitors=[watch], reply_cycles=50_000)
    drv = LPUDriver(transport)
    try:
        for rows, cols, vectors, group in [(2, 3, 1, 0), (1, 4, 2, 0), (7, 19, 2, 0),
                                           (5, 16, 1, 8)]:
            w = rng.integers(-1, 2, size=(rows, cols))
            x = rng.integers(-128, 128, size=(cols, vectors))
            groups = -(-cols // group) if group else 1
            mant = rng.integers(-(1 << 15), 1 << 15, size=(rows, groups))
            y = drv.matmul(w, x, fmt="t2", group=group, mantissas=mant)
            assert np.array_equal(y, golden.scaled_matvec(w, x, mant, group=group))
    finally:
        transport.close()
    assert offered
