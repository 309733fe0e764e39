"""Running a model end to end: ``lpu run`` and ``lpu demo``.

Backends: ``golden`` (NumPy, :class:`~lpu.host.transformer.GoldenBackend`); through the real
protocol and driver, ``sim`` (the generated LPU compiled by Verilator with a C++ harness,
:class:`~lpu.sim.fast.VerilatorTransport`), ``cocotb`` (the same Verilog under cocotb and
Verilator, :class:`~lpu.sim.cocotb_transport.CocotbTransport`, slower, the same cycles) and
``serial`` (a board on a serial port, :class:`~lpu.host.serial_link.SerialTransport`). Every
ternary projection of the model runs on the backend; the rest on the host.
"""

from pathlib import Path

import numpy as np

from .fabric import FabricBackend
from .loaders import load_hf_bitnet
from .transformer import GoldenBackend, forward, generate

__all__ = ["default_model_path", "CharTokenizer", "device_for", "open_transport", "Session",
           "BACKENDS"]

BACKENDS = ("golden", "sim", "cocotb", "serial")


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


def device_for(model, *, lanes=64, pes=4, word_bits=32):
    """An LPU sized for ``model``: every projection's row fits, all weights fit in memory and
    all scale mantissas in the scale memory."""
    from lpu.hw.formats import WeightFormat
    from lpu.hw.lpu import LPU
    from lpu.hw.scale import scale_groups, scale_words

    from .image import image_word_count
    ctx = int(model.config.get("max_position_embeddings", 16))
    max_k = max(lin.shape[1] for lin in model.linears.values())
    max_k = 1 << (max(max_k, lanes) - 1).bit_length()
    words = sum(image_word_count(*lin.shape, WeightFormat.T2, lanes=lanes, pes=pes,
                                 word_bits=word_bits) for lin in model.linears.values())
    addr_width = max(1, (words - 1).bit_length())
    max_rows = max(lin.shape[0] for lin in model.linears.values())
    vectors = min(ctx, 255)
    # every projection's scale words: P mantissas, one per row of a row block, per group
    scales = sum(scale_words(lin.shape[0], scale_groups(lin.shape[1], lin.group_size), pes)
                 for lin in model.linears.values())
    return LPU(lanes=lanes, pes=pes, word_bits=word_bits, addr_width=addr_width, max_k=max_k,
               max_vectors=vectors, formats=["t2"], scale_depth=scales,
               out_depth=1 << (-(-max_rows // pes) * vectors - 1).bit_length())


def open_transport(backend, model, *, port=None, baudrate=115200):
    """A transport to a device for ``model`` (:func:`device_for`) on a non-golden backend."""
    if backend == "serial":
        from .serial_link import SerialTransport
        return SerialTransport(port, baudrate=baudrate)
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
    baudrate : int
        Baud rate of the serial port.
    """

    def __init__(self, model_path=None, *, backend="golden", port=None, baudrate=115200):
        if backend not in BACKENDS:
            raise ValueError(f"Backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend == "serial" and not port:
            raise ValueError("The serial backend needs a port (--port)")
        if port and backend != "serial":
            raise ValueError(f"A port is used by the serial backend only, not by {backend!r}")
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
        self.transport = open_transport(backend, self.model, port=port, baudrate=baudrate)
        try:
            self.backend = FabricBackend(LPUDriver(self.transport))
            for lin in self.model.linears.values():
                self.backend.preload(lin)
        except BaseException:
            self.transport.close()
            raise
        self.load_cycles = self.transport.cycles

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
        temperature=0.0, top_k=0, seed=None, port=None, baudrate=115200):
    """``lpu run``: returns a dict with ``tokens``, ``text``, ``cycles``, ``cycles_per_token``
    (cycles are None for ``golden`` and ``serial``)."""
    s = Session(model_path, backend=backend, port=port, baudrate=baudrate)
    try:
        start = s.cycles
        tokens = s.generate(prompt, max_tokens, temperature=temperature, top_k=top_k, seed=seed)
        cycles = None if start is None else s.cycles - start
        return {"backend": backend, "prompt": prompt, "tokens": tokens,
                "text": s.tokenizer.decode(tokens), "cycles": cycles,
                "cycles_per_token": None if cycles is None or not tokens
                else round(cycles / len(tokens), 1),
                "fabric_cycles": getattr(s.backend, "fabric_cycles", None)}
    finally:
        s.close()


def accuracy_problems(n, seed=7):
    """``n`` random sums of 1-3 digit numbers as (prompt, expected answer)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, 4)))) for _ in range(2))
        out.append((f"\n{a}+{b}=", f"{a + b}\n"))
    return out
