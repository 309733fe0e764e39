"""The serial transport end to end: the driver on one side of a pseudo-terminal, a device on the
other (a thread that passes request frames to a simulated LPU and writes its replies back)."""

import json
import os
import select
import threading
import tty

import numpy as np
import pytest
from conftest import small_lpu

from lpu.host.driver import LinkError, LPUDriver, PysimTransport
from lpu.host.serial_link import SerialTransport
from lpu.hw.protocol import REQUEST_SYNC
from lpu.sim import golden
from lpu.sim.system import LPUSystem

# Bytes of a partial request are passed on after this much silence (a lost byte).
GAP = 0.05


class PtyDevice:
    """The device end of a pseudo-terminal pair, serving ``backend`` (a Transport).

    ``request_fault`` and ``reply_fault`` may change the bytes of a request before the device
    sees them or of a reply before the host does (tests of a bad link); ``backend`` None is a
    board that never answers.
    """

    def __init__(self, backend, *, request_fault=None, reply_fault=None):
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._backend = backend
        self._request_fault = request_fault
        self._reply_fault = reply_fault
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _requests(self):
        """Request frames as they arrive; a partial one after a gap of ``GAP`` seconds."""
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], GAP)
            if ready:
                buf += os.read(self._master, 4096)
            while buf and buf[0] != REQUEST_SYNC:
                del buf[0]
            if len(buf) >= 4 and len(buf) >= 6 + (buf[2] | buf[3] << 8):
                n = 6 + (buf[2] | buf[3] << 8)
                yield bytes(buf[:n])
                del buf[:n]
            elif buf and not ready:
                yield bytes(buf)
                buf.clear()

    def _serve(self):
        for frame in self._requests():
            if self._backend is None:
                continue
            if self._request_fault:
                frame = self._request_fault(frame)
            reply = self._backend.exchange(frame)
            if self._reply_fault:
                reply = self._reply_fault(reply)
            os.write(self._master, reply)

    def close(self):
        self._stop.set()
        self._thread.join()
        os.close(self._master)
        os.close(self._slave)


def _once(fn):
    """``fn`` applied to the first frame only."""
    done = []

    def wrapped(frame):
        if done:
            return frame
        done.append(True)
        return fn(frame)
    return wrapped



@pytest.fixture
def link(request):
    """``make(**faults)`` -> (driver, device) over a pty to a simulated LPU; closed after."""
    opened = []

    def make(*, timeout=1.0, backend=True, **faults):
        sim = PysimTransport(LPUSystem(small_lpu())) if backend else None
        device = PtyDevice(sim, **faults)
        opened.append((sim, device))
        transport = SerialTransport(device.port, baudrate=115200, timeout=timeout)
        opened.append((transport, None))
        return transport, device

    yield make
    for a, b in reversed(opened):
        if a is not None:
            a.close()
        if b is not None:
            b.close()


def _matmul_is_exact(drv, rng):
    w = rng.integers(-1, 2, size=(9, 30))
    x = rng.integers(-128, 128, size=(30, 2))
    assert np.array_equal(drv.matmul(w, x, fmt="t5"), golden.matvec(w, x))


def test_matmul_over_a_serial_link(rng, link):
    transport, _ = link()
    drv = LPUDriver(transport)
    assert drv.config["lanes"] == 4 and drv.config["pes"] == 2
    _matmul_is_exact(drv, rng)
    assert transport.cycles is None


def _flip(i):
    def damage(frame):
        frame = bytearray(frame)
        frame[i] ^= 0x10
        return bytes(frame)
    return damage


