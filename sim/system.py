"""A weight streamer with a simulated memory behind it: the unit the stream benches run."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from lpu.boards.memory import connect_memory
from lpu.hw.streamer import PERF_LAYOUT, STATUS_LAYOUT, mem_request_layout

from .memory_models import MemoryModel, MemoryTiming

__all__ = ["StreamerSystem", "LPUSystem"]


def _system_memory(streamer, timing, init, memory):
    if memory is None:
        return memory_for(streamer, timing=timing, init=init)
    if timing is not None or len(init):
        raise ValueError("A memory component and a timing or contents for the memory model "
                         "are exclusive")
    return memory


def memory_for(streamer, *, timing=None, init=()):
    """A :class:`MemoryModel` shaped for ``streamer``'s memory port."""
    return MemoryModel(words=streamer.mem_words, word_bits=streamer.word_bits,
                       request_layout=mem_request_layout(streamer.addr_width,
                                                         streamer.max_burst),
                       timing=MemoryTiming() if timing is None else timing, init=init)


class StreamerSystem(wiring.Component):
    """``streamer`` connected to a :class:`MemoryModel` holding ``init`` (memory words), or to
    ``memory`` (any component with its ``req``, ``resp`` and ``wr`` ports)."""

    def __init__(self, streamer, *, timing=None, init=(), memory=None):
        self._streamer = streamer
        self._memory = _system_memory(streamer, timing, init, memory)
        s = streamer.signature.members
        super().__init__({
            "desc": s["desc"],
            "act_wr": s["act_wr"],
            "o_stream": s["o_stream"],
            "status": Out(STATUS_LAYOUT),
            "perf": Out(PERF_LAYOUT),
        })

    streamer = property(lambda self: self._streamer)
    memory = property(lambda self: self._memory)

    def elaborate(self, platform):
        m = Module()
        m.submodules.streamer = st = self._streamer
        m.submodules.memory = mem = self._memory
        wiring.connect(m, st.mem_req, mem.req)
        wiring.connect(m, mem.resp, st.mem_resp)
        wiring.connect(m, wiring.flipped(self.desc), st.desc)
        wiring.connect(m, wiring.flipped(self.act_wr), st.act_wr)
        wiring.connect(m, st.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [self.status.eq(st.status), self.perf.eq(st.perf)]
        return m


class LPUSystem(wiring.Component):
    """An :class:`~lpu.hw.lpu.LPU` with a simulated memory (a :class:`MemoryModel`, or
    ``memory`` as for :class:`StreamerSystem`): bytes in, bytes out."""

    def __init__(self, lpu, *, timing=None, init=(), memory=None):
        self._lpu = lpu
        self._memory = _system_memory(lpu.streamer, timing, init, memory)
        s = lpu.signature.members
        super().__init__({"rx": s["rx"], "tx": s["tx"]})

    lpu = property(lambda self: self._lpu)
    memory = property(lambda self: self._memory)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lpu = lpu = self._lpu
        m.submodules.memory = mem = self._memory
        connect_memory(m, lpu, mem)
        wiring.connect(m, wiring.flipped(self.rx), lpu.rx)
        wiring.connect(m, lpu.tx, wiring.flipped(self.tx))
        return m
