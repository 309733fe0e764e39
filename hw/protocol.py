"""The host link protocol: command codes, frame layout and CRC, defined once for gateware and host.

Both directions carry frames over a byte stream (UART, SPI, a simulator)::

    request:  0xA5  cmd  len_lo len_hi  payload[len]  crc_hi crc_lo
    reply:    0x5A  status  len_lo len_hi  payload[len]  crc_hi crc_lo

The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over every byte after the sync byte,
sent most significant byte first, so that running the CRC over the frame including its CRC
leaves zero. Multi-byte fields in payloads are little-endian.

The device answers every request with exactly one reply. A request that arrives with a bad CRC,
an unknown command or a bad length is answered with an error status and has no effect; a request
that stops arriving part way (a lost byte) is dropped after ``timeout`` idle cycles and answered
with ``TRUNCATED``. Bytes outside a frame are skipped until the next sync byte. The host resends
on an error status or no reply; every command is idempotent except that a repeated ``RUN`` runs
the job again (same result).
"""

import struct

from amaranth.lib import enum
from amaranth.lib.crc import catalog

__all__ = ["Command", "Status", "REQUEST_SYNC", "REPLY_SYNC", "CRC", "MAX_PAYLOAD",
           "HEADER_BYTES", "FRAME_OVERHEAD", "frame_length",
           "encode_request", "encode_reply", "decode_reply", "FrameError", "crc16",
           "read_out_entries"]

REQUEST_SYNC = 0xA5
REPLY_SYNC = 0x5A
#: Largest payload in either direction (the device's frame buffers).
MAX_PAYLOAD = 256
#: Bytes of a frame's header (sync, code, two length bytes) and of all it adds to a payload
#: (the header and two CRC bytes).
HEADER_BYTES = 4
FRAME_OVERHEAD = HEADER_BYTES + 2
CRC = catalog.CRC16_CCITT_FALSE(8)


def read_out_entries(pes, result_bytes):
    """Most output-buffer entries one READ_OUT returns: ``pes`` values of ``result_bytes`` bytes
    each, whole entries in a payload."""
    return MAX_PAYLOAD // (pes * result_bytes)


class Command(enum.Enum, shape=8):
    """Request codes. Payload layouts (little-endian):"""

    #: ``()`` -> configuration: see :func:`lpu.hw.lpu.config_bytes`.
    PING = 0x00
    #: ``addr:u32, words`` -> ``()``: write memory words at word address ``addr``;
    #: ``BAD_LENGTH`` for a partial word or words past the memory (nothing is written).
    WRITE_MEM = 0x01
    #: ``addr:u16, acts`` -> ``()``: write one activation-buffer entry (N bytes, int8).
    WRITE_ACT = 0x02
    #: ``job`` (14 bytes, :data:`lpu.hw.scale.JOB_LAYOUT`) -> ``error:u8, outputs:u16``: run a
    #: job to completion; each output is P scaled sums (one per row of a row block).
    RUN = 0x03
    #: ``start:u16, count:u16`` -> ``count`` results of P signed little-endian integers of
    #: ``result_bytes`` each (see the ``PING`` reply).
    READ_OUT = 0x04
    #: ``()`` -> the LPU's ``STATUS_REPLY_LAYOUT`` (busy, dropped writes, job error, the
    #: PERF_LAYOUT counters).
    STATUS = 0x05
    #: ``addr:u16, words`` -> ``()``: write scale-memory words from word address ``addr``, each
    #: P little-endian int16 mantissas, lane 0 first (layout: :func:`lpu.hw.scale.scale_image`);
    #: ``BAD_LENGTH`` for a partial word or words past the scale memory (nothing is written).
    WRITE_SCALE = 0x06


class Status(enum.Enum, shape=8):
    OK = 0x00
    BAD_CRC = 0x01
    BAD_COMMAND = 0x02
    BAD_LENGTH = 0x03
    TRUNCATED = 0x04
    RUN_ERROR = 0x05


class FrameError(ValueError):
    """A reply frame that is malformed (bad sync, length or CRC)."""


def crc16(data):
    return CRC.compute(bytes(data))


def frame_length(header):
    """Bytes of the whole frame that starts with ``header`` (at least :data:`HEADER_BYTES`).

    The length field is capped at :data:`MAX_PAYLOAD`: a device never sends more, so a larger
    value is a damaged byte, and a receiver waiting for it would only wait longer.
    """
    return FRAME_OVERHEAD + min(header[2] | header[3] << 8, MAX_PAYLOAD)


def _frame(sync, code, payload):
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"Payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD}")
    body = bytes([code]) + struct.pack("<H", len(payload)) + payload
    return bytes([sync]) + body + struct.pack(">H", crc16(body))


def encode_request(command, payload=b""):
    return _frame(REQUEST_SYNC, Command(command).value, payload)


def encode_reply(status, payload=b""):
    return _frame(REPLY_SYNC, Status(status).value, payload)


def decode_reply(frame):
    """``(Status, payload)`` of a complete reply frame, or FrameError."""
    frame = bytes(frame)
    if len(frame) < FRAME_OVERHEAD:
        raise FrameError(f"Reply frame of {len(frame)} bytes is shorter than {FRAME_OVERHEAD}")
    if frame[0] != REPLY_SYNC:
        raise FrameError(f"Reply frame starts with 0x{frame[0]:02x}, not 0x{REPLY_SYNC:02x}")
    (length,) = struct.unpack("<H", frame[2:4])
    if len(frame) != FRAME_OVERHEAD + length:
        raise FrameError(f"Reply frame holds {len(frame)} bytes, its length field says "
                         f"{FRAME_OVERHEAD + length}")
    if crc16(frame[1:]) != 0:
        raise FrameError("Reply frame has a bad CRC")
    try:
        status = Status(frame[1])
    except ValueError:
        raise FrameError(f"Reply status 0x{frame[1]:02x} is not a known status") from None
    return status, frame[4:-2]