@pytest.mark.parametrize("faults", [
    {"reply_fault": _once(_flip(5))},                          # garbled reply byte: bad CRC
    {"reply_fault": _once(_flip(2))},                          # garbled length: too short
    {"reply_fault": _once(lambda f: f[:3] + f[4:])},           # dropped reply byte
    {"reply_fault": _once(lambda f: f[:len(f) // 2])},         # truncated reply
    {"reply_fault": _once(lambda f: b"\x00\xff" + f)},         # noise before the reply
    {"request_fault": _once(_flip(4))},                        # garbled request: BAD_CRC
    {"request_fault": _once(lambda f: f[:-1])},                # dropped request byte
], ids=["garbled", "garbled-length", "dropped", "truncated", "noise", "garbled-request",
        "dropped-request"])
def test_serial_link_recovers(rng, link, faults):
    # The timeout must outlast the slowest simulated exchange on a loaded machine (the pysim
    # device runs a RUN in a fraction of a second, several times slower with other jobs on the
    # cores): a reply that comes after it is taken for lost and the request resent.
    transport, _ = link(timeout=3.0, **faults)
    _matmul_is_exact(LPUDriver(transport), rng)


def test_no_device_raises_link_error(link):
    transport, device = link(timeout=0.1, backend=False)
    with pytest.raises(LinkError, match=rf"^PING failed after 4 attempts: No complete reply on "
                                        rf"{device.port} within 0.1 s: no reply sync byte "
                                        rf"\(0x5a\)$"):
        LPUDriver(transport)


def test_garbled_link_raises_link_error(link):
    transport, _ = link(timeout=0.2, reply_fault=_flip(5))
    with pytest.raises(LinkError, match=r"^PING failed after 4 attempts: Reply frame has a "
                                        r"bad CRC$"):
        LPUDriver(transport)


def test_half_replies_raise_link_error(link):
    transport, device = link(timeout=0.1, reply_fault=lambda f: f[:5])
    with pytest.raises(LinkError, match=rf"^PING failed after 4 attempts: No complete reply on "
                                        rf"{device.port} within 0.1 s: 5 bytes of a reply$"):
        LPUDriver(transport)


def test_missing_port_raises_link_error(tmp_path):
    with pytest.raises(LinkError, match=rf"^Cannot open serial port {tmp_path}/tty0: .*"):
        SerialTransport(str(tmp_path / "tty0"))


def test_loop_url_echoes_requests():
    # loop:// sends the request back: no reply sync byte ever comes
    transport = SerialTransport("loop://", timeout=0.05)
    try:
        with pytest.raises(TimeoutError, match=r"^No complete reply on loop:// within 0.05 s: "
                                               r"no reply sync byte \(0x5a\) after 6 other "
                                               r"bytes$"):
            transport.exchange(b"\xa5\x00\x00\x00\x12\x34")
    finally:
        transport.close()


@pytest.mark.parametrize("kwargs, exc, msg", [
    ({"baudrate": "fast"}, TypeError, r"^Baud rate must be an integer, not 'fast'$"),
    ({"baudrate": 0}, ValueError, r"^Baud rate must be a positive integer, not 0$"),
    ({"timeout": None}, TypeError, r"^Timeout must be a number of seconds, not None$"),
    ({"timeout": 0}, ValueError, r"^Timeout must be positive, not 0$"),
])
def test_serial_parameter_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        SerialTransport("loop://", **kwargs)


@pytest.mark.slow
def test_lpu_run_over_a_serial_link(capsys):
    """``lpu run --backend serial``: the shipped model on a simulated board behind a pty."""
    import json

    from lpu.cli import main
    from lpu.host.loaders import load_hf_bitnet
    from lpu.host.run import default_model_path, device_for
    from lpu.sim import cocotb_runner
    ok, why = cocotb_runner.available("verilator")
    if not ok:
        pytest.skip(f"the simulated board needs Verilator: {why}")
    from lpu.sim.fast import VerilatorTransport
    board = VerilatorTransport(LPUSystem(device_for(load_hf_bitnet(default_model_path()))))
    device = PtyDevice(board)
    try:
        assert main(["run", "--backend", "serial", "--port", device.port, "--baud", "921600",
                     "--prompt", "\\n305+98=", "--json"]) == 0
        serial = json.loads(capsys.readouterr().out)
    finally:
        device.close()
        board.close()
    assert main(["run", "--prompt", "\\n305+98=", "--json"]) == 0
    gold = json.loads(capsys.readouterr().out)
    assert serial["text"] == gold["text"] == "403\n"
    assert serial["tokens"] == gold["tokens"]
    assert serial["cycles"] is None and serial["cycles_per_token"] is None


# ------------------------------------------------------------ weights preloaded in flash


def _flash_board(rng, tmp_path):
    """A tiny model saved as a checkpoint, its weights programmed into a simulated QSPI flash
    behind an LPU (served on a pty), and the layout .json of ``flash_image``."""
    from test_transformer import tiny_model

    from lpu.host import image
    from lpu.host.loaders import load_hf_bitnet, save_hf_bitnet
    from lpu.hw.lpu import LPU
    from lpu.hw.streamer import mem_request_layout
    from lpu.sim.memory_models import SimulatedFlash

    model = tiny_model(rng, layers=1, hidden=16, heads=2, kv_heads=1, inter=24, vocab=13)
    model.config["lpu_vocab"] = "\n0123456789+="
    save_hf_bitnet(model, tmp_path / "model")
    model = load_hf_bitnet(tmp_path / "model")      # the names lpu run will look up
    lpu = LPU(lanes=8, pes=2, word_bits=32, addr_width=10, max_k=32, max_vectors=4,
              formats=["t2", "t5"], timeout=300)
    st = lpu.streamer
    info = image.flash_image(model.linears.values(), tmp_path / "w.bin", offset=1 << 20,
                             lanes=st.lanes, pes=st.pes, word_bits=st.word_bits,
                             mem_words=st.mem_words, ternary_format="t5")
    flash = SimulatedFlash(words=st.mem_words, word_bits=32,
                           request_layout=mem_request_layout(st.addr_width, st.max_burst),
                           image=(tmp_path / "w.bin").read_bytes(), width=4)
    return tmp_path / "model", tmp_path / "w.json", info, LPUSystem(lpu, memory=flash)


def test_run_on_weights_preloaded_in_flash(rng, tmp_path, capsys):
    """`lpu run --backend serial --preloaded`: the tokens of the golden backend, from weights
    the host never sent (no WRITE_MEM on the line)."""
    from lpu.cli import main
    from lpu.hw.protocol import Command

    model_dir, layout, _, system = _flash_board(rng, tmp_path)
    commands = []

    def record(frame):
        commands.append(Command(frame[1]))
        return frame

    sim = PysimTransport(system)
    device = PtyDevice(sim, request_fault=record)
    try:
        args = ["run", "--model", str(model_dir), "--prompt", "1+", "--max-tokens", "2",
                "--json"]
        assert main([*args, "--backend", "serial", "--port", device.port,
                     "--preloaded", str(layout)]) == 0
        fabric = json.loads(capsys.readouterr().out)
    finally:
        device.close()
        sim.close()
    assert main([*args, "--backend", "golden"]) == 0
    gold = json.loads(capsys.readouterr().out)
    assert fabric["tokens"] == gold["tokens"] and len(gold["tokens"]) >= 1
    assert Command.WRITE_MEM not in commands and Command.RUN in commands


def test_preloaded_layout_must_match_the_device(rng, tmp_path, capsys):
    from lpu.cli import main
    from lpu.host.image import read_flash_layout

    _, layout, info, system = _flash_board(rng, tmp_path)
    sim = PysimTransport(system)
    try:
        config = LPUDriver(sim).config
    finally:
        sim.close()
    assert read_flash_layout(layout, config) == info
    for key, value, msg in [
        ("pes", 4, "image for pes 4, the device has 2"),
        ("word_bits", 16, "image for word_bits 16, the device has 32"),
        ("ternary_format", "t3", "image in t3, the device reads t2, t5"),
        ("words", 5000, "image of 5000 words, the device addresses 1024"),
    ]:
        other = tmp_path / f"{key}.json"
        other.write_text(json.dumps({**info, key: value}))
        with pytest.raises(ValueError, match=f"^{other}: {msg}$"):
            read_flash_layout(other, config)
    bad = tmp_path / "bad.json"
    for text, msg in [("[1]", "not a weight layout"), ("{", "not a readable weight layout"),
                      (json.dumps({**info, "layout": []}), "'layout' missing or not dict"),
                      (json.dumps({**info, "layout": {"a": -1}}),
                       "layout address of a is not a word address")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"^{bad}: {msg}"):
            read_flash_layout(bad)
    # only the serial backend takes preloaded weights; a bad file stops before any link opens
    assert main(["run", "--backend", "sim", "--preloaded", str(layout)]) == 2
    assert capsys.readouterr().err == ("lpu: error: Preloaded weights are used by the serial "
                                       "backend only, not by 'sim'\n")
    bad.write_text("[1]")
    assert main(["run", "--backend", "serial", "--port", "loop://", "--preloaded",
                 str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"lpu: error: {bad}: not a weight layout")


def test_run_refuses_a_board_that_drops_weight_writes(rng, tmp_path, capsys):
    """Without --preloaded, the weights written to a flash-memory device are dropped: STATUS
    says so and lpu run stops (exit 1) rather than compute with the flash's contents."""
    from lpu.cli import main

    model_dir, _, _, system = _flash_board(rng, tmp_path)
    sim = PysimTransport(system)
    device = PtyDevice(sim)
    try:
        assert main(["run", "--model", str(model_dir), "--backend", "serial", "--port",
                     device.port, "--max-tokens", "1"]) == 1
    finally:
        device.close()
        sim.close()
    assert capsys.readouterr().err == (
        "lpu: error: The device's weight memory dropped the weights written to it (a read-only "
        "flash): program them with lpu flash-image and run with --preloaded FILE.json\n")


def test_status_reports_dropped_writes(rng, tmp_path):
    _, _, _, system = _flash_board(rng, tmp_path)
    sim = PysimTransport(system)
    try:
        drv = LPUDriver(sim)
        assert drv.status()["writes_dropped"] is False
        drv.write_mem([1, 2, 3])
        assert drv.status()["writes_dropped"] is True
    finally:
        sim.close()
    sim = PysimTransport(LPUSystem(small_lpu()))     # block RAM keeps what is written
    try:
        drv = LPUDriver(sim)
        drv.write_mem([1, 2, 3])
        assert drv.status()["writes_dropped"] is False
    finally:
        sim.close()
