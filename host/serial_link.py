"""A serial port as a host-driver transport: a board's UART, or anything pyserial opens.

:class:`SerialTransport` writes a request frame and reads back exactly one reply frame: bytes up
to the reply's sync byte are skipped, then the header gives the length (capped at
``MAX_PAYLOAD``, as the device never sends more) and the rest is read. A reply that does not
complete within the timeout raises :class:`TimeoutError` and a damaged one is returned as it
came, so the driver's retries and :class:`~lpu.host.driver.LinkError` apply to a serial link as
to the simulators. A port that cannot be opened, or fails while in use (a board unplugged),
raises :class:`~lpu.host.driver.LinkError` at once: retrying would not help.

Ports are opened with ``serial.serial_for_url``, so ``/dev/ttyUSB0``, ``loop://`` and
``socket://host:port`` all work.
"""

import serial

from lpu.hw.protocol import (
    FRAME_OVERHEAD,
    HEADER_BYTES,
    MAX_PAYLOAD,
    REPLY_SYNC,
    frame_length,
)

from .driver import LinkError, Transport

__all__ = ["SerialTransport"]

#: Bytes skipped while looking for a reply's sync byte before giving up on the reply.
MAX_SKIP = 2 * (MAX_PAYLOAD + FRAME_OVERHEAD)


class SerialTransport(Transport):
    """The LPU protocol over a serial port.

    Parameters
    ----------
    port : str
        Device path or pyserial URL (``loop://``, ``socket://host:port``, ...).
    baudrate : int
    timeout : float
        Seconds to wait for the reply to start, and again for its header and for its rest.
        A job that runs longer on the device than this needs a longer timeout.

    Attributes
    ----------
    cycles : None
        A board does not report cycles over the link.

    Raises
    ------
    TypeError, ValueError
        For a baud rate or timeout of the wrong type or value.
    LinkError
        If the port cannot be opened.
    """

    cycles = None

    def __init__(self, port, *, baudrate=115200, timeout=2.0):
        if not isinstance(baudrate, int) or isinstance(baudrate, bool):
            raise TypeError(f"Baud rate must be an integer, not {baudrate!r}")
        if baudrate <= 0:
            raise ValueError(f"Baud rate must be a positive integer, not {baudrate}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError(f"Timeout must be a number of seconds, not {timeout!r}")
        if not timeout > 0:
            raise ValueError(f"Timeout must be positive, not {timeout}")
        self._name = port
        self._timeout = timeout
        try:
            self._port = serial.serial_for_url(port, baudrate=baudrate, timeout=timeout,
                                               write_timeout=timeout)
        except (serial.SerialException, ValueError) as exc:
            raise LinkError(f"Cannot open serial port {port}: {exc}") from None

    port = property(lambda self: self._name)
    timeout = property(lambda self: self._timeout)

    def exchange(self, frame):
        got = bytearray()
        try:
            # Whatever is left of an earlier reply that timed out belongs to no request now.
            self._port.reset_input_buffer()
            self._port.write(bytes(frame))
            self._port.flush()
            skipped = 0
            while True:
                byte = self._port.read(1)
                if not byte:
                    break
                if byte[0] == REPLY_SYNC:
                    got += byte
                    break
                skipped += 1
                if skipped > MAX_SKIP:
                    break
            if got:
                got += self._port.read(HEADER_BYTES - 1)
                if len(got) == HEADER_BYTES:
                    n = frame_length(got)
                    got += self._port.read(n - HEADER_BYTES)
                    if len(got) == n:
                        return bytes(got)
        except serial.SerialTimeoutException:
            raise TimeoutError(f"Request not sent on {self._name} within "
                               f"{self._timeout} s") from None
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"Serial port {self._name} failed: {exc}") from None
        what = (f"{len(got)} bytes of a reply" if got else
                f"no reply sync byte (0x{REPLY_SYNC:02x})" +
                (f" after {skipped} other bytes" if skipped else ""))
        raise TimeoutError(f"No complete reply on {self._name} within {self._timeout} s: "
                           f"{what}")

    def close(self):
        self._port.close()
