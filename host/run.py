"""Running a model end to end: ``lpu run`` and ``lpu demo``.

Backends: ``golden`` (NumPy, :class:`~lpu.host.transformer.GoldenBackend`); through the real
protocol and driver, ``sim`` (the generated LPU compiled by Verilator with a C++ harness,
:class:`~lpu.sim.fast.VerilatorTransport`), ``cocotb`` (the same Verilog under cocotb and
Verilator, :class:`~lpu.sim.cocotb_transport.CocotbTransport`, slower, the same cycles) and
``serial`` (a board on a serial port, :class:`~lpu.host.serial_link.SerialTransport`) and
``board`` (a board's whole top -- UART, LPU, block-RAM weights -- simulated by Verilator behind
a simulated serial line, :class:`~lpu.sim.board.BoardTransport`). Every ternary projection of the
model runs on the backend; the rest on the host.
"""

from pathlib import Path

import numpy as np

from .fabric import FabricBackend
from .loaders import load_hf_bitnet
from .transformer import GoldenBackend, forward, generate

__all__ = ["default_model_path", "CharTokenizer", "device_for", "model_needs", "open_transport",
           "Session", "BACKENDS"]

BACKENDS = ("golden", "sim", "cocotb", "serial", "board")

#: Baud rate of the serial backend unless one is given.
DEFAULT_BAUD = 115_200


def default_model_path():
    """The shipped model (``models/bitnet-adder`` beside the package folders)."""
    return Path(__file__).resolve().parent.parent / "models" / "bitnet-adder"


class CharTokenizer:
    """One token per character of the model's ``lpu_vocab``."""

    def __init__(self, vocab):
        self.vocab = vocab
        self._ids = {c: i for i, c in enumerate(vocab)}

    def encode(self, text):
        bad = [c for c in text if c not in self._ids]
        if bad:
            raise ValueError(f"Prompt character {bad[0]!r} is not in the model's vocabulary "
                             f"{self.vocab!r}")
        return [self._ids[c] for c in text]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def model_needs(model, *, lanes, pes, word_bits):
    """What ``model`` asks of an LPU of ``lanes`` x ``pes`` with words of ``word_bits``: the
    words of its t2 weight images, the words of its scale memory, and its longest row."""
    from lpu.hw.formats import WeightFormat
    from lpu.hw.scale import scale_groups, scale_words

    from .image import image_word_count
    linears = model.linears.values()
    words = sum(image_word_count(*lin.shape, WeightFormat.T2, lanes=lanes, pes=pes,
                                 word_bits=word_bits) for lin in linears)
    # every projection's scale words: P mantissas, one per row of a row block, per group
    scales = sum(scale_words(lin.shape[0], scale_groups(lin.shape[1], lin.group_size), pes)
                 for lin in linears)
    return words, scales, max(lin.shape[1] for lin in linears)


