"""The fabric backend: every ternary or binary projection runs on an LPU through the driver.

Weights and scale mantissas are written to the device once, the first time a projection is used
(each at its own word address in device memory and its own range of the scale memory), so a
token's projections cost only the activations, the run and the results on the link. The LPU's
scale unit applies the per-tensor or per-group mantissas, so one scaled sum per row and token
comes back; results equal :class:`~lpu.host.transformer.GoldenBackend`'s bit for bit.
"""

import numpy as np

from lpu.hw.formats import WeightFormat
from lpu.hw.scale import scale_words

from . import image
from .quant import linear_scales
from .tensors import QuantLinear

__all__ = ["FabricBackend"]


class FabricBackend:
    """A :class:`~lpu.host.transformer.ProjectionBackend` on an LPU.

    Parameters
    ----------
    driver : LPUDriver
    ternary_format : str
        Device format for ternary weights (``"t2"`` or ``"t5"``); binary weights use ``"b1"``.
    preloaded : dict, optional
        ``{projection name: word address}`` of weights already in device memory (a flash
        programmed with :func:`lpu.host.image.model_image`'s image in the same format): no
        ``WRITE_MEM`` is sent, and a projection not in it is refused (ValueError).

    Attributes
    ----------
    passes, vectors : int
        Weight passes and activation vectors so far.
    fabric_cycles : int
        Cycles the streamer was busy on these jobs (its ``busy_cycles`` counter): the fabric's
        own time, without the host link.
    """

    def __init__(self, driver, *, ternary_format="t2", preloaded=None):
        self._drv = driver
        self._ternary = WeightFormat(ternary_format)
        self._preloaded = preloaded is not None
        self._bases = dict(preloaded or {})
        self._next = 0
        self._scale_bases = {}
        self._next_scale = 0
        self.passes = 0
        self.vectors = 0
        self.fabric_cycles = 0

    @property
    def driver(self):
        return self._drv

    def _format(self, lin):
        return image.device_format(lin.mode, self._ternary)

    def preload(self, lin: QuantLinear):
        """Write ``lin``'s weights and mantissas into the device now rather than on first use."""
        self._base(lin)
        self._scale_base(lin)

    def _scale_base(self, lin: QuantLinear):
        """Scale-memory word address of ``lin``'s mantissas, writing them on first use."""
        if lin.name in self._scale_bases:
            return self._scale_bases[lin.name]
        mant = linear_scales(lin).mantissa
        cfg = self._drv.config
        words = scale_words(*mant.shape, cfg["pes"])
        if self._next_scale + words > cfg["scale_depth"]:
            raise ValueError(f"{lin.name}: scale memory ({cfg['scale_depth']} words) is full")
        base = self._next_scale
        self._drv.write_scales(mant, at=base)
        self._scale_bases[lin.name] = base
        self._next_scale += words
        return base

    def _base(self, lin: QuantLinear):
        """Word address of ``lin``'s image, writing it on first use."""
        if lin.name in self._bases:
            return self._bases[lin.name]
        if self._preloaded:
            raise ValueError(f"{lin.name}: not in the preloaded weight layout")
        cfg = self._drv.config
        rows, cols = lin.shape
        if cols > cfg["max_k"]:
            raise ValueError(f"{lin.name}: {cols} inputs exceed the device's maximum row length "
                             f"({cfg['max_k']})")
        img = image.weight_image(lin.weights, self._format(lin), lanes=cfg["lanes"],
                                 pes=cfg["pes"], word_bits=cfg["word_bits"])
        words = image.image_words(img, cfg["word_bits"])
        if self._next + len(words) > cfg["mem_words"]:
            raise ValueError(f"{lin.name}: device memory ({cfg['mem_words']} words) is full")
        base = self._next
        self._drv.write_mem(words, at=base)
        self._bases[lin.name] = base
        self._next += len(words)
        return base

    def scaled_matmul(self, lin: QuantLinear, x_q):
        """The scaled sums ``sum_g m[o, g] * P[o, g, v]`` as int64 ``(out, V)``."""
        cfg = self._drv.config
        x_q = np.asarray(x_q)
        base = self._base(lin)
        scale_base = self._scale_base(lin)
        group = lin.group_size
        self.passes += 1
        self.vectors += x_q.shape[1]
        rows, cols = lin.shape
        # A job's results (one entry per row block and vector) must fit the output buffer.
        blocks = -(-rows // cfg["pes"])
        if blocks > cfg["out_depth"]:
            raise ValueError(f"{lin.name}: {rows} outputs exceed the device's output buffer "
                             f"({cfg['out_depth']} entries of {cfg['pes']})")
        per_job = min(cfg["max_vectors"], cfg["out_depth"] // blocks)
        outs = []
        for v0 in range(0, x_q.shape[1], per_job):
            x = x_q[:, v0:v0 + per_job]
            v = x.shape[1]
            self._drv.write_vectors(x)
            count = self._drv.run({"base": base, "rows": rows, "cols": cols, "group": group,
                                   "vectors": v, "fmt": image.FormatCode.of(self._format(lin)),
                                   "scale_base": scale_base})
            self.fabric_cycles += self._drv.status()["busy_cycles"]
            outs.append(image.result_matrix(self._drv.read_out(count), rows, v))
        return np.concatenate(outs, axis=1)
