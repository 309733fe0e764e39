"""cocotb side of :class:`~lpu.sim.cocotb_transport.CocotbTransport`: the generated
:class:`~lpu.sim.system.LPUSystem` (LPU and memory model) on Verilator, serving request frames
from the host process over a Unix socket.

It does what the C++ harness of the fast simulator (``lpu_harness.cc``) does, cycle for cycle,
so both count the same cycles for the same requests:

* reset: two cycles with ``rst`` high, one with it low (counted, as the harness counts them);
* per request: ``tx.ready`` is held high while the request goes into ``rx`` a byte per cycle
  (``rx.valid`` high until the device took every byte); bytes before the reply's sync byte are
  dropped; the exchange ends in the cycle the reply frame is complete, or after ``max_idle``
  cycles without an output byte once the request is in (then the reply is what arrived).

Handshakes are sampled in the read-only phase after the inputs are written; a transfer sampled
there happens at the next rising edge, which ends the cycle.

Socket messages are the harness's pipe messages: ``u32 n`` and ``n`` request bytes in
(``n = 0`` ends the run), ``u64 cycles``, ``u32 m`` and ``m`` reply bytes out. While the host
has nothing to send the bench blocks in the socket read, so simulated time stands still, as in
the harness.

Environment (set by the transport): ``LPU_COCOTB_LINK`` (socket path) and
``LPU_COCOTB_MAX_IDLE``.
"""

import os
import socket
import struct

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from lpu.hw.protocol import HEADER_BYTES, REPLY_SYNC, frame_length

# Clock period in simulator steps (the exported Verilog has no timescale).
PERIOD = 2
# Longest request accepted: far more than a frame (the device skips bytes outside frames, so a
# host may send junk), far less than a length word gone wrong.
MAX_REQUEST = 1 << 16


def _recv_exact(sock, n):
    """``n`` bytes from ``sock``, or None if the host closed the link first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _frame_length(got):
    """Length of the whole reply frame at the start of ``got`` (0 while incomplete)."""
    if len(got) < HEADER_BYTES:
        return 0
    n = frame_length(got)
    return n if len(got) >= n else 0


@cocotb.test()
async def serve(dut):
    """Answer the host's requests until it sends ``n = 0`` or closes the link."""
    path = os.environ.get("LPU_COCOTB_LINK")
    if not path:
        raise RuntimeError("LPU_COCOTB_LINK is not set; run through "
                           "lpu.sim.cocotb_transport.CocotbTransport")
    max_idle = int(os.environ["LPU_COCOTB_MAX_IDLE"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)

    rst, clk = dut.rst, dut.clk
    rx_valid, rx_payload, rx_ready = dut.rx__valid, dut.rx__payload, dut.rx__ready
    tx_valid, tx_payload, tx_ready = dut.tx__valid, dut.tx__payload, dut.tx__ready
    edge, settled = RisingEdge(clk), ReadOnly()

    Clock(clk, PERIOD, unit="step").start(start_high=False)
    rst.value = 1
    rx_valid.value = 0
    rx_payload.value = 0
    tx_ready.value = 0
    cycles = 0
    for _ in range(2):
        await edge
        cycles += 1
    rst.value = 0
    await edge
    cycles += 1

    try:
        while True:
            head = _recv_exact(sock, 4)
            if head is None:
                break
            (n,) = struct.unpack("<I", head)
            if n == 0:
                break
            if n > MAX_REQUEST:
                raise ValueError(f"Request of {n} bytes is longer than the {MAX_REQUEST} "
                                 f"the bench accepts")
            req = _recv_exact(sock, n)
            if req is None:
                break
            got = bytearray()
            sent = idle = 0
            synced = False
            tx_ready.value = 1
            rx_valid.value = 1
            rx_payload.value = req[0]
            # Inputs are written only when they change: each write costs a call into the
            # simulator, and the loop runs once per cycle.
            while True:
                await settled
                took = sent < n and rx_ready.value
                out = tx_valid.value
                byte = int(tx_payload.value) if out else 0
                await edge
                cycles += 1
                if took:
                    sent += 1
                    if sent < n:
                        rx_payload.value = req[sent]
                    else:
                        rx_valid.value = 0
                if out:
                    if not synced and byte == REPLY_SYNC:
                        synced = True
                    if synced:
                        got.append(byte)
                    idle = 0
                    if synced and _frame_length(got):
                        break
                elif sent == n:
                    idle += 1
                    if idle > max_idle:
                        break
            rx_valid.value = 0
            tx_ready.value = 0
            sock.sendall(struct.pack("<QI", cycles, len(got)) + bytes(got))
    finally:
        sock.close()