def device_for(model, *, lanes=64, pes=4, word_bits=32):
    """An LPU sized for ``model``: every projection's row fits, all weights fit in memory and
    all scale mantissas in the scale memory."""
    from lpu.hw.lpu import LPU

    ctx = int(model.config.get("max_position_embeddings", 16))
    words, scales, max_k = model_needs(model, lanes=lanes, pes=pes, word_bits=word_bits)
    max_k = 1 << (max(max_k, lanes) - 1).bit_length()
    addr_width = max(1, (words - 1).bit_length())
    max_rows = max(lin.shape[0] for lin in model.linears.values())
    vectors = min(ctx, 255)
    return LPU(lanes=lanes, pes=pes, word_bits=word_bits, addr_width=addr_width, max_k=max_k,
               max_vectors=vectors, formats=["t2"], scale_depth=scales,
               out_depth=1 << (-(-max_rows // pes) * vectors - 1).bit_length())


def check_board_holds(model, board):
    """Raise ValueError if ``model``'s weights or scales do not fit ``board``'s LPU."""
    from lpu.boards.top import board_spec

    cfg = board_spec(board).lpu
    words, scales, max_k = model_needs(model, lanes=cfg["lanes"], pes=cfg["pes"],
                                       word_bits=cfg.get("word_bits", 32))
    if words > cfg["mem_words"]:
        raise ValueError(f"The model's weights need {words} words of memory, more than the "
                         f"{board}'s {cfg['mem_words']}")
    if scales > cfg["scale_depth"]:
        raise ValueError(f"The model's scales need {scales} words of scale memory, more than "
                         f"the {board}'s {cfg['scale_depth']}")
    if max_k > cfg["max_k"]:
        raise ValueError(f"The model's rows of {max_k} inputs are longer than the {board}'s "
                         f"maximum row length ({cfg['max_k']})")


def open_transport(backend, model, *, port=None, baudrate=None, board=None):
    """A transport to a device for ``model`` on a non-golden backend: :func:`device_for` on
    the simulators, ``board``'s LPU behind a simulated serial line at ``baudrate`` (default:
    the fastest its clock makes, :func:`lpu.sim.board.fastest_baud`) on ``board``."""
    if backend == "serial":
        from .serial_link import SerialTransport
        return SerialTransport(port, baudrate=DEFAULT_BAUD if baudrate is None else baudrate)
    if backend == "board":
        from lpu.sim.board import BoardLinkSystem, BoardTransport, fastest_baud
        check_board_holds(model, board)
        return BoardTransport(BoardLinkSystem(
            board, baud=fastest_baud(board) if baudrate is None else baudrate))
    from lpu.sim.system import LPUSystem
    system = LPUSystem(device_for(model))
    if backend == "sim":
        from lpu.sim.fast import VerilatorTransport
        return VerilatorTransport(system)
    if backend == "cocotb":
        from lpu.sim.cocotb_transport import CocotbTransport
        return CocotbTransport(system)
    raise ValueError(f"Backend must be one of {', '.join(BACKENDS[1:])}, not {backend!r}")


class Session:
    """A model and a backend, ready to generate.

    Attributes
    ----------
    model, tokenizer, backend
    transport : the device transport, or None for ``golden``
    load_cycles : int or None
        Simulated cycles spent writing the weights into device memory (None for ``golden``
        and ``serial``: a board does not count them for the host).

    Parameters
    ----------
    model_path : path-like, optional
    backend : str
        One of :data:`BACKENDS`.
    port : str, optional
        Serial port or pyserial URL; required by ``serial`` and only used by it.
    baudrate : int, optional
        Baud rate of the serial port (default 115200) or of the ``board`` backend's simulated
        link (default: the fastest the board's clock makes; the figures at the board's own
        rate are computed, :func:`link_report`).
    board : str, optional
        A board of :data:`lpu.boards.top.BOARDS`; required by ``board`` and only used by it.
    preloaded : path-like, optional
        ``serial`` only: the weights are already in the device's memory (a flash programmed
        with the ``.bin`` of ``lpu flash-image``); this is the ``.json`` it wrote beside it
        (:func:`lpu.host.image.read_flash_layout`). No ``WRITE_MEM`` is sent; the scale
        mantissas still are.
    """

    def __init__(self, model_path=None, *, backend="golden", port=None, baudrate=None,
                 board=None, preloaded=None):
        if backend not in BACKENDS:
            raise ValueError(f"Backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend == "serial" and not port:
            raise ValueError("The serial backend needs a port (--port)")
        if port and backend != "serial":
            raise ValueError(f"A port is used by the serial backend only, not by {backend!r}")
        if backend == "board" and not board:
            raise ValueError("The board backend needs a board (--board)")
        if board and backend != "board":
            raise ValueError(f"A board is used by the board backend only, not by {backend!r}")
        if board:
            from lpu.boards.top import board_spec
            board_spec(board)
        if preloaded is not None and backend != "serial":
            raise ValueError(f"Preloaded weights are used by the serial backend only, not by "
                             f"{backend!r}")
        if preloaded is not None:
            from .image import check_flash_layout, read_flash_layout
            layout = read_flash_layout(preloaded)
        path = Path(model_path) if model_path else default_model_path()
        self.model = load_hf_bitnet(path)
        vocab = self.model.config.get("lpu_vocab")
        if not vocab:
            raise ValueError(f"{path}/config.json has no lpu_vocab: the character vocabulary "
                             f"of the model")
        self.tokenizer = CharTokenizer(vocab)
        self.transport = None
        self.load_cycles = 0
        if backend == "golden":
            self.backend = GoldenBackend()
            return
        from .driver import LPUDriver
        self.transport = open_transport(backend, self.model, port=port, baudrate=baudrate,
                                        board=board)
        try:
            driver = LPUDriver(self.transport)
            if preloaded is None:
                self.backend = FabricBackend(driver)
            else:
                check_flash_layout(layout, driver.config, preloaded)
                self.backend = FabricBackend(driver, ternary_format=layout["ternary_format"],
                                             preloaded=layout["layout"])
            for lin in self.model.linears.values():
                self.backend.preload(lin)
        except BaseException:
            self.transport.close()
            raise
        self.load_cycles = self.transport.cycles
        if backend == "serial" and preloaded is None:
            self._check_writes_kept()

    def _check_writes_kept(self):
        """A board whose weight memory is its flash drops WRITE_MEM's words (and says so in
        STATUS): running on would compute with whatever the flash holds."""
        from .driver import DeviceError
        if self.backend.driver.status()["writes_dropped"]:
            self.transport.close()
            raise DeviceError("The device's weight memory dropped the weights written to it "
                              "(a read-only flash): program them with lpu flash-image and run "
                              "with --preloaded FILE.json")

    @property
    def cycles(self):
        return getattr(self.transport, "cycles", None)

    def generate(self, prompt, max_tokens, *, temperature=0.0, top_k=0, seed=None):
        """Generated token ids for ``prompt`` (text); stops after a newline."""
        ids = self.tokenizer.encode(prompt)
        stop = [self.tokenizer.vocab.index("\n")] if "\n" in self.tokenizer.vocab else []
        return generate(self.model, ids, max_tokens, self.backend, temperature=temperature,
                        top_k=top_k, seed=seed, stop_ids=stop)

    def logits(self, text):
        return forward(self.model, self.tokenizer.encode(text), self.backend)

    def close(self):
        if self.transport:
            self.transport.close()


def run(model_path=None, *, backend="golden", prompt="\n123+456=", max_tokens=8,
        temperature=0.0, top_k=0, seed=None, port=None, baudrate=None, board=None,
        preloaded=None):
    """``lpu run``: returns a dict with ``tokens``, ``text``, ``cycles``, ``cycles_per_token``
    (cycles are None for ``golden`` and ``serial``) and, for ``board``, ``link``
    (:func:`link_report`)."""
    s = Session(model_path, backend=backend, port=port, baudrate=baudrate, board=board,
                preloaded=preloaded)
    try:
        start = s.cycles
        link_start = link_counts(s.transport) if backend == "board" else None
        tokens = s.generate(prompt, max_tokens, temperature=temperature, top_k=top_k, seed=seed)
        cycles = None if start is None else s.cycles - start
        out = {"backend": backend, "prompt": prompt, "tokens": tokens,
               "text": s.tokenizer.decode(tokens), "cycles": cycles,
               "cycles_per_token": None if cycles is None or not tokens
               else round(cycles / len(tokens), 1),
               "fabric_cycles": getattr(s.backend, "fabric_cycles", None)}
        if backend == "board":
            out["link"] = link_report(s.transport, link_start, cycles, len(tokens))
        return out
    finally:
        s.close()


def link_counts(transport):
    """Exchanges, bytes and cycles of a :class:`~lpu.sim.board.BoardTransport` so far."""
    return {"exchanges": transport.exchanges, "bytes": transport.link_bytes,
            "cycles": transport.link_cycles}


def link_report(transport, start, cycles, tokens):
    """The serial link's share of ``cycles`` (``tokens`` tokens) since ``start``
    (:func:`link_counts`), and tokens per second at the board's own baud rate.

    ``tokens_per_s`` is the simulated rate (the board's clock over cycles per token).
    ``tokens_per_s_at_board_baud`` puts the bytes per token on a link at the board's baud rate
    (:func:`lpu.sim.board.tokens_per_second`: ten bit periods a byte, less the half bit per
    direction and exchange of :func:`lpu.sim.board.link_cycles`) and adds the cycles per token
    outside the link, which do not depend on the baud rate.
    """
    from lpu.boards.top import board_spec
    from lpu.sim.board import tokens_per_second
    system = transport.system
    now = link_counts(transport)
    d = {k: now[k] - start[k] for k in now}
    n = max(tokens, 1)
    board_baud = board_spec(system.board).baud
    device = (cycles - d["cycles"]) / n
    return {"board": system.board, "clk_mhz": system.clk_hz / 1e6, "baud": system.baud,
            "divisor": system.divisor, "exchanges": d["exchanges"], "bytes": d["bytes"],
            "cycles": d["cycles"], "bytes_per_token": round(d["bytes"] / n, 1),
            "exchanges_per_token": round(d["exchanges"] / n, 1),
            "cycles_per_token": round(d["cycles"] / n, 1),
            "device_cycles_per_token": round(device, 1),
            "tokens_per_s": round(system.clk_hz * n / cycles, 4) if cycles else None,
            "board_baud": board_baud,
            "tokens_per_s_at_board_baud": round(tokens_per_second(
                bytes_per_token=d["bytes"] / n, exchanges_per_token=d["exchanges"] / n,
                device_cycles_per_token=device, baud=board_baud, clk_hz=system.clk_hz), 4)}


def accuracy_problems(n, seed=7):
    """``n`` random sums of 1-3 digit numbers as (prompt, expected answer)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, 4)))) for _ in range(2))
        out.append((f"\n{a}+{b}=", f"{a + b}\n"))
    return out
